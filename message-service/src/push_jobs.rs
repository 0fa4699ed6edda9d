//! Push jobs: each committed message whose recipients are not all online becomes a
//! durable job for push-service (`bus::jobs::PUSH_QUEUE`: JetStream, or the in-process
//! queue of the single-node program).
//!
//! Off the reply path: the sender's `message_sent` never waits for the queue. A message's
//! outbox row is completed only once both its live delivery and its job are out, so a
//! crash or a full backlog means a republish by the sweeper, never a lost notification.
//!
//! Edits and deletions become jobs too ([`ChangeWork`]), so push-service can update or
//! withdraw a notification still in its collapse window. Their id, "<message id>-c<change
//! id>", is apart from the message's own (JetStream drops a repeated id within its window).
//! Best effort: changes have no outbox, so one whose job cannot be stored (after a few
//! tries) leaves the pending notification as it was.

use std::time::Duration;

use bus::Bus;
use bytes::Bytes;
use futures_util::StreamExt;
use prost::Message as _;
use proto::pb;
use tokio::sync::mpsc;

use crate::metrics;
use crate::outbox::Completions;
use crate::store::ConversationMeta;

/// Jobs waiting to be stored before new ones are dropped (the sweeper redoes those).
const BACKLOG: usize = 65_536;
/// Jobs being stored at once.
const CONCURRENCY: usize = 64;
/// How long storing one job may take.
const ENQUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries at storing a change's job (it has no outbox to fall back on).
const CHANGE_TRIES: u32 = 3;

/// A committed message on its way to the push queue.
#[derive(Debug)]
pub(crate) struct PushWork {
    /// The message.
    pub(crate) message: pb::ChatMessage,
    /// Its conversation's participants (the sender included).
    pub(crate) participants: Vec<i64>,
    /// What the notification says about the conversation.
    pub(crate) meta: ConversationMeta,
    /// The live delivery was published (the outbox row may go once the job is stored).
    pub(crate) delivered: bool,
}

impl PushWork {
    /// The job push-service gets, or `None` when nobody but the sender is in the
    /// conversation (nothing to notify).
    fn job(&self) -> Option<pb::PushJob> {
        let recipients: Vec<i64> = self
            .participants
            .iter()
            .copied()
            .filter(|u| *u != self.message.sender_id)
            .collect();
        (!recipients.is_empty()).then(|| pb::PushJob {
            message: Some(self.message.clone()),
            recipient_ids: recipients,
            conversation_title: self.meta.title.clone(),
            conversation_kind: i32::try_from(self.meta.kind).unwrap_or(0),
            change: None,
        })
    }
}

/// A committed edit or deletion on its way to the push queue.
#[derive(Debug)]
pub(crate) struct ChangeWork(pb::MessageChange);

impl ChangeWork {
    /// Work for `change` when push-service cares about it (edits and deletions change
    /// notifications not sent yet; reactions and pins notify nobody).
    pub(crate) fn of(change: &pb::MessageChange) -> Option<ChangeWork> {
        use pb::ChangeKind as K;
        (change.id != 0 && matches!(change.kind(), K::Edited | K::Deleted))
            .then(|| ChangeWork(change.clone()))
    }

    /// The job's id: apart from its message's (and unique, as change ids are).
    fn id(&self) -> String {
        format!("{}-c{}", self.0.message_id, self.0.id)
    }

    fn job(&self) -> pb::PushJob {
        pb::PushJob {
            change: Some(self.0.clone()),
            ..Default::default()
        }
    }
}

/// What [`enqueue`] stores.
#[derive(Debug)]
pub(crate) enum Work {
    /// A new message.
    Message(PushWork),
    /// An edit or deletion.
    Change(ChangeWork),
}

/// The bounded backlog of [`Work`] (full: the message is left to the sweeper).
#[derive(Debug, Clone)]
pub(crate) struct PushQueue(mpsc::Sender<Work>);

impl PushQueue {
    /// The offering side and the receiver [`enqueue`] drains.
    pub(crate) fn channel() -> (PushQueue, mpsc::Receiver<Work>) {
        let (tx, rx) = mpsc::channel(BACKLOG);
        (PushQueue(tx), rx)
    }

