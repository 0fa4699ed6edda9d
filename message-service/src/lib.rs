//! message-service: the only writer of conversations and messages.
//!
//! Layout:
//! - [`settings`]: configuration, read in one place.
//! - [`store`]: PostgreSQL/SQLite persistence (one SQL text for both) and the outbox.
//! - [`routes`]: which gateways hold which users' sockets.
//! - [`App`]: subscribes to the request subjects (queue group, so any number of instances
//!   share the load), answers after commit, then publishes deliveries.
//!
//! Delivery is at-least-once and survives a crash between commit and publish: the message
//! and its outbox row commit together; the row is deleted after the delivery is published;
//! rows left behind by a dead instance are republished by any instance once their lease
//! runs out. Gateways drop repeats by message id.

pub mod routes;
pub mod settings;
pub mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bus::Bus;
use bytes::Bytes;
use futures_util::StreamExt;
use prost::Message as _;
use proto::pb::{self, ConversationKind};
use proto::{subjects, ErrorCode};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

pub use routes::Routes;
pub use settings::{BusSettings, Settings, StoreSettings};
pub use store::{Store, StoreError};

/// A built, not yet running, message-service.
pub struct App {
    inner: Arc<Inner>,
    subs: Vec<(Route, bus::Subscriber)>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("message_service::App")
    }
}

/// What a subscription is for (a closed set, so dispatch is an exhaustive match).
#[derive(Clone, Copy, Debug)]
enum Route {
    Send,
    CreateConversation,
    GetConversation,
    MarkRead,
    Typing,
    ListMessages,
    ListConversations,
    UpdateParticipants,
    DeliveryAcks,
    Routing,
}

struct Inner {
    bus: Bus,
    store: Store,
    routes: Routes,
    settings: Settings,
    /// Message ids whose delivery was published; their outbox rows get deleted in batches.
    published: mpsc::Sender<i64>,
    published_rx: tokio::sync::Mutex<Option<mpsc::Receiver<i64>>>,
    in_flight: Arc<Semaphore>,
    /// Message ids already acknowledged as delivered (bounded, oldest forgotten first).
    acked: std::sync::Mutex<(
        std::collections::HashSet<i64>,
        std::collections::VecDeque<i64>,
    )>,
    /// Until the routing table has heard from the gateways (their answer to our resync),
    /// a delivery that found nobody may be wrong: keep its outbox row for the sweeper.
    routes_warm_at: tokio::time::Instant,
}

/// How long after start the routing table is treated as incomplete.
const ROUTES_WARMUP: Duration = Duration::from_secs(2);

impl Inner {
    fn first_ack(&self, message_id: i64) -> bool {
        let mut g = self.acked.lock().unwrap_or_else(|e| e.into_inner());
        if !g.0.insert(message_id) {
            return false;
        }
        g.1.push_back(message_id);
        if g.1.len() > 100_000 {
            if let Some(old) = g.1.pop_front() {
                g.0.remove(&old);
            }
        }
        true
    }
}

