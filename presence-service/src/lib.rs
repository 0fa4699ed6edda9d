//! presence-service: who is online, across many gateways, without flapping.
//!
//! Layout:
//! - [`settings`]: configuration, read in one place.
//! - [`tracker`]: the state machine (no I/O).
//! - [`store`]: durable `last_seen`.
//! - [`App`]: feeds it the gateways' socket events and heartbeats (`indaba.v1.routing.>`),
//!   ticks it, publishes changes on `indaba.v1.presence.changes`, answers
//!   `indaba.v1.presence.get`.
//!
//! State is soft: it lives in memory and is rebuilt from gateway heartbeats, which every
//! gateway sends at once when a presence-service starts (`indaba.v1.gateway.resync`). Any
//! number of instances can run: each sees every event, so all hold the same state; only the
//! live instance with the lowest id publishes changes (the others would publish the same
//! changes, interleaved, which watchers could see as flapping). Instances announce
//! themselves every second; when the publisher dies, the next one takes over with the
//! state it already has. During a hand-over both may publish; gateways drop repeats.

mod grpc;
pub mod settings;
pub mod store;
pub mod tracker;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::Bus;
use bytes::Bytes;
use futures_util::StreamExt;
use prost::Message as _;
use proto::{pb, subjects, ErrorCode};
use tokio_util::sync::CancellationToken;

pub use settings::{BusSettings, ConfigError, Settings, StoreSettings};
pub use store::LastSeenStore;
pub use tracker::{Status, Timing, Tracker};

/// Most users one presence query may name.
pub const MAX_QUERY_USERS: usize = 500;

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A built presence-service.
pub struct App {
    bus: Bus,
    settings: Settings,
    tracker: Arc<Mutex<Tracker>>,
    routing: bus::Subscriber,
    queries: bus::Subscriber,
    instances: bus::Subscriber,
    instance_id: u64,
    store: LastSeenStore,
    grpc: Option<tokio::net::TcpListener>,
    ops: Option<tokio::net::TcpListener>,
}

/// An instance not heard from for this long no longer counts (3 announcements missed).
const INSTANCE_TTL: Duration = Duration::from_secs(3);
const INSTANCE_ANNOUNCE: Duration = Duration::from_secs(1);

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("presence_service::App")
    }
}

/// A read-only handle on a running instance's state (tests compare instances with it).
#[derive(Clone, Debug)]
pub struct Handle(Arc<Mutex<Tracker>>);

impl Handle {
    /// Status, last seen (unix ms) and socket count of a user, as this instance sees it.
    pub fn get(&self, user_id: i64) -> (Status, i64, u32) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(user_id, proto::time::now_ms())
    }
}

