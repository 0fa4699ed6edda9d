//! Outbox cleanup: the rows of published batches are deleted in batches, off the
//! request path.
//!
//! An outbox row records a committed batch (see the store's `outbox`). Whoever publishes
//! a delivery (and, with push jobs, stores its job) reports the message id through
//! [`Completions`]; once every message of a row is reported, the row is queued, and one
//! task deletes the queued rows in one statement every [`CLEANUP_EVERY`]. A lost report
//! costs nothing but a republish: the row's lease runs out and the sweeper publishes its
//! messages again (gateways drop the repeats).

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

/// A row this instance holds: since when, its messages, and how many of them are not yet
/// reported published (a count, so a report costs the same whatever the batch's size).
#[derive(Debug)]
struct Held {
    since: Instant,
    messages: Vec<i64>,
    pending: usize,
}

/// Which rows this instance holds, and the row of each message not yet reported.
#[derive(Debug, Default)]
struct Holds {
    rows: HashMap<i64, Held>,
    row_of: HashMap<i64, i64>,
}

impl Holds {
    /// Lets go of `row` and of its messages' entries.
    fn release_row(&mut self, row: i64) {
        if let Some(h) = self.rows.remove(&row) {
            for id in h.messages {
                self.row_of.remove(&id);
            }
        }
    }
}

/// Reports of published deliveries (bounded: when full, the sweeper redoes the row), and
/// the rows this instance committed and is still working on.
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
    held: Arc<Mutex<Holds>>,
}

impl Completions {
    /// The reporting side and the receiver [`clean_up`] drains (row ids).
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

    fn held(&self) -> std::sync::MutexGuard<'_, Holds> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This instance committed (or claimed) outbox row `row` holding `messages` and will
    /// publish them: the row is not an orphan. All of a row's messages are held at once,
    /// before any is published, so a row never looks done while some are still unheld. A
    /// row with nothing left to publish (retention removed its messages) goes at once.
    pub(crate) fn hold(&self, row: i64, messages: &[i64]) {
        if row == 0 {
            return;
        }
        if messages.is_empty() {
            self.queue(row);
            return;
        }
        let mut held = self.held();
        let Holds { rows, row_of } = &mut *held;
        let entry = rows.entry(row).or_insert_with(|| Held {
            since: Instant::now(),
            messages: Vec::with_capacity(messages.len()),
            pending: 0,
        });
        for id in messages {
            // A message already pending in this row (the row held twice) counts once.
            if row_of.insert(*id, row) != Some(row) {
                entry.messages.push(*id);
                entry.pending += 1;
            }
        }
    }

    /// The delivery of `message_id` is out; its row may go once its other messages' are.
    pub(crate) fn complete(&self, message_id: i64) {
        let done = {
            let mut held = self.held();
            let Holds { rows, row_of } = &mut *held;
            let Some(row) = row_of.remove(&message_id) else {
                return; // not held here (released, or already reported)
            };
            rows.get_mut(&row).and_then(|h| {
                h.pending = h.pending.saturating_sub(1);
                (h.pending == 0).then_some(row)
            })
        };
        if let Some(row) = done {
            self.queue(row);
        }
    }

    /// Queues a row whose deliveries are all out for deletion.
    fn queue(&self, row: i64) {
        if self.tx.try_send(row).is_err() {
            tracing::debug!(row, "outbox completion queue full; sweeper will redo it");
            self.held().release_row(row);
        }
    }

    /// This instance leaves `message_id`'s row to the sweeper (its publish or its push job
    /// failed): the lease is no longer renewed, so every message of the row is republished
    /// once it runs out.
    pub(crate) fn release(&self, message_id: i64) {
        let mut held = self.held();
        if let Some(row) = held.row_of.get(&message_id).copied() {
            held.release_row(row);
        }
    }

    /// Held rows whose lease the sweep must renew: held longer than `after`.
    pub(crate) fn overdue(&self, after: Duration) -> Vec<i64> {
        let now = Instant::now();
        self.held()
            .rows
            .iter()
            .filter(|(_, h)| now.duration_since(h.since) >= after)
            .map(|(row, _)| *row)
            .collect()
    }

    /// Rows deleted (or left to the sweeper by a failed cleanup): no longer held.
    fn forget(&self, rows: &[i64]) {
        let mut held = self.held();
        for row in rows {
            held.release_row(*row);
        }
    }
}

/// Deletes outbox rows whose deliveries are all published, batched (one statement per
/// batch).
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
            let Ok(row) = rx.try_recv() else { break };
            batch.push(row);
        }
        if let Err(e) = store.complete_outbox(&batch).await {
            // Rows stay and get republished after their lease; gateways de-duplicate.
            tracing::warn!(error = %e, n = batch.len(), "outbox cleanup failed");
        }
        done.forget(&batch);
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_row_goes_once_all_its_messages_are_out() {
        let (done, mut rx) = Completions::channel();
        done.hold(10, &[1, 2]);
        done.hold(20, &[3]);
        assert!(
            done.overdue(RENEW_AFTER).is_empty(),
            "fresh rows need no renewal"
        );
        tokio::time::advance(RENEW_AFTER).await;
        let mut overdue = done.overdue(RENEW_AFTER);
        overdue.sort_unstable();
        assert_eq!(overdue, vec![10, 20]);
        done.complete(1);
        done.complete(1); // a repeated report changes nothing
        assert!(rx.try_recv().is_err(), "message 2 of row 10 is still out");
        done.complete(2);
        assert_eq!(rx.try_recv().ok(), Some(10));
        // Completed rows stay held (renewed) until the cleanup deleted them.
        let mut overdue = done.overdue(RENEW_AFTER);
        overdue.sort_unstable();
        assert_eq!(overdue, vec![10, 20]);
        done.forget(&[10]);
        assert_eq!(done.overdue(RENEW_AFTER), vec![20]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_message_leaves_its_whole_row_to_the_sweeper() {
        let (done, mut rx) = Completions::channel();
        done.hold(10, &[1, 2]);
        done.release(2);
        tokio::time::advance(RENEW_AFTER).await;
        assert!(done.overdue(RENEW_AFTER).is_empty(), "no longer renewed");
        done.complete(1);
        assert!(rx.try_recv().is_err(), "a released row is the sweeper's");
        // A claimed row whose messages retention removed goes at once.
        done.hold(30, &[]);
        assert_eq!(rx.try_recv().ok(), Some(30));
        done.hold(0, &[5]);
        assert!(done.overdue(Duration::ZERO).is_empty(), "0 is no row");
    }
}
