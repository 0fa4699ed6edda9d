//! Sends on their way to message-service, batched across the bus.
//!
//! Every send was one NATS request and one reply: under load, two bus messages (and their
//! routing through nats-server) per chat message on top of the commit. So sends queue here,
//! and at most [`SLOTS`] drain tasks take whatever is queued and send it as one request:
//! a lone send goes at once as a plain `SendMessageRequest` (nothing waits for company),
//! and while requests are in flight the sends arriving meanwhile form the next
//! `SendBatchRequest`, answered by one reply. The batch size follows the load, as the
//! group commit's does.
//!
//! A message-service that predates batches does not subscribe to their subject: the bus
//! says "no responders" at once, nothing was received, and the sends go one by one (and
//! for a while every batch does, without asking again).
//!
//! Overload is refused here too (`INDABA_SEND_QUEUE_BUDGET_MS`): when message-service falls
//! behind, sends wait in this queue, where message-service cannot see them. A send arriving
//! while the oldest queued one has waited past the budget is refused at once (`unavailable`,
//! `retry_after_ms`). Queued sends are always sent: refusing them too would starve
//! everyone whenever a request takes longer than the budget.
//!
//! This module keeps the queue and runs the requests; `backend::send` is the door to it and
//! turns its [`Answer`]s into client errors.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::{Bus, BusError};
use bytes::Bytes;
use prost::Message as _;
use proto::{pb, subjects};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::metrics::Metrics;

/// Requests in flight at once per gateway: one is answered while the next fills.
pub(crate) const SLOTS: usize = 4;

/// How long a send with attachments may take: checking its files (storage round trips, an
/// image decoded, stripped and thumbnailed, perhaps behind others) takes seconds, not the
/// milliseconds of a commit.
pub(crate) const ATTACHMENT_SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long batches are not tried again after a "no responders".
const RECHECK_AFTER: Duration = Duration::from_secs(30);

/// The refusal of a send past capacity (`unavailable`, nothing stored, retry after about
/// one budget).
fn overloaded(budget: Duration) -> Answer {
    let retry_after_ms = u64::try_from(budget.as_millis()).unwrap_or(u64::MAX).max(1);
    Answer::Reply(Box::new(pb::SendMessageResponse {
        result: Some(pb::send_message_response::Result::Error(pb::Error {
            retry_after_ms,
            ..proto::pb_error(
                proto::ErrorCode::Unavailable,
                format!("too many messages in flight; retry in {retry_after_ms} ms"),
            )
        })),
        duplicate: false,
    }))
}

/// What became of one send.
#[derive(Debug)]
pub(crate) enum Answer {
    /// message-service answered (the message, or a refusal).
    Reply(Box<pb::SendMessageResponse>),
    /// The bus failed or nobody answered in time.
    Unavailable,
    /// The answer could not be read.
    BadReply,
}

/// A send waiting in the queue.
#[derive(Debug)]
struct Waiting {
    req: pb::SendMessageRequest,
    traceparent: String,
    answer: oneshot::Sender<Answer>,
    since: Instant,
}

/// The queue of one gateway.
#[derive(Debug)]
pub(crate) struct SendQueue {
    bus: Bus,
    timeout: Duration,
    metrics: Arc<Metrics>,
    batches: bool,
    /// Past this wait in the queue, sends are refused (`None`: never).
    budget: Option<Duration>,
    waiting: Mutex<Vec<Waiting>>,
    slots: Arc<Semaphore>,
    /// Until when batches go one by one (no instance answered the batch subject).
    unbatched_until: Mutex<Option<Instant>>,
}

