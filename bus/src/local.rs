//! The in-process bus: NATS subject semantics without a server, for the single-node
//! program. A publish walks the subscription list (a handful of entries in practice: one
//! per service subscription, not one per user) and hands each match a clone of the bytes.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::{tokens, BusError, Message, Subscriber, SubscriberInner};

/// Handle to an in-process bus. Clones share the same bus.
#[derive(Clone, Debug, Default)]
pub struct LocalBus {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    subs: RwLock<Vec<Sub>>,
    next_id: AtomicU64,
    /// Round-robin cursor for queue groups.
    rr: AtomicUsize,
}

#[derive(Debug)]
struct Sub {
    id: u64,
    pattern: Vec<String>,
    group: Option<String>,
    tx: mpsc::Sender<Message>,
}

fn matches(pattern: &[String], subject: &[&str]) -> bool {
    let mut i = 0;
    for p in pattern {
        if p == ">" {
            return subject.len() > i;
        }
        match subject.get(i) {
            Some(s) if p == "*" || p == s => i += 1,
            _ => return false,
        }
    }
    i == subject.len()
}

impl LocalBus {
    /// A new, empty bus.
    pub fn new() -> LocalBus {
        LocalBus::default()
    }

    /// Delivers to every matching plain subscriber and to one member of each matching queue
    /// group. Returns how many subscribers received it.
    pub(crate) fn publish(
        &self,
        subject: &str,
        reply: Option<&str>,
        headers: &[(&str, &str)],
        payload: Bytes,
    ) -> usize {
        let Ok(subject_toks) = tokens(subject, false) else {
            tracing::warn!(subject, "local bus: dropping publish to malformed subject");
            return 0;
        };
        let msg = Message {
            subject: subject.to_owned(),
            reply: reply.map(str::to_owned),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            payload,
        };
        let subs = self.inner.subs.read().unwrap_or_else(|e| e.into_inner());
        let mut delivered = 0;
        let mut groups: HashMap<&str, Vec<&Sub>> = HashMap::new();
        for s in subs.iter().filter(|s| matches(&s.pattern, &subject_toks)) {
            match &s.group {
                Some(g) => groups.entry(g.as_str()).or_default().push(s),
                None => delivered += usize::from(offer(s, &msg)),
            }
        }
        for members in groups.values() {
            let start = self.inner.rr.fetch_add(1, Ordering::Relaxed);
            // Try members in round-robin order; a full member is skipped, like NATS would
            // skip a member that is gone.
            for k in 0..members.len() {
                if offer(members[(start + k) % members.len()], &msg) {
                    delivered += 1;
                    break;
                }
            }
        }
        delivered
    }

    pub(crate) fn subscribe(&self, subject: &str, group: Option<&str>) -> Subscriber {
        // An invalid pattern yields a subscriber that never receives, mirroring a NATS
        // subscription the server rejects; the warning says why.
        let pattern = match tokens(subject, true) {
            Ok(t) => t.into_iter().map(str::to_owned).collect(),
            Err(e) => {
                tracing::warn!(subject, error = %e, "local bus: invalid subscription");
                vec![String::from("\u{0}invalid")]
            }
        };
        let (tx, rx) = mpsc::channel(crate::SUBSCRIBER_CAPACITY);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner
            .subs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Sub {
                id,
                pattern,
                group: group.map(str::to_owned),
                tx,
            });
        Subscriber {
            inner: SubscriberInner::Local(LocalSubscriber {
                id,
                bus: self.inner.clone(),
                rx,
            }),
        }
    }

    pub(crate) async fn request(
        &self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, BusError> {
        let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let inbox = format!("_INBOX.local.{n}");
        let mut sub = self.subscribe(&inbox, None);
        if self.publish(subject, Some(&inbox), headers, payload) == 0 {
            return Err(BusError::NoResponders(subject.to_owned()));
        }
        match tokio::time::timeout(timeout, sub.next()).await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(BusError::Other("local bus closed".into())),
            Err(_) => Err(BusError::TimedOut(subject.to_owned())),
        }
    }
}

fn offer(sub: &Sub, msg: &Message) -> bool {
    match sub.tx.try_send(msg.clone()) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::error!(subject = %msg.subject, "local bus: slow consumer, message dropped");
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// The receiving end of a local subscription; unsubscribes on drop.
pub(crate) struct LocalSubscriber {
    id: u64,
    bus: Arc<Inner>,
    rx: mpsc::Receiver<Message>,
}

impl Stream for LocalSubscriber {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for LocalSubscriber {
    fn drop(&mut self) {
        let mut subs = self.bus.subs.write().unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| s.id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Bus;

    fn pat(s: &str) -> Vec<String> {
        s.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn wildcard_matching() {
        assert!(matches(&pat("a.b"), &["a", "b"]));
        assert!(!matches(&pat("a.b"), &["a", "b", "c"]));
        assert!(matches(&pat("a.*"), &["a", "x"]));
        assert!(!matches(&pat("a.*"), &["a"]));
        assert!(matches(&pat("a.>"), &["a", "x", "y"]));
        assert!(!matches(&pat("a.>"), &["a"]));
    }

    #[tokio::test]
    async fn queue_group_delivers_once_and_plain_subscribers_all() {
        let bus = Bus::local();
        let mut q1 = bus.queue_subscribe("s.x", "g").await.unwrap();
        let mut q2 = bus.queue_subscribe("s.x", "g").await.unwrap();
        let mut all = bus.subscribe("s.*").await.unwrap();
        for i in 0..10u8 {
            bus.publish("s.x", Bytes::from(vec![i])).await.unwrap();
        }
        let mut got = 0;
        for _ in 0..10 {
            tokio::select! {
                Some(_) = q1.next() => got += 1,
                Some(_) = q2.next() => got += 1,
            }
        }
        assert_eq!(got, 10);
        for i in 0..10u8 {
            assert_eq!(all.next().await.unwrap().payload[0], i);
        }
        // Nothing more is queued for the group: each message went to exactly one member.
        let extra = tokio::time::timeout(Duration::from_millis(50), async {
            tokio::select! { _ = q1.next() => (), _ = q2.next() => () }
        })
        .await;
        assert!(extra.is_err());
    }

    #[tokio::test]
    async fn request_reply_and_no_responders() {
        let bus = Bus::local();
        let err = bus
            .request("svc", Bytes::new(), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, BusError::NoResponders(_)));
        let mut sub = bus.queue_subscribe("svc", "q").await.unwrap();
        let b2 = bus.clone();
        tokio::spawn(async move {
            let m = sub.next().await.unwrap();
            b2.respond(&m, Bytes::from_static(b"pong")).await.unwrap();
        });
        let r = bus
            .request("svc", Bytes::from_static(b"ping"), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(&r.payload[..], b"pong");
    }

    #[tokio::test]
    async fn dropping_unsubscribes() {
        let bus = Bus::local();
        let sub = bus.subscribe("a").await.unwrap();
        drop(sub);
        let Bus::Local(l) = &bus else { unreachable!() };
        assert_eq!(l.publish("a", None, &[], Bytes::new()), 0);
    }
}
