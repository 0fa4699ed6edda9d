//! Admission: which requests this instance starts, and which work it abandons.
//!
//! Two rules, applied alike by the NATS door (`dispatch`) and the gRPC door (`grpc`), since
//! both run the same operations:
//!
//! - **One kind of request cannot take every slot.** Besides the instance-wide bound
//!   (`max_in_flight`), every request kind but `send` has a bound of its own, and all of
//!   them together one more, both sized from the database pool: a flood of conversation
//!   lists holds at most a quarter of the connections, everything but sends together at
//!   most three quarters, so sends (whose group commit holds at most two connections)
//!   always find one. A request over its bound waits for a slot up to 2 s (below the
//!   gateway's request timeout), in a queue of 64 places per slot: a reconnect storm (a
//!   killed gateway's clients all listing and resuming) is served, not shed — shedding it
//!   made resuming clients miss the first messages of conversations they did not know yet.
//!   Past the wait, or with the queue full, it is answered `unavailable` with a retry hint.
//! - **Work whose requester gave up is abandoned.** A gateway waits
//!   [`REQUEST_DEADLINE`] (its `request_timeout`) for an answer, then tells its client the
//!   service is unavailable; nobody reads an answer after that. Requests carry no deadline
//!   of their own on the bus, so the deadline is computed here from the moment the request
//!   was read off its subscription (the gateway sent it a little earlier, so this deadline
//!   is, if anything, late). A request still waiting for a slot at its deadline is dropped
//!   without touching the store; a read (no side effects) still running at its deadline is
//!   cancelled. Writes that started run to the end: a send may be committed already, and
//!   its delivery and answer (read from the outbox on a retry) must follow. On gRPC the
//!   transport does the same: a call whose client disconnects or whose `grpc-timeout`
//!   passes is dropped, and with it its future.
//!
//! Both are counted: `indaba_requests_shed_total{reason="over_bound"|"past_deadline"}`.

use std::sync::Arc;
use std::time::Duration;

use proto::{pb, pb_error, ErrorCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::metrics;

/// How long a requester waits for an answer: the gateway's `request_timeout`.
pub(crate) const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// How soon a refused request may try again (said in the refusal).
const RETRY_HINT_MS: u64 = 250;

/// What a request costs, which decides its bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cost {
    /// A send: only the instance-wide bound; sends keep the slots the others leave.
    Send,
    /// A page read that may scan many rows (conversation lists, unread counts, history,
    /// the event stream's resume): a quarter of the pool, and cancelled at its deadline.
    Page,
    /// Any other request (one row or a few): half the pool.
    Other,
}

/// One request kind's bound: its route name (the metric label) and cost.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gate {
    /// The route's name, as `dispatch::ROUTES` and the refusal name it.
    pub(crate) name: &'static str,
    /// What it costs.
    pub(crate) cost: Cost,
}

/// Every bounded request kind, by the route name `dispatch::ROUTES` gives it.
pub(crate) mod gates {
    use super::{Cost, Gate};

    macro_rules! gates {
        ($($id:ident = $name:literal, $cost:ident;)*) => {
            $(pub(crate) const $id: Gate = Gate { name: $name, cost: Cost::$cost };)*
            /// Every gate (one semaphore each).
            pub(crate) const ALL: &[Gate] = &[$($id),*];

            /// The gate of the route named `name`; a route without one of its own costs
            /// [`Cost::Other`](super::Cost::Other) under its own name.
            pub(crate) fn named(name: &'static str) -> Gate {
                ALL.iter()
                    .copied()
                    .find(|g| g.name == name)
                    .unwrap_or(Gate { name, cost: Cost::Other })
            }
        };
    }