impl App {
    /// Connects, subscribes and asks the gateways to report.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        // Before anything else: an open gRPC API must not start beyond loopback.
        if let Some(addr) = settings.grpc_listen {
            settings
                .grpc_keys
                .check_exposure(addr)
                .map_err(anyhow::Error::msg)?;
        }
        let bus = settings.bus.connect("presence-service").await?;
        let store = match &settings.store {
            StoreSettings::Memory => {
                tracing::warn!("no database configured: last_seen is not kept across restarts");
                LastSeenStore::Memory
            }
            StoreSettings::Postgres(url) => LastSeenStore::connect_postgres(url).await?,
            StoreSettings::Sqlite(path) => LastSeenStore::open_sqlite(path).await?,
        };
        let grpc = match settings.grpc_listen {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
            None => None,
        };
        let ops = match settings.http_listen {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
            None => None,
        };
        let routing = bus.subscribe(subjects::ROUTING_ALL).await?;
        let queries = bus
            .queue_subscribe(subjects::PRESENCE_GET, subjects::PRESENCE_SERVICE_QUEUE)
            .await?;
        let timing = Timing {
            grace_ms: ms(settings.grace),
            warmup_ms: ms(settings.warmup),
        };
        let tracker = Arc::new(Mutex::new(Tracker::new(timing, proto::time::now_ms())));
        let instances = bus.subscribe(subjects::PRESENCE_INSTANCES).await?;
        bus.publish(subjects::GATEWAY_RESYNC, Bytes::new()).await?;
        let instance_id = {
            use std::hash::{BuildHasher, Hasher};
            // A random id without a dependency: std's hasher keys are random per process.
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_i64(proto::time::now_ms());
            h.finish()
        };
        Ok(App {
            bus,
            settings,
            tracker,
            routing,
            queries,
            instances,
            instance_id,
            store,
            grpc,
            ops,
        })
    }

    /// The bound gRPC address, if served.
    pub fn grpc_addr(&self) -> Option<std::net::SocketAddr> {
        self.grpc.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// A handle on this instance's state.
    pub fn handle(&self) -> Handle {
        Handle(self.tracker.clone())
    }

    /// Serves until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let App {
            bus,
            settings,
            tracker,
            mut routing,
            mut queries,
            mut instances,
            instance_id,
            store,
            grpc,
            ops,
        } = self;
        let ops_task = ops.map(|l| {
            tokio::spawn(bus::ops::serve(
                l,
                Arc::new(Readiness {
                    bus: bus.clone(),
                    tracker: tracker.clone(),
                    metrics: Metrics::new(),
                }),
            ))
        });
        let stop_grpc = CancellationToken::new();
        let grpc_task = grpc.map(|listener| {
            let svc = grpc::PresenceGrpc {
                tracker: tracker.clone(),
                store: store.clone(),
            };
            tokio::spawn(grpc::serve(
                listener,
                svc,
                settings.grpc_keys.clone(),
                stop_grpc.clone(),
            ))
        });
        // last_seen writes leave the event loop: batched by a writer task.
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::channel::<(i64, i64)>(65_536);
        let writer_store = store.clone();
        let writer = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(256);
            while seen_rx.recv_many(&mut batch, 256).await > 0 {
                if let Err(e) = writer_store.save(&batch).await {
                    tracing::warn!(error = %e, n = batch.len(), "last_seen not saved");
                }
                batch.clear();
            }
        });
        let mut peers: std::collections::HashMap<u64, tokio::time::Instant> = Default::default();
        let mut heartbeats = bus::heartbeat::Assembler::default();
        let mut announce = tokio::time::interval(INSTANCE_ANNOUNCE);
        let mut tick = tokio::time::interval(settings.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        tracing::info!("presence-service running");
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(m) = routing.next() => apply(&tracker, &mut heartbeats, &m),
                Some(m) = instances.next() => {
                    if let Ok(b) = <[u8; 8]>::try_from(&m.payload[..]) {
                        peers.insert(u64::from_be_bytes(b), tokio::time::Instant::now());
                    }
                }
                _ = announce.tick() => {
                    let _ = bus.publish(subjects::PRESENCE_INSTANCES, Bytes::copy_from_slice(&instance_id.to_be_bytes())).await;
                }
                Some(q) = queries.next() => {
                    // May read the database: answered off the event loop.
                    let (bus, tracker, store) = (bus.clone(), tracker.clone(), store.clone());
                    tokio::spawn(async move {
                        let reply = answer(&tracker, &store, &q.payload).await;
                        if let Err(e) = bus.respond(&q, reply).await {
                            tracing::warn!(error = %e, "presence reply failed");
                        }
                    });
                }
                _ = tick.tick() => {
                    let changes = tracker
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .tick(proto::time::now_ms());
                    for c in changes.iter().filter(|c| c.status == Status::Offline) {
                        let _ = seen_tx.try_send((c.user_id, c.last_seen_ms));
                    }
                    peers.retain(|_, seen| seen.elapsed() < INSTANCE_TTL);
                    // Every instance keeps its state current; only the leader speaks.
                    let leader = peers.keys().all(|p| *p >= instance_id);
                    if !leader {
                        continue;
                    }
                    for c in changes {
                        let ev = pb::PresenceChange {
                            user_id: c.user_id,
                            status: c.status.as_str().to_owned(),
                            last_seen_ms: c.last_seen_ms,
                        };
                        if let Err(e) = bus.publish(subjects::PRESENCE_CHANGES, Bytes::from(ev.encode_to_vec())).await {
                            tracing::warn!(error = %e, "presence change not published");
                        }
                    }
                }
            }
        }
        tracing::info!("presence-service stopping");
        if let Some(t) = ops_task {
            t.abort();
        }
        stop_grpc.cancel();
        if let Some(t) = grpc_task {
            let _ = t.await;
        }
        drop(seen_tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
        Ok(())
    }
}

/// What `/readyz` and `/metrics` report.
struct Readiness {
    bus: Bus,
    tracker: Arc<Mutex<Tracker>>,
    metrics: Metrics,
}

/// presence-service's metrics, declared once each ([`bus::metrics`]). Both are gauges read
/// from the tracker at each scrape.
struct Metrics {
    registry: bus::metrics::Registry,
    /// `indaba_presence_users_online`.
    users_online: bus::metrics::Gauge,
    /// `indaba_presence_sockets`.
    sockets: bus::metrics::Gauge,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = bus::metrics::Registry::default();
        let users_online = registry.gauge(
            "indaba_presence_users_online",
            "Users with at least one socket.",
        );
        let sockets = registry.gauge("indaba_presence_sockets", "Sockets across all gateways.");
        Metrics {
            registry,
            users_online,
            sockets,
        }
    }
}

