//! One WebSocket connection: a reader that handles client frames in order, and a writer
//! that drains the socket's bounded queues.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use proto::frames::{
    self, parse_client_frame, ChatMessage, ClientFrame, ConnectionEstablished, MessageSent,
    NewMessage, ServerFrame,
};
use proto::{pb, subjects, ErrorCode};
use tokio::sync::mpsc;
use tokio::time::sleep_until;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::hub::{ConnHandle, ConnShared, Outbound, RecentIds, SyncFrame};
use crate::Ctx;

/// Typing indicators for one conversation are forwarded at most this often, unless the
/// state flips (a stop is never held back).
pub const TYPING_INTERVAL: Duration = Duration::from_secs(1);
/// Most conversations one `sync` may name.
pub const MAX_SYNC_CONVERSATIONS: usize = 1000;
/// Most message ids one `read_receipt` may carry.
pub const MAX_RECEIPT_IDS: usize = 500;
/// How long read receipts are collected before one write (see `Conn::read_receipt`).
pub const RECEIPT_BATCH_WINDOW: Duration = Duration::from_millis(100);
/// Rate-limited chat messages in a row after which the socket is closed with 1008.
pub const RATE_STRIKES_BEFORE_CLOSE: u32 = 20;
/// Most users one socket may watch through `presence_subscribe`.
pub const MAX_WATCHED_USERS: usize = 500;
/// Most rooms one socket may be joined to.
pub const MAX_JOINED_ROOMS: usize = 100;
/// Page size used while streaming a resume.
const SYNC_PAGE: u32 = 200;
/// Live messages held back during a resume before the client counts as too slow.
const MAX_HELD_BACK: usize = 10_000;

/// The tungstenite configuration for client sockets. The default read buffer is 128 KiB
/// allocated up front (~138 KB per idle socket). 1 KiB holds a typical chat frame (a larger
/// one is read in several calls; the buffer grows to the frame's length), and tungstenite
/// zero-fills the buffer's free part before every read, so a small one is also cheaper to
/// read into (4 KiB was a visible `memset` in the gateway's profile).
/// Message and frame limits replace tungstenite's 64 MiB / 16 MiB defaults.
pub fn ws_config(max_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
}

