//! gateway: stateless WebSocket and REST edge.
//!
//! Layout:
//! - [`settings`]: configuration, read in one place.
//! - [`auth`]: JWT verification (algorithm pinned by configuration).
//! - [`http`]: accept loop, hand-made WebSocket handshake, REST routes, JSON errors.
//! - [`ws`]: one socket's reader and writer.
//! - [`hub`]: this gateway's sockets by user; fan-out of deliveries.
//! - [`App`]: wires them to the bus: one delivery subscription per gateway, connection
//!   events and heartbeats for the routing tables.
//!
//! The gateway holds no durable state: killing it loses no acknowledged message (clients
//! get `message_sent` only after commit, and resync on reconnect).

pub mod auth;
pub mod http;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod rest;
pub mod settings;
pub mod sse;
pub mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use bus::Bus;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use prost::Message as _;
use proto::{pb, subjects};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Most delivery acks sent in one NATS message.
const MAX_ACK_BATCH: usize = 256;

pub use settings::{BusSettings, Settings};

/// State shared by every connection of one gateway.
#[derive(Debug)]
pub struct Ctx {
    /// Configuration.
    pub settings: Settings,
    /// The bus (NATS or in-process).
    pub bus: Bus,
    /// Local sockets.
    pub hub: hub::Hub,
    /// Client token verifier.
    pub verifier: auth::Verifier,
    /// Source of connection numbers (`<gateway>/<n>`).
    pub next_conn: AtomicU64,
    /// Cancelled when the gateway shuts down; every socket's close token is a child.
    pub shutdown: CancellationToken,
    /// Cancelled when draining starts: readiness fails and new sockets are refused while
    /// existing ones are closed in batches.
    pub draining: CancellationToken,
    /// Orders socket events and heartbeat snapshots on the wire (see [`Ctx::register`]).
    pub routing_lock: tokio::sync::Mutex<()>,
    /// Prometheus counters.
    pub metrics: Arc<metrics::Metrics>,
    /// Connection attempts per client address.
    pub per_ip: limits::PerIp,
    /// Chat-message token buckets per user on this gateway.
    pub chat_limits: std::sync::Mutex<std::collections::HashMap<i64, limits::Bucket>>,
}

impl Ctx {
    /// Registers a socket and tells the routing tables. The `Up` is flushed before the
    /// client is told it is connected, so the tables know the socket before the client can
    /// act on it.
    pub async fn register(&self, user_id: i64, conn: hub::ConnHandle) {
        let connection_id = conn.connection_id.clone();
        {
            // Hub change and event publish happen under the routing lock, so a heartbeat
            // snapshot can never be published after an event it does not reflect.
            let _order = self.routing_lock.lock().await;
            self.hub.add(user_id, conn);
            self.publish_event(pb::connection_event::Kind::Up, user_id, &connection_id)
                .await;
        }
        let _ = self.bus.flush().await;
    }

