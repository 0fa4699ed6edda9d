//! The state one gateway shares between its connections: configuration, the bus, the hub of
//! local sockets, the token verifier, counters and budgets. Everything above this module
//! takes a `&Ctx`; nothing here knows about doors or wire formats.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use bus::Bus;
use tokio_util::sync::CancellationToken;

use crate::{auth, hub, limits, metrics, Settings};

/// State shared by every connection of one gateway.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// Configuration.
    pub(crate) settings: Settings,
    /// The bus (NATS or in-process).
    pub(crate) bus: Bus,
    /// Local sockets and event streams.
    pub(crate) hub: hub::Hub,
    /// Client token verifier.
    pub(crate) verifier: auth::Verifier,
    /// Source of connection numbers (`<gateway>/<n>`).
    pub(crate) next_conn: AtomicU64,
    /// Cancelled when the gateway shuts down; every connection's close token is a child.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when draining starts: readiness fails and new connections are refused
    /// while existing ones are closed in batches.
    pub(crate) draining: CancellationToken,
    /// Orders connection events and heartbeat snapshots on the wire (see `session`).
    pub(crate) routing_lock: tokio::sync::Mutex<()>,
    /// Prometheus counters.
    pub(crate) metrics: Arc<metrics::Metrics>,
    /// Connection attempts per client address.
    pub(crate) per_ip: limits::PerIp,
    /// Chat-message token buckets per user on this gateway, shared by every door.
    chat_limits: Mutex<HashMap<i64, limits::Bucket>>,
}

impl Ctx {
    /// Fresh state for a gateway with these parts.
    pub(crate) fn new(settings: Settings, bus: Bus, verifier: auth::Verifier) -> Ctx {
        Ctx {
            settings,
            bus,
            hub: hub::Hub::default(),
            verifier,
            next_conn: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
            draining: CancellationToken::new(),
            routing_lock: tokio::sync::Mutex::new(()),
            metrics: Arc::default(),
            per_ip: limits::PerIp::default(),
            chat_limits: Mutex::default(),
        }
    }

    /// Takes one chat-message token for `user_id`; false when the user is over the rate.
    pub(crate) fn allow_chat(&self, user_id: i64) -> bool {
        let rate = f64::from(self.settings.chat_rate_per_10s);
        let mut m = self.chat_limits.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(user_id)
            .or_insert_with(|| limits::Bucket::full(rate, rate / 10.0))
            .take(std::time::Instant::now())
    }

    /// Forgets the user's chat budget (their last connection here closed).
    pub(crate) fn forget_chat_budget(&self, user_id: i64) {
        self.chat_limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&user_id);
    }
}