    gates! {
        SEND = "send", Send;
        SEND_BATCH = "send_batch", Send;
        CREATE_CONVERSATION = "create_conversation", Other;
        GET_CONVERSATION = "get_conversation", Other;
        MARK_READ = "mark_read", Other;
        TYPING = "typing", Other;
        LIST_MESSAGES = "list_messages", Page;
        LIST_CONVERSATIONS = "list_conversations", Page;
        UPDATE_PARTICIPANTS = "update_participants", Other;
        SET_PARTICIPANT_ROLE = "set_participant_role", Other;
        GET_MESSAGE = "get_message", Other;
        UNREAD_COUNTS = "unread_counts", Page;
        MESSAGES_SINCE = "messages_since", Page;
        SHARED_CONTACTS = "shared_contacts", Other;
        CHANGE_MESSAGE = "change_message", Other;
        THREAD = "thread", Page;
        PINS = "pins", Page;
        MESSAGE_READS = "message_reads", Other;
        CREATE_UPLOAD = "create_upload", Other;
        ATTACHMENT_URL = "attachment_url", Other;
    }
}

/// One bound: its slots, and the few places where a request may wait for one.
#[derive(Debug)]
struct Bound {
    /// Requests running.
    slots: Arc<Semaphore>,
    /// Requests waiting for a slot ([`QUEUE_PLACES_PER_SLOT`] per slot).
    places: Semaphore,
}

impl Bound {
    fn new(slots: usize) -> Bound {
        Bound {
            slots: Arc::new(Semaphore::new(slots)),
            places: Semaphore::new(slots * QUEUE_PLACES_PER_SLOT),
        }
    }

    /// A slot: at once if one is free, else after a wait in one of the places until
    /// `until`; `None` when every place is taken or the wait ran out.
    async fn take(&self, until: Instant) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Some(p);
        }
        let _place = self.places.try_acquire().ok()?;
        tokio::time::timeout_at(until, self.slots.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }
}

/// How long a request waits for a slot of its kind before it is refused. A reconnect storm
/// (every socket of a killed gateway, or of every gateway after a NATS failover, listing its
/// conversations and resuming at once) is legitimate work that must be served, not shed:
/// it waits, below the gateway's 5 s request timeout so the client still gets an answer.
/// The per-kind bound limits how many run at once (so one kind cannot take every
/// database connection); the places bound how many wait.
const QUEUE_WAIT: Duration = Duration::from_millis(2_000);

/// Places to wait per slot of a bound; beyond them a request is refused at once. A few
/// hundred per instance: a thousand resuming clients over two instances wait, a flood from
/// one user (already bounded per user by the gateway's REST budget) is still refused.
const QUEUE_PLACES_PER_SLOT: usize = 64;

/// The bounds of one instance (see the module documentation).
#[derive(Debug)]
pub(crate) struct Admission {
    /// Per gate, in [`gates::ALL`] order (`None`: unbounded beyond the instance).
    own: Vec<Option<Bound>>,
    /// Everything but sends, together.
    shared: Bound,
}

/// A started request's slots; dropping it frees them.
#[derive(Debug)]
pub(crate) struct Pass {
    _own: Option<OwnedSemaphorePermit>,
    _shared: Option<OwnedSemaphorePermit>,
}

impl Admission {
    /// Bounds for a database pool of `pool_size` connections.
    pub(crate) fn new(pool_size: u32) -> Admission {
        let pool = usize::try_from(pool_size).unwrap_or(usize::MAX).max(1);
        let own = gates::ALL
            .iter()
            .map(|g| Self::bound(g.cost, pool).map(Bound::new))
            .collect();
        Admission {
            own,
            shared: Bound::new((pool * 3 / 4).max(2)),
        }
    }

    /// A gate's own bound for a pool of `pool` connections (`None`: none).
    fn bound(cost: Cost, pool: usize) -> Option<usize> {
        match cost {
            Cost::Send => None,
            Cost::Page => Some((pool / 4).max(1)),
            Cost::Other => Some((pool / 2).max(2)),
        }
    }

