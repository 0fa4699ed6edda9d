//! Deliveries leave through one task that coalesces them per gateway: whatever is queued
//! when it wakes goes out as one NATS message per gateway (`Delivery.more`), so the sends of
//! one group commit — answered together — cost one delivery publish per gateway, not one
//! per message. A lone delivery goes at once (nothing waits for company), so this adds no
//! latency at rest; under load the queue is what fills the bundles.
//!
//! Order per gateway is the queue's order, which is what each caller's publishes had before.
//! A gateway handles the deliveries of `more` after the first, in order (every released
//! gateway does; the field predates this module).

use std::sync::Arc;

use bus::Bus;
use bytes::Bytes;
use prost::Message as _;
use proto::{pb, subjects};
use tokio::sync::{mpsc, oneshot};

use crate::metrics;

/// Deliveries taken off the queue per wake-up.
const TAKE: usize = 1024;
/// Queue length before callers wait.
const QUEUE: usize = 65_536;
/// Most encoded bytes per bundle: under NATS's default 1 MB payload limit with room to
/// spare (a room message names up to 1,000 recipients).
const MAX_BUNDLE_BYTES: usize = 256 * 1024;

/// One delivery for one gateway, the trace it belongs to, and who waits to hear whether it
/// went out.
pub(crate) struct Item {
    gateway: Arc<str>,
    delivery: pb::Delivery,
    traceparent: Option<String>,
    waiter: oneshot::Sender<bool>,
}

/// The queue into the publishing task. Clones share it.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing(mpsc::Sender<Item>);

impl Outgoing {
    /// The queue and the receiver [`run`] drains.
    pub(crate) fn channel() -> (Outgoing, mpsc::Receiver<Item>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Outgoing(tx), rx)
    }

    /// Publishes `d` to `gateway` (coalesced with whatever else is queued for it); true
    /// once it was handed to the bus. A bundle continues the trace of its first delivery
    /// (the current span's, captured here): a lone delivery keeps its trace whole.
    pub(crate) async fn publish(&self, gateway: Arc<str>, d: pb::Delivery) -> bool {
        let (tx, rx) = oneshot::channel();
        let item = Item {
            gateway,
            delivery: d,
            traceparent: bus::trace::current_traceparent(),
            waiter: tx,
        };
        if self.0.send(item).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

/// Publishes queued deliveries, bundled per gateway, until every [`Outgoing`] is dropped.
pub(crate) async fn run(bus: Bus, mut rx: mpsc::Receiver<Item>) {
    let mut items = Vec::with_capacity(TAKE);
    while rx.recv_many(&mut items, TAKE).await > 0 {
        for b in bundles(std::mem::take(&mut items)) {
            let subject = subjects::gateway_delivery(&b.gateway);
            let headers: Vec<(&str, &str)> = b
                .traceparent
                .as_deref()
                .map(|tp| vec![(proto::headers::TRACEPARENT, tp)])
                .unwrap_or_default();
            let gateway = &b.gateway;
            let ok = match bus
                .publish_with_headers(&subject, &headers, Bytes::from(b.first.encode_to_vec()))
                .await
            {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, %gateway, "delivery publish failed");
                    metrics::bus_error();
                    false
                }
            };
            for w in b.waiters {
                let _ = w.send(ok);
            }
        }
    }
}

/// Deliveries for one gateway as one: the first, carrying the rest in `more`.
struct Bundle {
    gateway: Arc<str>,
    first: pb::Delivery,
    traceparent: Option<String>,
    bytes: usize,
    waiters: Vec<oneshot::Sender<bool>>,
}

/// The deliveries grouped per gateway, in queue order, each group as one delivery carrying
/// the rest in `more` (flattened: a gateway reads one level), split where a bundle would
/// pass [`MAX_BUNDLE_BYTES`].
fn bundles(items: Vec<Item>) -> Vec<Bundle> {
    let mut open: Vec<Bundle> = Vec::new();
    let mut done = Vec::new();
    for item in items {
        let mut d = item.delivery;
        let nested = std::mem::take(&mut d.more);
        let len = d.encoded_len() + nested.iter().map(|n| n.encoded_len()).sum::<usize>();
        let at = open.iter().position(|o| o.gateway == item.gateway);
        match at {
            Some(i) if open[i].bytes + len <= MAX_BUNDLE_BYTES => {
                let o = &mut open[i];
                o.first.more.push(d);
                o.first.more.extend(nested);
                o.bytes += len;
                o.waiters.push(item.waiter);
            }
            _ => {
                if let Some(i) = at {
                    done.push(open.swap_remove(i));
                }
                d.more = nested;
                open.push(Bundle {
                    gateway: item.gateway,
                    first: d,
                    traceparent: item.traceparent,
                    bytes: len,
                    waiters: vec![item.waiter],
                });
            }
        }
    }
    done.extend(open);
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(gateway: &str, id: i64, nested: &[i64]) -> Item {
        let d = |id| pb::Delivery {
            event: Some(pb::delivery::Event::Message(pb::ChatMessage {
                id,
                ..Default::default()
            })),
            recipient_ids: vec![7],
            ..Default::default()
        };
        let mut first = d(id);
        first.more = nested.iter().map(|n| d(*n)).collect();
        Item {
            gateway: Arc::from(gateway),
            delivery: first,
            traceparent: None,
            waiter: oneshot::channel().0,
        }
    }

    fn ids(d: &pb::Delivery) -> Vec<i64> {
        std::iter::once(d)
            .chain(d.more.iter())
            .map(|d| match &d.event {
                Some(pb::delivery::Event::Message(m)) => m.id,
                _ => 0,
            })
            .collect()
    }

    #[test]
    fn one_bundle_per_gateway_in_queue_order_and_flat() {
        let out = bundles(vec![
            item("a", 1, &[]),
            item("b", 2, &[]),
            item("a", 3, &[4, 5]),
            item("a", 6, &[]),
        ]);
        assert_eq!(out.len(), 2);
        let a = out.iter().find(|b| &*b.gateway == "a").expect("a");
        assert_eq!(ids(&a.first), vec![1, 3, 4, 5, 6]);
        assert!(
            a.first.more.iter().all(|m| m.more.is_empty()),
            "one level only"
        );
        assert_eq!(a.waiters.len(), 3, "every caller hears back");
        let b = out.iter().find(|b| &*b.gateway == "b").expect("b");
        assert_eq!(ids(&b.first), vec![2]);
    }

    #[test]
    fn a_bundle_stays_under_the_payload_limit() {
        let big = |id| {
            let mut it = item("a", id, &[]);
            it.delivery.recipient_ids = (0..50_000).collect();
            it
        };
        let out = bundles((1..=4).map(big).collect());
        assert!(out.len() >= 2, "split");
        assert!(out
            .iter()
            .all(|b| b.first.encoded_len() <= MAX_BUNDLE_BYTES * 2));
        let all: Vec<i64> = out.iter().flat_map(|b| ids(&b.first)).collect();
        let mut sorted = all.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![1, 2, 3, 4], "nothing lost");
    }
}
