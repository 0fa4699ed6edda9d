//! Opening and closing a client presence of any kind — a WebSocket or an event stream — in
//! one code path, so both obey the same rules:
//!
//! 1. [`attempt`]: every connection attempt counts against its client address's budget,
//!    before any other work (token verification included).
//! 2. [`admit`]: a known user is refused while the gateway drains or when they already hold
//!    `max_connections_per_user` connections across all gateways. The [`Admission`] it
//!    returns is the only way to reach [`open`], so no door can skip the cap.
//! 3. [`open`]: a connection id, the bounded outbound queue, the `connection_established`
//!    frame queued first, then registration in the hub and the routing event, flushed before
//!    the client can act (so the routing tables know the connection before its first send).
//! 4. [`Session::close`]: the reverse, once.
//!
//! Routing announcements (connection up/down, away status, heartbeat snapshots) all go out
//! under `Ctx::routing_lock`, so a snapshot is never published after an event it does not
//! reflect.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use prost::Message as _;
use proto::frames::{ConnectionEstablished, ServerFrame};
use proto::{pb, subjects, ErrorCode};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::ctx::Ctx;
use crate::hub::{ConnHandle, ConnShared, Outbound};
use crate::metrics::HandshakeFailure;

/// Why a connection was refused before it opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Too many connection attempts from this client address.
    AddressRate,
    /// The user holds the maximum number of connections.
    ConnectionCap(u32),
    /// The gateway is draining.
    Draining,
}

impl Refusal {
    /// The stable code.
    pub(crate) fn code(self) -> ErrorCode {
        match self {
            Refusal::AddressRate | Refusal::ConnectionCap(_) => ErrorCode::RateLimited,
            Refusal::Draining => ErrorCode::Unavailable,
        }
    }

    /// The message for humans (also a WebSocket close reason).
    pub(crate) fn message(self) -> String {
        match self {
            Refusal::AddressRate => {
                "too many connection attempts from this address; back off and retry".into()
            }
            Refusal::ConnectionCap(n) => format!("at most {n} simultaneous connections per user"),
            Refusal::Draining => "gateway is draining".into(),
        }
    }
}

/// The transport peer of a request (a load balancer, when there is one).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub(crate) std::net::IpAddr);

/// One accepted TCP connection, as a request extension: its place in the per-address
/// count of open connections (given back when the last holder drops it — the HTTP
/// connection, or the socket or event stream it became) and a token that ends it (an event
/// stream whose client stopped reading cannot end itself: nothing polls it).
#[derive(Debug, Default)]
pub(crate) struct Transport {
    pub(crate) kill: tokio_util::sync::CancellationToken,
    /// Held for its `Drop`, which gives the place back.
    pub(crate) _slot: Option<crate::limits::OpenSlot>,
}

/// Counts a connection attempt against the client address's budget.
pub(crate) fn attempt(
    ctx: &Ctx,
    peer: Option<PeerAddr>,
    headers: &HeaderMap,
) -> Result<(), Refusal> {
    let xff = headers
        .get(proto::headers::X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok());
    let Some(ip) = crate::limits::client_ip(peer.map(|p| p.0), xff, &ctx.settings.trusted_proxies)
    else {
        return Ok(());
    };
    if ctx.per_ip.allow(
        ip,
        ctx.settings.connect_rate_per_ip_10s,
        std::time::Instant::now(),
    ) {
        return Ok(());
    }
    ctx.metrics.handshake_failed(HandshakeFailure::IpRate);
    Err(Refusal::AddressRate)
}

/// Refuses new connections while the gateway drains (checked again by [`admit`]; a door
/// may check early, before work that would be wasted).
pub(crate) fn not_draining(ctx: &Ctx) -> Result<(), Refusal> {
    if ctx.draining.is_cancelled() {
        ctx.metrics.handshake_failed(HandshakeFailure::Draining);
        return Err(Refusal::Draining);
    }
    Ok(())
}

/// Proof that a user may open one more connection (see [`admit`]).
#[derive(Debug)]
pub(crate) struct Admission {
    user_id: i64,
    valid_until_ms: i64,
}

/// Admits an authenticated user unless the gateway drains or the user is at the
/// connection cap. The cap counts connections on every gateway (presence-service knows
/// them all); it fails open when presence cannot answer (a presence outage must not lock
/// everyone out), and never counts fewer than this gateway itself holds.
pub(crate) async fn admit(
    ctx: &Ctx,
    identity: &crate::auth::Identity,
) -> Result<Admission, Refusal> {
    not_draining(ctx)?;
    let user_id = identity.user_id;
    let here = u32::try_from(ctx.hub.user_sockets(user_id)).unwrap_or(u32::MAX);
    let counted = crate::backend::connection_count(ctx, user_id)
        .await
        .unwrap_or(0);
    let cap = ctx.settings.max_connections_per_user;
    if counted.max(here) >= cap {
        tracing::info!(user_id, "connection refused: connection cap");
        ctx.metrics
            .handshake_failed(HandshakeFailure::ConnectionCap);
        return Err(Refusal::ConnectionCap(cap));
    }
    Ok(Admission {
        user_id,
        valid_until_ms: identity.valid_until_ms,
    })
}

/// What kind of connection a session is (its connection id says so too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    WebSocket,
    EventStream,
}

/// One open connection of a user, registered in the hub and the routing tables.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) user_id: i64,
    pub(crate) connection_id: Arc<str>,
    /// How the hub reaches this connection.
    pub(crate) handle: ConnHandle,
    /// When the token it opened with stops being valid (unix ms).
    pub(crate) valid_until_ms: i64,
    ctx: Arc<Ctx>,
    closed: bool,
}

