//! One publish/subscribe/request API over two transports:
//!
//! - [`Bus::connect_nats`]: a NATS client, for the distributed deployment.
//! - [`Bus::local`]: an in-process bus with the same subject semantics (tokens, `*`, `>`,
//!   queue groups, request/reply, "no responders"), for the single-node program.
//!
//! Services are written once against [`Bus`]; only the program's entry point picks one.
//! Both transports bound every subscriber's queue: a subscriber that falls that far behind
//! loses messages (and we log it) rather than growing memory without limit, which is what
//! NATS itself does to a slow consumer.

pub mod config;
pub mod heartbeat;
pub mod jobs;
mod local;
pub mod metrics;
mod nats;
pub mod ops;
pub mod permissions;
pub mod runtime;
pub mod trace;

use bytes::Bytes;
use futures_util::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pub use local::LocalBus;

/// The caller's headers plus the current span's `traceparent` (unless the caller set one).
/// Borrowed as they are when there is nothing to add: most publishes (heartbeats, routing
/// events) happen outside any trace and must not pay an allocation for it.
fn with_trace<'a>(
    headers: &'a [(&'a str, &'a str)],
    tp: Option<&'a str>,
) -> std::borrow::Cow<'a, [(&'a str, &'a str)]> {
    match tp {
        Some(tp)
            if !headers
                .iter()
                .any(|(k, _)| *k == proto::headers::TRACEPARENT) =>
        {
            let mut out = headers.to_vec();
            out.push((proto::headers::TRACEPARENT, tp));
            std::borrow::Cow::Owned(out)
        }
        _ => std::borrow::Cow::Borrowed(headers),
    }
}

/// How many messages a subscriber may have queued before new ones are dropped. Matches
/// async-nats' default so both transports behave alike.
pub const SUBSCRIBER_CAPACITY: usize = 65_536;

/// Errors from the bus. Callers mostly care whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Nobody subscribes to the request subject (e.g. no message-service is running).
    #[error("no responders on {0}")]
    NoResponders(String),
    /// A responder exists but did not answer in time.
    #[error("request to {0} timed out")]
    TimedOut(String),
    /// Could not connect to the bus.
    #[error("cannot connect to the bus: {0}")]
    Connect(String),
    /// The message or subject was rejected (size, syntax).
    #[error("invalid publish: {0}")]
    Invalid(String),
    /// Anything else from the transport (connection lost, ...).
    #[error("bus error: {0}")]
    Other(String),
}

/// A message received from the bus.
#[derive(Debug, Clone)]
pub struct Message {
    /// The subject it was published on.
    pub subject: String,
    /// Where to send the answer, for requests.
    pub reply: Option<String>,
    /// Header pairs (names as sent).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub payload: Bytes,
}

impl Message {
    /// The first value of a header, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A handle to the bus; cheap to clone, share it freely.
#[derive(Clone, Debug)]
pub enum Bus {
    /// A NATS connection.
    Nats(async_nats::Client, tokio::sync::watch::Receiver<u64>),
    /// The in-process bus.
    Local(LocalBus),
}

impl Bus {
    /// Connects to NATS (`nats.url` may list several servers, comma separated) with the
    /// settings' credentials and TLS. The client reconnects forever in the background;
    /// `name` shows up in the server's monitoring.
    pub async fn connect_nats(nats: &config::NatsSettings, name: &str) -> Result<Bus, BusError> {
        nats::connect(nats, name)
            .await
            .map(|(client, reconnects)| Bus::Nats(client, reconnects))
    }

    /// A fresh in-process bus.
    pub fn local() -> Bus {
        Bus::Local(LocalBus::new())
    }

    /// Publishes without waiting for anyone. Over NATS, Ok means "handed to the client",
    /// not "delivered": callers that must not lose a message keep it durable elsewhere
    /// (message-service's outbox) until they know better.
    pub async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        self.publish_with_headers(subject, &[], payload).await
    }

    /// Publishes with headers (e.g. `traceparent`).
    pub async fn publish_with_headers(
        &self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: Bytes,
    ) -> Result<(), BusError> {
        let tp = trace::current_traceparent();
        let headers = &with_trace(headers, tp.as_deref());
        match self {
            Bus::Nats(c, _) => nats::publish(c, subject, None, headers, payload).await,
            Bus::Local(l) => {
                l.publish(subject, None, headers, payload);
                Ok(())
            }
        }
    }