    /// Forgets a socket and tells the routing tables.
    pub async fn unregister(&self, user_id: i64, connection_id: &str) {
        let _order = self.routing_lock.lock().await;
        self.hub.remove(user_id, connection_id);
        if self.hub.user_sockets(user_id) == 0 {
            self.chat_limits
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&user_id);
        }
        self.publish_event(pb::connection_event::Kind::Down, user_id, connection_id)
            .await;
    }

    /// Tells presence a socket went away/idle or came back, in order with its up/down.
    pub async fn publish_status(&self, user_id: i64, connection_id: &str, away: bool) {
        let _order = self.routing_lock.lock().await;
        let st = pb::SocketStatus {
            gateway_id: self.settings.gateway_id.clone(),
            user_id,
            connection_id: connection_id.to_owned(),
            away,
            at_ms: proto::time::now_ms(),
        };
        if let Err(e) = self
            .bus
            .publish(subjects::SOCKET_STATUS, Bytes::from(st.encode_to_vec()))
            .await
        {
            tracing::warn!(error = %e, "socket status not published");
        }
    }

    async fn publish_event(
        &self,
        kind: pb::connection_event::Kind,
        user_id: i64,
        connection_id: &str,
    ) {
        let ev = pb::ConnectionEvent {
            kind: kind as i32,
            gateway_id: self.settings.gateway_id.clone(),
            user_id,
            connection_id: connection_id.to_owned(),
            at_ms: proto::time::now_ms(),
        };
        // Lost events are repaired by the next heartbeat, so a failure is only logged.
        if let Err(e) = self
            .bus
            .publish(subjects::CONN_EVENTS, Bytes::from(ev.encode_to_vec()))
            .await
        {
            tracing::warn!(error = %e, "connection event not published");
        }
    }

    /// Takes one chat-message token for `user_id`; false when the user is over the rate.
    pub fn allow_chat(&self, user_id: i64) -> bool {
        let rate = f64::from(self.settings.chat_rate_per_10s);
        let mut m = self.chat_limits.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(user_id)
            .or_insert_with(|| limits::Bucket::full(rate, rate / 10.0))
            .take(std::time::Instant::now())
    }

    /// Tells message-service that recipients now have these messages on a socket, so
    /// their senders can show "delivered". One ack per message is all "delivered" needs
    /// (message-service keeps only the first anyway), so a group message costs one ack,
    /// not one per member; and the acks of a burst of deliveries travel as one NATS
    /// message (`DeliveryAck.more`).
    async fn ack_deliveries(&self, acks: &mut Vec<pb::DeliveryAck>) {
        let mut rest = std::mem::take(acks);
        if rest.is_empty() {
            return;
        }
        let mut first = rest.remove(0);
        first.more = rest;
        if let Err(e) = self
            .bus
            .publish(subjects::DELIVERY_ACKS, Bytes::from(first.encode_to_vec()))
            .await
        {
            tracing::debug!(error = %e, "delivery acks not published");
        }
    }

    async fn heartbeat(&self, stopping: bool) {
        let _order = self.routing_lock.lock().await;
        let hb = pb::GatewayHeartbeat {
            gateway_id: self.settings.gateway_id.clone(),
            sockets: if stopping {
                Vec::new()
            } else {
                self.hub.sockets()
            },
            sent_at_ms: proto::time::now_ms(),
            interval_ms: u32::try_from(self.settings.heartbeat_interval.as_millis())
                .unwrap_or(u32::MAX),
            stopping,
            part: 0,
            parts: 1,
        };
        // Split so a big gateway stays under NATS's payload limit; the parts go out back
        // to back under the routing lock, so no socket event lands between them.
        for part in bus::heartbeat::split(hb) {
            if let Err(e) = self
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
}

/// The client listener, with a deep accept queue. `TcpListener::bind` asks for 128 here
/// (the C library's `SOMAXCONN`), and a burst of connects (every client of a failed gateway
/// reconnecting at once; the benchmark's 256 concurrent connects) overflowed it: the
/// kernel drops those SYNs and each such client waits out a 1 s retransmit. The kernel caps
/// the request at `net.core.somaxconn`.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(ACCEPT_BACKLOG)
}

/// Connections the kernel may hold for us before `accept` (see [`listen`]).
const ACCEPT_BACKLOG: u32 = 4096;

/// A built gateway, listening but not yet serving.
#[derive(Debug)]
pub struct App {
    ctx: Arc<Ctx>,
    listener: TcpListener,
    deliveries: bus::Subscriber,
    resync: bus::Subscriber,
    presence: bus::Subscriber,
}