impl App {
    /// Connects to the store and the bus, runs migrations, subscribes. Tests build the
    /// service exactly this way.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        let store = match &settings.store {
            StoreSettings::Postgres(url) => {
                Store::connect_postgres(url, settings.pool_size).await?
            }
            StoreSettings::Sqlite(path) => Store::open_sqlite(path, settings.pool_size).await?,
        };
        let bus = match &settings.bus {
            BusSettings::Nats(url) => Bus::connect_nats(url, "message-service").await?,
            BusSettings::Shared(b) => b.clone(),
        };
        let mut subs = Vec::new();
        for (route, subject) in [
            (Route::Send, subjects::MSG_SEND),
            (Route::CreateConversation, subjects::CONV_CREATE),
            (Route::GetConversation, subjects::CONV_GET),
            (Route::MarkRead, subjects::RECEIPTS_MARK),
            (Route::Typing, subjects::TYPING),
            (Route::ListMessages, subjects::MSG_LIST),
            (Route::ListConversations, subjects::CONV_LIST),
            (Route::UpdateParticipants, subjects::CONV_MEMBERS),
            (Route::DeliveryAcks, subjects::DELIVERY_ACKS),
        ] {
            let s = bus
                .queue_subscribe(subject, subjects::MESSAGE_SERVICE_QUEUE)
                .await?;
            subs.push((route, s));
        }
        // One subscription for both routing streams keeps them in order (see ROUTING_ALL).
        subs.push((Route::Routing, bus.subscribe(subjects::ROUTING_ALL).await?));
        // Ask every gateway for its full socket list so routing works right away instead
        // of after the next heartbeat.
        bus.publish(subjects::GATEWAY_RESYNC, Bytes::new()).await?;
        let (published, published_rx) = mpsc::channel(65_536);
        let in_flight = Arc::new(Semaphore::new(settings.max_in_flight));
        Ok(App {
            inner: Arc::new(Inner {
                bus,
                store,
                routes: Routes::default(),
                settings,
                published,
                published_rx: tokio::sync::Mutex::new(Some(published_rx)),
                in_flight,
                acked: Default::default(),
                routes_warm_at: tokio::time::Instant::now() + ROUTES_WARMUP,
            }),
            subs,
        })
    }

    /// The store (tests inspect it).
    pub fn store(&self) -> Store {
        self.inner.store.clone()
    }

    /// Serves until `shutdown` resolves, then stops taking requests, finishes the ones in
    /// flight and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let mut tasks = JoinSet::new();
        for (route, sub) in self.subs {
            tasks.spawn(serve(self.inner.clone(), route, sub));
        }
        if let Some(rx) = self.inner.published_rx.lock().await.take() {
            tasks.spawn(complete_outbox(self.inner.store.clone(), rx));
        }
        tasks.spawn(sweep(self.inner.clone()));
        tracing::info!("message-service running");
        shutdown.await;
        tracing::info!("message-service stopping");
        // Dropping the subscriptions stops new requests; wait for the ones in flight.
        tasks.abort_all();
        let permits = u32::try_from(self.inner.settings.max_in_flight).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            self.inner.in_flight.acquire_many(permits),
        )
        .await;
        let _ = self.inner.bus.flush().await;
        Ok(())
    }
}

