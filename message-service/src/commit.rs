//! Group commit: whatever sends arrived while the previous batch was committing go into
//! the next transaction together, so at load one fsync serves many messages and at rest a
//! lone message is committed at once (no waiting to fill a batch).
//!
//! [`Sends`] is the door every send goes through (`ops::send`); [`group_commit`] is the
//! task that drains it. With `INDABA_GROUP_COMMIT=false` the door stores each message in
//! its own transaction and no task runs.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::metrics;
use crate::store::{NewMessage, Sent, Store, StoreError};

/// Most messages one group commit takes.
const MAX_BATCH: usize = 256;
/// Group commits in flight at once on PostgreSQL (one fills while another commits).
const BATCHES_IN_FLIGHT: usize = 2;
/// Sends waiting for the batcher before senders wait in turn.
const QUEUE: usize = 4096;

/// A message waiting to be stored, and who waits for the result.
pub(crate) type PendingSend = (NewMessage, oneshot::Sender<Result<Sent, StoreError>>);

/// Where sends are stored: through the batcher, or directly when group commit is off.
#[derive(Debug)]
pub(crate) struct Sends {
    store: Store,
    batcher: Option<mpsc::Sender<PendingSend>>,
}

impl Sends {
    /// The door, and the receiver [`group_commit`] drains (`None`: group commit is off).
    pub(crate) fn new(
        store: Store,
        group_commit: bool,
    ) -> (Sends, Option<mpsc::Receiver<PendingSend>>) {
        if !group_commit {
            return (
                Sends {
                    store,
                    batcher: None,
                },
                None,
            );
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        (
            Sends {
                store,
                batcher: Some(tx),
            },
            Some(rx),
        )
    }

    /// Stores a message, answering after its transaction committed.
    pub(crate) async fn store(&self, m: NewMessage) -> Result<Sent, StoreError> {
        let Some(batcher) = &self.batcher else {
            return self.store.send_message(&m).await;
        };
        // Replies and mentions take the shared loop, in their own transaction.
        if m.is_rich() {
            return self.store.send_message(&m).await;
        }
        let (tx, rx) = oneshot::channel();
        if batcher.send((m, tx)).await.is_err() {
            return Err(stopping());
        }
        rx.await.unwrap_or_else(|_| Err(stopping()))
    }
}

/// The answer to a send the batcher will never take or answer (the service stops).
fn stopping() -> StoreError {
    StoreError::Rejected {
        code: proto::ErrorCode::Unavailable,
        message: "message-service is stopping; retry".into(),
    }
}

/// Batches in flight at once on `store`. SQLite has one writer at a time: a second batch
/// would only wait in SQLite's busy handler, which sleeps in steps of milliseconds (the
/// single-node program's tail latency at 4,000 msg/s was seconds). PostgreSQL commits two
/// batches side by side.
fn batches_in_flight(store: &Store) -> usize {
    match store {
        Store::Postgres(_) => BATCHES_IN_FLIGHT,
        Store::Sqlite(_) => 1,
    }
}

/// Takes whatever sends are waiting (up to [`MAX_BATCH`]) whenever a batch slot is free,
/// and stores them with one [`Store::send_many`].
pub(crate) async fn group_commit(store: Store, mut rx: mpsc::Receiver<PendingSend>) {
    let slots = Arc::new(Semaphore::new(batches_in_flight(&store)));
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let work = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        let store = store.clone();
        tokio::spawn(async move {
            let (messages, waiters): (Vec<_>, Vec<_>) = work.into_iter().unzip();
            metrics::group_commit(messages.len());
            let results = store.send_many(&messages).await;
            for (w, r) in waiters.into_iter().zip(results) {
                let _ = w.send(r);
            }
            drop(permit);
        });
    }
}
