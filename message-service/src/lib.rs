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

pub mod grpc;
pub mod metrics;
pub mod ops;
pub mod recent;
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
use proto::pb;
use proto::subjects;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

pub use routes::Routes;
pub use settings::{BusSettings, Settings, StoreSettings};
pub use store::{Store, StoreError};

/// A built, not yet running, message-service.
pub struct App {
    inner: Arc<Inner>,
    subs: Vec<(Route, bus::Subscriber)>,
    grpc: Option<tokio::net::TcpListener>,
    ops: Option<tokio::net::TcpListener>,
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
    GetMessage,
    UnreadCounts,
    MessagesSince,
    DeliveryAcks,
    Routing,
}

impl Route {
    /// Index into [`metrics::OPS`] for request routes.
    fn op_index(self) -> Option<usize> {
        Some(match self {
            Route::Send => 0,
            Route::CreateConversation => 1,
            Route::GetConversation => 2,
            Route::MarkRead => 3,
            Route::Typing => 4,
            Route::ListMessages => 5,
            Route::ListConversations => 6,
            Route::UpdateParticipants => 7,
            Route::GetMessage => 8,
            Route::UnreadCounts => 9,
            Route::MessagesSince => 10,
            Route::DeliveryAcks | Route::Routing => return None,
        })
    }
}

pub(crate) struct Inner {
    bus: Bus,
    store: Store,
    routes: Routes,
    settings: Settings,
    /// Message ids whose delivery was published; their outbox rows get deleted in batches.
    published: mpsc::Sender<i64>,
    /// Sends waiting for the group-commit batcher.
    sends: mpsc::Sender<PendingSend>,
    sends_rx: tokio::sync::Mutex<Option<mpsc::Receiver<PendingSend>>>,
    /// Committed messages waiting to be enqueued for push-service.
    push_tx: mpsc::Sender<PushWork>,
    push_rx: tokio::sync::Mutex<Option<mpsc::Receiver<PushWork>>>,
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
    /// What was published lately, for sockets that open while it was in flight.
    recent: recent::Recent,
    /// New messages committed by this process (drives the fault-injection crash).
    commits: std::sync::atomic::AtomicU64,
}

/// How long after start the routing table is treated as incomplete.
const ROUTES_WARMUP: Duration = Duration::from_secs(2);

/// A message waiting to be stored, and who waits for the result.
pub(crate) type PendingSend = (
    store::NewMessage,
    tokio::sync::oneshot::Sender<Result<store::Sent, StoreError>>,
);

/// Pause between outbox cleanups (see [`complete_outbox`]).
const OUTBOX_CLEANUP_EVERY: Duration = Duration::from_millis(50);

/// Most messages one group commit takes.
const MAX_BATCH: usize = 256;
/// Group commits in flight at once on PostgreSQL (one fills while another commits).
const BATCHES_IN_FLIGHT: usize = 2;

