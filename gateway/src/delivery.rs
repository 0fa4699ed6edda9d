//! What arrives for this gateway's connections over the bus: deliveries (fanned out by the
//! hub, then acknowledged in batches so senders can show "delivered") and presence changes
//! for watching sockets.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use prost::Message as _;
use proto::{pb, subjects};

use crate::ctx::Ctx;

/// Most delivery acks sent in one NATS message.
const MAX_ACK_BATCH: usize = 256;

/// Fans out every delivery published to this gateway until the subscription ends.
/// Acks collect while deliveries are queued back to back and go out when the queue is
/// momentarily empty: at rest one per delivery, under load one batch.
pub(crate) async fn run(ctx: Arc<Ctx>, mut deliveries: bus::Subscriber) {
    let mut acks: Vec<pb::DeliveryAck> = Vec::new();
    loop {
        let m = match deliveries.next().now_or_never() {
            Some(Some(m)) => m,
            Some(None) => break,
            None => {
                ack(&ctx, &mut acks).await;
                match deliveries.next().await {
                    Some(m) => m,
                    None => break,
                }
            }
        };
        {
            // The last hop of the message's trace.
            let span = tracing::info_span!("delivery", trace_id = tracing::field::Empty);
            bus::trace::follow(&span, &m);
            let _in = span.enter();
            match pb::Delivery::decode(m.payload) {
                Ok(mut d) => {
                    let more = std::mem::take(&mut d.more);
                    for d in std::iter::once(d).chain(more) {
                        let reached = ctx.hub.deliver(&d);
                        ctx.metrics.delivered(reached.len());
                        if let (Some(pb::delivery::Event::Message(msg)), Some(first)) =
                            (&d.event, reached.first())
                        {
                            acks.push(pb::DeliveryAck {
                                message_id: msg.id,
                                conversation_id: msg.conversation_id,
                                sender_id: msg.sender_id,
                                recipient_id: *first,
                                more: Vec::new(),
                            });
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "undecodable delivery"),
            }
        }
        if acks.len() >= MAX_ACK_BATCH {
            ack(&ctx, &mut acks).await;
        }
    }
    ack(&ctx, &mut acks).await;
}

/// Tells message-service that recipients now have these messages on a socket, so their
/// senders can show "delivered". One ack per message is all "delivered" needs
/// (message-service keeps only the first anyway), so a group message costs one ack, not
/// one per member; and the acks of a burst travel as one NATS message (`DeliveryAck.more`).
async fn ack(ctx: &Ctx, acks: &mut Vec<pb::DeliveryAck>) {
    let mut rest = std::mem::take(acks);
    if rest.is_empty() {
        return;
    }
    let mut first = rest.remove(0);
    first.more = rest;
    if let Err(e) = ctx
        .bus
        .publish(subjects::DELIVERY_ACKS, Bytes::from(first.encode_to_vec()))
        .await
    {
        tracing::debug!(error = %e, "delivery acks not published");
    }
}

/// Hands presence changes to the sockets watching the users, until the subscription ends.
pub(crate) async fn presence(ctx: Arc<Ctx>, mut changes: bus::Subscriber) {
    while let Some(m) = changes.next().await {
        match pb::PresenceChange::decode(m.payload) {
            Ok(ch) => {
                ctx.hub.presence(&ch);
            }
            Err(e) => tracing::warn!(error = %e, "undecodable presence change"),
        }
    }
}
