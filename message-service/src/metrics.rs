//! Prometheus counters of message-service, served on the operations port.
//!
//! Process-wide atomics: one service per process in production, and recording stays a
//! relaxed add wherever the event happens (store errors surface in many places).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bus::ops::write_metric;

/// A counter that lives with what it counts (the route table holds one per request route,
/// so the `op` labels and their counters cannot fall out of step).
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Zero, usable in a `static`.
    pub(crate) const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    /// Counts one.
    pub(crate) fn add(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    /// The count so far.
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

static MESSAGES_STORED: AtomicU64 = AtomicU64::new(0);
static STORE_ERRORS: AtomicU64 = AtomicU64::new(0);
static BUS_ERRORS: AtomicU64 = AtomicU64::new(0);
static OUTBOX_REPUBLISHED: AtomicU64 = AtomicU64::new(0);
static CAUGHT_UP: AtomicU64 = AtomicU64::new(0);
static GROUP_COMMITS: AtomicU64 = AtomicU64::new(0);
static GROUP_COMMIT_SENDS: AtomicU64 = AtomicU64::new(0);
static PUSH_JOBS_SKIPPED: AtomicU64 = AtomicU64::new(0);

/// A new message was committed.
pub(crate) fn message_stored() {
    MESSAGES_STORED.fetch_add(1, Relaxed);
}

/// The database failed (not a rejected request).
pub(crate) fn store_error() {
    STORE_ERRORS.fetch_add(1, Relaxed);
}

/// A publish to NATS failed.
pub(crate) fn bus_error() {
    BUS_ERRORS.fetch_add(1, Relaxed);
}

/// Orphaned deliveries republished by the outbox sweeper.
pub(crate) fn outbox_republished(n: usize) {
    OUTBOX_REPUBLISHED.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Relaxed);
}

/// Recent messages published again to a gateway where a recipient's socket just opened.
pub(crate) fn caught_up(n: usize) {
    CAUGHT_UP.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Relaxed);
}

/// A group commit of `n` sends ran (their ratio is the mean batch size).
pub(crate) fn group_commit(n: usize) {
    GROUP_COMMITS.fetch_add(1, Relaxed);
    GROUP_COMMIT_SENDS.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Relaxed);
}

/// A message needed no push job: every recipient had a socket when it was routed.
pub(crate) fn push_job_skipped() {
    PUSH_JOBS_SKIPPED.fetch_add(1, Relaxed);
}

/// The Prometheus text exposition; `requests` are the `op` labels of
/// `indaba_requests_total` with their counts (the route table's request routes, in order).
pub(crate) fn render<'a>(requests: impl Iterator<Item = (&'a str, u64)>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    out.push_str("# HELP indaba_requests_total Requests answered, by operation.\n# TYPE indaba_requests_total counter\n");
    for (op, n) in requests {
        let _ = writeln!(out, "indaba_requests_total{{op=\"{op}\"}} {n}");
    }
    write_metric(
        &mut out,
        "indaba_messages_stored_total",
        "counter",
        "Messages committed.",
        MESSAGES_STORED.load(Relaxed),
    );
    write_metric(
        &mut out,
        "indaba_store_errors_total",
        "counter",
        "Database failures.",
        STORE_ERRORS.load(Relaxed),
    );
    write_metric(
        &mut out,
        "indaba_bus_errors_total",
        "counter",
        "Failed NATS publishes.",
        BUS_ERRORS.load(Relaxed),
    );
    write_metric(
        &mut out,
        "indaba_outbox_republished_total",
        "counter",
        "Deliveries republished from the outbox after their writer died.",
        OUTBOX_REPUBLISHED.load(Relaxed),
    );
    write_metric(
        &mut out,
        "indaba_catch_up_messages_total",
        "counter",
        "Recent messages published again to a gateway where a recipient's socket just opened.",
        CAUGHT_UP.load(Relaxed),
    );
    write_metric(
        &mut out,
        "indaba_group_commits_total",
        "counter",
        "Group-commit transactions run.",
        GROUP_COMMITS.load(Relaxed),
    );
    write_metric(
        &mut out,
        "indaba_group_commit_sends_total",
        "counter",
        "Sends stored through group commit (divided by indaba_group_commits_total: mean batch size).",
        GROUP_COMMIT_SENDS.load(Relaxed),
    );
    write_metric(
        &mut out,
        "indaba_push_jobs_skipped_total",
        "counter",
        "Messages that needed no push job: every recipient had a socket when the message was routed.",
        PUSH_JOBS_SKIPPED.load(Relaxed),
    );
    out
}