impl Inner {
    /// Stores a message through the group-commit batcher.
    pub(crate) async fn store_message(
        &self,
        m: store::NewMessage,
    ) -> Result<store::Sent, StoreError> {
        if !self.settings.group_commit {
            return self.store.send_message(&m).await;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.sends.send((m, tx)).await.is_err() {
            return Err(StoreError::Rejected {
                code: proto::ErrorCode::Unavailable,
                message: "message-service is stopping; retry".into(),
            });
        }
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Rejected {
                code: proto::ErrorCode::Unavailable,
                message: "message-service is stopping; retry".into(),
            })
        })
    }

    /// Fault injection (`INDABA_TEST_CRASH_AFTER_COMMITS`): dies like `kill -9` would, in
    /// the window between commit and publish, so the fault tests can prove the outbox
    /// covers it. A no-op unless configured.
    pub(crate) fn crash_point_after_commit(&self) {
        let Some(limit) = self.settings.crash_after_commits else {
            return;
        };
        let n = self
            .commits
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        if n >= limit {
            tracing::error!(
                commits = n,
                "fault injection: aborting between commit and publish"
            );
            std::process::abort();
        }
    }

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
            (Route::GetMessage, subjects::MSG_GET),
            (Route::UnreadCounts, subjects::UNREAD),
            (Route::MessagesSince, subjects::MSG_SINCE),
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
        let grpc = match settings.grpc_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen for gRPC on {addr}: {e}"))?,
            ),
            None => None,
        };
        let ops = match settings.http_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen for HTTP on {addr}: {e}"))?,
            ),
            None => None,
        };
        let (published, published_rx) = mpsc::channel(65_536);
        let (push_tx, push_rx) = mpsc::channel(65_536);
        let (sends, sends_rx) = mpsc::channel(4096);
        if settings.push_jobs {
            // Producer and consumer both create the stream, so either may start first.
            bus.ensure_queue(&PUSH_QUEUE.with_replicas(settings.jetstream_replicas))
                .await?;
        }
        let in_flight = Arc::new(Semaphore::new(settings.max_in_flight));
        Ok(App {
            inner: Arc::new(Inner {
                bus,
                store,
                routes: Routes::default(),
                settings,
                published,
                published_rx: tokio::sync::Mutex::new(Some(published_rx)),
                sends,
                sends_rx: tokio::sync::Mutex::new(Some(sends_rx)),
                commits: std::sync::atomic::AtomicU64::new(0),
                recent: recent::Recent::default(),
                push_tx,
                push_rx: tokio::sync::Mutex::new(Some(push_rx)),
                in_flight,
                acked: Default::default(),
                routes_warm_at: tokio::time::Instant::now() + ROUTES_WARMUP,
            }),
            subs,
            grpc,
            ops,
        })
    }

    /// Where the operations port listens (tests bind port 0).
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.ops.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Where the gRPC API listens (tests bind port 0).
    pub fn grpc_addr(&self) -> Option<std::net::SocketAddr> {
        self.grpc.as_ref().and_then(|l| l.local_addr().ok())
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
        if let Some(rx) = self.inner.push_rx.lock().await.take() {
            tasks.spawn(enqueue_push(self.inner.clone(), rx));
        }
        if let Some(rx) = self.inner.sends_rx.lock().await.take() {
            tasks.spawn(group_commit(self.inner.store.clone(), rx));
        }
        if let Some(l) = self.ops {
            tasks.spawn(bus::ops::serve(l, Arc::new(Readiness(self.inner.clone()))));
        }
        let (stop_grpc, grpc_stopped) = tokio::sync::watch::channel(false);
        let grpc = self.grpc.map(|listener| {
            let mut stopped = grpc_stopped;
            tokio::spawn(grpc::serve(
                listener,
                self.inner.clone(),
                self.inner.settings.grpc_keys.clone(),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            ))
        });
        tracing::info!("message-service running");
        shutdown.await;
        tracing::info!("message-service stopping");
        let _ = stop_grpc.send(true);
        if let Some(g) = grpc {
            let _ = tokio::time::timeout(Duration::from_secs(5), g).await;
        }
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

/// What `/readyz` and `/metrics` report.
struct Readiness(Arc<Inner>);

impl bus::ops::Probe for Readiness {
    fn ready(&self) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            if !self.0.bus.is_connected() {
                return Err("no NATS connection".into());
            }
            self.0
                .store
                .ping()
                .await
                .map_err(|e| format!("database: {e}"))
        })
    }

    fn metrics(&self) -> String {
        metrics::render()
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
                    Ok(ev) => {
                        inner.routes.apply_event(&ev);
                        if ev.kind() == pb::connection_event::Kind::Up {
                            catch_up(&inner, ev.user_id, &ev.gateway_id, ev.at_ms);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "undecodable connection event"),
                }
            }
            Route::Routing if msg.subject == subjects::GATEWAY_HEARTBEAT => {
                match pb::GatewayHeartbeat::decode(msg.payload) {
                    Ok(hb) => {
                        if let Some(full) = heartbeats.push(hb) {
                            // Users the table lacked: their socket-opened event was lost;
                            // the socket opened at most one interval ago.
                            let since = full.sent_at_ms - i64::from(full.interval_ms);
                            for user in inner.routes.apply_heartbeat(&full) {
                                catch_up(&inner, user, &full.gateway_id, since);
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "undecodable heartbeat"),
                }
            }
            // Away/online status changes matter to presence, not to routing.
            Route::Routing => {}
            Route::DeliveryAcks => match pb::DeliveryAck::decode(msg.payload) {
                Ok(mut ack) => {
                    let more = std::mem::take(&mut ack.more);
                    tell_delivered(&inner, std::iter::once(ack).chain(more)).await;
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
            | Route::UpdateParticipants
            | Route::GetMessage
            | Route::UnreadCounts
            | Route::MessagesSince => {
                // Bounded concurrency: when saturated we stop reading, and NATS buffers
                // (then times the requester out, who retries with the same key).
                let Ok(permit) = inner.in_flight.clone().acquire_owned().await else {
                    return;
                };
                let inner = inner.clone();
                if let Some(n) = route.op_index() {
                    metrics::request(n);
                }
                // Continues the caller's trace (its `traceparent` header).
                let span = tracing::info_span!(
                    "request",
                    op = ?route,
                    trace_id = tracing::field::Empty
                );
                bus::trace::follow(&span, &msg);
                tokio::spawn(
                    async move {
                        let i = &*inner;
                        let p = &msg.payload[..];
                        let reply = match route {
                            Route::Send => ops::over_nats(p, |r| ops::send(i, r)).await,
                            Route::CreateConversation => {
                                ops::over_nats(p, |r| ops::create_conversation(i, r)).await
                            }
                            Route::GetConversation => {
                                ops::over_nats(p, |r| ops::get_conversation(i, r)).await
                            }
                            Route::MarkRead => ops::over_nats(p, |r| ops::mark_read(i, r)).await,
                            Route::Typing => ops::over_nats(p, |r| ops::typing(i, r)).await,
                            Route::ListMessages => {
                                ops::over_nats(p, |r| ops::list_messages(i, r)).await
                            }
                            Route::ListConversations => {
                                ops::over_nats(p, |r| ops::list_conversations(i, r)).await
                            }
                            Route::UpdateParticipants => {
                                ops::over_nats(p, |r| ops::update_participants(i, r)).await
                            }
                            Route::GetMessage => {
                                ops::over_nats(p, |r| ops::get_message(i, r)).await
                            }
                            Route::UnreadCounts => {
                                ops::over_nats(p, |r| ops::unread_counts(i, r)).await
                            }
                            Route::MessagesSince => {
                                ops::over_nats(p, |r| ops::messages_since(i, r)).await
                            }
                            Route::DeliveryAcks | Route::Routing => return,
                        };
                        if let Err(e) = inner.bus.respond(&msg, reply).await {
                            tracing::warn!(error = %e, "could not send reply");
                        }
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
        }
    }
}

/// Sends `message_delivered` to the senders of newly acknowledged messages: one NATS
/// message per gateway holding senders (the rest ride in `Delivery.more`).
async fn tell_delivered(inner: &Inner, acks: impl Iterator<Item = pb::DeliveryAck>) {
    let mut per_gateway: std::collections::HashMap<Arc<str>, Vec<pb::Delivery>> =
        std::collections::HashMap::new();
    let now = proto::time::now_ms();
    for ack in acks {
        // "Delivered" means at least one recipient device has it: the first ack per
        // message is enough (a group would otherwise send one per member).
        if !inner.first_ack(ack.message_id) {
            continue;
        }
        let event = pb::delivery::Event::Delivered(pb::DeliveredEvent {
            message_id: ack.message_id,
            conversation_id: ack.conversation_id,
            recipient_id: ack.recipient_id,
            at_ms: now,
        });
        for (gateway, users) in inner.routes.by_gateway(&[ack.sender_id]) {
            per_gateway.entry(gateway).or_default().push(pb::Delivery {
                event: Some(event.clone()),
                recipient_ids: users,
                origin_connection_id: String::new(),
                more: Vec::new(),
            });
        }
    }
    for (gateway, mut batch) in per_gateway {
        let mut first = batch.remove(0);
        first.more = batch;
        let subject = subjects::gateway_delivery(&gateway);
        if let Err(e) = inner
            .bus
            .publish(&subject, Bytes::from(first.encode_to_vec()))
            .await
        {
            tracing::warn!(error = %e, %gateway, "delivered notice publish failed");
            metrics::bus_error();
        }
    }
}

/// The push queue (see `bus::jobs`).
pub const PUSH_QUEUE: bus::jobs::Queue = bus::jobs::Queue {
    stream: subjects::PUSH_STREAM,
    subject: subjects::PUSH_JOBS,
    durable: subjects::PUSH_CONSUMER,
    max_age: Duration::from_secs(24 * 3600),
    ack_wait: Duration::from_secs(30),
    replicas: 1,
};

/// A committed message on its way to the push queue.
pub(crate) struct PushWork {
    message: pb::ChatMessage,
    participants: Vec<i64>,
    meta: store::ConversationMeta,
    /// The live delivery was published (the outbox row may go once the job is stored).
    delivered: bool,
}

/// Publishes one `Delivery` per gateway that holds sockets of the participants, then hands
/// the message to the push enqueuer, which completes the outbox row once the push job is
/// stored too. The sender's reply does not wait for the push queue.
pub(crate) async fn deliver(
    inner: &Inner,
    message: &pb::ChatMessage,
    participants: &[i64],
    meta: &store::ConversationMeta,
    origin: &str,
) {
    // Remember it *before* reading the routing table: a socket-opened event applied after
    // that read then finds it here (catch_up), one applied before it is in the table.
    inner.recent.record(message, participants, origin);
    let groups = inner.routes.by_gateway(participants);
    let everyone_online = all_routed(&groups, participants, message.sender_id);
    let ok = publish_groups(
        inner,
        &pb::delivery::Event::Message(message.clone()),
        groups,
        origin,
    )
    .await;
    // On failure the row stays; the sweeper republishes it when the lease runs out. Same
    // while the routing table may still be missing gateways (just after start).
    let warm = tokio::time::Instant::now() >= inner.routes_warm_at;
    let delivered = ok && warm;
    // No push job when every recipient has a socket: push-service would drop each of them
    // anyway (it skips users who are online, or were within its window, 60 s by default),
    // and a job is a JetStream write and acknowledgement per message.
    if everyone_online && inner.settings.push_jobs {
        metrics::push_job_skipped();
    }
    if everyone_online || !inner.settings.push_jobs {
        if delivered {
            complete(inner, message.id);
        }
        return;
    }
    let work = PushWork {
        message: message.clone(),
        participants: participants.to_vec(),
        meta: meta.clone(),
        delivered,
    };
    if inner.push_tx.try_send(work).is_err() {
        tracing::debug!(
            message_id = message.id,
            "push queue backlog full; the sweeper will redo this message"
        );
    }
}

/// Whether every participant but `sender` appears in `groups` (has a socket somewhere).
fn all_routed(groups: &[(Arc<str>, Vec<i64>)], participants: &[i64], sender: i64) -> bool {
    let routed: std::collections::HashSet<i64> = groups
        .iter()
        .flat_map(|(_, users)| users.iter().copied())
        .collect();
    participants
        .iter()
        .all(|u| *u == sender || routed.contains(u))
}

fn complete(inner: &Inner, message_id: i64) {
    if inner.published.try_send(message_id).is_err() {
        tracing::debug!(
            message_id,
            "outbox completion queue full; sweeper will redo it"
        );
    }
}

/// Stores push jobs durably (JetStream, or the in-process push-service), up to 64 at a
/// time, and completes outbox rows whose delivery and job are both out.
async fn enqueue_push(inner: Arc<Inner>, rx: mpsc::Receiver<PushWork>) {
    let work = tokio_stream_from(rx);
    work.for_each_concurrent(64, |w| {
        let inner = inner.clone();
        async move {
            let recipients: Vec<i64> = w
                .participants
                .iter()
                .copied()
                .filter(|u| *u != w.message.sender_id)
                .collect();
            let stored = recipients.is_empty() || {
                let job = pb::PushJob {
                    message: Some(w.message.clone()),
                    recipient_ids: recipients,
                    conversation_title: w.meta.title.clone(),
                    conversation_kind: i32::try_from(w.meta.kind).unwrap_or(0),
                };
                match inner
                    .bus
                    .enqueue(
                        &PUSH_QUEUE,
                        &w.message.id.to_string(),
                        Bytes::from(job.encode_to_vec()),
                        Duration::from_secs(5),
                    )
                    .await
                {
                    Ok(()) => true,
                    Err(e) => {
                        metrics::bus_error();
                        tracing::warn!(error = %e, message_id = w.message.id, "push job not stored; the sweeper will retry");
                        false
                    }
                }
            };
            if stored && w.delivered {
                complete(&inner, w.message.id);
            }
        }
    })
    .await;
}

/// Group commit: whatever sends arrived while the previous batch was committing go into
/// the next transaction together, so at load one fsync serves many messages and at rest a
/// lone message is committed at once (no waiting to fill a batch).
async fn group_commit(store: Store, mut rx: mpsc::Receiver<PendingSend>) {
    // SQLite has one writer at a time: a second batch would only wait in SQLite's busy
    // handler, which sleeps in steps of milliseconds (the single-node program's tail
    // latency at 4,000 msg/s was seconds). PostgreSQL commits two batches side by side.
    let in_flight = match store {
        Store::Postgres(_) => BATCHES_IN_FLIGHT,
        Store::Sqlite(_) => 1,
    };
    let slots = Arc::new(Semaphore::new(in_flight));
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let work = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        let store = store.clone();
        tokio::spawn(async move {
            let (messages, waiters): (Vec<_>, Vec<_>) = work.into_iter().unzip();
            metrics::group_commit(messages.len());
            let results = store.send_many(&messages).await;
            for (w, r) in waiters.into_iter().zip(results) {
                let _ = w.send(r);
            }
            drop(permit);
        });
    }
}

/// An mpsc receiver as a stream.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Publishes `event` once to every gateway holding sockets of `recipients`. Returns false
/// if any publish failed.
pub(crate) async fn publish_event(
    inner: &Inner,
    event: pb::delivery::Event,
    recipients: &[i64],
    origin: &str,
) -> bool {
    let groups = inner.routes.by_gateway(recipients);
    publish_groups(inner, &event, groups, origin).await
}

/// Publishes `event` to each gateway of `groups` (from [`routes::Routes::by_gateway`]),
/// naming the recipients it holds. Returns false if any publish failed.
async fn publish_groups(
    inner: &Inner,
    event: &pb::delivery::Event,
    groups: Vec<(Arc<str>, Vec<i64>)>,
    origin: &str,
) -> bool {
    let mut ok = true;
    for (gateway, users) in groups {
        let d = pb::Delivery {
            event: Some(event.clone()),
            recipient_ids: users,
            origin_connection_id: origin.to_owned(),
            more: Vec::new(),
        };
        let subject = subjects::gateway_delivery(&gateway);
        if let Err(e) = inner
            .bus
            .publish(&subject, Bytes::from(d.encode_to_vec()))
            .await
        {
            tracing::warn!(error = %e, %gateway, "delivery publish failed");
            metrics::bus_error();
            ok = false;
        }
    }
    ok
}

/// Publishes again, to the gateway where a socket of a user opened at `opened_ms`, the
/// user's messages published since (see [`recent`]: the routing event may have lost the
/// race with them). The table is read here, in the routing loop's order; the publishing runs
/// on its own task so a burst of reconnects does not hold up later routing events.
fn catch_up(inner: &Arc<Inner>, user: i64, gateway: &str, opened_ms: i64) {
    let recent = inner.recent.published_after(user, opened_ms);
    if recent.is_empty() {
        return;
    }
    metrics::caught_up(recent.len());
    let subject = subjects::gateway_delivery(gateway);
    let inner = inner.clone();
    let gateway = gateway.to_owned();
    tokio::spawn(async move {
        for p in recent {
            let d = pb::Delivery {
                event: Some(pb::delivery::Event::Message((*p.message).clone())),
                recipient_ids: vec![user],
                // Never back to the socket that sent it.
                origin_connection_id: p.origin.to_string(),
                more: Vec::new(),
            };
            if let Err(e) = inner
                .bus
                .publish(&subject, Bytes::from(d.encode_to_vec()))
                .await
            {
                tracing::warn!(error = %e, %gateway, "catch-up publish failed");
                metrics::bus_error();
                return;
            }
        }
    });
}

/// Deletes outbox rows of published deliveries, batched (one statement per batch).
///
/// It waits [`OUTBOX_CLEANUP_EVERY`] between statements so one statement (and one commit:
/// a WAL flush) clears many rows; without the pause it ran a commit per handful of
/// messages under load. A row outliving its
/// publish by that much costs nothing: rows are leased for 5 s before anyone republishes.
async fn complete_outbox(store: Store, mut rx: mpsc::Receiver<i64>) {
    let mut batch = Vec::with_capacity(4096);
    while rx.recv_many(&mut batch, 4096).await > 0 {
        tokio::time::sleep(OUTBOX_CLEANUP_EVERY).await;
        while batch.len() < 4096 {
            let Ok(id) = rx.try_recv() else { break };
            batch.push(id);
        }
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
        inner.recent.prune();
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
                    metrics::outbox_republished(pending.len());
                }
                for p in pending {
                    deliver(
                        &inner,
                        &p.message,
                        &p.participants,
                        &p.meta,
                        &p.origin_connection_id,
                    )
                    .await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "outbox sweep failed"),
        }
    }
}

/// The distributed-mode program: settings from the environment, run until SIGTERM/SIGINT.
/// Shared by the `message-service` binary and `indaba message-service`, so one image serves every role alike.
pub async fn run_from_env() -> anyhow::Result<()> {
    let app = App::build(Settings::from_env()?).await?;
    app.run(bus::runtime::shutdown_signal()).await
}
