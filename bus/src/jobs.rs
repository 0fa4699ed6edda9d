//! Durable, at-least-once work queues between services (push jobs).
//!
//! Over NATS a queue is a JetStream work-queue stream with one durable pull consumer shared
//! by every instance of the consuming service: [`Bus::enqueue`] returns once JetStream has
//! stored the job (deduplicated by id within the stream's window), and a job is redelivered
//! until the consumer acknowledges it. In process (single-node) there is no broker to hold
//! jobs, so [`Bus::enqueue`] is a request that the consumer answers only after it has stored
//! the job itself; an unanswered enqueue fails and the producer retries (its own outbox).
//! Either way: the producer may forget a job only after `enqueue` returned `Ok`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::{Bus, BusError, Message, Subscriber};

/// A durable queue: its stream, its subject and the consumers' durable name.
#[derive(Debug, Clone, Copy)]
pub struct Queue {
    /// JetStream stream name.
    pub stream: &'static str,
    /// The subject jobs are published on.
    pub subject: &'static str,
    /// Durable consumer name (also the in-process queue group).
    pub durable: &'static str,
    /// Jobs older than this are dropped by the stream (nobody consumed them).
    pub max_age: Duration,
    /// How long a delivered job may stay unacknowledged before it is redelivered.
    pub ack_wait: Duration,
    /// Stream replicas in a NATS cluster (used when the stream is created).
    pub replicas: usize,
}

/// The push queue: message-service produces a job per stored message whose recipients may
/// need a notification; push-service consumes them. One definition, so the two sides can
/// never disagree on the stream's name, subject or limits.
pub const PUSH_QUEUE: Queue = Queue {
    stream: proto::subjects::PUSH_STREAM,
    subject: proto::subjects::PUSH_JOBS,
    durable: proto::subjects::PUSH_CONSUMER,
    max_age: Duration::from_secs(24 * 3600),
    ack_wait: Duration::from_secs(30),
    replicas: 1,
};

impl Queue {
    /// The same queue with `n` replicas (from the service's settings).
    pub fn with_replicas(self, n: usize) -> Queue {
        Queue {
            replicas: n,
            ..self
        }
    }
}

fn other(e: impl std::fmt::Display) -> BusError {
    BusError::Other(e.to_string())
}

impl Bus {
    /// Creates the queue's stream if it does not exist (idempotent; both producer and
    /// consumer call it, so either may start first). No-op in process.
    pub async fn ensure_queue(&self, q: &Queue) -> Result<(), BusError> {
        let Bus::Nats(c, _) = self else {
            return Ok(());
        };
        let js = jetstream::new(c.clone());
        js.get_or_create_stream(jetstream::stream::Config {
            name: q.stream.to_owned(),
            subjects: vec![q.subject.to_owned()],
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            storage: jetstream::stream::StorageType::File,
            max_age: q.max_age,
            // Enqueue ids are remembered this long: a republished job is stored once.
            duplicate_window: Duration::from_secs(120),
            num_replicas: q.replicas.max(1),
            ..Default::default()
        })
        .await
        .map_err(other)?;
        Ok(())
    }