/// Runs an upgraded, authenticated socket until either side closes it.
pub async fn serve(ctx: Arc<Ctx>, upgraded: Upgraded, identity: Option<crate::auth::Identity>) {
    let io = TokioIo::new(upgraded);
    let mut ws = WebSocketStream::from_raw_socket(
        io,
        Role::Server,
        Some(ws_config(ctx.settings.max_frame_bytes)),
    )
    .await;
    // Opened without a token: the first frame must be `authenticate`, within the timeout.
    let identity = match identity {
        Some(i) => i,
        None => match Box::pin(first_message_auth(&ctx, &mut ws)).await {
            Ok(i) => i,
            Err(reason) => {
                ctx.metrics
                    .handshake_failed(crate::metrics::HandshakeFailure::Unauthorized);
                tracing::info!(%reason, "first-message authentication failed");
                let frame = CloseFrame {
                    code: CloseCode::from(4001),
                    reason: Utf8Bytes::from(reason),
                };
                let _ = Box::pin(tokio::time::timeout(Duration::from_secs(2), async {
                    let _ = ws.send(Message::Close(Some(frame))).await;
                    let _ = ws.close(None).await;
                }))
                .await;
                return;
            }
        },
    };
    let user_id = identity.user_id;
    let n = ctx
        .next_conn
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let connection_id: Arc<str> = Arc::from(format!("{}/{n}", ctx.settings.gateway_id));
    let (tx, rx) = mpsc::channel(ctx.settings.outbound_queue);
    let close = ctx.shutdown.child_token();
    let shared = Arc::new(ConnShared::with_byte_limit(
        ctx.settings.outbound_queue_bytes,
    ));

    // The first frame, queued before the socket is visible to deliveries.
    let hello = ServerFrame::ConnectionEstablished(ConnectionEstablished {
        user_id,
        connection_id: connection_id.to_string(),
        server_time: proto::time::rfc3339_ms(proto::time::now_ms()),
    });
    let handle = ConnHandle {
        connection_id: connection_id.clone(),
        tx: tx.clone(),
        close: close.clone(),
        shared: shared.clone(),
        metrics: ctx.metrics.clone(),
    };
    handle.offer(Outbound::Text(Utf8Bytes::from(hello.to_json())));
    Box::pin(ctx.register(user_id, handle.clone())).await;
    ctx.metrics.socket_opened();
    tracing::debug!(%connection_id, user_id, "socket open");

    let (sink, mut stream) = ws.split();
    shared
        .last_pong_ms
        .store(proto::time::now_ms(), std::sync::atomic::Ordering::Relaxed);
    let writer = tokio::spawn(write_loop(
        sink,
        rx,
        close.clone(),
        shared.clone(),
        ctx.settings.ping_interval,
    ));
    let mut conn = Conn {
        ctx: ctx.clone(),
        user_id,
        connection_id: connection_id.clone(),
        sync_tx: None,
        shared,
        typing: HashMap::new(),
        receipts: Vec::new(),
        receipts_due: None,
        handle,
        explicit_watch: HashSet::new(),
        room_members: HashMap::new(),
        watched: HashSet::new(),
        said_away: false,
        rate_strikes: 0,
        typing_bucket: crate::limits::Bucket::full(TYPING_RATE.0, TYPING_RATE.1),
        receipt_bucket: crate::limits::Bucket::full(RECEIPT_RATE.0, RECEIPT_RATE.1),
        valid_until_ms: identity.valid_until_ms,
        idle: false,
        last_activity: tokio::time::Instant::now(),
    };
    // Every await below that runs a handler is boxed: a task's allocation is its future's
    // largest state, and unboxed the frame handlers (NATS requests, JSON) made every
    // idle socket's task ~3.5 KB; boxed, the cost is paid per frame, briefly.
    loop {
        let flush_at = conn.receipts_due;
        let idle_at = conn.last_activity + ctx.settings.idle_away;
        let expires_in = u64::try_from(conn.valid_until_ms - proto::time::now_ms()).unwrap_or(0);
        let expires_at = tokio::time::Instant::now() + Duration::from_millis(expires_in);
        let next = tokio::select! {
            () = sleep_until(expires_at) => {
                // The token ran out and was not refreshed: 4001 tells the client to get a
                // new one (the spec's `getToken()`) and reconnect.
                conn.shared.close_code.store(4001, std::sync::atomic::Ordering::Relaxed);
                break;
            }
            m = stream.next() => m,
            () = close.cancelled() => break,
            () = sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)), if flush_at.is_some() => {
                Box::pin(conn.flush_receipts()).await;
                continue;
            }
            () = sleep_until(idle_at), if !conn.idle => {
                conn.idle = true;
                Box::pin(conn.update_away()).await;
                continue;
            }
        };
        if conn.idle {
            conn.idle = false;
            Box::pin(conn.update_away()).await;
        }
        conn.last_activity = tokio::time::Instant::now();
        match next {
            Some(Ok(Message::Text(text))) => Box::pin(conn.handle_text(&text)).await,
            Some(Ok(Message::Binary(_))) => {
                conn.send(ServerFrame::error(
                    ErrorCode::InvalidJson,
                    "binary frames are not supported; send JSON text frames",
                    None,
                ));
            }
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(Message::Pong(_))) => conn
                .shared
                .last_pong_ms
                .store(proto::time::now_ms(), std::sync::atomic::Ordering::Relaxed),
            // Pings are answered by tungstenite itself; raw frames need nothing.
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(%connection_id, error = %e, "socket read error");
                // Tell a misbehaving peer why (RFC 6455 §7.4.1), when it can still hear us.
                use tokio_tungstenite::tungstenite::Error as WsError;
                let code = match e {
                    WsError::Protocol(_) => Some(CloseCode::Protocol),
                    WsError::Utf8(_) => Some(CloseCode::Invalid),
                    WsError::Capacity(_) => Some(CloseCode::Size),
                    _ => None,
                };
                if let Some(code) = code {
                    conn.shared
                        .close_code
                        .store(u16::from(code), std::sync::atomic::Ordering::Relaxed);
                }
                break;
            }
        }
    }
    close.cancel();
    // Boxed like the handlers: the closing steps' state stays out of the socket's task.
    Box::pin(conn.finish(writer, stream)).await;
    tracing::debug!(%connection_id, user_id, "socket closed");
}

/// Waits for `{"type":"authenticate","token":…}` as the socket's first frame, then checks
/// the token and the per-user connection cap. The error is the close reason (code 4001).
async fn first_message_auth(
    ctx: &Ctx,
    ws: &mut WebSocketStream<TokioIo<Upgraded>>,
) -> Result<crate::auth::Identity, String> {
    let first = tokio::time::timeout(ctx.settings.auth_timeout, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return Some(t),
                // Control frames may come first; anything else is not an authentication.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => return None,
            }
        }
    })
    .await
    .map_err(|_| {
        "authentication timeout: send {\"type\":\"authenticate\",\"token\":…} first".to_owned()
    })?
    .ok_or_else(|| "expected an authenticate frame".to_owned())?;
    let token = match parse_client_frame(&first) {
        Ok(ClientFrame::Authenticate(a)) => a.token,
        _ => return Err("the first frame must be authenticate (or pass ?token=)".into()),
    };
    let identity = ctx.verifier.identify(&token).map_err(|e| e.to_string())?;
    if crate::http::over_connection_cap(ctx, identity.user_id).await {
        return Err(format!(
            "at most {} simultaneous connections per user",
            ctx.settings.max_connections_per_user
        ));
    }
    Ok(identity)
}

