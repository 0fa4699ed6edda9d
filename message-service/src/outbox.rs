//! Outbox cleanup: the rows of published deliveries are deleted in batches, off the
//! request path.
//!
//! Whoever publishes a delivery (and, with push jobs, stores its job) reports the message
//! id through [`Completions`]; one task deletes the reported rows in one statement every
//! [`CLEANUP_EVERY`]. A lost report costs nothing but a republish: the row's lease runs
//! out and the sweeper publishes it again (gateways drop the repeat).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::store::Store;

/// Pause between outbox cleanups (see [`clean_up`]).
const CLEANUP_EVERY: Duration = Duration::from_millis(50);

/// Most rows one cleanup statement deletes.
const CLEANUP_BATCH: usize = 4096;

/// How long this instance may hold a row before the sweep renews its lease: well inside
/// the lease, so a live writer's row never looks orphaned (see [`Completions::overdue`]).
pub(crate) const RENEW_AFTER: Duration = Duration::from_secs(2);

/// Reports of published deliveries (bounded: when full, the sweeper redoes the message),
/// and the rows this instance committed and is still working on.
///
/// A row's lease says "its writer is still on it". Under overload a live writer may take
/// longer than the lease to publish (its publish queue, the push queue and the cleanup
/// all wait): the sweeper then republished deliveries that were merely late, which added
/// load exactly when there was too much. So the writer holds its rows here from commit to
/// cleanup, and the sweep renews the leases of those held longer than [`RENEW_AFTER`]; a
/// dead writer renews nothing, and its rows become orphans one lease after its last renewal.
#[derive(Debug, Clone)]
pub(crate) struct Completions {
    tx: mpsc::Sender<i64>,
    held: Arc<Mutex<HashMap<i64, Instant>>>,
}

impl Completions {
    /// The reporting side and the receiver [`clean_up`] drains.
    pub(crate) fn channel() -> (Completions, mpsc::Receiver<i64>) {
        let (tx, rx) = mpsc::channel(65_536);
        (
            Completions {
                tx,
                held: Arc::default(),
            },
            rx,
        )
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Instant>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This instance committed `message_id` and will publish it: its row is not an orphan.
    pub(crate) fn hold(&self, message_id: i64) {
        self.held().insert(message_id, Instant::now());
    }

    /// The delivery of `message_id` is out: its outbox row may go.
    pub(crate) fn complete(&self, message_id: i64) {
        if self.tx.try_send(message_id).is_err() {
            tracing::debug!(
                message_id,
                "outbox completion queue full; sweeper will redo it"
            );
            self.release(message_id);
        }
    }

    /// This instance leaves `message_id` to the sweeper (its publish or its push job
    /// failed): the lease is no longer renewed, so the row is republished once it runs out.
    pub(crate) fn release(&self, message_id: i64) {
        self.held().remove(&message_id);
    }

    /// Held rows whose lease the sweep must renew: held longer than `after`.
    pub(crate) fn overdue(&self, after: Duration) -> Vec<i64> {
        let now = Instant::now();
        self.held()
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= after)
            .map(|(id, _)| *id)
            .collect()
    }

    fn forget(&self, message_ids: &[i64]) {
        let mut held = self.held();
        for id in message_ids {
            held.remove(id);
        }
    }
}

/// Deletes outbox rows of published deliveries, batched (one statement per batch).
///
/// It waits [`CLEANUP_EVERY`] between statements so one statement (and one commit: a WAL
/// flush) clears many rows; without the pause it ran a commit per handful of messages
/// under load. A row outliving its publish by that much costs nothing: rows are leased
/// for 5 s before anyone republishes.
pub(crate) async fn clean_up(store: Store, done: Completions, mut rx: mpsc::Receiver<i64>) {
    let mut batch = Vec::with_capacity(CLEANUP_BATCH);
    while rx.recv_many(&mut batch, CLEANUP_BATCH).await > 0 {
        tokio::time::sleep(CLEANUP_EVERY).await;
        while batch.len() < CLEANUP_BATCH {
            let Ok(id) = rx.try_recv() else { break };
            batch.push(id);
        }
        if let Err(e) = store.complete_outbox(&batch).await {
            // Rows stay and get republished after their lease; gateways de-duplicate.
            tracing::warn!(error = %e, n = batch.len(), "outbox cleanup failed");
        }
        // Deleted, or left to the sweeper: either way no longer this instance's to renew.
        done.forget(&batch);
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn held_rows_are_overdue_until_completed_or_released() {
        let (done, mut rx) = Completions::channel();
        done.hold(1);
        done.hold(2);
        done.hold(3);
        assert!(
            done.overdue(RENEW_AFTER).is_empty(),
            "fresh rows need no renewal"
        );
        tokio::time::advance(RENEW_AFTER).await;
        let mut overdue = done.overdue(RENEW_AFTER);
        overdue.sort_unstable();
        assert_eq!(overdue, vec![1, 2, 3]);
        done.release(2);
        done.complete(3);
        assert_eq!(rx.try_recv().ok(), Some(3));
        // Completed rows stay held until the cleanup deleted them.
        let mut overdue = done.overdue(RENEW_AFTER);
        overdue.sort_unstable();
        assert_eq!(overdue, vec![1, 3], "a released row is the sweeper's");
        done.forget(&[3]);
        assert_eq!(done.overdue(RENEW_AFTER), vec![1]);
    }
}