impl SendQueue {
    /// A queue sending over `bus`; `batches` false sends every message on its own (as a
    /// gateway before batches did); past `budget` of waiting, sends are refused.
    pub(crate) fn new(
        bus: Bus,
        timeout: Duration,
        metrics: Arc<Metrics>,
        batches: bool,
        budget: Option<Duration>,
    ) -> SendQueue {
        SendQueue {
            bus,
            timeout,
            metrics,
            batches,
            budget,
            waiting: Mutex::default(),
            slots: Arc::new(Semaphore::new(SLOTS)),
            unbatched_until: Mutex::default(),
        }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a send and waits for its answer. `traceparent` continues the send's trace
    /// in message-service (empty: none).
    pub(crate) async fn send(
        self: &Arc<Self>,
        req: pb::SendMessageRequest,
        traceparent: String,
    ) -> Answer {
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = self.waiting();
            // Overload: the oldest queued send has waited past the budget, so this one
            // would too. Refused now, before anything is stored, with a retry hint.
            if let (Some(budget), Some(oldest)) = (self.budget, waiting.first()) {
                if oldest.since.elapsed() > budget {
                    drop(waiting);
                    self.metrics.send_refused_overload();
                    return overloaded(budget);
                }
            }
            waiting.push(Waiting {
                req,
                traceparent,
                answer: tx,
                since: Instant::now(),
            });
        }
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            tokio::spawn(self.clone().drain(slot));
        }
        // Every drain task re-checks the queue after letting its slot go, so a send queued
        // while all slots were busy is always taken.
        rx.await.unwrap_or(Answer::Unavailable)
    }

    /// A send with attachments: on its own request beside the queue, never in a batch. A
    /// batch is answered when its slowest send is, and checking files is slow: in the queue
    /// it would hold one of the [`SLOTS`], and every chat message behind it, for seconds.
    pub(crate) async fn send_alone(
        &self,
        req: pb::SendMessageRequest,
        traceparent: String,
    ) -> Answer {
        self.request(&req, &traceparent, ATTACHMENT_SEND_TIMEOUT)
            .await
    }

    /// Sends what is queued, batch after batch, until the queue is empty.
    async fn drain(self: Arc<Self>, mut slot: OwnedSemaphorePermit) {
        loop {
            let batch: Vec<Waiting> = {
                let mut w = self.waiting();
                let n = w.len().min(proto::limits::MAX_SEND_BATCH);
                w.drain(..n).collect()
            };
            if batch.is_empty() {
                drop(slot);
                // A send queued after the take but before the slot was free found no slot.
                if self.waiting().is_empty() {
                    return;
                }
                match self.slots.clone().try_acquire_owned() {
                    Ok(s) => slot = s,
                    Err(_) => return, // another drain task has it
                }
                continue;
            }
            self.run(batch).await;
        }
    }

    /// One request for `batch`, every waiter answered.
    async fn run(&self, batch: Vec<Waiting>) {
        if batch.len() == 1 || !self.batches_now() {
            return self.one_by_one(batch).await;
        }
        let (mut sends, mut traceparents, mut answers) = (
            Vec::with_capacity(batch.len()),
            Vec::with_capacity(batch.len()),
            Vec::with_capacity(batch.len()),
        );
        for w in batch {
            sends.push(w.req);
            traceparents.push(w.traceparent);
            answers.push(w.answer);
        }
        let req = pb::SendBatchRequest {
            sends,
            traceparents,
        };
        self.metrics.send_batch(answers.len());
        let reply = self
            .bus
            .request(
                subjects::MSG_SEND_BATCH,
                Bytes::from(req.encode_to_vec()),
                self.timeout,
            )
            .await;
        let resp = match reply {
            Err(BusError::NoResponders(_)) => {
                // Nobody received it: no message-service answers batches yet.
                tracing::info!("message-service does not answer send batches; sending one by one");
                *self
                    .unbatched_until
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + RECHECK_AFTER);
                let batch = req.sends.into_iter().zip(req.traceparents).zip(answers);
                let batch = batch.map(|((req, traceparent), answer)| Waiting {
                    req,
                    traceparent,
                    answer,
                    since: Instant::now(),
                });
                return self.one_by_one(batch.collect()).await;
            }
            Err(e) => {
                self.metrics.bus_error();
                tracing::warn!(error = %e, "send batch request failed");
                for a in answers {
                    let _ = a.send(Answer::Unavailable);
                }
                return;
            }
            Ok(m) => pb::SendBatchResponse::decode(m.payload),
        };
        match resp {
            Ok(r) if r.error.is_none() && r.results.len() == answers.len() => {
                for (a, result) in answers.into_iter().zip(r.results) {
                    let _ = a.send(Answer::Reply(Box::new(result)));
                }
            }
            Ok(r) => {
                // Refused as a whole (each send gets that refusal), or a short answer.
                let whole = r.error.map(|e| pb::SendMessageResponse {
                    result: Some(pb::send_message_response::Result::Error(e)),
                    duplicate: false,
                });
                for a in answers {
                    let _ = a.send(match &whole {
                        Some(resp) => Answer::Reply(Box::new(resp.clone())),
                        None => Answer::BadReply,
                    });
                }
            }
            Err(_) => {
                for a in answers {
                    let _ = a.send(Answer::BadReply);
                }
            }
        }
    }

    /// Each send on its own request, side by side (as before batches).
    async fn one_by_one(&self, batch: Vec<Waiting>) {
        let singles = batch.into_iter().map(|w| async move {
            let answer = self.one(&w.req, &w.traceparent).await;
            let _ = w.answer.send(answer);
        });
        futures_util::future::join_all(singles).await;
    }

    /// Whether batches may go as batches now.
    fn batches_now(&self) -> bool {
        if !self.batches {
            return false;
        }
        let mut until = self
            .unbatched_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match *until {
            Some(t) if Instant::now() < t => false,
            Some(_) => {
                *until = None;
                true
            }
            None => true,
        }
    }

    /// One send on its own request (its trace in the `traceparent` header, as the bus
    /// sets it for requests made inside a span).
    async fn one(&self, req: &pb::SendMessageRequest, traceparent: &str) -> Answer {
        self.request(req, traceparent, self.timeout).await
    }

    /// One `MSG_SEND` request, answered within `timeout`.
    async fn request(
        &self,
        req: &pb::SendMessageRequest,
        traceparent: &str,
        timeout: Duration,
    ) -> Answer {
        let headers: Vec<(&str, &str)> = if traceparent.is_empty() {
            Vec::new()
        } else {
            vec![(proto::headers::TRACEPARENT, traceparent)]
        };
        match self
            .bus
            .request_with_headers(
                subjects::MSG_SEND,
                &headers,
                Bytes::from(req.encode_to_vec()),
                timeout,
            )
            .await
        {
            Ok(m) => pb::SendMessageResponse::decode(m.payload)
                .map_or(Answer::BadReply, |r| Answer::Reply(Box::new(r))),
            Err(e) => {
                self.metrics.bus_error();
                tracing::warn!(error = %e, "backend request failed");
                Answer::Unavailable
            }
        }
    }
}
