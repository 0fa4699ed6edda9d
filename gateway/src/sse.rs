//! `GET /api/v1/events/`: the WebSocket's server events as Server-Sent Events, for clients
//! whose network blocks WebSockets.
//!
//! An event stream is one more "socket" in the hub: it counts for presence and receives
//! every delivery a WebSocket of the user would, as the same JSON (`data:` only, no
//! `event:` name, so `EventSource.onmessage` sees everything). `new_message` events carry
//! `id: <message_id>`. A reconnecting `EventSource` sends `Last-Event-ID` (or pass
//! `?last_event_id=`): the stream first replays what the client may have missed, then goes
//! live, with repeats between the two dropped.
//!
//! Replay covers messages with a larger id and those created up to [`REPLAY_WINDOW`]
//! before the cursor's message (ids are assigned before commit, so across conversations a
//! smaller id can be delivered after a larger one). A client may therefore see a message
//! again after a reconnect: de-duplicate by `message_id`, as with any at-least-once feed.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use proto::frames::{NewMessage, ServerFrame};
use proto::{pb, ErrorCode};
use tokio::sync::mpsc;
use warp::Reply;

use crate::auth::AuthError;
use crate::backend;
use crate::ctx::Ctx;
use crate::hub::{change_key, ConnShared, Outbound, RecentIds};
use crate::metrics::HandshakeFailure;
use crate::reply::{connection_token, query_param, Answer, HttpError};
use crate::session::{self, PeerAddr, Session, Transport};

/// How far before the cursor's message a replay reaches (see the module docs).
pub(crate) const REPLAY_WINDOW: Duration = Duration::from_secs(10);
/// Most messages one replay sends; a client further behind should page through REST.
const MAX_REPLAY: usize = 5_000;
/// Comment lines keep proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Opens a stream (or answers 401/429/503 as JSON). The same rules as a WebSocket hold:
/// the per-address attempt budget, the token, the per-user connection cap and draining,
/// all through [`session`].
pub(crate) async fn open(
    query: &str,
    headers: &HeaderMap,
    peer: Option<PeerAddr>,
    transport: Option<Arc<Transport>>,
    ctx: &Arc<Ctx>,
) -> Answer {
    session::attempt(ctx, peer, headers)?;
    // EventSource cannot set headers: the token may come in the query.
    let identity = match connection_token(query, headers).map(|t| ctx.verifier.identify(&t)) {
        Some(Ok(i)) => i,
        other => {
            ctx.metrics.handshake_failed(HandshakeFailure::Unauthorized);
            return Err(match other {
                Some(Err(e)) => e.into(),
                _ => AuthError::Missing.into(),
            });
        }
    };
    let cursor = headers
        .get(proto::headers::LAST_EVENT_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query_param(query, "last_event_id"))
        .filter(|c| !c.is_empty());
    let cursor = match cursor.map(|c| c.trim().parse::<i64>()) {
        None => None,
        Some(Ok(c)) if c >= 0 => Some(c),
        Some(_) => {
            return Err(HttpError::bad(
                "Last-Event-ID must be an event id this stream sent",
            ))
        }
    };
    backend::spend(ctx, backend::Budget::Rest, identity.user_id)?;
    let admission = session::admit(ctx, &identity).await?;
    // Registered before the replay is read, so nothing falls between the two.
    let (session, mut rx) = session::open(ctx, admission, session::Kind::EventStream).await;
    let shared = session.handle.shared.clone();
    // `connection_established` is queued first; it goes out before the replay.
    let mut pending = std::collections::VecDeque::new();
    if let Ok(hello) = rx.try_recv() {
        shared.dequeued(hello.byte_len());
        if let Outbound::Text(t) = hello {
            pending.push_back(Item::Text(t.to_string()));
        }
    }
    let expires_in = u64::try_from(session.valid_until_ms - proto::time::now_ms()).unwrap_or(0);
    let last_poll_ms = Arc::new(std::sync::atomic::AtomicI64::new(proto::time::now_ms()));
    let deadline = tokio::time::Instant::now() + Duration::from_millis(expires_in);
    if let Some(t) = transport {
        tokio::spawn(watchdog(
            t,
            shared.clone(),
            session.handle.close.clone(),
            deadline,
            last_poll_ms.clone(),
        ));
    }
    let state = StreamState {
        close: session.handle.close.clone(),
        session,
        ctx: ctx.clone(),
        rx,
        shared,
        replay: cursor.map(|cursor| Replay {
            cursor,
            scan_from: 0,
            total: 0,
        }),
        pending,
        sent: RecentIds::with_capacity(MAX_REPLAY * 2),
        deadline,
        last_poll_ms,
    };
    let events = futures_util::stream::unfold(state, next_event);
    let body = warp::sse::keep_alive()
        .interval(KEEP_ALIVE)
        .text("keep-alive")
        .stream(events);
    let mut resp = warp::sse::reply(body).into_response();
    // Tell nginx-style proxies not to buffer the stream.
    resp.headers_mut().insert(
        proto::headers::X_ACCEL_BUFFERING,
        http::HeaderValue::from_static("no"),
    );
    Ok(resp)
}

