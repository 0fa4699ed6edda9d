//! Prometheus counters of message-service, served on the operations port, each declared
//! once with its help text and labels ([`bus::metrics`]).
//!
//! Process-wide: one service per process in production, and recording stays a relaxed
//! add wherever the event happens (store errors surface in many places).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::LazyLock;

use bus::metrics::Registry;

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

/// The counters not kept by the route table.
struct Metrics {
    registry: Registry,
    /// `indaba_messages_stored_total`.
    messages_stored: bus::metrics::Counter,
    /// `indaba_message_changes_total`.
    message_changes: bus::metrics::Counter,
    /// `indaba_store_errors_total`.
    store_errors: bus::metrics::Counter,
    /// `indaba_bus_errors_total`.
    bus_errors: bus::metrics::Counter,
    /// `indaba_outbox_republished_total`.
    outbox_republished: bus::metrics::Counter,
    /// `indaba_outbox_leases_renewed_total`.
    outbox_renewed: bus::metrics::Counter,
    /// `indaba_catch_up_messages_total`.
    caught_up: bus::metrics::Counter,
    /// `indaba_group_commits_total`.
    group_commits: bus::metrics::Counter,
    /// `indaba_group_commit_sends_total`.
    group_commit_sends: bus::metrics::Counter,
    /// `indaba_push_jobs_skipped_total`.
    push_jobs_skipped: bus::metrics::Counter,
    /// `indaba_requests_shed_total{reason="over_bound"|"past_deadline"}`.
    requests_shed: [bus::metrics::Counter; 2],
    /// `indaba_sends_refused_overload_total`.
    sends_refused_overload: bus::metrics::Counter,
    /// `indaba_uploads_created_total`.
    uploads_created: bus::metrics::Counter,
    /// `indaba_storage_errors_total`.
    storage_errors: bus::metrics::Counter,
    /// `indaba_images_processed_total`.
    images_processed: bus::metrics::Counter,
    /// `indaba_image_processing_seconds_total`.
    image_seconds_us: bus::metrics::Counter,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut r = Registry::default();
    Metrics {
        messages_stored: r.counter("indaba_messages_stored_total", "Messages committed."),
        message_changes: r.counter(
            "indaba_message_changes_total",
            "Edits, deletions, reactions and pins committed.",
        ),
        store_errors: r.counter("indaba_store_errors_total", "Database failures."),
        bus_errors: r.counter("indaba_bus_errors_total", "Failed NATS publishes."),
        outbox_republished: r.counter(
            "indaba_outbox_republished_total",
            "Deliveries republished from the outbox after their writer died.",
        ),
        outbox_renewed: r.counter(
            "indaba_outbox_leases_renewed_total",
            "Outbox leases renewed for deliveries this instance is still publishing (late, not orphaned).",
        ),
        caught_up: r.counter(
            "indaba_catch_up_messages_total",
            "Recent messages published again to a gateway where a recipient's socket just opened.",
        ),
        group_commits: r.counter(
            "indaba_group_commits_total",
            "Group-commit transactions run.",
        ),
        group_commit_sends: r.counter(
            "indaba_group_commit_sends_total",
            "Sends stored through group commit (divided by indaba_group_commits_total: mean batch size).",
        ),
        push_jobs_skipped: r.counter(
            "indaba_push_jobs_skipped_total",
            "Messages that needed no push job: every recipient had a socket when the message was routed.",
        ),
        requests_shed: r.counters(
            "indaba_requests_shed_total",
            "Requests not run: over their kind's bound (answered unavailable), or past their requester's deadline (dropped).",
            "reason",
            ["over_bound", "past_deadline"],
        ),
        sends_refused_overload: r.counter(
            "indaba_sends_refused_overload_total",
            "Sends refused with unavailable because the group commit's queue was over its budget.",
        ),
        uploads_created: r.counter("indaba_uploads_created_total", "Presigned upload slots handed out."),
        storage_errors: r.counter(
            "indaba_storage_errors_total",
            "Attachment storage requests that failed (answered unavailable).",
        ),
        images_processed: r.counter(
            "indaba_images_processed_total",
            "Images stripped of metadata and thumbnailed.",
        ),
        image_seconds_us: r.counter(
            "indaba_image_processing_microseconds_total",
            "Time spent decoding, stripping and thumbnailing images (divided by indaba_images_processed_total: mean).",
        ),
        registry: r,
    }
});