async fn serve(inner: Arc<Inner>, route: Route, mut sub: bus::Subscriber) {
    // Only the routing subscription sees heartbeats; big ones arrive in parts.
    let mut heartbeats = bus::heartbeat::Assembler::default();
    while let Some(msg) = sub.next().await {
        match route {
            // Routing updates are applied inline, in arrival order.
            Route::Routing if msg.subject == subjects::CONN_EVENTS => {
                match pb::ConnectionEvent::decode(msg.payload) {
                    Ok(ev) => inner.routes.apply_event(&ev),
                    Err(e) => tracing::warn!(error = %e, "undecodable connection event"),
                }
            }
            Route::Routing if msg.subject == subjects::GATEWAY_HEARTBEAT => {
                match pb::GatewayHeartbeat::decode(msg.payload) {
                    Ok(hb) => {
                        if let Some(full) = heartbeats.push(hb) {
                            inner.routes.apply_heartbeat(&full);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "undecodable heartbeat"),
                }
            }
            // Away/online status changes matter to presence, not to routing.
            Route::Routing => {}
            Route::DeliveryAcks => match pb::DeliveryAck::decode(msg.payload) {
                // "Delivered" means at least one recipient device has it: the first ack
                // per message is enough (a group would otherwise send one per member).
                Ok(ack) if !inner.first_ack(ack.message_id) => {}
                Ok(ack) => {
                    let ev = pb::delivery::Event::Delivered(pb::DeliveredEvent {
                        message_id: ack.message_id,
                        conversation_id: ack.conversation_id,
                        recipient_id: ack.recipient_id,
                        at_ms: proto::time::now_ms(),
                    });
                    publish_event(&inner, ev, &[ack.sender_id], "").await;
                }
                Err(e) => tracing::warn!(error = %e, "undecodable delivery ack"),
            },
            Route::Send
            | Route::CreateConversation
            | Route::GetConversation
            | Route::MarkRead
            | Route::Typing
            | Route::ListMessages
            | Route::ListConversations
            | Route::UpdateParticipants => {
                // Bounded concurrency: when saturated we stop reading, and NATS buffers
                // (then times the requester out, who retries with the same key).
                let Ok(permit) = inner.in_flight.clone().acquire_owned().await else {
                    return;
                };
                let inner = inner.clone();
                tokio::spawn(async move {
                    let reply = match route {
                        Route::Send => handle_send(&inner, &msg.payload).await,
                        Route::CreateConversation => handle_create(&inner, &msg.payload).await,
                        Route::GetConversation => handle_get(&inner, &msg.payload).await,
                        Route::MarkRead => handle_mark_read(&inner, &msg.payload).await,
                        Route::Typing => handle_typing(&inner, &msg.payload).await,
                        Route::ListMessages => handle_list_messages(&inner, &msg.payload).await,
                        Route::ListConversations => {
                            handle_list_conversations(&inner, &msg.payload).await
                        }
                        Route::UpdateParticipants => {
                            handle_update_participants(&inner, &msg.payload).await
                        }
                        Route::DeliveryAcks | Route::Routing => return,
                    };
                    if let Err(e) = inner.bus.respond(&msg, reply).await {
                        tracing::warn!(error = %e, "could not send reply");
                    }
                    drop(permit);
                });
            }
        }
    }
}

fn store_error(e: StoreError) -> pb::Error {
    match e {
        StoreError::Rejected { code, message } => proto::pb_error(code, message),
        other => {
            tracing::error!(error = %other, "store failure");
            proto::pb_error(
                ErrorCode::Unavailable,
                "the message store is unavailable; retry",
            )
        }
    }
}

fn invalid(e: proto::limits::Invalid) -> pb::Error {
    proto::pb_error(e.code, e.message)
}

/// Validates a send request. Every entry point (gateway, REST, gRPC) lands here, so the
/// rules hold whoever the caller is.
fn validate_send(req: &pb::SendMessageRequest, max_text: usize) -> Result<(), pb::Error> {
    use proto::limits::{validate_client_msg_id, validate_id, validate_text};
    validate_id("sender_id", req.sender_id).map_err(invalid)?;
    if let Some(c) = req.conversation_id {
        validate_id("conversation_id", c).map_err(invalid)?;
    }
    match req.receiver_id {
        Some(r) => {
            validate_id("receiver_id", r).map_err(invalid)?;
            if r == req.sender_id {
                return Err(proto::pb_error(
                    ErrorCode::InvalidReceiver,
                    "receiver_id must not be the sender",
                ));
            }
        }
        None if req.conversation_id.is_none() => {
            return Err(proto::pb_error(
                ErrorCode::InvalidField,
                "conversation_id or receiver_id is required",
            ))
        }
        None => {}
    }
    validate_text(&req.text, max_text).map_err(invalid)?;
    if !req.client_msg_id.is_empty() {
        validate_client_msg_id(&req.client_msg_id).map_err(invalid)?;
    }
    Ok(())
}

async fn handle_send(inner: &Inner, payload: &[u8]) -> Bytes {
    use pb::send_message_response::Result as R;
    let resp = match pb::SendMessageRequest::decode(payload) {
        Err(e) => pb::SendMessageResponse {
            result: Some(R::Error(proto::pb_error(
                ErrorCode::InvalidField,
                format!("undecodable request: {e}"),
            ))),
            duplicate: false,
        },
        Ok(req) => match send(inner, req).await {
            Ok((m, duplicate)) => pb::SendMessageResponse {
                result: Some(R::Message(m)),
                duplicate,
            },
            Err(e) => pb::SendMessageResponse {
                result: Some(R::Error(e)),
                duplicate: false,
            },
        },
    };
    Bytes::from(resp.encode_to_vec())
}

async fn send(
    inner: &Inner,
    req: pb::SendMessageRequest,
) -> Result<(pb::ChatMessage, bool), pb::Error> {
    validate_send(&req, inner.settings.max_text_chars)?;
    let new = store::NewMessage {
        sender_id: req.sender_id,
        conversation_id: req.conversation_id,
        receiver_id: req.receiver_id,
        text: req.text,
        client_msg_id: (!req.client_msg_id.is_empty()).then_some(req.client_msg_id),
        origin_connection_id: req.origin_connection_id.clone(),
    };
    let sent = inner.store.send_message(&new).await.map_err(store_error)?;
    if !sent.duplicate {
        // Committed: publish now. The reply goes out after this, but a slow publish only
        // delays `message_sent`, never loses the message (the outbox row covers a crash).
        deliver(
            inner,
            &sent.message,
            &sent.participants,
            &req.origin_connection_id,
        )
        .await;
    }
    Ok((sent.message, sent.duplicate))
}

/// Publishes one `Delivery` per gateway that holds sockets of the participants, then
/// queues the outbox row for deletion.
async fn deliver(inner: &Inner, message: &pb::ChatMessage, participants: &[i64], origin: &str) {
    let ok = publish_event(
        inner,
        pb::delivery::Event::Message(message.clone()),
        participants,
        origin,
    )
    .await;
    // On failure the row stays; the sweeper republishes it when the lease runs out. Same
    // while the routing table may still be missing gateways (just after start).
    let warm = tokio::time::Instant::now() >= inner.routes_warm_at;
    if ok && warm && inner.published.try_send(message.id).is_err() {
        tracing::debug!(
            message_id = message.id,
            "outbox completion queue full; sweeper will redo it"
        );
    }
}

/// Publishes `event` once to every gateway holding sockets of `recipients`. Returns false
/// if any publish failed.
async fn publish_event(
    inner: &Inner,
    event: pb::delivery::Event,
    recipients: &[i64],
    origin: &str,
) -> bool {
    let mut ok = true;
    for (gateway, users) in inner.routes.by_gateway(recipients) {
        let d = pb::Delivery {
            event: Some(event.clone()),
            recipient_ids: users,
            origin_connection_id: origin.to_owned(),
        };
        let subject = subjects::gateway_delivery(&gateway);
        if let Err(e) = inner
            .bus
            .publish(&subject, Bytes::from(d.encode_to_vec()))
            .await
        {
            tracing::warn!(error = %e, %gateway, "delivery publish failed");
            ok = false;
        }
    }
    ok
}

/// Decodes a request or answers with an `invalid_field` error.
fn decode<T: prost::Message + Default>(payload: &[u8]) -> Result<T, pb::Error> {
    T::decode(payload)
        .map_err(|e| proto::pb_error(ErrorCode::InvalidField, format!("undecodable request: {e}")))
}

/// Most message ids one read receipt may carry.
pub const MAX_RECEIPT_IDS: usize = 500;

async fn handle_mark_read(inner: &Inner, payload: &[u8]) -> Bytes {
    let res = async {
        let req: pb::MarkReadRequest = decode(payload)?;
        proto::limits::validate_id("reader_id", req.reader_id).map_err(invalid)?;
        if req.message_ids.is_empty() || req.message_ids.len() > MAX_RECEIPT_IDS {
            return Err(proto::pb_error(
                ErrorCode::InvalidField,
                format!("message_ids must hold 1 to {MAX_RECEIPT_IDS} ids"),
            ));
        }
        let marked = inner
            .store
            .mark_read(req.reader_id, &req.message_ids)
            .await
            .map_err(store_error)?;
        // Relay: one receipt per (conversation, sender), to all of the sender's devices.
        let mut groups: std::collections::BTreeMap<(i64, i64), Vec<i64>> =
            std::collections::BTreeMap::new();
        for m in &marked.newly_read {
            groups
                .entry((m.conversation_id, m.sender_id))
                .or_default()
                .push(m.message_id);
        }
        for ((conversation_id, sender_id), message_ids) in groups {
            let ev = pb::delivery::Event::ReadReceipt(pb::ReadReceiptEvent {
                conversation_id,
                reader_id: req.reader_id,
                message_ids,
                read_at_ms: marked.read_at_ms,
            });
            publish_event(inner, ev, &[sender_id], "").await;
        }
        Ok(marked)
    }
    .await;
    let resp = match res {
        Ok(m) => pb::MarkReadResponse {
            accepted_ids: m.accepted,
            rejected_ids: m.rejected,
            read_at_ms: m.read_at_ms,
            error: None,
        },
        Err(e) => pb::MarkReadResponse {
            error: Some(e),
            ..Default::default()
        },
    };
    Bytes::from(resp.encode_to_vec())
}

async fn handle_typing(inner: &Inner, payload: &[u8]) -> Bytes {
    let res = async {
        let req: pb::TypingRequest = decode(payload)?;
        let members = inner
            .store
            .require_member(req.conversation_id, req.user_id)
            .await
            .map_err(store_error)?;
        let ev = pb::delivery::Event::Typing(pb::TypingEvent {
            conversation_id: req.conversation_id,
            user_id: req.user_id,
            is_typing: req.is_typing,
        });
        // Everyone but the typist (whose other devices do not need it).
        let others: Vec<i64> = members.into_iter().filter(|u| *u != req.user_id).collect();
        publish_event(inner, ev, &others, &req.origin_connection_id).await;
        Ok(())
    }
    .await;
    Bytes::from(pb::TypingResponse { error: res.err() }.encode_to_vec())
}

async fn handle_list_messages(inner: &Inner, payload: &[u8]) -> Bytes {
    let res = async {
        let req: pb::ListMessagesRequest = decode(payload)?;
        if req.after_seq < 0 || req.before_seq < 0 {
            return Err(proto::pb_error(
                ErrorCode::InvalidField,
                "seq bounds must not be negative",
            ));
        }
        inner
            .store
            .list_messages(
                req.user_id,
                req.conversation_id,
                req.after_seq,
                req.before_seq,
                req.limit,
            )
            .await
            .map_err(store_error)
    }
    .await;
    let resp = match res {
        Ok(p) => pb::ListMessagesResponse {
            messages: p.messages,
            has_more: p.has_more,
            last_seq: p.last_seq,
            first_retained_seq: p.first_retained_seq,
            error: None,
        },
        Err(e) => pb::ListMessagesResponse {
            error: Some(e),
            ..Default::default()
        },
    };
    Bytes::from(resp.encode_to_vec())
}

async fn handle_list_conversations(inner: &Inner, payload: &[u8]) -> Bytes {
    let res = async {
        let req: pb::ListConversationsRequest = decode(payload)?;
        let limit = if req.limit == 0 { 100 } else { req.limit };
        inner
            .store
            .list_conversations(req.user_id, limit)
            .await
            .map_err(store_error)
    }
    .await;
    let resp = match res {
        Ok(list) => pb::ListConversationsResponse {
            conversations: list
                .into_iter()
                .map(|s| pb::ConversationSummary {
                    conversation: Some(s.conversation),
                    last_read_seq: s.last_read_seq,
                    unread_count: s.unread_count,
                    last_message: s.last_message,
                })
                .collect(),
            error: None,
        },
        Err(e) => pb::ListConversationsResponse {
            conversations: Vec::new(),
            error: Some(e),
        },
    };
    Bytes::from(resp.encode_to_vec())
}

async fn handle_update_participants(inner: &Inner, payload: &[u8]) -> Bytes {
    use pb::update_participants_response::Result as R;
    let res = async {
        let req: pb::UpdateParticipantsRequest = decode(payload)?;
        for u in req.add_user_ids.iter().chain(&req.remove_user_ids) {
            proto::limits::validate_id("user_ids", *u).map_err(invalid)?;
        }
        let (conv, added, removed) = inner
            .store
            .update_participants(
                req.actor_id,
                req.conversation_id,
                &req.add_user_ids,
                &req.remove_user_ids,
                inner.settings.max_group_size,
            )
            .await
            .map_err(store_error)?;
        if !added.is_empty() || !removed.is_empty() {
            // Everyone affected hears it at once: current members and the removed.
            let mut audience = conv.participant_ids.clone();
            audience.extend(&removed);
            let ev = pb::delivery::Event::Membership(pb::MembershipEvent {
                conversation_id: conv.id,
                added_user_ids: added,
                removed_user_ids: removed,
            });
            publish_event(inner, ev, &audience, "").await;
        }
        Ok(conv)
    }
    .await;
    let resp = pb::UpdateParticipantsResponse {
        result: Some(match res {
            Ok(c) => R::Conversation(c),
            Err(e) => R::Error(e),
        }),
    };
    Bytes::from(resp.encode_to_vec())
}

async fn handle_create(inner: &Inner, payload: &[u8]) -> Bytes {
    use pb::create_conversation_response::Result as R;
    let res = async {
        let req = pb::CreateConversationRequest::decode(payload).map_err(|e| {
            proto::pb_error(ErrorCode::InvalidField, format!("undecodable request: {e}"))
        })?;
        proto::limits::validate_id("creator_id", req.creator_id).map_err(invalid)?;
        for p in &req.participant_ids {
            proto::limits::validate_id("participant_ids", *p).map_err(invalid)?;
        }
        if req.title.chars().count() > proto::limits::MAX_TITLE_CHARS {
            return Err(proto::pb_error(
                ErrorCode::InvalidField,
                format!(
                    "title is longer than {} characters",
                    proto::limits::MAX_TITLE_CHARS
                ),
            ));
        }
        let mut distinct = req.participant_ids.clone();
        distinct.push(req.creator_id);
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() < 2 {
            return Err(proto::pb_error(
                ErrorCode::InvalidField,
                "a conversation needs at least one participant besides you",
            ));
        }
        if distinct.len() > inner.settings.max_group_size {
            return Err(proto::pb_error(
                ErrorCode::TooManyParticipants,
                format!(
                    "a group has at most {} members",
                    inner.settings.max_group_size
                ),
            ));
        }
        let kind = ConversationKind::try_from(req.kind).unwrap_or(ConversationKind::Unspecified);
        inner
            .store
            .create_conversation(req.creator_id, &req.participant_ids, &req.title, kind)
            .await
            .map_err(store_error)
    }
    .await;
    let resp = match res {
        Ok((c, existing)) => pb::CreateConversationResponse {
            result: Some(R::Conversation(c)),
            existing,
        },
        Err(e) => pb::CreateConversationResponse {
            result: Some(R::Error(e)),
            existing: false,
        },
    };
    Bytes::from(resp.encode_to_vec())
}

async fn handle_get(inner: &Inner, payload: &[u8]) -> Bytes {
    use pb::get_conversation_response::Result as R;
    let res = async {
        let req = pb::GetConversationRequest::decode(payload).map_err(|e| {
            proto::pb_error(ErrorCode::InvalidField, format!("undecodable request: {e}"))
        })?;
        let conv = inner
            .store
            .get_conversation(req.conversation_id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                proto::pb_error(
                    ErrorCode::ConversationNotFound,
                    format!("conversation {} does not exist", req.conversation_id),
                )
            })?;
        if req.as_user_id != 0 && !conv.participant_ids.contains(&req.as_user_id) {
            return Err(proto::pb_error(
                ErrorCode::Forbidden,
                "you are not a participant of this conversation",
            ));
        }
        Ok(conv)
    }
    .await;
    let resp = pb::GetConversationResponse {
        result: Some(match res {
            Ok(c) => R::Conversation(c),
            Err(e) => R::Error(e),
        }),
    };
    Bytes::from(resp.encode_to_vec())
}