enum Item {
    Text(String),
    Message { id: i64, text: String },
}

struct StreamState {
    /// Leaves the hub when hyper drops the stream (client gone, or closed by us).
    session: Session,
    ctx: Arc<Ctx>,
    rx: mpsc::Receiver<Outbound>,
    /// Counts the queued bytes back out (the hub counts them in).
    shared: Arc<ConnShared>,
    close: tokio_util::sync::CancellationToken,
    /// The replay still to read, page by page as the client takes events.
    replay: Option<Replay>,
    /// At most one replay page, or one event.
    pending: std::collections::VecDeque<Item>,
    /// Message ids already sent on this stream.
    sent: RecentIds,
    /// Token expiry: the stream ends; the client reconnects with a fresh token.
    deadline: tokio::time::Instant,
    /// When hyper last asked for an event (unix ms), for the watchdog.
    last_poll_ms: Arc<std::sync::atomic::AtomicI64>,
}

/// Where a replay stands.
#[derive(Debug, Clone, Copy)]
struct Replay {
    cursor: i64,
    /// The id the next page starts after (0: the first page, after the routing settle).
    scan_from: i64,
    /// Messages replayed so far.
    total: usize,
}

fn to_event(item: Item) -> warp::sse::Event {
    match item {
        Item::Text(t) => warp::sse::Event::default().data(t),
        Item::Message { id, text } => warp::sse::Event::default().id(id.to_string()).data(text),
    }
}

async fn next_event(
    mut st: StreamState,
) -> Option<(Result<warp::sse::Event, Infallible>, StreamState)> {
    st.last_poll_ms
        .store(proto::time::now_ms(), std::sync::atomic::Ordering::Relaxed);
    loop {
        if st.close.is_cancelled() || tokio::time::Instant::now() >= st.deadline {
            return None;
        }
        if let Some(item) = st.pending.pop_front() {
            return Some((Ok(to_event(item)), st));
        }
        if let Some(r) = st.replay.take() {
            // One page at a time, only when the last one has been taken: a client that
            // reads slowly holds one page of memory, not the whole replay. Close and
            // expiry still end the stream while the page is being read.
            let (close, deadline) = (st.close.clone(), st.deadline);
            tokio::select! {
                next = replay_page(&mut st, r) => st.replay = next,
                () = close.cancelled() => return None,
                () = tokio::time::sleep_until(deadline) => return None,
            }
            continue;
        }
        let next = tokio::select! {
            o = st.rx.recv() => o,
            () = st.close.cancelled() => None,
            () = tokio::time::sleep_until(st.deadline) => None,
        };
        if let Some(o) = &next {
            st.shared.dequeued(o.byte_len());
        }
        match next? {
            Outbound::Text(t) => return Some((Ok(to_event(Item::Text(t.to_string()))), st)),
            Outbound::Message(m) => {
                if st.sent.insert(m.key) {
                    // A change (negative key) has no event id of its own: `Last-Event-ID`
                    // stays the last message's, which is what the replay resumes from.
                    let item = if m.key < 0 {
                        Item::Text(m.text.to_string())
                    } else {
                        Item::Message {
                            id: m.key,
                            text: m.text.to_string(),
                        }
                    };
                    return Some((Ok(to_event(item)), st));
                }
            }
            // Event streams resume through `Last-Event-ID`, never `sync`.
            Outbound::SyncStream(_) => {}
        }
    }
}

