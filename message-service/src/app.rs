//! The service as a whole: [`App::build`] connects the store and the bus, subscribes to
//! every route and binds the listeners (so a test holds a ready service before it runs);
//! [`App::run`] starts the tasks — one per subscription, the workers (group commit, push
//! jobs, outbox cleanup), the sweeper, gRPC and the operations port — and stops them in
//! order on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bus::Bus;
use bytes::Bytes;
use proto::subjects;
use tokio::task::JoinSet;

use crate::settings::{BusSettings, Settings, StoreSettings};
use crate::state::{Inner, Workers};
use crate::store::Store;
use crate::{commit, dispatch, grpc, metrics, outbox, publisher, push_jobs, sweep};

/// How long stopping waits for the gRPC server.
const GRPC_STOP: Duration = Duration::from_secs(5);
/// How long stopping waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(10);

/// A built, not yet running, message-service.
pub struct App {
    inner: Arc<Inner>,
    workers: Workers,
    subs: Vec<(&'static dispatch::Route, bus::Subscriber)>,
    grpc: Option<tokio::net::TcpListener>,
    ops: Option<tokio::net::TcpListener>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("message_service::App")
    }
}

/// Binds `addr` if one is configured; `what` names the listener in the error.
async fn listen(
    addr: Option<std::net::SocketAddr>,
    what: &str,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for {what} on {addr}: {e}"))?;
    Ok(Some(l))
}

impl App {
    /// Connects to the store and the bus, runs migrations, subscribes. Tests build the
    /// service exactly this way.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        // Before anything else: an open gRPC API must not start beyond loopback.
        if let Some(addr) = settings.grpc_listen {
            settings
                .grpc_keys
                .check_exposure(addr)
                .map_err(anyhow::Error::msg)?;
        }
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
        let subs = dispatch::subscribe(&bus, settings.send_batches).await?;
        // Ask every gateway for its full socket list so routing works right away instead
        // of after the next heartbeat.
        bus.publish(subjects::GATEWAY_RESYNC, Bytes::new()).await?;
        let grpc = listen(settings.grpc_listen, "gRPC").await?;
        let ops = listen(settings.http_listen, "HTTP").await?;
        if settings.push_jobs {
            // Producer and consumer both create the stream, so either may start first.
            bus.ensure_queue(&bus::jobs::PUSH_QUEUE.with_replicas(settings.jetstream_replicas))
                .await?;
        }
        let storage = storage::Storage::open(&settings.storage)?;
        if let Some(s) = &storage {
            tracing::info!(backend = s.kind(), "attachment storage");
        }
        let (inner, workers) = Inner::new(bus, store, settings, storage);
        Ok(App {
            inner: Arc::new(inner),
            workers,
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
        let App {
            inner,
            workers,
            subs,
            grpc,
            ops,
        } = self;
        let mut tasks = JoinSet::new();
        for (route, sub) in subs {
            tasks.spawn(dispatch::serve(inner.clone(), route, sub));
        }
        tasks.spawn(outbox::clean_up(
            inner.store.clone(),
            inner.completions.clone(),
            workers.completions,
        ));
        tasks.spawn(sweep::sweep(inner.clone()));
        // Outside `tasks`: it must outlive the drain below, since requests still in flight
        // publish through it (a delivery it never sent would wait out its outbox lease).
        let publishing = tokio::spawn(publisher::run(inner.bus.clone(), workers.outgoing));
        tasks.spawn(push_jobs::enqueue(
            inner.bus.clone(),
            inner.completions.clone(),
            workers.push,
        ));
        if let Some(rx) = workers.sends {
            tasks.spawn(commit::group_commit(
                inner.store.clone(),
                inner.completions.clone(),
                inner.sends.queue(),
                rx,
            ));
        }
        if let Some(l) = ops {
            tasks.spawn(bus::ops::serve(l, Arc::new(Readiness(inner.clone()))));
        }
        let (stop_grpc, grpc_stopped) = tokio::sync::watch::channel(false);
        let grpc = grpc.map(|listener| {
            let mut stopped = grpc_stopped;
            tokio::spawn(grpc::serve(
                listener,
                inner.clone(),
                inner.settings.grpc_keys.clone(),
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
            let _ = tokio::time::timeout(GRPC_STOP, g).await;
        }
        // Dropping the subscriptions stops new requests; wait for the ones in flight.
        tasks.abort_all();
        let permits = u32::try_from(inner.settings.max_in_flight).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(DRAIN, inner.in_flight.acquire_many(permits)).await;
        // Every finished request has heard its deliveries went out.
        publishing.abort();
        let _ = inner.bus.flush().await;
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
        metrics::render(dispatch::request_counts())
    }
}