/// Deletes outbox rows of published deliveries, batched (one statement per batch).
async fn complete_outbox(store: Store, mut rx: mpsc::Receiver<i64>) {
    let mut batch = Vec::with_capacity(512);
    while rx.recv_many(&mut batch, 512).await > 0 {
        if let Err(e) = store.complete_outbox(&batch).await {
            // Rows stay and get republished after their lease; gateways de-duplicate.
            tracing::warn!(error = %e, n = batch.len(), "outbox cleanup failed");
        }
        batch.clear();
    }
}

/// Republishes deliveries whose writer died before publishing, expires dead gateways and
/// applies message retention.
async fn sweep(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let dropped = inner.routes.expire();
        if dropped > 0 {
            tracing::warn!(dropped, "gateways stopped sending heartbeats");
        }
        if let Some(keep) = inner.settings.retention {
            let cutoff =
                proto::time::now_ms() - i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
            match inner.store.prune_before(cutoff, 1000).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(n, "pruned messages past retention"),
                Err(e) => tracing::warn!(error = %e, "retention prune failed"),
            }
        }
        if tokio::time::Instant::now() < inner.routes_warm_at {
            continue;
        }
        match inner.store.claim_expired_outbox(500).await {
            Ok(pending) => {
                if !pending.is_empty() {
                    tracing::info!(n = pending.len(), "republishing orphaned deliveries");
                }
                for p in pending {
                    deliver(&inner, &p.message, &p.participants, &p.origin_connection_id).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "outbox sweep failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> pb::SendMessageRequest {
        pb::SendMessageRequest {
            sender_id: 1,
            conversation_id: None,
            receiver_id: Some(2),
            text: text.into(),
            client_msg_id: String::new(),
            origin_connection_id: String::new(),
        }
    }

    #[test]
    fn send_validation_codes() {
        let code = |r: &pb::SendMessageRequest| validate_send(r, 10).unwrap_err().code;
        assert!(validate_send(&req("hi"), 10).is_ok());
        assert_eq!(code(&req("")), "empty_text");
        assert_eq!(code(&req("01234567890")), "text_too_long");
        let mut r = req("hi");
        r.receiver_id = Some(1);
        assert_eq!(code(&r), "invalid_receiver");
        r.receiver_id = None;
        assert_eq!(code(&r), "invalid_field");
        r.conversation_id = Some(-1);
        assert_eq!(code(&r), "invalid_field");
        let mut r = req("hi");
        r.client_msg_id = "has space".into();
        assert_eq!(code(&r), "invalid_field");
    }
}
