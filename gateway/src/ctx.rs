//! The state one gateway shares between its connections: configuration, the bus, the hub of
//! local sockets, the token verifier, counters and budgets. Everything above this module
//! takes a `&Ctx`; nothing here knows about doors or wire formats.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bus::Bus;
use tokio_util::sync::CancellationToken;

use crate::send_queue::SendQueue;
use crate::settings::Settings;
use crate::{auth, hub, limits, metrics};

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
    /// Open connections per client address.
    pub(crate) open_per_ip: Arc<limits::OpenPerIp>,
    /// Per-user budgets on this gateway, shared by every door (see `backend::spend`).
    pub(crate) budgets: Budgets,
    /// Sends on their way to message-service, batched while others are in flight.
    pub(crate) sends: Arc<SendQueue>,
    /// The local attachment directory this gateway serves signed URLs of, if any.
    pub(crate) blobs: Option<Arc<storage::Local>>,
}

/// The per-user budgets. A budget is per user, not per connection: a user's sockets, event
/// streams and REST calls on this gateway all spend the same one, and closing a socket
/// does not refill it.
#[derive(Debug)]
pub(crate) struct Budgets {
    /// Chat messages (`INDABA_CHAT_RATE_PER_10S`).
    pub(crate) chat: limits::UserBudget,
    /// Typing state changes that would go out: 2 per second, bursts of 6.
    pub(crate) typing: limits::UserBudget,
    /// Read-receipt submissions (a frame or a request of up to 500 ids): 10 per second,
    /// bursts of 30.
    pub(crate) receipts: limits::UserBudget,
    /// REST requests and event-stream opens (`INDABA_REST_RATE_PER_10S`).
    pub(crate) rest: limits::UserBudget,
    /// New conversations (`INDABA_CONVERSATION_CREATE_RATE_PER_MIN`).
    pub(crate) create_conversation: limits::UserBudget,
}

impl Budgets {
    fn new(s: &Settings) -> Budgets {
        let per = |quota, secs| limits::UserBudget::new(quota, Duration::from_secs(secs));
        Budgets {
            chat: per(s.chat_rate_per_10s, 10),
            typing: per(6, 3),
            receipts: per(30, 3),
            rest: per(s.rest_rate_per_10s, 10),
            create_conversation: per(s.conversation_create_rate_per_min, 60),
        }
    }
}

impl Ctx {
    /// Fresh state for a gateway with these parts.
    pub(crate) fn new(
        settings: Settings,
        bus: Bus,
        verifier: auth::Verifier,
        blobs: Option<Arc<storage::Local>>,
    ) -> Ctx {
        let metrics: Arc<metrics::Metrics> = Arc::default();
        let sends = Arc::new(SendQueue::new(
            bus.clone(),
            settings.request_timeout,
            metrics.clone(),
            settings.send_batches,
            settings.send_queue_budget,
        ));
        Ctx {
            budgets: Budgets::new(&settings),
            sends,
            settings,
            bus,
            hub: hub::Hub::default(),
            verifier,
            next_conn: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
            draining: CancellationToken::new(),
            routing_lock: tokio::sync::Mutex::new(()),
            metrics,
            per_ip: limits::PerIp::default(),
            open_per_ip: Arc::default(),
            blobs,
        }
    }
}