/// How long the replay waits after registering the stream. message-service learns about
/// the new stream from the routing events; a message committed before it has applied them
/// is published without this gateway, so it must be in the replay: reading after the
/// routing table caught up closes that window.
const ROUTING_SETTLE: Duration = Duration::from_millis(150);

/// Messages per replay page (a page is what the stream holds in memory at once).
const REPLAY_PAGE: u32 = 100;

/// Queues the next replay page; returns where the replay stands, or `None` when done.
async fn replay_page(st: &mut StreamState, mut r: Replay) -> Option<Replay> {
    let ctx = st.ctx.clone();
    if r.scan_from == 0 && r.total == 0 {
        tokio::time::sleep(ROUTING_SETTLE).await;
        ctx.metrics.resumed();
    }
    let req = pb::MessagesSinceRequest {
        user_id: st.session.user_id,
        after_message_id: r.cursor,
        window_ms: i64::try_from(REPLAY_WINDOW.as_millis()).unwrap_or(10_000),
        scan_from: r.scan_from,
        limit: REPLAY_PAGE,
    };
    let page = match backend::messages_since(&ctx, &req).await {
        Ok(p) => p,
        Err(e) => {
            let message = match &e {
                backend::BackendError::Refused(_) => e.message(),
                _ => format!("resume failed: {}", e.message()),
            };
            st.pending.push_back(Item::Text(
                ServerFrame::error(e.code(), message, None).to_json(),
            ));
            return None;
        }
    };
    // Changes to messages the client had come first (they are older than what follows);
    // like live ones they carry no event id.
    for c in &page.changes {
        if let Some(f) = ServerFrame::from_change(c) {
            if st.sent.insert(change_key(c.id)) {
                st.pending.push_back(Item::Text(f.to_json()));
            }
        }
    }
    for m in &page.messages {
        r.scan_from = m.id;
        if st.sent.insert(m.id) {
            r.total += 1;
            st.pending.push_back(Item::Message {
                id: m.id,
                text: ServerFrame::NewMessage(NewMessage::from_pb(m)).to_json(),
            });
        }
    }
    if !page.has_more || page.messages.is_empty() {
        return None;
    }
    if r.total >= MAX_REPLAY {
        st.pending.push_back(Item::Text(
            ServerFrame::error(
                ErrorCode::InvalidField,
                format!(
                    "more than {MAX_REPLAY} missed messages; page the rest with GET /api/v1/conversations/{{id}}/messages/"
                ),
                None,
            )
            .to_json(),
        ));
        return None;
    }
    Some(r)
}

/// How long a stream may leave queued events unread, or outlive its close or its token,
/// before its connection is cut. Nothing polls a stream whose client stopped reading (its
/// TCP window is full, hyper waits to write), so it cannot notice its own close: this task
/// ends the connection from outside.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

async fn watchdog(
    transport: Arc<Transport>,
    shared: Arc<ConnShared>,
    close: tokio_util::sync::CancellationToken,
    deadline: tokio::time::Instant,
    last_poll_ms: Arc<std::sync::atomic::AtomicI64>,
) {
    let timeout_ms = i64::try_from(WRITE_TIMEOUT.as_millis()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut closed_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = transport.kill.cancelled() => return,
        }
        let now = tokio::time::Instant::now();
        if close.is_cancelled() {
            let at = *closed_at.get_or_insert(now);
            if now.duration_since(at) >= WRITE_TIMEOUT {
                break;
            }
        }
        if now >= deadline + WRITE_TIMEOUT {
            break;
        }
        let idle = proto::time::now_ms() - last_poll_ms.load(std::sync::atomic::Ordering::Relaxed);
        let waiting = shared
            .queued_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0;
        if waiting && idle > timeout_ms {
            break;
        }
    }
    tracing::info!("event stream not read in time; closing its connection");
    transport.kill.cancel();
}