    /// Stores a job durably; `id` makes a repeat (an outbox republish) a no-op.
    pub async fn enqueue(
        &self,
        q: &Queue,
        id: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<(), BusError> {
        match self {
            Bus::Nats(c, _) => {
                let js = jetstream::new(c.clone());
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(proto::headers::NATS_MSG_ID, id);
                let ack = tokio::time::timeout(timeout, async {
                    js.publish_with_headers(q.subject.to_owned(), headers, payload)
                        .await
                        .map_err(other)?
                        .await
                        .map_err(other)
                })
                .await
                .map_err(|_| BusError::TimedOut(q.subject.to_owned()))??;
                tracing::trace!(stream = %ack.stream, seq = ack.sequence, duplicate = ack.duplicate, "job stored");
                Ok(())
            }
            Bus::Local(_) => {
                self.request_with_headers(
                    q.subject,
                    &[(proto::headers::NATS_MSG_ID, id)],
                    payload,
                    timeout,
                )
                .await?;
                Ok(())
            }
        }
    }

    /// Starts consuming the queue as its durable consumer.
    pub async fn consume(&self, q: &Queue) -> Result<Jobs, BusError> {
        match self {
            Bus::Nats(c, _) => {
                self.ensure_queue(q).await?;
                let js = jetstream::new(c.clone());
                let stream = js.get_stream(q.stream).await.map_err(other)?;
                let consumer = stream
                    .get_or_create_consumer(
                        q.durable,
                        jetstream::consumer::pull::Config {
                            durable_name: Some(q.durable.to_owned()),
                            ack_policy: jetstream::consumer::AckPolicy::Explicit,
                            ack_wait: q.ack_wait,
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(other)?;
                let messages = consumer.messages().await.map_err(other)?;
                Ok(Jobs {
                    inner: JobsInner::Js(Box::pin(messages)),
                    bus: self.clone(),
                })
            }
            Bus::Local(_) => Ok(Jobs {
                inner: JobsInner::Local(self.queue_subscribe(q.subject, q.durable).await?),
                bus: self.clone(),
            }),
        }
    }
}

type JsMessages = Pin<
    Box<
        dyn Stream<Item = Result<jetstream::Message, jetstream::consumer::pull::MessagesError>>
            + Send,
    >,
>;

enum JobsInner {
    Js(JsMessages),
    Local(Subscriber),
}

/// The jobs delivered to this consumer.
pub struct Jobs {
    inner: JobsInner,
    bus: Bus,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Jobs")
    }
}

/// One delivered job. Acknowledge it once its effect is durable; dropping it unacknowledged
/// gets it redelivered (after the queue's `ack_wait`, or as the producer's retry).
pub struct Job {
    /// The job's body.
    pub payload: Bytes,
    /// The producer's id for it.
    pub id: Option<String>,
    /// How many times it has been delivered (1 the first time).
    pub delivered: u64,
    ack: JobAck,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("delivered", &self.delivered)
            .finish()
    }
}

enum JobAck {
    Js(Box<jetstream::Message>),
    Local(Box<(Bus, Message)>),
}

impl Job {
    /// Done: never deliver it again.
    pub async fn ack(self) -> Result<(), BusError> {
        match self.ack {
            JobAck::Js(m) => m.ack().await.map_err(other),
            JobAck::Local(b) => b.0.respond(&b.1, Bytes::new()).await,
        }
    }

    /// Not now: deliver it again after `delay` (in process: the producer retries).
    pub async fn retry_later(self, delay: Duration) -> Result<(), BusError> {
        match self.ack {
            JobAck::Js(m) => m
                .ack_with(jetstream::AckKind::Nak(Some(delay)))
                .await
                .map_err(other),
            JobAck::Local(..) => Ok(()),
        }
    }
}

impl Stream for Jobs {
    type Item = Job;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Job>> {
        let bus = self.bus.clone();
        loop {
            return match &mut self.inner {
                JobsInner::Js(s) => match s.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(m))) => {
                        let delivered = m
                            .info()
                            .map(|i| u64::try_from(i.delivered).unwrap_or(1))
                            .unwrap_or(1);
                        let id = m
                            .headers
                            .as_ref()
                            .and_then(|h| h.get(proto::headers::NATS_MSG_ID))
                            .map(|v| v.to_string());
                        Poll::Ready(Some(Job {
                            payload: m.payload.clone(),
                            id,
                            delivered,
                            ack: JobAck::Js(Box::new(m)),
                        }))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        // Heartbeat misses and the like: the stream recovers by itself.
                        tracing::warn!(error = %e, "job stream error");
                        continue;
                    }
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                },
                JobsInner::Local(s) => match s.poll_next_unpin(cx) {
                    Poll::Ready(Some(m)) => Poll::Ready(Some(Job {
                        payload: m.payload.clone(),
                        id: m.header(proto::headers::NATS_MSG_ID).map(str::to_owned),
                        delivered: 1,
                        ack: JobAck::Local(Box::new((bus, m))),
                    })),
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                },
            };
        }
    }
}
