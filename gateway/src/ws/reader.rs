//! The socket's reader: client frames handled in order, one at a time. Each handler
//! translates a frame into a [`backend`] operation and its answer into server frames; the
//! per-socket state the protocol needs (typing coalescing, receipt batching, watched users,
//! joined rooms, rate strikes, token expiry, idleness) lives here and nowhere else.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use proto::frames::{self, parse_client_frame, ChatMessage, ClientFrame, MessageSent, ServerFrame};
use proto::limits::MAX_RECEIPT_IDS;
use proto::ErrorCode;
use tokio::sync::mpsc;
use tokio::time::sleep_until;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::resume;
use crate::backend::{self, BackendError, Budget, Change, Window};
use crate::ctx::Ctx;
use crate::hub::{Outbound, SyncFrame};
use crate::session::{self, Session};
use crate::views;

/// Typing indicators for one conversation are forwarded at most this often, unless the
/// state flips (a stop is never held back).
const TYPING_INTERVAL: Duration = Duration::from_secs(1);
/// How long read receipts are collected before one write (see `Conn::read_receipt`).
const RECEIPT_BATCH_WINDOW: Duration = Duration::from_millis(100);
/// Rate-limited frames in a row after which the socket is closed with 1008.
const RATE_STRIKES_BEFORE_CLOSE: u32 = 20;
/// Most users one socket may watch through `presence_subscribe`.
const MAX_WATCHED_USERS: usize = 500;
/// Most rooms one socket may be joined to.
const MAX_JOINED_ROOMS: usize = 100;
/// Conversations one `list_conversations` frame returns (the most recently active).
const LIST_PAGE: u32 = 100;

/// The reading half of a client socket.
pub(super) type Stream = futures_util::stream::SplitStream<WebSocketStream<TokioIo<Upgraded>>>;

/// One socket's reader state.
pub(super) struct Conn {
    ctx: Arc<Ctx>,
    /// The user, the connection id, the hub's handle; closed in [`Conn::finish`].
    session: Session,
    /// Resume frames to the writer; opened by the first `sync` ([`Outbound::SyncStream`]).
    sync_tx: Option<mpsc::Sender<SyncFrame>>,
    /// Per conversation: when the last indicator was forwarded, and its state.
    typing: HashMap<i64, (Instant, bool)>,
    /// Message ids from `read_receipt` frames not yet sent to message-service. The spec's
    /// client sends one receipt per displayed message; a burst becomes one write.
    receipts: Vec<i64>,
    /// When `receipts` must be flushed.
    receipts_due: Option<tokio::time::Instant>,
    /// Users watched through `presence_subscribe`.
    explicit_watch: HashSet<i64>,
    /// Members of joined rooms, watched while joined.
    room_members: HashMap<i64, Vec<i64>>,
    /// What the hub currently sends this socket presence for.
    watched: HashSet<i64>,
    /// The client said `away`.
    said_away: bool,
    /// Consecutive rate-limited frames.
    rate_strikes: u32,
    /// No client frame for `idle_away`.
    idle: bool,
    last_activity: tokio::time::Instant,
}

impl Conn {
    /// The reader of an opened session.
    pub(super) fn new(ctx: Arc<Ctx>, session: Session) -> Conn {
        Conn {
            ctx,
            session,
            sync_tx: None,
            typing: HashMap::new(),
            receipts: Vec::new(),
            receipts_due: None,
            explicit_watch: HashSet::new(),
            room_members: HashMap::new(),
            watched: HashSet::new(),
            said_away: false,
            rate_strikes: 0,
            idle: false,
            last_activity: tokio::time::Instant::now(),
        }
    }