/// An upload slot was handed out.
pub(crate) fn upload_created() {
    METRICS.uploads_created.inc();
}

/// A storage request failed.
pub(crate) fn storage_error() {
    METRICS.storage_errors.inc();
}

/// An image was processed in `took`.
pub(crate) fn image_processed(took: std::time::Duration) {
    METRICS.images_processed.inc();
    METRICS
        .image_seconds_us
        .inc_by(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// A new message was committed.
pub(crate) fn message_stored() {
    METRICS.messages_stored.inc();
}

/// A change to a message was committed.
pub(crate) fn message_changed() {
    METRICS.message_changes.inc();
}

/// The database failed (not a rejected request).
pub(crate) fn store_error() {
    METRICS.store_errors.inc();
}

/// A publish to NATS failed.
pub(crate) fn bus_error() {
    METRICS.bus_errors.inc();
}

/// Orphaned deliveries republished by the outbox sweeper.
pub(crate) fn outbox_republished(n: usize) {
    METRICS.outbox_republished.inc_by(count(n));
}

/// Outbox leases renewed by their live writer.
pub(crate) fn outbox_renewed(n: usize) {
    METRICS.outbox_renewed.inc_by(count(n));
}

/// Recent messages published again to a gateway where a recipient's socket just opened.
pub(crate) fn caught_up(n: usize) {
    METRICS.caught_up.inc_by(count(n));
}

/// A group commit of `n` sends ran (their ratio is the mean batch size).
pub(crate) fn group_commit(n: usize) {
    METRICS.group_commits.inc();
    METRICS.group_commit_sends.inc_by(count(n));
}

/// A message needed no push job: every recipient had a socket when it was routed.
pub(crate) fn push_job_skipped() {
    METRICS.push_jobs_skipped.inc();
}

/// A request was refused: its kind's bound was full.
pub(crate) fn shed_over_bound() {
    METRICS.requests_shed[0].inc();
}

/// A send was refused: the group commit's queue was over its budget.
pub(crate) fn send_refused_overload() {
    METRICS.sends_refused_overload.inc();
}

/// A request was dropped or cancelled: its requester had stopped waiting.
pub(crate) fn shed_past_deadline() {
    METRICS.requests_shed[1].inc();
}

/// The Prometheus text exposition; `requests` are the `op` labels of
/// `indaba_requests_total` with their counts (the route table's request routes, in order;
/// the table keeps the counts, so the family is declared here and filled at each scrape).
pub(crate) fn render(requests: impl Iterator<Item = (&'static str, u64)>) -> String {
    let (ops, counts): (Vec<&'static str>, Vec<u64>) = requests.unzip();
    let mut scrape = Registry::default();
    let by_op = scrape.counter_list(
        "indaba_requests_total",
        "Requests answered, by operation.",
        "op",
        ops,
    );
    for (c, n) in by_op.iter().zip(counts) {
        c.inc_by(n);
    }
    scrape.render() + &METRICS.registry.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dashboards and the integration tests read these names and labels.
    #[test]
    fn names_and_labels_are_stable() {
        message_stored();
        let text = render([("send", 2), ("history", 0)].into_iter());
        for line in [
            "# TYPE indaba_requests_total counter\n",
            "indaba_requests_total{op=\"send\"} 2\n",
            "indaba_requests_total{op=\"history\"} 0\n",
            "# HELP indaba_messages_stored_total Messages committed.\n",
            "indaba_catch_up_messages_total 0\n",
            "indaba_push_jobs_skipped_total 0\n",
            // (other tests of this process shed requests: the series, not their value)
            "indaba_requests_shed_total{reason=\"over_bound\"} ",
            "indaba_requests_shed_total{reason=\"past_deadline\"} ",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
        assert!(text.contains("indaba_messages_stored_total "), "{text}");
    }
}
