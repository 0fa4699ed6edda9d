//! Prometheus counters of push-service (process-wide atomics).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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

const LABELS: [&str; 7] = [
    "queued",
    "skipped_active",
    "skipped_muted",
    "sent",
    "pruned",
    "retried",
    "dead_lettered",
];

static OUTCOMES: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];
static JOBS: AtomicU64 = AtomicU64::new(0);

/// Counts an outcome.
pub fn outcome(k: Kind) {
    OUTCOMES[k as usize].fetch_add(1, Relaxed);
}

/// A job was delivered to this instance.
pub fn job() {
    JOBS.fetch_add(1, Relaxed);
}

/// The Prometheus text exposition.
pub fn render() -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "# HELP indaba_push_notifications_total Notifications by outcome.\n# TYPE indaba_push_notifications_total counter\n",
    );
    for (label, c) in LABELS.iter().zip(&OUTCOMES) {
        let _ = writeln!(
            out,
            "indaba_push_notifications_total{{outcome=\"{label}\"}} {}",
            c.load(Relaxed)
        );
    }
    bus::ops::write_metric(
        &mut out,
        "indaba_push_jobs_total",
        "counter",
        "Push jobs received (redeliveries included).",
        JOBS.load(Relaxed),
    );
    out
}
