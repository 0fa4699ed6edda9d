//! The state one message-service instance shares between its tasks ([`Inner`]): the bus,
//! the store, the routing table, the queues to the background workers (group commit,
//! push jobs, outbox cleanup) and what deliveries remember.
//!
//! Everything above (delivery, operations, dispatch, gRPC, the sweeper, the app) reads
//! it; it knows none of them, so the workers' queues are handed in by their own modules.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::Bus;
use tokio::sync::{mpsc, Semaphore};

use crate::admission::Admission;
use crate::commit::{PendingSend, Sends};
use crate::outbox::Completions;
use crate::publisher::Outgoing;
use crate::push_jobs::{PushQueue, Work};
use crate::recent::Recent;
use crate::routes::Routes;
use crate::settings::Settings;
use crate::store::Store;

/// How long after start the routing table is treated as incomplete.
const ROUTES_WARMUP: Duration = Duration::from_secs(2);

/// Message ids remembered as acknowledged (the oldest are forgotten first).
const ACKS_REMEMBERED: usize = 100_000;

/// What the instance's tasks share.
pub(crate) struct Inner {
    /// NATS or the in-process bus.
    pub(crate) bus: Bus,
    /// The database.
    pub(crate) store: Store,
    /// Which gateways hold which users' sockets.
    pub(crate) routes: Routes,
    /// Configuration.
    pub(crate) settings: Settings,
    /// Where sends are stored (through group commit unless it is off).
    pub(crate) sends: Sends,
    /// Message ids whose delivery was published; their outbox rows get deleted in batches.
    pub(crate) completions: Completions,
    /// Committed messages waiting to be enqueued for push-service.
    pub(crate) push: PushQueue,
    /// Deliveries waiting to be published (coalesced per gateway).
    pub(crate) outgoing: Outgoing,
    /// Requests being worked on (bounded by `settings.max_in_flight`).
    pub(crate) in_flight: Arc<Semaphore>,
    /// Each request kind's own bound (`admission`), shared by the NATS and gRPC doors.
    pub(crate) admission: Admission,
    /// Message ids already acknowledged as delivered.
    acked: Mutex<FirstAcks>,
    /// Until the routing table has heard from the gateways (their answer to our resync),
    /// a delivery that found nobody may be wrong: keep its outbox row for the sweeper.
    routes_warm_at: tokio::time::Instant,
    /// What was published lately, for sockets that open while it was in flight.
    pub(crate) recent: Recent,
    /// New messages committed by this process (drives the fault-injection crash).
    commits: AtomicU64,
    /// Where attachments live (`None`: not configured).
    pub(crate) storage: Option<storage::Storage>,
    /// Image and audio work: one job at a time, within its CPU share.
    pub(crate) media: crate::media::MediaBudget,
}

/// The receiving ends of [`Inner`]'s worker queues, for the tasks `App::run` starts.
pub(crate) struct Workers {
    /// Group commit's sends (`None`: group commit is off).
    pub(crate) sends: Option<mpsc::Receiver<PendingSend>>,
    /// Published deliveries, for outbox cleanup.
    pub(crate) completions: mpsc::Receiver<i64>,
    /// Committed messages and changes, for the push-job enqueuer.
    pub(crate) push: mpsc::Receiver<Work>,
    /// Deliveries, for the publisher.
    pub(crate) outgoing: mpsc::Receiver<crate::publisher::Item>,
}

impl Inner {
    /// The shared state and the receivers of its queues.
    pub(crate) fn new(
        bus: Bus,
        store: Store,
        settings: Settings,
        storage: Option<storage::Storage>,
    ) -> (Inner, Workers) {
        let (completions, completions_rx) = Completions::channel();
        let (sends, sends_rx) = Sends::new(
            store.clone(),
            completions.clone(),
            settings.group_commit,
            settings.send_queue_budget,
        );
        let media_ms = settings.uploads.media_cpu_ms_per_sec;
        let (push, push_rx) = PushQueue::channel();
        let (outgoing, outgoing_rx) = Outgoing::channel();
        let inner = Inner {
            bus,
            store,
            routes: Routes::default(),
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight)),
            admission: Admission::new(settings.pool_size),
            settings,
            sends,
            completions,
            push,
            outgoing,
            acked: Mutex::new(FirstAcks::default()),
            routes_warm_at: tokio::time::Instant::now() + ROUTES_WARMUP,
            recent: Recent::default(),
            commits: AtomicU64::new(0),
            storage,
            media: crate::media::MediaBudget::new(media_ms),
        };
        let workers = Workers {
            sends: sends_rx,
            completions: completions_rx,
            push: push_rx,
            outgoing: outgoing_rx,
        };
        (inner, workers)
    }

    /// Whether the routing table has had time to hear from every gateway since start.
    pub(crate) fn routes_warm(&self) -> bool {
        tokio::time::Instant::now() >= self.routes_warm_at
    }

    /// Fault injection (`INDABA_TEST_CRASH_AFTER_COMMITS`): dies like `kill -9` would, in
    /// the window between commit and publish, so the fault tests can prove the outbox
    /// covers it. A no-op unless configured.
    pub(crate) fn crash_point_after_commit(&self) {
        let Some(limit) = self.settings.crash_after_commits else {
            return;
        };
        let n = self.commits.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= limit {
            tracing::error!(
                commits = n,
                "fault injection: aborting between commit and publish"
            );
            std::process::abort();
        }
    }

    /// Whether this is the first acknowledgement of `message_id` this instance has seen.
    pub(crate) fn first_ack(&self, message_id: i64) -> bool {
        self.acked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first(message_id)
    }
}

/// A bounded set of message ids, oldest forgotten first.
#[derive(Debug, Default)]
struct FirstAcks {
    seen: HashSet<i64>,
    order: VecDeque<i64>,
}

impl FirstAcks {
    /// Remembers `id`; false if it was already remembered.
    fn first(&mut self, id: i64) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > ACKS_REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_acks_are_told_once_and_the_oldest_forgotten() {
        let mut acks = FirstAcks::default();
        assert!(acks.first(1));
        assert!(!acks.first(1));
        for id in 2..=(ACKS_REMEMBERED as i64 + 1) {
            assert!(acks.first(id));
        }
        assert_eq!(acks.order.len(), ACKS_REMEMBERED);
        assert!(acks.first(1), "1 was the oldest, so it was forgotten");
    }
}