    /// Queues `work` without waiting. False when the backlog is full: the message is
    /// then the sweeper's to redo.
    pub(crate) fn offer(&self, work: PushWork) -> bool {
        let message_id = work.message.id;
        if self.0.try_send(Work::Message(work)).is_err() {
            tracing::debug!(
                message_id,
                "push queue backlog full; the sweeper will redo this message"
            );
            return false;
        }
        true
    }

    /// Queues a change's job without waiting (full: it is lost, and the pending
    /// notification, if any, goes out as it was).
    pub(crate) fn offer_change(&self, work: ChangeWork) {
        let change_id = work.0.id;
        if self.0.try_send(Work::Change(work)).is_err() {
            metrics::bus_error();
            tracing::warn!(
                change_id,
                "push queue backlog full; a pending notification will not reflect this change"
            );
        }
    }
}

/// Stores push jobs durably, [`CONCURRENCY`] at a time, and completes outbox rows whose
/// delivery and job are both out.
pub(crate) async fn enqueue(bus: Bus, done: Completions, rx: mpsc::Receiver<Work>) {
    let mut rx = rx;
    let work = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    work.for_each_concurrent(CONCURRENCY, |w| {
        let (bus, done) = (&bus, &done);
        async move {
            let w = match w {
                Work::Message(w) => w,
                Work::Change(c) => return enqueue_change(bus, &c).await,
            };
            let stored = match w.job() {
                None => true,
                Some(job) => match bus
                    .enqueue(
                        &bus::jobs::PUSH_QUEUE,
                        &w.message.id.to_string(),
                        Bytes::from(job.encode_to_vec()),
                        ENQUEUE_TIMEOUT,
                    )
                    .await
                {
                    Ok(()) => true,
                    Err(e) => {
                        metrics::bus_error();
                        tracing::warn!(error = %e, message_id = w.message.id, "push job not stored; the sweeper will retry");
                        false
                    }
                },
            };
            if stored && w.delivered {
                done.complete(w.message.id);
            } else {
                done.release(w.message.id);
            }
        }
    })
    .await;
}

/// Stores a change's job, trying [`CHANGE_TRIES`] times.
async fn enqueue_change(bus: &Bus, c: &ChangeWork) {
    let (id, payload) = (c.id(), Bytes::from(c.job().encode_to_vec()));
    for attempt in 1..=CHANGE_TRIES {
        match bus
            .enqueue(
                &bus::jobs::PUSH_QUEUE,
                &id,
                payload.clone(),
                ENQUEUE_TIMEOUT,
            )
            .await
        {
            Ok(()) => return,
            Err(e) => {
                metrics::bus_error();
                tracing::warn!(error = %e, change_id = c.0.id, attempt, "push job of a change not stored");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_names_everyone_but_the_sender() {
        let work = |participants: Vec<i64>| PushWork {
            message: pb::ChatMessage {
                id: 9,
                sender_id: 1,
                ..Default::default()
            },
            participants,
            meta: ConversationMeta {
                title: "Trip".into(),
                kind: 2,
            },
            delivered: true,
        };
        let job = work(vec![1, 2, 3]).job().expect("a job");
        assert_eq!(job.recipient_ids, vec![2, 3]);
        assert_eq!(job.conversation_title, "Trip");
        assert_eq!(job.conversation_kind, 2);
        assert!(work(vec![1]).job().is_none(), "alone: nobody to notify");
    }

    #[test]
    fn edits_and_deletions_become_jobs_apart_from_their_message() {
        use pb::ChangeKind as K;
        let change = |id, kind: K| pb::MessageChange {
            id,
            message_id: 9,
            kind: kind as i32,
            text: "edited".into(),
            ..Default::default()
        };
        let w = ChangeWork::of(&change(4, K::Edited)).expect("an edit notifies");
        assert_eq!(w.id(), "9-c4", "not the message's own job id, \"9\"");
        let job = w.job();
        assert!(job.message.is_none() && job.recipient_ids.is_empty());
        assert_eq!(job.change.as_ref().map(|c| c.text.as_str()), Some("edited"));
        assert_eq!(
            ChangeWork::of(&change(5, K::Deleted)).map(|w| w.id()),
            Some("9-c5".into())
        );
        for k in [K::ReactionAdded, K::ReactionRemoved, K::Pinned, K::Unpinned] {
            assert!(ChangeWork::of(&change(6, k)).is_none(), "{k:?}");
        }
        assert!(
            ChangeWork::of(&change(0, K::Deleted)).is_none(),
            "nothing changed"
        );
    }
}
