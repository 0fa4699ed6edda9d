//! Delivery: every event for users leaves message-service here, as one `pb::Delivery`
//! per gateway that holds sockets of its recipients (subject `deliver.gw.<id>`).
//!
//! Three kinds of publishing share the coalescing publisher (`crate::publisher`, the one
//! place a delivery is encoded, published and, on failure, logged and counted): events to
//! the current routing table ([`deliver`] for new messages, [`publish_event`] for receipts,
//! typing and membership), the catch-up of a socket that just opened ([`catch_up`]), and
//! `message_delivered` notices to senders ([`tell_delivered`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use proto::pb;

use crate::metrics;
use crate::push_jobs::PushWork;
use crate::state::Inner;
use crate::store::ConversationMeta;

/// A delivery of `event` to `recipients`, skipping the socket `origin` (empty: none).
fn delivery(event: pb::delivery::Event, recipients: Vec<i64>, origin: &str) -> pb::Delivery {
    pb::Delivery {
        event: Some(event),
        recipient_ids: recipients,
        origin_connection_id: origin.to_owned(),
        more: Vec::new(),
        opened_before_ms: 0,
    }
}

/// Whether a delivery is the message's first publish or a repeat of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// Right after the commit.
    First,
    /// The outbox sweeper's: the first attempt may have reached some sockets already (its
    /// writer died after publishing, or kept the row while its routing table was cold).
    /// Only sockets open at the commit get it: a socket opened later was not owed it live
    /// (its user had it on an earlier socket, or reads it with a resume).
    Republish,
}

/// Publishes a committed message to every gateway that holds sockets of the participants,
/// then hands it to the push enqueuer, which completes the outbox row once the push job is
/// stored too. The sender's reply does not wait for the push queue.
pub(crate) async fn deliver(
    inner: &Inner,
    message: &pb::ChatMessage,
    participants: &[i64],
    meta: &ConversationMeta,
    origin: &str,
    attempt: Attempt,
) {
    // Remember it *before* reading the routing table: a socket-opened event applied after
    // that read then finds it here (catch_up), one applied before it is in the table.
    inner.recent.record(message, participants, origin);
    let groups = inner.routes.by_gateway(participants);
    let everyone_online = all_routed(&groups, participants, message.sender_id);
    let opened_before_ms = match attempt {
        Attempt::First => 0,
        // 1 ms at least: 0 would mean every socket.
        Attempt::Republish => message.created_at_ms.max(1),
    };
    let ok = publish_groups(
        inner,
        &pb::delivery::Event::Message(message.clone()),
        groups,
        origin,
        opened_before_ms,
    )
    .await;
    // On failure the row stays; the sweeper republishes it when the lease runs out. Same
    // while the routing table may still be missing gateways (just after start).
    let delivered = ok && inner.routes_warm();
    // No push job when every recipient has a socket: push-service would drop each of them
    // anyway (it skips users who are online, or were within its window, 60 s by default),
    // and a job is a JetStream write and acknowledgement per message.
    if everyone_online && inner.settings.push_jobs {
        metrics::push_job_skipped();
    }
    if everyone_online || !inner.settings.push_jobs {
        if delivered {
            inner.completions.complete(message.id);
        } else {
            inner.completions.release(message.id);
        }
        return;
    }
    let queued = inner.push.offer(PushWork {
        message: message.clone(),
        participants: participants.to_vec(),
        meta: meta.clone(),
        delivered,
    });
    if !queued {
        inner.completions.release(message.id);
    }
}

/// Whether every participant but `sender` appears in `groups` (has a socket somewhere).
fn all_routed(groups: &[(Arc<str>, Vec<i64>)], participants: &[i64], sender: i64) -> bool {
    let routed: HashSet<i64> = groups
        .iter()
        .flat_map(|(_, users)| users.iter().copied())
        .collect();
    participants
        .iter()
        .all(|u| *u == sender || routed.contains(u))
}

/// Publishes `event` once to every gateway holding sockets of `recipients`. Returns false
/// if any publish failed.
pub(crate) async fn publish_event(
    inner: &Inner,
    event: pb::delivery::Event,
    recipients: &[i64],
    origin: &str,
) -> bool {
    let groups = inner.routes.by_gateway(recipients);
    publish_groups(inner, &event, groups, origin, 0).await
}

