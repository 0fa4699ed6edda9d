//! Group commit: whatever sends arrived while the previous batch was committing go into
//! the next transaction together, so at load one fsync serves many messages and at rest a
//! lone message is committed at once (no waiting to fill a batch).
//!
//! [`Sends`] is the door every send goes through (`ops::send`); [`group_commit`] is the
//! task that drains it. With `INDABA_GROUP_COMMIT=false` the door stores each message in
//! its own transaction and no task runs.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use crate::metrics;
use crate::outbox::Completions;
use crate::store::{NewMessage, Sent, Store, StoreError};

/// Most messages one group commit takes.
const MAX_BATCH: usize = 256;
/// Group commits in flight at once, per instance. One: the next batch fills while this one
/// commits. SQLite has one writer at a time, so a second batch would only wait in its busy
/// handler, which sleeps in steps of milliseconds (the single-node program's tail latency at
/// 4,000 msg/s was seconds). On PostgreSQL a second batch in flight halved the batches at
/// moderate load, and a batch statement's cost is mostly per statement (executor start-up,
/// commit), not per row: one in flight spent 13–17% less PostgreSQL CPU per message at
/// 1,000–2,000 msg/s with the same latency, and held a higher clean `step`
/// (`bench/results/outbox-batches/`). Instances still commit side by side.
const BATCHES_IN_FLIGHT: usize = 1;
/// Sends waiting for the batcher before senders wait in turn.
const QUEUE: usize = 4096;

/// A message waiting to be stored, when it started waiting, and who waits for the result.
pub(crate) type PendingSend = (
    NewMessage,
    Instant,
    oneshot::Sender<Result<Sent, StoreError>>,
);

/// Where sends are stored: through the batcher, or directly when group commit is off.
#[derive(Debug)]
pub(crate) struct Sends {
    store: Store,
    /// Where committed messages' outbox rows are held until published.
    completions: Completions,
    batcher: Option<mpsc::Sender<PendingSend>>,
    queue: Arc<QueueState>,
    /// Past this wait for the batcher, new sends are refused (`None`: never).
    budget: Option<Duration>,
}

/// What the batcher's queue looks like to a new send: how many wait, and how long the
/// head of the last batch taken had waited.
///
/// Past capacity the queue only grows: every accepted send then waits longer than the
/// last, and at 5,000/s on a machine that commits 3,000/s a send waited seconds before its
/// `message_sent`. So a send is refused at once (`unavailable`, with a retry hint) while
/// sends are waiting and either the last batch's head had waited longer than the budget or
/// no batch was taken for that long (the commits themselves are stuck). What is accepted
/// then waits about one budget at most; the queue drains, and the next batch's head wait
/// lets sends in again.
#[derive(Debug)]
pub(crate) struct QueueState {
    waiting: AtomicUsize,
    /// Microseconds the head of the last batch taken had waited.
    head_wait_us: AtomicU64,
    /// When the last batch was taken (µs since `epoch`).
    last_take_us: AtomicU64,
    epoch: Instant,
}