type Sink = futures_util::stream::SplitSink<WebSocketStream<TokioIo<Upgraded>>, Message>;
type Stream = futures_util::stream::SplitStream<WebSocketStream<TokioIo<Upgraded>>>;

/// What the writer remembers to keep a resume and live traffic in order and free of
/// repeats.
struct WriterState {
    /// Message ids recently written to this socket (live repeats, outbox republishes).
    sent: RecentIds,
    /// Per conversation, the highest seq a resume has covered: every message at or below
    /// it was in the store when the resume read it, so it was streamed. Never evicted
    /// (bounded by the conversations one `sync` may name).
    synced_upto: HashMap<i64, i64>,
    /// A resume is streaming: live messages wait in `held`.
    syncing: bool,
    held: Vec<MessageFrame>,
    /// The socket's "client too slow" signal (abandons a blocked write).
    too_slow: CancellationToken,
}

/// A `new_message` frame with what de-duplication needs.
struct MessageFrame {
    message_id: i64,
    conversation_id: i64,
    seq: i64,
    text: Utf8Bytes,
}

/// How long one frame may take to reach the client's socket before the client counts as
/// gone (a peer that stops reading must not pin a task and its buffers forever).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client closed for being too slow has to read up to its close frame.
const SLOW_CLOSE_WAIT: Duration = Duration::from_secs(10);