/// Publishes `event` to each gateway of `groups` (from [`crate::routes::Routes::by_gateway`]),
/// naming the recipients it holds, for sockets opened by `opened_before_ms` (0: all).
/// Returns false if any publish failed.
async fn publish_groups(
    inner: &Inner,
    event: &pb::delivery::Event,
    groups: Vec<(Arc<str>, Vec<i64>)>,
    origin: &str,
    opened_before_ms: i64,
) -> bool {
    let mut ok = true;
    for (gateway, users) in groups {
        let mut d = delivery(event.clone(), users, origin);
        d.opened_before_ms = opened_before_ms;
        ok &= inner.outgoing.publish(gateway, d).await;
    }
    ok
}

/// Publishes again, to the gateway where a socket of a user opened at `opened_ms`, the
/// user's messages published since (see [`crate::recent`]: the routing event may have lost
/// the race with them). The table is read here, in the routing loop's order; the
/// publishing runs on its own task so a burst of reconnects does not hold up later routing
/// events.
pub(crate) fn catch_up(inner: &Arc<Inner>, user: i64, gateway: &str, opened_ms: i64) {
    let recent = inner.recent.published_after(user, opened_ms);
    if recent.is_empty() {
        return;
    }
    metrics::caught_up(recent.len());
    let inner = inner.clone();
    let gateway: Arc<str> = Arc::from(gateway);
    tokio::spawn(async move {
        for p in recent {
            let event = pb::delivery::Event::Message((*p.message).clone());
            // Never back to the socket that sent it, and only to sockets open when it was
            // first published (the one that opened before it, and its user's older ones,
            // which drop it as a repeat): another socket of the user opened since then
            // has no business with it.
            let mut d = delivery(event, vec![user], &p.origin);
            d.opened_before_ms = p.published_ms.max(1);
            if !inner.outgoing.publish(gateway.clone(), d).await {
                return;
            }
        }
    });
}

/// Sends `message_delivered` to the senders of newly acknowledged messages: one NATS
/// message per gateway holding senders (the rest ride in `Delivery.more`).
pub(crate) async fn tell_delivered(inner: &Inner, acks: impl Iterator<Item = pb::DeliveryAck>) {
    let mut per_gateway: HashMap<Arc<str>, Vec<pb::Delivery>> = HashMap::new();
    let now = proto::time::now_ms();
    for ack in acks {
        // "Delivered" means at least one recipient device has it: the first ack per
        // message is enough (a group would otherwise send one per member).
        if !inner.first_ack(ack.message_id) {
            continue;
        }
        let event = pb::delivery::Event::Delivered(pb::DeliveredEvent {
            message_id: ack.message_id,
            conversation_id: ack.conversation_id,
            recipient_id: ack.recipient_id,
            at_ms: now,
        });
        for (gateway, users) in inner.routes.by_gateway(&[ack.sender_id]) {
            per_gateway
                .entry(gateway)
                .or_default()
                .push(delivery(event.clone(), users, ""));
        }
    }
    for (gateway, batch) in per_gateway {
        if let Some(first) = bundle(batch) {
            inner.outgoing.publish(gateway, first).await;
        }
    }
}

/// Several deliveries to one gateway as one: the first, carrying the rest in `more`.
fn bundle(mut batch: Vec<pb::Delivery>) -> Option<pb::Delivery> {
    if batch.is_empty() {
        return None;
    }
    let mut first = batch.remove(0);
    first.more = batch;
    Some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(id: &str, users: &[i64]) -> (Arc<str>, Vec<i64>) {
        (Arc::from(id), users.to_vec())
    }

    #[test]
    fn all_routed_ignores_the_sender_and_needs_every_other_participant() {
        let groups = [gw("g1", &[2]), gw("g2", &[3])];
        assert!(all_routed(&groups, &[1, 2, 3], 1));
        assert!(!all_routed(&groups, &[1, 2, 3, 4], 1), "4 has no socket");
        assert!(all_routed(&[], &[1], 1), "alone in the conversation");
        assert!(!all_routed(&[], &[1, 2], 1));
    }

    #[test]
    fn a_bundle_is_the_first_delivery_carrying_the_rest() {
        let d = |id| {
            delivery(
                pb::delivery::Event::Delivered(pb::DeliveredEvent {
                    message_id: id,
                    ..Default::default()
                }),
                vec![7],
                "",
            )
        };
        assert!(bundle(Vec::new()).is_none());
        let one = bundle(vec![d(1), d(2), d(3)]).expect("bundle");
        assert_eq!(one.more.len(), 2);
        assert_eq!(one.recipient_ids, vec![7]);
        assert!(one.more.iter().all(|m| m.more.is_empty()));
    }
}
