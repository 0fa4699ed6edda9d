//! Prometheus counters of message-service, served on the operations port.
//!
//! Process-wide atomics: one service per process in production, and recording stays a
//! relaxed add wherever the event happens (store errors surface in many places).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bus::ops::write_metric;

/// Requests answered, by operation (the `op` label; bounded).
pub const OPS: [&str; 11] = [
    "send",
    "create_conversation",
    "get_conversation",
    "mark_read",
    "typing",
    "list_messages",
    "list_conversations",
    "update_participants",
    "get_message",
    "unread_counts",
    "messages_since",
];

static REQUESTS: [AtomicU64; 11] = [const { AtomicU64::new(0) }; 11];
static MESSAGES_STORED: AtomicU64 = AtomicU64::new(0);
static STORE_ERRORS: AtomicU64 = AtomicU64::new(0);
static BUS_ERRORS: AtomicU64 = AtomicU64::new(0);
static OUTBOX_REPUBLISHED: AtomicU64 = AtomicU64::new(0);
static CAUGHT_UP: AtomicU64 = AtomicU64::new(0);
static GROUP_COMMITS: AtomicU64 = AtomicU64::new(0);
static GROUP_COMMIT_SENDS: AtomicU64 = AtomicU64::new(0);
static PUSH_JOBS_SKIPPED: AtomicU64 = AtomicU64::new(0);

/// A request of operation `OPS[i]` was answered.
pub fn request(i: usize) {
    if let Some(c) = REQUESTS.get(i) {
        c.fetch_add(1, Relaxed);
    }
}

/// A new message was committed.
pub fn message_stored() {
    MESSAGES_STORED.fetch_add(1, Relaxed);
}

/// The database failed (not a rejected request).
pub fn store_error() {
    STORE_ERRORS.fetch_add(1, Relaxed);
}

/// A publish to NATS failed.
pub fn bus_error() {
    BUS_ERRORS.fetch_add(1, Relaxed);
}

/// Orphaned deliveries republished by the outbox sweeper.
pub fn outbox_republished(n: usize) {
    OUTBOX_REPUBLISHED.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Relaxed);
}

/// Recent messages published again to a gateway where a recipient's socket just opened.
pub fn caught_up(n: usize) {
    CAUGHT_UP.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Relaxed);
}

/// A group commit of `n` sends ran (their ratio is the mean batch size).
pub fn group_commit(n: usize) {
    GROUP_COMMITS.fetch_add(1, Relaxed);
    GROUP_COMMIT_SENDS.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Relaxed);
}

/// A message needed no push job: every recipient had a socket when it was routed.
pub fn push_job_skipped() {
    PUSH_JOBS_SKIPPED.fetch_add(1, Relaxed);
}

/// The Prometheus text exposition.
pub fn render() -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    out.push_str("# HELP indaba_requests_total Requests answered, by operation.\n# TYPE indaba_requests_total counter\n");
    for (op, c) in OPS.iter().zip(&REQUESTS) {
        let _ = writeln!(
            out,
            "indaba_requests_total{{op=\"{op}\"}} {}",
            c.load(Relaxed)
        );
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