impl QueueState {
    fn new() -> QueueState {
        QueueState {
            waiting: AtomicUsize::new(0),
            head_wait_us: AtomicU64::new(0),
            last_take_us: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn micros_since_epoch(&self, t: Instant) -> u64 {
        u64::try_from(t.duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    /// A batch of `n` was taken whose first send had waited since `head`.
    fn taken(&self, n: usize, head: Instant) {
        let now = Instant::now();
        let wait = u64::try_from(now.duration_since(head).as_micros()).unwrap_or(u64::MAX);
        self.head_wait_us.store(wait, Relaxed);
        self.last_take_us
            .store(self.micros_since_epoch(now), Relaxed);
        self.waiting.fetch_sub(n, Relaxed);
    }

    /// Whether a new send would wait longer than `budget`.
    fn over(&self, budget: Duration) -> bool {
        if self.waiting.load(Relaxed) == 0 {
            return false;
        }
        let budget_us = u64::try_from(budget.as_micros()).unwrap_or(u64::MAX);
        let since_take = self
            .micros_since_epoch(Instant::now())
            .saturating_sub(self.last_take_us.load(Relaxed));
        self.head_wait_us.load(Relaxed) > budget_us || since_take > budget_us
    }
}

impl Sends {
    /// The door, and the receiver [`group_commit`] drains (`None`: group commit is off).
    pub(crate) fn new(
        store: Store,
        completions: Completions,
        group_commit: bool,
        budget: Option<Duration>,
    ) -> (Sends, Option<mpsc::Receiver<PendingSend>>) {
        let (batcher, rx) = match group_commit {
            true => {
                let (tx, rx) = mpsc::channel(QUEUE);
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        let sends = Sends {
            store,
            completions,
            batcher,
            queue: Arc::new(QueueState::new()),
            budget,
        };
        (sends, rx)
    }

    /// What [`group_commit`] reports the queue's state to.
    pub(crate) fn queue(&self) -> Arc<QueueState> {
        self.queue.clone()
    }

    /// Stores a message, answering after its transaction committed.
    /// The message's outbox row is held (see [`Completions`]) before this returns, so the
    /// caller publishes it and reports it done.
    pub(crate) async fn store(&self, m: NewMessage) -> Result<Sent, StoreError> {
        // Without group commit, and for replies and mentions (the shared loop), in its own
        // transaction.
        let Some(batcher) = self.batcher.as_ref().filter(|_| !m.is_rich()) else {
            let sent = self.store.send_message(&m).await;
            hold_rows(&self.completions, std::slice::from_ref(&sent));
            return sent;
        };
        if let Some(budget) = self.budget {
            if self.queue.over(budget) {
                metrics::send_refused_overload();
                return Err(overloaded(budget));
            }
        }
        let (tx, rx) = oneshot::channel();
        self.queue.waiting.fetch_add(1, Relaxed);
        if batcher.send((m, Instant::now(), tx)).await.is_err() {
            self.queue.waiting.fetch_sub(1, Relaxed);
            return Err(stopping());
        }
        rx.await.unwrap_or_else(|_| Err(stopping()))
    }
}

/// The refusal of a send past capacity: nothing was stored, and a retry after about one
/// budget finds the queue drained.
fn overloaded(budget: Duration) -> StoreError {
    StoreError::Overloaded {
        retry_after_ms: u64::try_from(budget.as_millis()).unwrap_or(u64::MAX).max(1),
    }
}

/// The answer to a send the batcher will never take or answer (the service stops).
fn stopping() -> StoreError {
    StoreError::Rejected {
        code: proto::ErrorCode::Unavailable,
        message: "message-service is stopping; retry".into(),
    }
}

/// Takes whatever sends are waiting (up to [`MAX_BATCH`]) whenever a batch slot is free,
/// and stores them with one [`Store::send_many`].
pub(crate) async fn group_commit(
    store: Store,
    completions: Completions,
    queue: Arc<QueueState>,
    mut rx: mpsc::Receiver<PendingSend>,
) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let work = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        if let Some((_, head, _)) = work.first() {
            queue.taken(work.len(), *head);
        }
        let store = store.clone();
        let completions = completions.clone();
        tokio::spawn(async move {
            let (messages, waiters): (Vec<_>, Vec<_>) =
                work.into_iter().map(|(m, _, w)| (m, w)).unzip();
            metrics::group_commit(messages.len());
            let results = store.send_many(&messages).await;
            hold_rows(&completions, &results);
            for (w, r) in waiters.into_iter().zip(results) {
                let _ = w.send(r);
            }
            drop(permit);
        });
    }
}

/// Holds the outbox rows of what was just stored, each with all of its messages at once:
/// were they held one by one as each send went on, a row could look done (and be deleted)
/// while another of its messages was not yet published. Duplicates have no row.
fn hold_rows(completions: &Completions, results: &[Result<Sent, StoreError>]) {
    let mut rows: Vec<(i64, Vec<i64>)> = Vec::new();
    for s in results.iter().flatten().filter(|s| !s.duplicate) {
        match rows.iter_mut().find(|(row, _)| *row == s.outbox_row) {
            Some((_, ids)) => ids.push(s.message.id),
            None => rows.push((s.outbox_row, vec![s.message.id])),
        }
    }
    for (row, ids) in rows {
        completions.hold(row, &ids);
    }
}