    /// Takes `gate`'s slots (waiting [`QUEUE_WAIT`] at most, in a bounded queue), or
    /// refuses with `unavailable` and a retry hint.
    pub(crate) async fn enter(&self, gate: Gate) -> Result<Pass, pb::Error> {
        if gate.cost == Cost::Send {
            return Ok(Pass {
                _own: None,
                _shared: None,
            });
        }
        let busy = || {
            metrics::shed_over_bound();
            pb_error(
                ErrorCode::Unavailable,
                format!(
                    "too many {} requests in progress on this instance; retry in {RETRY_HINT_MS} ms",
                    gate.name
                ),
            )
        };
        let until = Instant::now() + QUEUE_WAIT;
        let own = match gates::ALL
            .iter()
            .position(|g| g.name == gate.name)
            .and_then(|at| self.own[at].as_ref())
        {
            Some(b) => Some(b.take(until).await.ok_or_else(busy)?),
            None => None,
        };
        let shared = self.shared.take(until).await.ok_or_else(busy)?;
        Ok(Pass {
            _own: own,
            _shared: Some(shared),
        })
    }
}

/// When the requester of a request read at `arrived` stops waiting for its answer.
pub(crate) fn deadline(arrived: Instant) -> Instant {
    arrived + REQUEST_DEADLINE
}

/// Runs `work` for a request of `gate` due by `deadline`: `None` when it was abandoned
/// (the deadline passed before it started, or, for a page read, while it ran).
pub(crate) async fn before_deadline<T>(
    gate: Gate,
    deadline: Instant,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    if Instant::now() >= deadline {
        metrics::shed_past_deadline();
        tracing::debug!(op = gate.name, "abandoned: its requester gave up waiting");
        return None;
    }
    if gate.cost != Cost::Page {
        return Some(work.await);
    }
    match tokio::time::timeout_at(deadline, work).await {
        Ok(v) => Some(v),
        Err(_) => {
            metrics::shed_past_deadline();
            tracing::debug!(op = gate.name, "cancelled: its requester gave up waiting");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sends_are_unbounded_and_one_kind_takes_a_fraction() {
        let a = Admission::new(16);
        let mut lists = Vec::new();
        for _ in 0..4 {
            lists.push(a.enter(gates::LIST_CONVERSATIONS).await.expect("a slot"));
        }
        // A quarter of the pool: the fifth waits, then is refused with a hint.
        let started = Instant::now();
        let e = a.enter(gates::LIST_CONVERSATIONS).await.unwrap_err();
        assert!(started.elapsed() >= QUEUE_WAIT);
        assert_eq!(e.code, ErrorCode::Unavailable.as_str());
        assert!(e.message.contains("retry in"), "{}", e.message);
        // Other kinds still get in, up to the shared bound (12 of 16)…
        let mut others = Vec::new();
        for _ in 0..8 {
            others.push(a.enter(gates::MARK_READ).await.expect("a slot"));
        }
        assert!(a.enter(gates::TYPING).await.is_err(), "12 taken");
        // …and sends always do.
        for _ in 0..100 {
            a.enter(gates::SEND).await.expect("sends are not refused");
        }
        // A waiter gets the slot freed meanwhile.
        let first = lists.pop();
        let waiter = a.enter(gates::LIST_CONVERSATIONS);
        let free = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(first);
            drop(others.pop());
        };
        let (got, ()) = tokio::join!(waiter, free);
        got.expect("the freed slot");
    }

    #[test]
    fn every_gate_has_its_own_name() {
        let names: std::collections::HashSet<&str> = gates::ALL.iter().map(|g| g.name).collect();
        assert_eq!(names.len(), gates::ALL.len());
    }

    #[tokio::test]
    async fn late_requests_are_dropped_and_slow_reads_cancelled() {
        let past = Instant::now();
        assert_eq!(before_deadline(gates::SEND, past, async { 1 }).await, None);
        let soon = Instant::now() + Duration::from_millis(20);
        let slow = tokio::time::sleep(Duration::from_secs(5));
        assert_eq!(
            before_deadline(gates::LIST_MESSAGES, soon, slow).await,
            None
        );
        let later = Instant::now() + Duration::from_secs(5);
        assert_eq!(
            before_deadline(gates::MARK_READ, later, async { 2 }).await,
            Some(2)
        );
    }
}
