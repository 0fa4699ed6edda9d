//! presence-service: who is online, across many gateways, without flapping.
//!
//! Layout:
//! - [`tracker`]: the state machine (no I/O).
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

pub mod tracker;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::Bus;
use bytes::Bytes;
use futures_util::StreamExt;
use prost::Message as _;
use proto::{pb, subjects, ErrorCode};

pub use tracker::{Status, Timing, Tracker};

/// How the service reaches the bus.
#[derive(Debug, Clone)]
pub enum BusSettings {
    /// Connect to NATS at this URL.
    Nats(String),
    /// Use an existing bus (the single-node program).
    Shared(Bus),
}

/// Most users one presence query may name.
pub const MAX_QUERY_USERS: usize = 500;

/// presence-service configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The bus.
    pub bus: BusSettings,
    /// Offline only after the last socket has been gone this long (default 5 s).
    pub grace: Duration,
    /// After start, learn silently this long (default 3 s) while gateways report in.
    pub warmup: Duration,
    /// How often timers are evaluated (default 250 ms).
    pub tick: Duration,
}

impl Settings {
    /// Defaults with the given bus.
    pub fn new(bus: BusSettings) -> Settings {
        Settings {
            bus,
            grace: Duration::from_secs(5),
            warmup: Duration::from_secs(3),
            tick: Duration::from_millis(250),
        }
    }

    /// Reads `NATS_URL` and `INDABA_PRESENCE_GRACE_SECS` from the environment.
    pub fn from_env() -> anyhow::Result<Settings> {
        let nats =
            std::env::var(proto::env::NATS_URL).unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let mut s = Settings::new(BusSettings::Nats(nats));
        if let Ok(v) = std::env::var(proto::env::PRESENCE_GRACE_SECS) {
            let secs: u64 = v.parse().map_err(|_| {
                anyhow::anyhow!(
                    "{} must be a number of seconds",
                    proto::env::PRESENCE_GRACE_SECS
                )
            })?;
            s.grace = Duration::from_secs(secs);
        }
        Ok(s)
    }
}

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
        let bus = match &settings.bus {
            BusSettings::Nats(url) => Bus::connect_nats(url, "presence-service").await?,
            BusSettings::Shared(b) => b.clone(),
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
        })
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
        } = self;
        let mut peers: std::collections::HashMap<u64, tokio::time::Instant> = Default::default();
        let mut announce = tokio::time::interval(INSTANCE_ANNOUNCE);
        let mut tick = tokio::time::interval(settings.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        tracing::info!("presence-service running");
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(m) = routing.next() => apply(&tracker, &m),
                Some(m) = instances.next() => {
                    if let Ok(b) = <[u8; 8]>::try_from(&m.payload[..]) {
                        peers.insert(u64::from_be_bytes(b), tokio::time::Instant::now());
                    }
                }
                _ = announce.tick() => {
                    let _ = bus.publish(subjects::PRESENCE_INSTANCES, Bytes::copy_from_slice(&instance_id.to_be_bytes())).await;
                }
                Some(q) = queries.next() => {
                    let reply = answer(&tracker, &q.payload);
                    if let Err(e) = bus.respond(&q, reply).await {
                        tracing::warn!(error = %e, "presence reply failed");
                    }
                }
                _ = tick.tick() => {
                    let changes = tracker
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .tick(proto::time::now_ms());
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
        Ok(())
    }
}

fn apply(tracker: &Mutex<Tracker>, m: &bus::Message) {
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

fn answer(tracker: &Mutex<Tracker>, payload: &[u8]) -> Bytes {
    let resp = match pb::GetPresenceRequest::decode(payload) {
        Err(e) => pb::GetPresenceResponse {
            users: Vec::new(),
            error: Some(proto::pb_error(
                ErrorCode::InvalidField,
                format!("undecodable request: {e}"),
            )),
        },
        Ok(req) if req.user_ids.len() > MAX_QUERY_USERS => pb::GetPresenceResponse {
            users: Vec::new(),
            error: Some(proto::pb_error(
                ErrorCode::InvalidField,
                format!("at most {MAX_QUERY_USERS} users per query"),
            )),
        },
        Ok(req) => {
            let now = proto::time::now_ms();
            let t = tracker.lock().unwrap_or_else(|e| e.into_inner());
            pb::GetPresenceResponse {
                users: req
                    .user_ids
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
                    .collect(),
                error: None,
            }
        }
    };
    Bytes::from(resp.encode_to_vec())
}