/// Opens an admitted connection (see the module docs). The receiver is what the hub queues
/// for it; its first frame is `connection_established`.
pub(crate) async fn open(
    ctx: &Arc<Ctx>,
    admission: Admission,
    kind: Kind,
) -> (Session, mpsc::Receiver<Outbound>) {
    let user_id = admission.user_id;
    let n = ctx
        .next_conn
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let gateway = &ctx.settings.gateway_id;
    let connection_id: Arc<str> = Arc::from(match kind {
        Kind::WebSocket => format!("{gateway}/{n}"),
        Kind::EventStream => format!("{gateway}/sse{n}"),
    });
    let (tx, rx) = mpsc::channel(ctx.settings.outbound_queue);
    let handle = ConnHandle {
        connection_id: connection_id.clone(),
        tx,
        close: ctx.shutdown.child_token(),
        shared: Arc::new(ConnShared::with_byte_limit(
            ctx.settings.outbound_queue_bytes,
        )),
        metrics: ctx.metrics.clone(),
        // Before the socket is registered and its Up event stamped: a catch-up for this
        // socket names a publish time after its Up event, so it always passes the filter.
        opened_ms: proto::time::now_ms(),
    };
    // The first frame, queued before the connection is visible to deliveries.
    let hello = ServerFrame::ConnectionEstablished(ConnectionEstablished {
        user_id,
        connection_id: connection_id.to_string(),
        server_time: proto::time::rfc3339_ms(proto::time::now_ms()),
    });
    handle.offer(Outbound::Text(Utf8Bytes::from(hello.to_json())));
    {
        let _order = ctx.routing_lock.lock().await;
        ctx.hub.add(user_id, handle.clone());
        publish_event(ctx, pb::connection_event::Kind::Up, user_id, &connection_id).await;
    }
    // Flushed before the client hears it is connected, so the routing tables know the
    // connection before the client can act on it.
    let _ = ctx.bus.flush().await;
    ctx.metrics.socket_opened();
    tracing::debug!(%connection_id, user_id, ?kind, "connection open");
    let session = Session {
        user_id,
        connection_id,
        handle,
        valid_until_ms: admission.valid_until_ms,
        ctx: ctx.clone(),
        closed: false,
    };
    (session, rx)
}

impl Session {
    /// Leaves the hub and the routing tables (once; later calls do nothing).
    pub(crate) async fn close(&mut self) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        unregister(&self.ctx, self.user_id, &self.connection_id).await;
    }
}

impl Drop for Session {
    /// A session dropped without [`Session::close`] (an event stream whose client went
    /// away: hyper drops the body) still leaves the tables.
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let ctx = self.ctx.clone();
        let user_id = self.user_id;
        let connection_id = self.connection_id.clone();
        tokio::spawn(async move { unregister(&ctx, user_id, &connection_id).await });
    }
}

async fn unregister(ctx: &Ctx, user_id: i64, connection_id: &str) {
    {
        let _order = ctx.routing_lock.lock().await;
        ctx.hub.remove(user_id, connection_id);
        publish_event(
            ctx,
            pb::connection_event::Kind::Down,
            user_id,
            connection_id,
        )
        .await;
    }
    ctx.metrics.socket_closed();
    tracing::debug!(%connection_id, user_id, "connection closed");
}

/// Tells presence a connection went away/idle or came back, in order with its up/down.
pub(crate) async fn publish_status(ctx: &Ctx, user_id: i64, connection_id: &str, away: bool) {
    let _order = ctx.routing_lock.lock().await;
    let st = pb::SocketStatus {
        gateway_id: ctx.settings.gateway_id.clone(),
        user_id,
        connection_id: connection_id.to_owned(),
        away,
        at_ms: proto::time::now_ms(),
    };
    if let Err(e) = ctx
        .bus
        .publish(subjects::SOCKET_STATUS, Bytes::from(st.encode_to_vec()))
        .await
    {
        tracing::warn!(error = %e, "socket status not published");
    }
}

async fn publish_event(
    ctx: &Ctx,
    kind: pb::connection_event::Kind,
    user_id: i64,
    connection_id: &str,
) {
    let ev = pb::ConnectionEvent {
        kind: kind as i32,
        gateway_id: ctx.settings.gateway_id.clone(),
        user_id,
        connection_id: connection_id.to_owned(),
        at_ms: proto::time::now_ms(),
    };
    // Lost events are repaired by the next heartbeat, so a failure is only logged.
    if let Err(e) = ctx
        .bus
        .publish(subjects::CONN_EVENTS, Bytes::from(ev.encode_to_vec()))
        .await
    {
        tracing::warn!(error = %e, "connection event not published");
    }
}

/// Publishes this gateway's snapshot of connections (empty and `stopping` at shutdown).
pub(crate) async fn heartbeat(ctx: &Ctx, stopping: bool) {
    let _order = ctx.routing_lock.lock().await;
    let hb = pb::GatewayHeartbeat {
        gateway_id: ctx.settings.gateway_id.clone(),
        sockets: if stopping {
            Vec::new()
        } else {
            ctx.hub.sockets()
        },
        sent_at_ms: proto::time::now_ms(),
        interval_ms: u32::try_from(ctx.settings.heartbeat_interval.as_millis()).unwrap_or(u32::MAX),
        stopping,
        part: 0,
        parts: 1,
    };
    // Split so a big gateway stays under NATS's payload limit; the parts go out back to
    // back under the routing lock, so no connection event lands between them.
    for part in bus::heartbeat::split(hb) {
        if let Err(e) = ctx
            .bus
            .publish(
                subjects::GATEWAY_HEARTBEAT,
                Bytes::from(part.encode_to_vec()),
            )
            .await
        {
            tracing::warn!(error = %e, "heartbeat not published");
            break;
        }
    }
}
