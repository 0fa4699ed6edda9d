//! gateway: stateless WebSocket, REST and event-stream edge.
//!
//! Layout, each module importing only from those above it in this list:
//! - leaves: [`settings`] (configuration, read in one place), [`auth`] (JWT verification,
//!   algorithm pinned by configuration), `limits` (token buckets, client address), `metrics`
//!   (Prometheus counters), `views` (protobuf records as client JSON);
//! - state: `hub` (this gateway's connections by user; fan-out of deliveries), `ctx` (what
//!   every connection shares);
//! - operations: `backend` (every operation the doors share, typed, with one error type;
//!   the only module that talks to the services), `session` (opening and closing a
//!   connection of any kind: address budget, connection cap, registration, hello frame);
//! - replies: `reply` (the HTTP doors' JSON errors, bodies, bearer, query parameters);
//! - doors: `ws` (handshake, socket, reader, resume, writer), [`rest`], `sse`, `blobs`
//!   (the local attachment directory's signed URLs);
//! - the server: `http` (accept loop, router), `delivery` (bus → hub), and [`App`] here.
//!
//! The gateway holds no durable state: killing it loses no acknowledged message (clients
//! get `message_sent` only after commit, and resync on reconnect).

pub mod auth;
mod backend;
mod blobs;
mod ctx;
mod delivery;
mod http;
mod hub;
mod limits;
mod metrics;
mod reply;
pub mod rest;
mod send_queue;
mod session;
pub mod settings;
mod sse;
mod views;
mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bus::Bus;
use proto::subjects;
use tokio::net::TcpListener;

use crate::ctx::Ctx;

pub use settings::{BusSettings, Settings};

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
        let verifier = auth::Verifier::new(&settings.jwt, settings.jwt_leeway)?
            .expecting(
                settings.jwt_issuer.as_deref(),
                settings.jwt_audience.as_deref(),
            )
            .expecting_token_type(&settings.jwt_token_type.0, &settings.jwt_token_type.1);
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
        let blobs = match &settings.storage_dir {
            Some(dir) => Some(Arc::new(storage::Local::open(dir)?)),
            None => None,
        };
        let ctx = Arc::new(Ctx::new(settings, bus, verifier, blobs));
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
        let deliver = tokio::spawn(delivery::run(ctx.clone(), self.deliveries));
        let presence_task = tokio::spawn(delivery::presence(ctx.clone(), self.presence));
        // After a NATS reconnect or a slow-consumer event, deliveries may be gone: close
        // every socket with 1012 so clients reconnect and `sync`, and re-announce at once.
        let reconnect_task = ctx.bus.reconnects().map(|mut changes| {
            let c = ctx.clone();
            tokio::spawn(async move {
                while changes.changed().await.is_ok() {
                    c.metrics.bus_resync();
                    let sockets = c.hub.all();
                    tracing::warn!(
                        n = sockets.len(),
                        "bus may have dropped deliveries (reconnect or slow consumer); asking clients to resync"
                    );
                    session::heartbeat(&c, false).await;
                    for s in sockets {
                        s.close.cancel();
                    }
                }
            })
        });
        let mut resync = self.resync;
        let c = ctx.clone();
        let heartbeats = tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut tick = tokio::time::interval(c.settings.heartbeat_interval);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    m = resync.next() => if m.is_none() { break },
                }
                session::heartbeat(&c, false).await;
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
        session::heartbeat(&ctx, true).await;
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
