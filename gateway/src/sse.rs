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

use http::{HeaderMap, StatusCode};
use proto::frames::{ConnectionEstablished, NewMessage, ServerFrame};
use proto::{pb, subjects, ErrorCode};
use tokio::sync::mpsc;
use warp::reply::Response;
use warp::Reply;

use crate::http::{bearer, query_param, HttpError};
use crate::hub::{ConnHandle, ConnShared, Outbound, RecentIds};
use crate::metrics::HandshakeFailure;
use crate::Ctx;

/// How far before the cursor's message a replay reaches (see the module docs).
pub const REPLAY_WINDOW: Duration = Duration::from_secs(10);
/// Most messages one replay sends; a client further behind should page through REST.
const MAX_REPLAY: usize = 5_000;
/// Comment lines keep proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Opens a stream (or answers 401/503 as JSON).
pub async fn open(query: &str, headers: &HeaderMap, ctx: Arc<Ctx>) -> Result<Response, HttpError> {
    // EventSource cannot set headers: the token may come in the query.
    let token = query_param(query, "token")
        .filter(|t| !t.is_empty())
        .or_else(|| bearer(headers));
    let identity = match token.as_deref().map(|t| ctx.verifier.identify(t)) {
        Some(Ok(i)) => i,
        other => {
            ctx.metrics.handshake_failed(HandshakeFailure::Unauthorized);
            let message = match other {
                Some(Err(e)) => e.to_string(),
                _ => crate::auth::AuthError::Missing.to_string(),
            };
            return Err(HttpError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                message,
            ));
        }
    };
    if ctx.draining.is_cancelled() {
        return Err(HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "gateway is draining",
        ));
    }
    let cursor = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query_param(query, "last_event_id"))
        .filter(|c| !c.is_empty());
    let cursor = match cursor.map(|c| c.trim().parse::<i64>()) {
        None => None,
        Some(Ok(c)) if c >= 0 => Some(c),
        Some(_) => {
            return Err(HttpError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidField,
                "Last-Event-ID must be an event id this stream sent",
            ))
        }
    };

    let user_id = identity.user_id;
    let n = ctx
        .next_conn
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let connection_id: Arc<str> = Arc::from(format!("{}/sse{n}", ctx.settings.gateway_id));
    let (tx, rx) = mpsc::channel(ctx.settings.outbound_queue);
    let close = ctx.shutdown.child_token();
    let shared = Arc::new(ConnShared::with_byte_limit(
        ctx.settings.outbound_queue_bytes,
    ));
    let handle = ConnHandle {
        connection_id: connection_id.clone(),
        tx,
        close: close.clone(),
        shared: shared.clone(),
        metrics: ctx.metrics.clone(),
    };
    // Registered before the replay is read, so nothing falls between the two.
    ctx.register(user_id, handle).await;
    ctx.metrics.socket_opened();
    tracing::debug!(%connection_id, user_id, "event stream open");
    let guard = Registration {
        ctx: ctx.clone(),
        user_id,
        connection_id: connection_id.clone(),
    };

    let hello = ServerFrame::ConnectionEstablished(ConnectionEstablished {
        user_id,
        connection_id: connection_id.to_string(),
        server_time: proto::time::rfc3339_ms(proto::time::now_ms()),
    })
    .to_json();
    let expires_in = u64::try_from(identity.valid_until_ms - proto::time::now_ms()).unwrap_or(0);
    let state = StreamState {
        guard,
        rx,
        shared,
        close,
        replay: cursor,
        pending: std::collections::VecDeque::from([Item::Text(hello)]),
        sent: RecentIds::with_capacity(MAX_REPLAY * 2),
        deadline: tokio::time::Instant::now() + Duration::from_millis(expires_in),
    };
    let events = futures_util::stream::unfold(state, next_event);
    let body = warp::sse::keep_alive()
        .interval(KEEP_ALIVE)
        .text("keep-alive")
        .stream(events);
    let mut resp = warp::sse::reply(body).into_response();
    // Tell nginx-style proxies not to buffer the stream.
    resp.headers_mut()
        .insert("x-accel-buffering", http::HeaderValue::from_static("no"));
    Ok(resp)
}

/// Unregisters the stream when hyper drops it (client gone, or closed by us).
struct Registration {
    ctx: Arc<Ctx>,
    user_id: i64,
    connection_id: Arc<str>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let ctx = self.ctx.clone();
        let user_id = self.user_id;
        let connection_id = self.connection_id.clone();
        ctx.metrics.socket_closed();
        tokio::spawn(async move {
            ctx.unregister(user_id, &connection_id).await;
            tracing::debug!(%connection_id, user_id, "event stream closed");
        });
    }
}

enum Item {
    Text(String),
    Message { id: i64, text: String },
}

struct StreamState {
    guard: Registration,
    rx: mpsc::Receiver<Outbound>,
    /// Counts the queued bytes back out (the hub counts them in).
    shared: Arc<ConnShared>,
    close: tokio_util::sync::CancellationToken,
    /// The cursor to replay from, until the replay has run.
    replay: Option<i64>,
    pending: std::collections::VecDeque<Item>,
    /// Message ids already sent on this stream.
    sent: RecentIds,
    /// Token expiry: the stream ends; the client reconnects with a fresh token.
    deadline: tokio::time::Instant,
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
    loop {
        if let Some(item) = st.pending.pop_front() {
            return Some((Ok(to_event(item)), st));
        }
        if let Some(cursor) = st.replay.take() {
            replay(&mut st, cursor).await;
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
                if st.sent.insert(m.message_id) {
                    let item = Item::Message {
                        id: m.message_id,
                        text: m.text.to_string(),
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

/// Queues the messages the client may have missed since `cursor`.
async fn replay(st: &mut StreamState, cursor: i64) {
    tokio::time::sleep(ROUTING_SETTLE).await;
    let ctx = st.guard.ctx.clone();
    ctx.metrics.resumed();
    let mut scan_from = 0;
    let mut total = 0;
    loop {
        let req = pb::MessagesSinceRequest {
            user_id: st.guard.user_id,
            after_message_id: cursor,
            window_ms: i64::try_from(REPLAY_WINDOW.as_millis()).unwrap_or(10_000),
            scan_from,
            limit: 500,
        };
        let page: pb::ListMessagesResponse = match crate::ws::call(&ctx, subjects::MSG_SINCE, &req)
            .await
        {
            Ok(p) => p,
            Err((code, message)) => {
                st.pending.push_back(Item::Text(
                    ServerFrame::error(code, format!("resume failed: {message}"), None).to_json(),
                ));
                return;
            }
        };
        if let Some(e) = page.error {
            st.pending.push_back(Item::Text(
                ServerFrame::error(ErrorCode::parse(&e.code), e.message, None).to_json(),
            ));
            return;
        }
        for m in &page.messages {
            scan_from = m.id;
            if st.sent.insert(m.id) {
                total += 1;
                st.pending.push_back(Item::Message {
                    id: m.id,
                    text: ServerFrame::NewMessage(NewMessage::from_pb(m)).to_json(),
                });
            }
        }
        if !page.has_more || page.messages.is_empty() {
            return;
        }
        if total >= MAX_REPLAY {
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
            return;
        }
    }
}