impl App {
    /// Binds the listener, connects to the bus, subscribes. Tests build it this way too.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        let verifier = auth::Verifier::new(&settings.jwt, settings.jwt_leeway)?.expecting(
            settings.jwt_issuer.as_deref(),
            settings.jwt_audience.as_deref(),
        );
        let bus = match &settings.bus {
            BusSettings::Nats(url) => {
                Bus::connect_nats(url, &format!("gateway {}", settings.gateway_id)).await?
            }
            BusSettings::Shared(b) => b.clone(),
        };
        let listener = listen(settings.listen)?;
        let deliveries = bus
            .subscribe(&subjects::gateway_delivery(&settings.gateway_id))
            .await?;
        let resync = bus.subscribe(subjects::GATEWAY_RESYNC).await?;
        let presence = bus.subscribe(subjects::PRESENCE_CHANGES).await?;
        let ctx = Arc::new(Ctx {
            settings,
            bus,
            hub: hub::Hub::default(),
            verifier,
            next_conn: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
            draining: CancellationToken::new(),
            routing_lock: tokio::sync::Mutex::new(()),
            chat_limits: Default::default(),
            per_ip: Default::default(),
            metrics: Arc::default(),
        });
        Ok(App {
            ctx,
            listener,
            deliveries,
            resync,
            presence,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// This gateway's id.
    pub fn gateway_id(&self) -> &str {
        &self.ctx.settings.gateway_id
    }

    /// Serves until `shutdown` resolves; then stops accepting, tells the routing tables it
    /// is gone, and closes every socket with 1012 (service restart) so clients reconnect.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let ctx = self.ctx;
        let token = ctx.shutdown.clone();
        let http = tokio::spawn(http::serve(self.listener, ctx.clone(), token.clone()));
        let mut deliveries = self.deliveries;
        let c = ctx.clone();
        let deliver = tokio::spawn(async move {
            // Acks collect while deliveries are queued back to back and go out when the
            // queue is momentarily empty: at rest one per delivery, under load one batch.
            let mut acks: Vec<pb::DeliveryAck> = Vec::new();
            loop {
                let m = match deliveries.next().now_or_never() {
                    Some(Some(m)) => m,
                    Some(None) => break,
                    None => {
                        c.ack_deliveries(&mut acks).await;
                        match deliveries.next().await {
                            Some(m) => m,
                            None => break,
                        }
                    }
                };
                {
                    // The last hop of the message's trace.
                    let span = tracing::info_span!("delivery", trace_id = tracing::field::Empty);
                    bus::trace::follow(&span, &m);
                    let _in = span.enter();
                    match pb::Delivery::decode(m.payload) {
                        Ok(mut d) => {
                            let more = std::mem::take(&mut d.more);
                            for d in std::iter::once(d).chain(more) {
                                let reached = c.hub.deliver(&d);
                                c.metrics.delivered(reached.len());
                                if let (Some(pb::delivery::Event::Message(msg)), Some(first)) =
                                    (&d.event, reached.first())
                                {
                                    acks.push(pb::DeliveryAck {
                                        message_id: msg.id,
                                        conversation_id: msg.conversation_id,
                                        sender_id: msg.sender_id,
                                        recipient_id: *first,
                                        more: Vec::new(),
                                    });
                                }
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "undecodable delivery"),
                    }
                }
                if acks.len() >= MAX_ACK_BATCH {
                    c.ack_deliveries(&mut acks).await;
                }
            }
            c.ack_deliveries(&mut acks).await;
        });
        let mut presence = self.presence;
        let c = ctx.clone();
        let presence_task = tokio::spawn(async move {
            while let Some(m) = presence.next().await {
                match pb::PresenceChange::decode(m.payload) {
                    Ok(ch) => {
                        c.hub.presence(&ch);
                    }
                    Err(e) => tracing::warn!(error = %e, "undecodable presence change"),
                }
            }
        });
        // After a NATS reconnect, deliveries published while we were away are gone: close
        // every socket with 1012 so clients reconnect and `sync`, and re-announce at once.
        let reconnect_task = ctx.bus.reconnects().map(|mut changes| {
            let c = ctx.clone();
            tokio::spawn(async move {
                while changes.changed().await.is_ok() {
                    let sockets = c.hub.all();
                    tracing::warn!(
                        n = sockets.len(),
                        "nats reconnected; asking clients to resync"
                    );
                    c.heartbeat(false).await;
                    for s in sockets {
                        s.close.cancel();
                    }
                }
            })
        });
        let mut resync = self.resync;
        let c = ctx.clone();
        let heartbeats = tokio::spawn(async move {
            let mut tick = tokio::time::interval(c.settings.heartbeat_interval);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    m = resync.next() => if m.is_none() { break },
                }
                c.heartbeat(false).await;
            }
        });
        tracing::info!(gateway_id = %ctx.settings.gateway_id, "gateway running");
        shutdown.await;
        // Drain: fail readiness and refuse new sockets at once, then close the open ones in
        // batches over the drain window with 1012 so clients come back spread out, to the
        // other gateways. Deliveries keep flowing to the sockets not yet closed.
        ctx.draining.cancel();
        let sockets = ctx.hub.all();
        let window = ctx.settings.drain_window;
        let step = std::time::Duration::from_millis(100);
        let steps = (window.as_millis() / step.as_millis()).max(1);
        let per_step = sockets
            .len()
            .div_ceil(usize::try_from(steps).unwrap_or(1))
            .max(1);
        tracing::info!(sockets = sockets.len(), ?window, "gateway draining");
        for batch in sockets.chunks(per_step) {
            for s in batch {
                s.close.cancel();
            }
            tokio::time::sleep(step.min(window)).await;
        }
        tracing::info!("gateway stopping");
        token.cancel();
        heartbeats.abort();
        ctx.heartbeat(true).await;
        let _ = ctx.bus.flush().await;
        // Give writers a moment to send their close frames.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !ctx.hub.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        deliver.abort();
        presence_task.abort();
        if let Some(t) = reconnect_task {
            t.abort();
        }
        let _ = http.await;
        Ok(())
    }
}

/// The distributed-mode program: settings from the environment, run until SIGTERM/SIGINT.
/// Shared by the `gateway` binary and `indaba gateway`, so one image serves every role alike.
pub async fn run_from_env() -> anyhow::Result<()> {
    let app = App::build(Settings::from_env()?).await?;
    tracing::info!(addr = %app.local_addr()?, "gateway listening");
    app.run(bus::runtime::shutdown_signal()).await
}
