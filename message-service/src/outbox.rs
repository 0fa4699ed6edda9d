//! Outbox cleanup: the rows of published deliveries are deleted in batches, off the
//! request path.
//!
//! Whoever publishes a delivery (and, with push jobs, stores its job) reports the message
//! id through [`Completions`]; one task deletes the reported rows in one statement every
//! [`CLEANUP_EVERY`]. A lost report costs nothing but a republish: the row's lease runs
//! out and the sweeper publishes it again (gateways drop the repeat).

use std::time::Duration;

use tokio::sync::mpsc;

use crate::store::Store;

/// Pause between outbox cleanups (see [`clean_up`]).
const CLEANUP_EVERY: Duration = Duration::from_millis(50);

/// Most rows one cleanup statement deletes.
const CLEANUP_BATCH: usize = 4096;

/// Reports of published deliveries (bounded: when full, the sweeper redoes the message).
#[derive(Debug, Clone)]
pub(crate) struct Completions(mpsc::Sender<i64>);

impl Completions {
    /// The reporting side and the receiver [`clean_up`] drains.
    pub(crate) fn channel() -> (Completions, mpsc::Receiver<i64>) {
        let (tx, rx) = mpsc::channel(65_536);
        (Completions(tx), rx)
    }

    /// The delivery of `message_id` is out: its outbox row may go.
    pub(crate) fn complete(&self, message_id: i64) {
        if self.0.try_send(message_id).is_err() {
            tracing::debug!(
                message_id,
                "outbox completion queue full; sweeper will redo it"
            );
        }
    }
}

/// Deletes outbox rows of published deliveries, batched (one statement per batch).
///
/// It waits [`CLEANUP_EVERY`] between statements so one statement (and one commit: a WAL
/// flush) clears many rows; without the pause it ran a commit per handful of messages
/// under load. A row outliving its publish by that much costs nothing: rows are leased
/// for 5 s before anyone republishes.
pub(crate) async fn clean_up(store: Store, mut rx: mpsc::Receiver<i64>) {
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
        batch.clear();
    }
}