impl bus::ops::Probe for Readiness {
    fn ready(&self) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        let connected = self.bus.is_connected();
        Box::pin(async move {
            if connected {
                Ok(())
            } else {
                Err("no NATS connection".into())
            }
        })
    }

    fn metrics(&self) -> String {
        let (online, sockets) = self
            .tracker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counts();
        let gauge = |n| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics.users_online.set(gauge(online));
        self.metrics.sockets.set(gauge(sockets));
        self.metrics.registry.render()
    }
}

fn apply(tracker: &Mutex<Tracker>, heartbeats: &mut bus::heartbeat::Assembler, m: &bus::Message) {
    let now = proto::time::now_ms();
    let mut t = tracker.lock().unwrap_or_else(|e| e.into_inner());
    let payload = &m.payload[..];
    let res = match m.subject.as_str() {
        subjects::CONN_EVENTS => pb::ConnectionEvent::decode(payload).map(|ev| match ev.kind() {
            pb::connection_event::Kind::Up => {
                t.up(&ev.gateway_id, ev.user_id, &ev.connection_id, now)
            }
            pb::connection_event::Kind::Down => {
                t.down(&ev.gateway_id, ev.user_id, &ev.connection_id, now)
            }
            pb::connection_event::Kind::Unspecified => {}
        }),
        subjects::SOCKET_STATUS => pb::SocketStatus::decode(payload)
            .map(|s| t.status(&s.gateway_id, s.user_id, &s.connection_id, s.away, now)),
        subjects::GATEWAY_HEARTBEAT => pb::GatewayHeartbeat::decode(payload).map(|hb| {
            let Some(hb) = heartbeats.push(hb) else {
                return;
            };
            let sockets: Vec<(i64, String, bool)> = hb
                .sockets
                .into_iter()
                .map(|s| (s.user_id, s.connection_id, s.away))
                .collect();
            t.heartbeat(
                &hb.gateway_id,
                &sockets,
                i64::from(hb.interval_ms),
                hb.stopping,
                now,
            )
        }),
        _ => Ok(()),
    };
    if let Err(e) = res {
        tracing::warn!(error = %e, subject = %m.subject, "undecodable routing message");
    }
}

/// Statuses of `users`; last_seen of users not in memory comes from the store.
pub async fn lookup(
    tracker: &Mutex<Tracker>,
    store: &LastSeenStore,
    users: &[i64],
) -> Vec<pb::UserPresence> {
    let now = proto::time::now_ms();
    let mut out: Vec<pb::UserPresence> = {
        let t = tracker.lock().unwrap_or_else(|e| e.into_inner());
        users
            .iter()
            .map(|u| {
                let (status, last_seen_ms, connections) = t.get(*u, now);
                pb::UserPresence {
                    user_id: *u,
                    status: status.as_str().to_owned(),
                    last_seen_ms,
                    connections,
                }
            })
            .collect()
    };
    let unknown: Vec<i64> = out
        .iter()
        .filter(|p| p.connections == 0 && p.last_seen_ms == 0)
        .map(|p| p.user_id)
        .collect();
    if !unknown.is_empty() {
        match store.load(&unknown).await {
            Ok(found) => {
                for p in &mut out {
                    if let Some(at) = found.get(&p.user_id) {
                        p.last_seen_ms = *at;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "last_seen lookup failed"),
        }
    }
    out
}

/// Checks a presence query: at most [`MAX_QUERY_USERS`] positive ids.
pub fn validate_query(users: &[i64]) -> Result<(), String> {
    if users.len() > MAX_QUERY_USERS {
        return Err(format!("at most {MAX_QUERY_USERS} users per query"));
    }
    if users.iter().any(|u| *u <= 0) {
        return Err("user ids must be positive integers".into());
    }
    Ok(())
}

async fn answer(tracker: &Mutex<Tracker>, store: &LastSeenStore, payload: &[u8]) -> Bytes {
    let resp = match pb::GetPresenceRequest::decode(payload) {
        Err(e) => pb::GetPresenceResponse {
            users: Vec::new(),
            error: Some(proto::pb_error(
                ErrorCode::InvalidField,
                format!("undecodable request: {e}"),
            )),
        },
        Ok(req) => match validate_query(&req.user_ids) {
            Err(msg) => pb::GetPresenceResponse {
                users: Vec::new(),
                error: Some(proto::pb_error(ErrorCode::InvalidField, msg)),
            },
            Ok(()) => pb::GetPresenceResponse {
                users: lookup(tracker, store, &req.user_ids).await,
                error: None,
            },
        },
    };
    Bytes::from(resp.encode_to_vec())
}

/// The distributed-mode program: settings from the environment, run until SIGTERM/SIGINT.
/// Shared by the `presence-service` binary and `indaba presence-service`, so one image serves every role alike.
pub async fn run_from_env() -> anyhow::Result<()> {
    let app = App::build(Settings::from_env()?).await?;
    app.run(bus::runtime::shutdown_signal()).await
}
