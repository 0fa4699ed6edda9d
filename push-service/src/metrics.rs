//! Prometheus metrics of push-service, declared once each ([`bus::metrics`]); one set per
//! process (one service per process in production).

use std::sync::LazyLock;

use bus::metrics::{Counter, Registry};

/// What happened to a notification (the `outcome` label; bounded).
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Added to a batch for an offline recipient.
    Queued,
    /// Recipient online or recently active: no push.
    SkippedActive,
    /// Conversation muted.
    SkippedMuted,
    /// Accepted by a provider.
    Sent,
    /// Token dead: device forgotten.
    Pruned,
    /// Will be retried.
    Retried,
    /// Given up.
    DeadLettered,
}

/// The `outcome` label values, in the order of [`Kind`].
const OUTCOMES: [&str; 7] = [
    "queued",
    "skipped_active",
    "skipped_muted",
    "sent",
    "pruned",
    "retried",
    "dead_lettered",
];

struct Metrics {
    registry: Registry,
    /// `indaba_push_notifications_total{outcome}`, indexed by [`Kind`].
    outcomes: [Counter; 7],
    /// `indaba_push_jobs_total`.
    jobs: Counter,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let outcomes = registry.counters(
        "indaba_push_notifications_total",
        "Notifications by outcome.",
        "outcome",
        OUTCOMES,
    );
    let jobs = registry.counter(
        "indaba_push_jobs_total",
        "Push jobs received (redeliveries included).",
    );
    Metrics {
        registry,
        outcomes,
        jobs,
    }
});

/// Counts an outcome.
pub fn outcome(k: Kind) {
    METRICS.outcomes[k as usize].inc();
}

/// A job was delivered to this instance.
pub fn job() {
    METRICS.jobs.inc();
}

/// The Prometheus text exposition.
pub fn render() -> String {
    METRICS.registry.render()
}