    /// Answers a request message. A message without a reply subject is ignored.
    pub async fn respond(&self, request: &Message, payload: Bytes) -> Result<(), BusError> {
        match &request.reply {
            Some(reply) => self.publish(reply, payload).await,
            None => Ok(()),
        }
    }

    /// Sends a request and waits for the first answer.
    pub async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, BusError> {
        self.request_with_headers(subject, &[], payload, timeout)
            .await
    }

    /// Sends a request with headers and waits for the first answer.
    pub async fn request_with_headers(
        &self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, BusError> {
        let tp = trace::current_traceparent();
        let headers = &with_trace(headers, tp.as_deref());
        match self {
            Bus::Nats(c, _) => nats::request(c, subject, headers, payload, timeout).await,
            Bus::Local(l) => l.request(subject, headers, payload, timeout).await,
        }
    }

    /// Subscribes to a subject (wildcards allowed). Every subscriber gets every message.
    pub async fn subscribe(&self, subject: &str) -> Result<Subscriber, BusError> {
        self.subscribe_inner(subject, None).await
    }

    /// Subscribes as a member of a queue group: each message goes to one member.
    pub async fn queue_subscribe(
        &self,
        subject: &str,
        group: &str,
    ) -> Result<Subscriber, BusError> {
        self.subscribe_inner(subject, Some(group)).await
    }

    async fn subscribe_inner(
        &self,
        subject: &str,
        group: Option<&str>,
    ) -> Result<Subscriber, BusError> {
        match self {
            Bus::Nats(c, _) => nats::subscribe(c, subject, group).await,
            Bus::Local(l) => Ok(l.subscribe(subject, group)),
        }
    }

    /// Waits until everything published so far has been written to the server.
    pub async fn flush(&self) -> Result<(), BusError> {
        match self {
            Bus::Nats(c, _) => c.flush().await.map_err(|e| BusError::Other(e.to_string())),
            Bus::Local(_) => Ok(()),
        }
    }

    /// Counts the times this connection may have missed messages (0 until the first): each
    /// reconnection to NATS (while disconnected, messages published to us were dropped by
    /// the server) and each slow-consumer event (the client dropped messages for a
    /// subscriber that fell behind). A holder of client state (a gateway) must treat a
    /// change as "I may have missed deliveries". `None` in process.
    pub fn reconnects(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        match self {
            Bus::Nats(_, r) => Some(r.clone()),
            Bus::Local(_) => None,
        }
    }

    /// Whether the transport is currently connected (always true in process).
    pub fn is_connected(&self) -> bool {
        match self {
            Bus::Nats(c, _) => matches!(
                c.connection_state(),
                async_nats::connection::State::Connected
            ),
            Bus::Local(_) => true,
        }
    }
}

/// A stream of messages on one subscription. Dropping it unsubscribes.
pub struct Subscriber {
    inner: SubscriberInner,
}

enum SubscriberInner {
    Nats(async_nats::Subscriber),
    Local(local::LocalSubscriber),
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscriber")
    }
}

impl Stream for Subscriber {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        match &mut self.inner {
            SubscriberInner::Nats(s) => Pin::new(s).poll_next(cx).map(|m| m.map(nats::convert)),
            SubscriberInner::Local(s) => Pin::new(s).poll_next(cx),
        }
    }
}

/// Splits a subject into tokens and checks it is well formed: non-empty tokens, no
/// whitespace; `*` only as a whole token; `>` only as the last token.
pub(crate) fn tokens(subject: &str, allow_wildcards: bool) -> Result<Vec<&str>, BusError> {
    let toks: Vec<&str> = subject.split('.').collect();
    for (i, t) in toks.iter().enumerate() {
        let bad = t.is_empty()
            || t.chars().any(char::is_whitespace)
            || (t.contains('*') && (*t != "*" || !allow_wildcards))
            || (t.contains('>') && (*t != ">" || !allow_wildcards || i + 1 != toks.len()));
        if bad {
            return Err(BusError::Invalid(format!("bad subject {subject:?}")));
        }
    }
    Ok(toks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_syntax() {
        assert!(tokens("a.b.c", false).is_ok());
        assert!(tokens("a.*.c", true).is_ok());
        assert!(tokens("a.>", true).is_ok());
        assert!(tokens("a.*", false).is_err());
        assert!(tokens("a.>.b", true).is_err());
        assert!(tokens("a..b", true).is_err());
        assert!(tokens("a b", true).is_err());
        assert!(tokens("", true).is_err());
    }
}