async fn send_frame(sink: &mut Sink, m: Message) -> Result<(), ()> {
    match tokio::time::timeout(WRITE_TIMEOUT, sink.send(m)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// [`send_frame`], abandoned as soon as the client is found too slow (a write blocked on
/// its full socket would otherwise hold the close for up to [`WRITE_TIMEOUT`]). What was
/// handed to the sink stays in its buffer, ahead of the close frame.
async fn send_unless_too_slow(
    sink: &mut Sink,
    m: Message,
    too_slow: &CancellationToken,
) -> Result<(), ()> {
    tokio::select! {
        r = send_frame(sink, m) => r,
        () = too_slow.cancelled() => Ok(()),
    }
}

impl WriterState {
    async fn message(
        &mut self,
        sink: &mut Sink,
        m: MessageFrame,
        from_sync: bool,
    ) -> Result<(), ()> {
        if from_sync {
            let e = self.synced_upto.entry(m.conversation_id).or_insert(0);
            *e = (*e).max(m.seq);
        } else if self
            .synced_upto
            .get(&m.conversation_id)
            .is_some_and(|upto| m.seq <= *upto)
        {
            return Ok(());
        }
        if self.sent.insert(m.message_id) {
            send_unless_too_slow(sink, Message::Text(m.text), &self.too_slow).await?;
        }
        Ok(())
    }
}

/// Cancels the socket's token when the writer ends for any reason, so the reader stops
/// too and the socket leaves the hub instead of lingering half-alive.
struct CancelOnDrop(CancellationToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The next resume frame; pending until the socket's first `sync` opened the channel.
async fn next_sync(rx: &mut Option<mpsc::Receiver<SyncFrame>>) -> Option<SyncFrame> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn write_loop(
    mut sink: Sink,
    mut rx: mpsc::Receiver<Outbound>,
    close: CancellationToken,
    shared: Arc<ConnShared>,
    ping_interval: Duration,
) {
    let _guard = CancelOnDrop(close.clone());
    let mut ping = tokio::time::interval(ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.reset(); // first ping one interval from now, not before connection_established
    let missed_after = i64::try_from(ping_interval.as_millis() * 2).unwrap_or(i64::MAX);
    let mut sync_rx: Option<mpsc::Receiver<SyncFrame>> = None;
    let mut st = WriterState {
        sent: RecentIds::with_capacity(1024),
        synced_upto: HashMap::new(),
        syncing: false,
        held: Vec::new(),
        too_slow: shared.too_slow.clone(),
    };
    loop {
        let res: Result<(), ()> = tokio::select! {
            biased;
            () = close.cancelled() => break,
            _ = ping.tick() => {
                let last = shared.last_pong_ms.load(std::sync::atomic::Ordering::Relaxed);
                if proto::time::now_ms() - last > missed_after {
                    // Two pings unanswered: the peer is gone or wedged.
                    shared.close_code.store(u16::from(CloseCode::Away), std::sync::atomic::Ordering::Relaxed);
                    break;
                }
                send_unless_too_slow(&mut sink, Message::Ping(Default::default()), &shared.too_slow).await
            }
            Some(f) = next_sync(&mut sync_rx) => match f {
                SyncFrame::Begin => {
                    st.syncing = true;
                    Ok(())
                }
                SyncFrame::Message { message_id, conversation_id, seq, text } => {
                    st.message(&mut sink, MessageFrame { message_id, conversation_id, seq, text }, true).await
                }
                SyncFrame::Text(t) => send_unless_too_slow(&mut sink, Message::Text(t), &shared.too_slow).await,
                SyncFrame::End(t) => {
                    let mut r = send_unless_too_slow(&mut sink, Message::Text(t), &shared.too_slow).await;
                    st.syncing = false;
                    for m in std::mem::take(&mut st.held) {
                        if r.is_ok() {
                            r = st.message(&mut sink, m, false).await;
                        }
                    }
                    r
                }
            },
            m = rx.recv() => match m {
                Some(o) if shared.too_slow.is_cancelled() => {
                    shared.dequeued(o.byte_len());
                    Ok(())
                }
                Some(Outbound::SyncStream(r)) => {
                    sync_rx = Some(r);
                    Ok(())
                }
                Some(Outbound::Text(t)) => {
                    shared.dequeued(t.len());
                    send_unless_too_slow(&mut sink, Message::Text(t), &shared.too_slow).await
                }
                Some(Outbound::Message(live)) => {
                    shared.dequeued(live.text.len());
                    let m = MessageFrame {
                        message_id: live.message_id,
                        conversation_id: live.conversation_id,
                        seq: live.seq,
                        text: live.text.clone(),
                    };
                    if st.syncing {
                        st.held.push(m);
                        if st.held.len() > MAX_HELD_BACK {
                            close.cancel();
                        }
                        Ok(())
                    } else {
                        st.message(&mut sink, m, false).await
                    }
                }
                None => break,
            },
        };
        if res.is_err() {
            return;
        }
    }
    // Closing: flush what is queued (bounded), then say goodbye. 1012 tells clients the
    // server is restarting and to reconnect; 1013 that they were too slow.
    let chosen = shared.close_code.load(std::sync::atomic::Ordering::Relaxed);
    let code = if chosen != 0 {
        CloseCode::from(chosen)
    } else if rx.len() >= rx.max_capacity() || st.held.len() > MAX_HELD_BACK {
        CloseCode::Again
    } else {
        CloseCode::Restart
    };
    // Boxed: the closing waits would otherwise enlarge every open socket's writer task.
    Box::pin(say_goodbye(sink, rx, code)).await;
}

/// The writer's last words: the close frame, after what is queued unless `code` says the
/// client was too slow for that.
async fn say_goodbye(mut sink: Sink, mut rx: mpsc::Receiver<Outbound>, code: CloseCode) {
    if code == CloseCode::Again {
        // Too slow: what is queued would only keep it behind. Drop it and say why; give
        // the client a while to read up to the close frame.
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static("too slow: outbound queue full; reconnect and sync"),
        };
        let _ = tokio::time::timeout(SLOW_CLOSE_WAIT, async {
            let _ = sink.send(Message::Close(Some(frame))).await;
            let _ = sink.close().await;
        })
        .await;
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(f) = rx.try_recv() {
            let t = match f {
                Outbound::Text(t) => t,
                Outbound::Message(m) => m.text.clone(),
                Outbound::SyncStream(_) => continue,
            };
            if sink.feed(Message::Text(t)).await.is_err() {
                return;
            }
        }
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static("closing"),
        };
        let _ = sink.send(Message::Close(Some(frame))).await;
        let _ = sink.close().await;
    })
    .await;
    // A peer that stopped answering pings may still be reading slowly: keep the socket
    // open a little, so its late writes (queued pongs) do not meet a reset before it reads
    // the close frame and learns why (1001).
    if code == CloseCode::Away {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

struct Conn {
    ctx: Arc<Ctx>,
    user_id: i64,
    connection_id: Arc<str>,
    /// Resume frames to the writer; opened by the first `sync` ([`Outbound::SyncStream`]).
    sync_tx: Option<mpsc::Sender<SyncFrame>>,
    shared: Arc<ConnShared>,
    /// Per conversation: when the last indicator was forwarded, and its state.
    typing: HashMap<i64, (Instant, bool)>,
    /// Message ids from `read_receipt` frames not yet sent to message-service. The spec's
    /// client sends one receipt per displayed message; a burst becomes one write.
    receipts: Vec<i64>,
    /// When `receipts` must be flushed.
    receipts_due: Option<tokio::time::Instant>,
    /// This socket as the hub knows it (for presence watches).
    handle: ConnHandle,
    /// Users watched through `presence_subscribe`.
    explicit_watch: HashSet<i64>,
    /// Members of joined rooms, watched while joined.
    room_members: HashMap<i64, Vec<i64>>,
    /// What the hub currently sends this socket presence for.
    watched: HashSet<i64>,
    /// The client said `away`.
    said_away: bool,
    /// Consecutive rate-limited chat messages.
    rate_strikes: u32,
    /// Typing indicators this socket may still send.
    typing_bucket: crate::limits::Bucket,
    /// Read-receipt frames this socket may still send.
    receipt_bucket: crate::limits::Bucket,
    /// When the socket's token stops being valid (unix ms).
    valid_until_ms: i64,
    /// No client frame for `idle_away`.
    idle: bool,
    last_activity: tokio::time::Instant,
}

/// Typing indicators a socket may send: 2 per second, bursts of 6 (state changes; repeats
/// within a second are coalesced before this counts).
const TYPING_RATE: (f64, f64) = (6.0, 2.0);
/// Read-receipt frames a socket may send: 10 per second, bursts of 30 (each frame carries up
/// to 500 ids, so this bounds ids too).
const RECEIPT_RATE: (f64, f64) = (30.0, 10.0);

impl Conn {
    /// Counts a refusal for rate; sustained abuse (many refusals in a row) closes the socket
    /// with 1008 (policy violation).
    fn strike(&mut self) {
        self.ctx.metrics.rate_limited();
        self.rate_strikes += 1;
        if self.rate_strikes >= RATE_STRIKES_BEFORE_CLOSE {
            self.shared.close_code.store(
                u16::from(CloseCode::Policy),
                std::sync::atomic::Ordering::Relaxed,
            );
            self.handle.close.cancel();
        }
    }

    /// Queues a reply for this socket.
    fn send(&self, frame: ServerFrame) {
        // A full queue means the client is not reading: close it like any slow consumer
        // (it reconnects and resyncs) rather than silently dropping a reply.
        self.handle
            .offer(Outbound::Text(Utf8Bytes::from(frame.to_json())));
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
            Ok(ClientFrame::ReadReceipt(r)) => {
                if self.receipt_bucket.take(Instant::now()) {
                    self.rate_strikes = 0;
                    self.read_receipt(r).await
                } else {
                    self.strike();
                    self.send_error(
                        ErrorCode::RateLimited,
                        "read receipts: at most 10 frames per second; batch the ids".into(),
                        None,
                    )
                }
            }
            Ok(ClientFrame::JoinConversation(r)) => self.join(r.conversation_id.0).await,
            Ok(ClientFrame::LeaveConversation(r)) => {
                let id = r.conversation_id.0;
                self.shared
                    .joined
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                self.room_members.remove(&id);
                self.update_watch();
                self.send(ServerFrame::LeftConversation(frames::Left {
                    conversation_id: id,
                    reason: None,
                }));
            }
            Ok(ClientFrame::Sync(s)) => {
                if let Some(tx) = self.sync_channel() {
                    self.sync(s, &tx).await;
                }
            }
            Ok(ClientFrame::History(h)) => self.history(h).await,
            Ok(ClientFrame::ListConversations) => self.list_conversations().await,
            Ok(ClientFrame::SetStatus(st)) => {
                self.said_away = st.status == frames::UserStatus::Away;
                self.update_away().await;
            }
            Ok(ClientFrame::PresenceSubscribe(p)) => self.presence_subscribe(p).await,
            Ok(ClientFrame::Authenticate(_)) => self.send_error(
                ErrorCode::InvalidField,
                "already authenticated; use refresh_token to extend".into(),
                None,
            ),
            Ok(ClientFrame::RefreshToken(r)) => match self.ctx.verifier.identify(&r.token) {
                Ok(id) if id.user_id == self.user_id => {
                    self.valid_until_ms = id.valid_until_ms;
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

    /// Publishes the socket's away state when it changes (said away, or idle).
    async fn update_away(&self) {
        let away = self.said_away || self.idle;
        let was = self
            .shared
            .away
            .swap(away, std::sync::atomic::Ordering::Relaxed);
        if was != away {
            self.ctx
                .publish_status(self.user_id, &self.connection_id, away)
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
        self.explicit_watch.extend(ids.iter().copied());
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
        now.remove(&self.user_id);
        let added: Vec<i64> = now.difference(&self.watched).copied().collect();
        let removed: Vec<i64> = self.watched.difference(&now).copied().collect();
        self.ctx.hub.watch(&self.handle, &added);
        self.ctx.hub.unwatch(&self.connection_id, &removed);
        self.watched = now;
    }

    /// Sends the current presence of `users` (asked of presence-service). Without a
    /// presence-service the socket simply gets changes as they happen.
    async fn send_current_presence(&self, users: &[i64]) {
        let users: Vec<i64> = users
            .iter()
            .copied()
            .filter(|u| *u != self.user_id)
            .collect();
        if users.is_empty() {
            return;
        }
        let req = pb::GetPresenceRequest { user_ids: users };
        match call::<_, pb::GetPresenceResponse>(&self.ctx, subjects::PRESENCE_GET, &req).await {
            Ok(r) if r.error.is_none() => {
                for u in r.users {
                    self.ctx.hub.note_presence(u.user_id, &u.status);
                    self.send(ServerFrame::Presence(crate::hub::presence_frame(
                        u.user_id,
                        &u.status,
                        u.last_seen_ms,
                    )));
                }
            }
            Ok(r) => tracing::debug!(error = ?r.error, "presence query refused"),
            Err((_, message)) => tracing::debug!(%message, "presence query failed"),
        }
    }

    async fn chat_message(&mut self, m: ChatMessage) {
        let started = Instant::now();
        let reference = m.client_msg_id.as_ref().map(|c| c.0.clone());
        if !self.ctx.allow_chat(self.user_id) {
            self.strike();
            return self.send(ServerFrame::error(
                ErrorCode::RateLimited,
                format!(
                    "more than {} messages in 10 s; retry later with the same client_msg_id",
                    self.ctx.settings.chat_rate_per_10s
                ),
                reference,
            ));
        }
        self.rate_strikes = 0;
        // Fail fast on what the gateway can judge alone; message-service checks again.
        if let Err(e) = proto::limits::validate_text(&m.text, self.ctx.settings.max_text_chars) {
            return self.send(ServerFrame::error(e.code, e.message, reference));
        }
        if m.conversation_id.is_none() && m.receiver_id.is_none() {
            return self.send(ServerFrame::error(
                ErrorCode::InvalidField,
                "conversation_id or receiver_id is required",
                reference,
            ));
        }
        if m.receiver_id.map(|r| r.0) == Some(self.user_id) {
            return self.send(ServerFrame::error(
                ErrorCode::InvalidReceiver,
                "receiver_id must not be yourself",
                reference,
            ));
        }
        let req = pb::SendMessageRequest {
            sender_id: self.user_id,
            conversation_id: m.conversation_id.map(|c| c.0),
            receiver_id: m.receiver_id.map(|r| r.0),
            text: m.text,
            client_msg_id: reference.clone().unwrap_or_default(),
            origin_connection_id: self.connection_id.to_string(),
            as_system: false,
        };
        match send_message(&self.ctx, req).await {
            Ok((msg, duplicate)) => {
                self.ctx.metrics.message_sent(started.elapsed());
                self.send(ServerFrame::MessageSent(MessageSent {
                    message_id: msg.id,
                    conversation_id: msg.conversation_id,
                    seq: msg.seq,
                    client_msg_id: reference,
                    created_at: proto::time::rfc3339_ms(msg.created_at_ms),
                    duplicate,
                }))
            }
            Err((code, message)) => self.send(ServerFrame::error(code, message, reference)),
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
        // Only indicators that would go out count: the spec's client sends one per
        // keystroke, and those repeats were coalesced above.
        if !self.typing_bucket.take(now) {
            self.strike();
            return self.send_error(
                ErrorCode::RateLimited,
                "typing indicators: at most 2 state changes per second".into(),
                Some(conversation_id),
            );
        }
        self.rate_strikes = 0;
        let req = pb::TypingRequest {
            user_id: self.user_id,
            conversation_id,
            is_typing,
            origin_connection_id: self.connection_id.to_string(),
        };
        match call::<_, pb::TypingResponse>(&self.ctx, subjects::TYPING, &req).await {
            Ok(pb::TypingResponse { error: None }) => {
                self.typing.insert(conversation_id, (now, is_typing));
            }
            Ok(pb::TypingResponse { error: Some(e) }) => {
                self.typing.remove(&conversation_id);
                self.send_error(ErrorCode::parse(&e.code), e.message, Some(conversation_id))
            }
            // It may or may not have gone out: forget the state so the next indicator,
            // whatever it says, is forwarded.
            Err((code, message)) => {
                self.typing.remove(&conversation_id);
                self.send_error(code, message, Some(conversation_id))
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
        self.ctx.unregister(self.user_id, &self.connection_id).await;
        self.ctx.metrics.socket_closed();
        // Reads the client reported just before leaving still count.
        self.flush_receipts().await;
        let watched: Vec<i64> = self.watched.iter().copied().collect();
        self.ctx.hub.unwatch(&self.connection_id, &watched);
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
            let req = pb::TypingRequest {
                user_id: self.user_id,
                conversation_id,
                is_typing: false,
                origin_connection_id: self.connection_id.to_string(),
            };
            let _ = call::<_, pb::TypingResponse>(&self.ctx, subjects::TYPING, &req).await;
        }
    }

    /// Queues the ids; they are written together after [`RECEIPT_BATCH_WINDOW`] or once
    /// [`MAX_RECEIPT_IDS`] are waiting.
    async fn read_receipt(&mut self, r: frames::ReadReceipt) {
        if r.message_ids.is_empty() || r.message_ids.len() > MAX_RECEIPT_IDS {
            return self.send_error(
                ErrorCode::InvalidField,
                format!("message_ids must hold 1 to {MAX_RECEIPT_IDS} ids"),
                None,
            );
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
        let req = pb::MarkReadRequest {
            reader_id: self.user_id,
            message_ids,
        };
        match call::<_, pb::MarkReadResponse>(&self.ctx, subjects::RECEIPTS_MARK, &req).await {
            Ok(resp) => {
                if let Some(e) = resp.error {
                    return self.send_error(ErrorCode::parse(&e.code), e.message, None);
                }
                if !resp.rejected_ids.is_empty() {
                    self.send(ServerFrame::Error(
                        frames::ErrorFrame::new(
                            ErrorCode::MessageNotFound,
                            "some message ids do not exist or are not yours to read; the rest were marked read",
                        )
                        .rejecting(resp.rejected_ids),
                    ));
                }
            }
            Err((code, message)) => self.send_error(code, message, None),
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
        let req = pb::GetConversationRequest {
            conversation_id,
            as_user_id: self.user_id,
        };
        match call::<_, pb::GetConversationResponse>(&self.ctx, subjects::CONV_GET, &req).await {
            Ok(pb::GetConversationResponse {
                result: Some(pb::get_conversation_response::Result::Conversation(c)),
            }) => {
                self.shared
                    .joined
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(conversation_id);
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
            Ok(pb::GetConversationResponse {
                result: Some(pb::get_conversation_response::Result::Error(e)),
            }) => self.send_error(ErrorCode::parse(&e.code), e.message, Some(conversation_id)),
            Ok(_) => self.send_error(
                ErrorCode::Internal,
                "empty reply".into(),
                Some(conversation_id),
            ),
            Err((code, message)) => self.send_error(code, message, Some(conversation_id)),
        }
    }

    /// Streams every message after the client's last seq, per conversation in seq order,
    /// then `sync_complete`. Live messages arriving meanwhile are held by the writer and
    /// sent afterwards, minus any the resume already carried.
    /// The resume channel, opened on first use; `None` when the writer is gone.
    fn sync_channel(&mut self) -> Option<mpsc::Sender<SyncFrame>> {
        if self.sync_tx.is_none() {
            let (tx, rx) = mpsc::channel(64);
            if !self.handle.offer(Outbound::SyncStream(rx)) {
                return None;
            }
            self.sync_tx = Some(tx);
        }
        self.sync_tx.clone()
    }

    async fn sync(&self, s: frames::Sync, sync_tx: &mpsc::Sender<SyncFrame>) {
        if s.conversations.len() > MAX_SYNC_CONVERSATIONS {
            return self.send_error(
                ErrorCode::InvalidField,
                format!("sync names at most {MAX_SYNC_CONVERSATIONS} conversations"),
                None,
            );
        }
        if let Some((c, _)) = s.conversations.iter().find(|(_, seq)| **seq < 0) {
            return self.send_error(
                ErrorCode::InvalidField,
                "last seq must not be negative".into(),
                Some(c.0),
            );
        }
        self.ctx.metrics.resumed();
        if sync_tx.send(SyncFrame::Begin).await.is_err() {
            return;
        }
        let mut done = BTreeMap::new();
        let mut truncated = Vec::new();
        for (conv, last_seq) in s.conversations {
            let mut after = last_seq;
            loop {
                let req = pb::ListMessagesRequest {
                    user_id: self.user_id,
                    conversation_id: conv.0,
                    after_seq: after,
                    before_seq: 0,
                    limit: SYNC_PAGE,
                };
                let page =
                    match call::<_, pb::ListMessagesResponse>(&self.ctx, subjects::MSG_LIST, &req)
                        .await
                    {
                        Ok(p) => p,
                        Err((code, message)) => {
                            self.sync_error(sync_tx, code, message, conv.0).await;
                            break;
                        }
                    };
                if let Some(e) = page.error {
                    self.sync_error(sync_tx, ErrorCode::parse(&e.code), e.message, conv.0)
                        .await;
                    break;
                }
                if after == last_seq && page.first_retained_seq > last_seq.saturating_add(1) {
                    truncated.push(conv.0);
                }
                for m in &page.messages {
                    after = m.seq;
                    let text =
                        Utf8Bytes::from(ServerFrame::NewMessage(NewMessage::from_pb(m)).to_json());
                    if sync_tx
                        .send(SyncFrame::Message {
                            message_id: m.id,
                            conversation_id: m.conversation_id,
                            seq: m.seq,
                            text,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if !page.has_more || page.messages.is_empty() {
                    // The highest seq actually streamed: a message committed after the page
                    // was read is live traffic, not covered by this resume.
                    done.insert(conv.0.to_string(), after);
                    break;
                }
            }
        }
        let end = ServerFrame::SyncComplete(frames::SyncComplete {
            conversations: done,
            truncated,
        });
        let _ = sync_tx
            .send(SyncFrame::End(Utf8Bytes::from(end.to_json())))
            .await;
    }

    async fn sync_error(
        &self,
        sync_tx: &mpsc::Sender<SyncFrame>,
        code: ErrorCode,
        message: String,
        conversation_id: i64,
    ) {
        let f =
            ServerFrame::Error(frames::ErrorFrame::new(code, message).about(Some(conversation_id)));
        let _ = sync_tx
            .send(SyncFrame::Text(Utf8Bytes::from(f.to_json())))
            .await;
    }

    async fn history(&self, h: frames::History) {
        let limit = h.limit.unwrap_or(50).clamp(1, 200);
        let before = match h.before_seq {
            Some(b) if b <= 0 => {
                return self.send_error(
                    ErrorCode::InvalidField,
                    "before_seq must be positive".into(),
                    Some(h.conversation_id.0),
                )
            }
            Some(b) => b,
            None => i64::MAX,
        };
        let req = pb::ListMessagesRequest {
            user_id: self.user_id,
            conversation_id: h.conversation_id.0,
            after_seq: 0,
            before_seq: before,
            limit,
        };
        match call::<_, pb::ListMessagesResponse>(&self.ctx, subjects::MSG_LIST, &req).await {
            Ok(p) if p.error.is_none() => self.send(ServerFrame::History(frames::HistoryPage {
                conversation_id: h.conversation_id.0,
                messages: p.messages.iter().map(NewMessage::from_pb).collect(),
                has_more: p.has_more,
            })),
            Ok(p) => {
                let e = p.error.unwrap_or_default();
                self.send_error(
                    ErrorCode::parse(&e.code),
                    e.message,
                    Some(h.conversation_id.0),
                )
            }
            Err((code, message)) => self.send_error(code, message, Some(h.conversation_id.0)),
        }
    }

    async fn list_conversations(&self) {
        let req = pb::ListConversationsRequest {
            user_id: self.user_id,
            page_size: 100,
            page_token: String::new(),
        };
        match call::<_, pb::ListConversationsResponse>(&self.ctx, subjects::CONV_LIST, &req).await {
            Ok(r) if r.error.is_none() => {
                let conversations = r
                    .conversations
                    .into_iter()
                    .filter_map(|s| {
                        let c = s.conversation?;
                        Some(frames::ConversationInfo {
                            id: c.id,
                            kind: crate::http::kind_name(c.kind).to_owned(),
                            title: c.title,
                            participant_ids: c.participant_ids,
                            last_seq: c.last_seq,
                            last_read_seq: s.last_read_seq,
                            unread_count: s.unread_count,
                            last_message: s.last_message.as_ref().map(NewMessage::from_pb),
                        })
                    })
                    .collect();
                self.send(ServerFrame::Conversations(frames::Conversations {
                    conversations,
                }))
            }
            Ok(r) => {
                let e = r.error.unwrap_or_default();
                self.send_error(ErrorCode::parse(&e.code), e.message, None)
            }
            Err((code, message)) => self.send_error(code, message, None),
        }
    }
}

/// One request/reply with message-service. Transport failures become `unavailable`
/// (retrying is safe), an undecodable reply `internal`.
pub async fn call<Req: prost::Message, Resp: prost::Message + Default>(
    ctx: &Ctx,
    subject: &str,
    req: &Req,
) -> Result<Resp, (ErrorCode, String)> {
    let reply = ctx
        .bus
        .request(
            subject,
            Bytes::from(req.encode_to_vec()),
            ctx.settings.request_timeout,
        )
        .await
        .map_err(|e| {
            ctx.metrics.bus_error();
            tracing::warn!(error = %e, subject, "message-service request failed");
            (
                ErrorCode::Unavailable,
                "message service unavailable; retry".to_owned(),
            )
        })?;
    Resp::decode(reply.payload).map_err(|_| {
        (
            ErrorCode::Internal,
            "bad reply from message service".to_owned(),
        )
    })
}

/// Asks message-service to store a message. Shared by the WebSocket and REST paths.
pub async fn send_message(
    ctx: &Ctx,
    req: pb::SendMessageRequest,
) -> Result<(pb::ChatMessage, bool), (ErrorCode, String)> {
    // The root of the message's trace: the request below carries it to message-service,
    // which carries it on to the delivery (see `bus::trace`).
    let span = tracing::info_span!(
        "chat_message",
        user_id = req.sender_id,
        trace_id = tracing::field::Empty
    );
    bus::trace::record_trace_id(&span);
    let resp: pb::SendMessageResponse = call(ctx, subjects::MSG_SEND, &req)
        .instrument(span)
        .await
        .map_err(|(code, message)| {
            if code == ErrorCode::Unavailable {
                (
                    code,
                    "message service unavailable; retry with the same client_msg_id".to_owned(),
                )
            } else {
                (code, message)
            }
        })?;
    match resp.result {
        Some(pb::send_message_response::Result::Message(m)) => Ok((m, resp.duplicate)),
        Some(pb::send_message_response::Result::Error(e)) => {
            Err((ErrorCode::parse(&e.code), e.message))
        }
        None => Err((
            ErrorCode::Internal,
            "empty reply from message service".to_owned(),
        )),
    }
}