    /// Reads frames until the client or the server closes the socket, then closes it.
    pub(super) async fn run(mut self, mut stream: Stream, writer: tokio::task::JoinHandle<()>) {
        let close = self.session.handle.close.clone();
        // Every await below that runs a handler is boxed: a task's allocation is its future's
        // largest state, and unboxed the frame handlers (NATS requests, JSON) made every
        // idle socket's task ~3.5 KB; boxed, the cost is paid per frame, briefly.
        loop {
            let flush_at = self.receipts_due;
            let idle_at = self.last_activity + self.ctx.settings.idle_away;
            let expires_in =
                u64::try_from(self.session.valid_until_ms - proto::time::now_ms()).unwrap_or(0);
            let expires_at = tokio::time::Instant::now() + Duration::from_millis(expires_in);
            let next = tokio::select! {
                () = sleep_until(expires_at) => {
                    // The token ran out and was not refreshed: 4001 tells the client to get a
                    // new one (the spec's `getToken()`) and reconnect.
                    self.session.handle.shared.close_code.store(4001, std::sync::atomic::Ordering::Relaxed);
                    break;
                }
                m = stream.next() => m,
                () = close.cancelled() => break,
                () = sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)), if flush_at.is_some() => {
                    Box::pin(self.flush_receipts()).await;
                    continue;
                }
                () = sleep_until(idle_at), if !self.idle => {
                    self.idle = true;
                    Box::pin(self.update_away()).await;
                    continue;
                }
            };
            if self.idle {
                self.idle = false;
                Box::pin(self.update_away()).await;
            }
            self.last_activity = tokio::time::Instant::now();
            match next {
                Some(Ok(Message::Text(text))) => Box::pin(self.handle_text(&text)).await,
                Some(Ok(Message::Binary(_))) => {
                    self.send(ServerFrame::error(
                        ErrorCode::InvalidJson,
                        "binary frames are not supported; send JSON text frames",
                        None,
                    ));
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(Message::Pong(_))) => self
                    .session
                    .handle
                    .shared
                    .last_pong_ms
                    .store(proto::time::now_ms(), std::sync::atomic::Ordering::Relaxed),
                // Pings are answered by tungstenite itself; raw frames need nothing.
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(connection_id = %self.session.connection_id, error = %e, "socket read error");
                    // Tell a misbehaving peer why (RFC 6455 §7.4.1), when it can still hear us.
                    use tokio_tungstenite::tungstenite::Error as WsError;
                    let code = match e {
                        WsError::Protocol(_) => Some(CloseCode::Protocol),
                        WsError::Utf8(_) => Some(CloseCode::Invalid),
                        WsError::Capacity(_) => Some(CloseCode::Size),
                        _ => None,
                    };
                    if let Some(code) = code {
                        self.session
                            .handle
                            .shared
                            .close_code
                            .store(u16::from(code), std::sync::atomic::Ordering::Relaxed);
                    }
                    break;
                }
            }
        }
        self.session.handle.close.cancel();
        let (user_id, connection_id) = (self.session.user_id, self.session.connection_id.clone());
        // Boxed like the handlers: the closing steps' state stays out of the socket's task.
        Box::pin(self.finish(writer, stream)).await;
        tracing::debug!(%connection_id, user_id, "socket closed");
    }

    /// Counts a refusal for rate against this socket (the limit that refused it counted the
    /// metric); sustained abuse (many refusals in a row) closes the socket with 1008 (policy
    /// violation).
    fn strike(&mut self) {
        self.rate_strikes += 1;
        if self.rate_strikes >= RATE_STRIKES_BEFORE_CLOSE {
            self.session.handle.shared.close_code.store(
                u16::from(CloseCode::Policy),
                std::sync::atomic::Ordering::Relaxed,
            );
            self.session.handle.close.cancel();
        }
    }

    /// Queues a reply for this socket.
    fn send(&self, frame: ServerFrame) {
        // A full queue means the client is not reading: close it like any slow consumer
        // (it reconnects and resyncs) rather than silently dropping a reply.
        self.session
            .handle
            .offer(Outbound::Text(Utf8Bytes::from(frame.to_json())));
    }

    fn send_backend_error(&self, e: &BackendError, conversation_id: Option<i64>) {
        self.send(ServerFrame::Error(
            backend_error_frame(e).about(conversation_id),
        ));
    }

    fn send_error(&self, code: ErrorCode, message: String, conversation_id: Option<i64>) {
        self.send(ServerFrame::Error(
            frames::ErrorFrame::new(code, message).about(conversation_id),
        ));
    }

    async fn handle_text(&mut self, text: &str) {
        match parse_client_frame(text) {
            Err(e) => self.send(e.into_frame()),
            Ok(ClientFrame::Ping) => self.send(ServerFrame::Pong),
            Ok(ClientFrame::ChatMessage(m)) => self.chat_message(m).await,
            Ok(ClientFrame::TypingIndicator(t)) => {
                self.typing_indicator(t.conversation_id.0, t.is_typing)
                    .await
            }
            // Each frame (up to 500 ids) spends the user's receipt budget, shared with REST.
            Ok(ClientFrame::ReadReceipt(r)) => {
                match backend::spend(&self.ctx, Budget::Receipts, self.session.user_id) {
                    Ok(()) => {
                        self.rate_strikes = 0;
                        self.read_receipt(r).await
                    }
                    Err(e) => {
                        self.strike();
                        self.send_backend_error(&e, None)
                    }
                }
            }
            Ok(ClientFrame::JoinConversation(r)) => self.join(r.conversation_id.0).await,
            Ok(ClientFrame::LeaveConversation(r)) => {
                let id = r.conversation_id.0;
                self.session.handle.shared.joined().remove(&id);
                self.room_members.remove(&id);
                self.update_watch();
                self.send(ServerFrame::LeftConversation(frames::Left {
                    conversation_id: id,
                    reason: None,
                }));
            }
            Ok(ClientFrame::Sync(s)) => self.sync(s).await,
            Ok(ClientFrame::History(h)) => self.history(h).await,
            Ok(ClientFrame::ListConversations) => self.list_conversations().await,
            Ok(ClientFrame::SetStatus(st)) => {
                self.said_away = st.status == frames::UserStatus::Away;
                self.update_away().await;
            }
            Ok(ClientFrame::PresenceSubscribe(p)) => self.presence_subscribe(p).await,
            Ok(ClientFrame::UpdateParticipants(u)) => {
                let (id, user) = (u.conversation_id.0, self.session.user_id);
                let add = u.add.iter().map(|i| i.0).collect();
                let remove = u.remove.iter().map(|i| i.0).collect();
                let res = backend::update_participants(&self.ctx, user, id, add, remove).await;
                self.conversation_updated(res, id);
            }
            Ok(ClientFrame::SetRole(r)) => {
                let id = r.conversation_id.0;
                let res =
                    backend::set_role(&self.ctx, self.session.user_id, id, r.user_id.0, r.role)
                        .await;
                self.conversation_updated(res, id);
            }
            Ok(ClientFrame::EditMessage(e)) => {
                self.change(e.message_id.0, Change::Edit(e.text)).await
            }
            Ok(ClientFrame::DeleteMessage(r)) => self.change(r.message_id.0, Change::Delete).await,
            Ok(ClientFrame::AddReaction(r)) => {
                self.change(r.message_id.0, Change::React(r.emoji)).await
            }
            Ok(ClientFrame::RemoveReaction(r)) => {
                self.change(r.message_id.0, Change::Unreact(r.emoji)).await
            }
            Ok(ClientFrame::PinMessage(r)) => self.change(r.message_id.0, Change::Pin).await,
            Ok(ClientFrame::UnpinMessage(r)) => self.change(r.message_id.0, Change::Unpin).await,
            Ok(ClientFrame::Thread(t)) => self.thread(t).await,
            Ok(ClientFrame::ListPins(r)) => {
                let conversation_id = r.conversation_id.0;
                match backend::pins(&self.ctx, self.session.user_id, conversation_id).await {
                    Ok(m) => self.send(ServerFrame::Pins(frames::Pins {
                        conversation_id,
                        messages: views::messages(&m),
                    })),
                    Err(e) => self.send_backend_error(&e, Some(conversation_id)),
                }
            }
            Ok(ClientFrame::MessageReads(r)) => {
                match backend::message_reads(&self.ctx, self.session.user_id, r.message_id.0).await
                {
                    Ok(reads) => self.send(ServerFrame::MessageReads(views::message_reads(reads))),
                    Err(e) => self.send_message_error(&e, r.message_id.0),
                }
            }
            Ok(ClientFrame::LeaveGroup(r)) => {
                let id = r.conversation_id.0;
                let res = backend::leave_group(&self.ctx, self.session.user_id, id).await;
                self.conversation_updated(res, id);
            }
            Ok(ClientFrame::Authenticate(_)) => self.send_error(
                ErrorCode::InvalidField,
                "already authenticated; use refresh_token to extend".into(),
                None,
            ),
            Ok(ClientFrame::RefreshToken(r)) => match self.ctx.verifier.identify(&r.token) {
                Ok(id) if id.user_id == self.session.user_id => {
                    self.session.valid_until_ms = id.valid_until_ms;
                    self.send(ServerFrame::TokenRefreshed(frames::TokenRefreshed {
                        valid_until: proto::time::rfc3339_ms(id.valid_until_ms),
                    }));
                }
                Ok(_) => self.send_error(
                    ErrorCode::Forbidden,
                    "the new token is for another user".into(),
                    None,
                ),
                Err(e) => self.send_error(ErrorCode::Unauthorized, e.to_string(), None),
            },
        }
    }

    /// Answers a membership or role change: the conversation after it, or the refusal
    /// (naming the conversation).
    fn conversation_updated(
        &self,
        res: Result<proto::pb::Conversation, BackendError>,
        conversation_id: i64,
    ) {
        match res {
            Ok(c) => self.send(ServerFrame::ConversationUpdated(
                frames::ConversationUpdated {
                    conversation: views::conversation(c),
                },
            )),
            Err(e) => self.send_backend_error(&e, Some(conversation_id)),
        }
    }

    /// Publishes the socket's away state when it changes (said away, or idle).
    async fn update_away(&self) {
        let away = self.said_away || self.idle;
        let was = self
            .session
            .handle
            .shared
            .away
            .swap(away, std::sync::atomic::Ordering::Relaxed);
        if was != away {
            session::publish_status(
                &self.ctx,
                self.session.user_id,
                &self.session.connection_id,
                away,
            )
            .await;
        }
    }

    async fn presence_subscribe(&mut self, p: frames::PresenceSubscribe) {
        let ids: Vec<i64> = p.user_ids.iter().map(|i| i.0).collect();
        let total = self
            .explicit_watch
            .iter()
            .chain(&ids)
            .collect::<HashSet<_>>()
            .len();
        if total > MAX_WATCHED_USERS {
            return self.send_error(
                ErrorCode::InvalidField,
                format!("a socket may watch at most {MAX_WATCHED_USERS} users"),
                None,
            );
        }
        // Only users this socket's user may see are watched; the others read as offline
        // (once, below) and never change.
        match backend::visible_to(&self.ctx, self.session.user_id, &ids).await {
            Ok(visible) => self
                .explicit_watch
                .extend(ids.iter().copied().filter(|u| visible.contains(u))),
            Err(e) => return self.send_backend_error(&e, None),
        }
        self.update_watch();
        self.send_current_presence(&ids).await;
    }

    /// Recomputes the watched set (explicit ∪ joined rooms' members, minus oneself) and
    /// tells the hub the difference.
    fn update_watch(&mut self) {
        let mut now: HashSet<i64> = self.explicit_watch.clone();
        for members in self.room_members.values() {
            now.extend(members.iter().copied());
        }
        now.remove(&self.session.user_id);
        let added: Vec<i64> = now.difference(&self.watched).copied().collect();
        let removed: Vec<i64> = self.watched.difference(&now).copied().collect();
        self.ctx.hub.watch(&self.session.handle, &added);
        self.ctx.hub.unwatch(&self.session.connection_id, &removed);
        self.watched = now;
    }

    /// Sends the current presence of `users` (asked of presence-service). Without a
    /// presence-service the socket simply gets changes as they happen.
    async fn send_current_presence(&self, users: &[i64]) {
        let users: Vec<i64> = users
            .iter()
            .copied()
            .filter(|u| *u != self.session.user_id)
            .collect();
        if users.is_empty() {
            return;
        }
        match backend::presence(&self.ctx, self.session.user_id, users).await {
            Ok(users) => {
                for seen in users {
                    let u = seen.user;
                    if seen.visible {
                        self.ctx.hub.note_presence(u.user_id, &u.status);
                    }
                    self.send(ServerFrame::Presence(views::presence(
                        u.user_id,
                        &u.status,
                        u.last_seen_ms,
                    )));
                }
            }
            Err(e) => tracing::debug!(error = %e.message(), "presence query failed"),
        }
    }

    async fn chat_message(&mut self, m: ChatMessage) {
        let reference = m.client_msg_id.as_ref().map(|c| c.0.clone());
        let send = backend::Send {
            conversation_id: m.conversation_id.map(|c| c.0),
            receiver_id: m.receiver_id.map(|r| r.0),
            text: m.text,
            client_msg_id: reference.clone(),
            origin_connection_id: self.session.connection_id.to_string(),
            reply_to: m.reply_to.map(|r| r.0),
            mentions: m.mentions.iter().map(|u| u.0).collect(),
            attachments: m.attachments.iter().map(|a| a.0).collect(),
        };
        match backend::send(&self.ctx, self.session.user_id, send).await {
            Ok((msg, duplicate)) => {
                self.rate_strikes = 0;
                self.send(ServerFrame::MessageSent(MessageSent {
                    message_id: msg.id,
                    conversation_id: msg.conversation_id,
                    seq: msg.seq,
                    client_msg_id: reference,
                    created_at: proto::time::rfc3339_ms(msg.created_at_ms),
                    duplicate,
                }))
            }
            Err(e) => {
                if matches!(e, BackendError::Limited(..)) {
                    self.strike();
                } else {
                    self.rate_strikes = 0;
                }
                let mut f = backend_error_frame(&e);
                f.reference = reference;
                self.send(ServerFrame::Error(f))
            }
        }
    }

    /// Forwards an indicator unless it repeats the last forwarded state within
    /// [`TYPING_INTERVAL`] (the spec's client sends one per keystroke): repeats are
    /// coalesced silently; a change of state always goes through.
    async fn typing_indicator(&mut self, conversation_id: i64, is_typing: bool) {
        let now = Instant::now();
        if let Some((at, state)) = self.typing.get(&conversation_id) {
            if *state == is_typing && now.duration_since(*at) < TYPING_INTERVAL {
                return;
            }
        }
        // Only indicators that would go out spend the budget: the spec's client sends one
        // per keystroke, and those repeats were coalesced above.
        let origin = self.session.connection_id.to_string();
        match backend::typing(
            &self.ctx,
            self.session.user_id,
            conversation_id,
            is_typing,
            origin,
        )
        .await
        {
            Ok(()) => {
                self.rate_strikes = 0;
                self.typing.insert(conversation_id, (now, is_typing));
            }
            // Refused, or it may or may not have gone out: forget the state so the next
            // indicator, whatever it says, is forwarded.
            Err(e) => {
                if matches!(e, BackendError::Limited(..)) {
                    self.strike();
                }
                self.typing.remove(&conversation_id);
                self.send_backend_error(&e, Some(conversation_id))
            }
        }
        // Forget stopped entries so the map stays as small as the set of live typists.
        if self.typing.len() > 64 {
            // Keep live typists; an old "typing" left without a stop ages out after 30 s.
            self.typing.retain(|_, (at, state)| {
                now.duration_since(*at)
                    < if *state {
                        Duration::from_secs(30)
                    } else {
                        TYPING_INTERVAL
                    }
            });
        }
    }

    /// On disconnect: whoever saw this socket typing hears it stopped.
    /// After the read loop: leave the routing tables, report the last reads and typing
    /// stops, let the writer say goodbye, then drain the client's input.
    async fn finish(mut self, writer: tokio::task::JoinHandle<()>, mut stream: Stream) {
        self.session.close().await;
        // Reads the client reported just before leaving still count.
        self.flush_receipts().await;
        let watched: Vec<i64> = self.watched.iter().copied().collect();
        self.ctx.hub.unwatch(&self.session.connection_id, &watched);
        self.stop_typing().await;
        let _ = writer.await;
        // Read (and drop) whatever the client still sends until its close frame or EOF,
        // for a moment: closing a socket with unread input makes the kernel send a reset,
        // and a reset makes the client's kernel discard what it had not read yet, our close
        // frame (and its code: 1008, 1009, …) included.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
    }

    async fn stop_typing(&mut self) {
        let typing: Vec<i64> = self
            .typing
            .iter()
            .filter(|(_, (_, state))| *state)
            .map(|(c, _)| *c)
            .collect();
        for conversation_id in typing {
            let origin = self.session.connection_id.to_string();
            let _ = backend::typing_stopped_on_close(
                &self.ctx,
                self.session.user_id,
                conversation_id,
                origin,
            )
            .await;
        }
    }

    /// Queues the ids; they are written together after [`RECEIPT_BATCH_WINDOW`] or once
    /// [`MAX_RECEIPT_IDS`] are waiting.
    async fn read_receipt(&mut self, r: frames::ReadReceipt) {
        if let Err(e) = backend::check_receipt_ids(r.message_ids.len()) {
            return self.send_backend_error(&e, None);
        }
        self.receipts.extend(r.message_ids.iter().map(|i| i.0));
        if self.receipts.len() >= MAX_RECEIPT_IDS {
            self.flush_receipts().await;
        } else if self.receipts_due.is_none() {
            self.receipts_due = Some(tokio::time::Instant::now() + RECEIPT_BATCH_WINDOW);
        }
    }

    async fn flush_receipts(&mut self) {
        self.receipts_due = None;
        if self.receipts.is_empty() {
            return;
        }
        let mut ids = std::mem::take(&mut self.receipts);
        ids.sort_unstable();
        ids.dedup();
        for chunk in ids.chunks(MAX_RECEIPT_IDS) {
            self.mark_read(chunk.to_vec()).await;
        }
    }

    async fn mark_read(&self, message_ids: Vec<i64>) {
        match backend::mark_read(&self.ctx, self.session.user_id, message_ids).await {
            Ok(resp) if !resp.rejected_ids.is_empty() => self.send(ServerFrame::Error(
                frames::ErrorFrame::new(
                    ErrorCode::MessageNotFound,
                    "some message ids do not exist or are not yours to read; the rest were marked read",
                )
                .rejecting(resp.rejected_ids),
            )),
            Ok(_) => {}
            Err(e) => self.send_backend_error(&e, None),
        }
    }

    async fn join(&mut self, conversation_id: i64) {
        if self.room_members.len() >= MAX_JOINED_ROOMS
            && !self.room_members.contains_key(&conversation_id)
        {
            return self.send_error(
                ErrorCode::InvalidField,
                format!("a socket may join at most {MAX_JOINED_ROOMS} rooms"),
                Some(conversation_id),
            );
        }
        match backend::conversation(&self.ctx, self.session.user_id, conversation_id).await {
            Ok(c) => {
                self.session.handle.shared.joined().insert(conversation_id);
                self.room_members
                    .insert(conversation_id, c.participant_ids.clone());
                self.update_watch();
                let members = c.participant_ids.clone();
                self.send(ServerFrame::JoinedConversation(frames::Joined {
                    conversation_id,
                    participant_ids: c.participant_ids,
                }));
                // Members' current statuses follow the acknowledgement.
                self.send_current_presence(&members).await;
            }
            Err(e) => self.send_backend_error(&e, Some(conversation_id)),
        }
    }

    /// The resume channel, opened on first use; `None` when the writer is gone.
    fn sync_channel(&mut self) -> Option<mpsc::Sender<SyncFrame>> {
        if self.sync_tx.is_none() {
            let (tx, rx) = mpsc::channel(64);
            if !self.session.handle.offer(Outbound::SyncStream(rx)) {
                return None;
            }
            self.sync_tx = Some(tx);
        }
        self.sync_tx.clone()
    }

    /// Streams the resume on its channel (see `resume`); a request it refuses outright is
    /// answered on the live queue.
    async fn sync(&mut self, s: frames::Sync) {
        if let Err(e) = resume::check(&s) {
            return self.send_backend_error(&e, None);
        }
        if let Some(tx) = self.sync_channel() {
            self.ctx.metrics.resumed();
            resume::stream(&self.ctx, self.session.user_id, s, &tx).await;
        }
    }

    /// A change to a message. Its answer is the change event itself, which reaches every
    /// socket of every member (this one too) through the conversation's delivery, in order
    /// with its messages; an unchanged state (a repeated reaction or pin) is answered here
    /// only, since nothing was published.
    async fn change(&mut self, message_id: i64, change: Change) {
        match backend::change(&self.ctx, self.session.user_id, message_id, change).await {
            Ok(c) => {
                self.rate_strikes = 0;
                if c.id == 0 {
                    if let Some(f) = ServerFrame::from_change(&c) {
                        self.send(f);
                    }
                }
            }
            Err(e) => {
                if matches!(e, BackendError::Limited(..)) {
                    self.strike();
                }
                self.send_message_error(&e, message_id);
            }
        }
    }

    /// An error about one message (its id in `message_ids`, so the client can match it).
    fn send_message_error(&self, e: &BackendError, message_id: i64) {
        self.send(ServerFrame::Error(
            backend_error_frame(e).rejecting(vec![message_id]),
        ));
    }

    async fn thread(&self, t: frames::Thread) {
        let message_id = t.message_id.0;
        match backend::thread(
            &self.ctx,
            self.session.user_id,
            message_id,
            t.after_seq.unwrap_or(0),
            t.limit.unwrap_or(0),
        )
        .await
        {
            Ok(p) => self.send(ServerFrame::Thread(views::thread(p))),
            Err(e) => self.send_message_error(&e, message_id),
        }
    }

    async fn history(&self, h: frames::History) {
        let conversation_id = h.conversation_id.0;
        let window = match h.before_seq {
            Some(b) => Window::Before(b),
            None => Window::Newest,
        };
        let limit = h.limit.unwrap_or(0);
        match backend::messages(
            &self.ctx,
            self.session.user_id,
            conversation_id,
            window,
            limit,
        )
        .await
        {
            Ok(p) => self.send(ServerFrame::History(frames::HistoryPage {
                conversation_id,
                messages: views::messages(&p.messages),
                has_more: p.has_more,
            })),
            Err(e) => self.send_backend_error(&e, Some(conversation_id)),
        }
    }

    async fn list_conversations(&self) {
        match backend::conversations(&self.ctx, self.session.user_id, LIST_PAGE, String::new())
            .await
        {
            Ok(r) => self.send(ServerFrame::Conversations(frames::Conversations {
                conversations: views::conversation_list(r.conversations),
            })),
            Err(e) => self.send_backend_error(&e, None),
        }
    }
}

/// The `error` frame of a failed operation (with `retry_after_ms` when over a budget).
fn backend_error_frame(e: &BackendError) -> frames::ErrorFrame {
    let retry_ms = e
        .retry_after()
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    frames::ErrorFrame::new(e.code(), e.message()).retry_after(retry_ms)
}
