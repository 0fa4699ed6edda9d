//! Push jobs: each committed message whose recipients are not all online becomes a
//! durable job for push-service (`bus::jobs::PUSH_QUEUE`: JetStream, or the in-process
//! queue of the single-node program).
//!
//! Off the reply path: the sender's `message_sent` never waits for the queue. A message's
//! outbox row is completed only once both its live delivery and its job are out, so a
//! crash or a full backlog means a republish by the sweeper, never a lost notification.

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
        })
    }
}

/// The bounded backlog of [`PushWork`] (full: the message is left to the sweeper).
#[derive(Debug, Clone)]
pub(crate) struct PushQueue(mpsc::Sender<PushWork>);

impl PushQueue {
    /// The offering side and the receiver [`enqueue`] drains.
    pub(crate) fn channel() -> (PushQueue, mpsc::Receiver<PushWork>) {
        let (tx, rx) = mpsc::channel(BACKLOG);
        (PushQueue(tx), rx)
    }

    /// Queues `work` without waiting.
    pub(crate) fn offer(&self, work: PushWork) {
        let message_id = work.message.id;
        if self.0.try_send(work).is_err() {
            tracing::debug!(
                message_id,
                "push queue backlog full; the sweeper will redo this message"
            );
        }
    }
}

/// Stores push jobs durably, [`CONCURRENCY`] at a time, and completes outbox rows whose
/// delivery and job are both out.
pub(crate) async fn enqueue(bus: Bus, done: Completions, rx: mpsc::Receiver<PushWork>) {
    let mut rx = rx;
    let work = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    work.for_each_concurrent(CONCURRENCY, |w| {
        let (bus, done) = (&bus, &done);
        async move {
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
            }
        }
    })
    .await;
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
}
