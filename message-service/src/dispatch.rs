//! The NATS door: one route table, the subscriptions made from it, and the loop that
//! serves each subscription.
//!
//! Each route is declared once in [`ROUTES`] — its subject, its name (the `op` label of
//! `indaba_requests_total` for requests, and the `op` of the request span) and what
//! handles it — so the subscriptions, the dispatch and the metric labels cannot drift
//! apart. Requests run the typed operations of [`crate::ops`] (the gRPC door runs the
//! same ones); delivery acks and the routing streams are handled here, inline, in
//! arrival order.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use prost::Message as _;
use proto::{pb, pb_error, subjects, ErrorCode};
use tracing::Instrument;

use crate::admission;
use crate::delivery::{catch_up, tell_delivered};
use crate::metrics::Counter;
use crate::ops::{self, Answer};
use crate::state::Inner;

/// Runs one request: the payload in, the encoded response out. With a refusal (the
/// request was not admitted) it answers that refusal in the route's response type instead.
type Op = for<'a> fn(&'a Inner, &'a [u8], Option<pb::Error>) -> BoxFuture<'a, Bytes>;

/// What handles a route's messages.
#[derive(Clone, Copy)]
pub(crate) enum Handler {
    /// A request (queue group): decoded, run, answered, counted.
    Request(Op),
    /// Gateways' delivery acks (queue group, no reply): `message_delivered` notices.
    DeliveryAcks,
    /// Socket events and heartbeats: every instance keeps its own routing table, so no
    /// queue group; one subscription for both streams keeps them in order.
    Routing,
}

/// One NATS route.
pub(crate) struct Route {
    /// The route's name: for requests the `op` metric label (bounded, stable).
    pub(crate) name: &'static str,
    /// The subject it listens on.
    pub(crate) subject: &'static str,
    /// What handles it.
    pub(crate) handler: Handler,
    /// Requests received (only request routes count).
    pub(crate) received: Counter,
}

/// A row of [`ROUTES`].
macro_rules! route {
    ($name:literal, $subject:expr, $handler:expr) => {
        Route {
            name: $name,
            subject: $subject,
            handler: $handler,
            received: Counter::new(),
        }
    };
}

/// A request route running `$op` over NATS.
macro_rules! request {
    ($name:literal, $subject:expr, $op:path) => {
        route!(
            $name,
            $subject,
            Handler::Request(|inner, payload, refusal| {
                Box::pin(over_nats(payload, refusal, move |req| $op(inner, req)))
            })
        )
    };
}

/// Every route of message-service, requests in the order `/metrics` lists them.
pub(crate) static ROUTES: [Route; 22] = [
    request!("send", subjects::MSG_SEND, ops::send),
    request!("send_batch", subjects::MSG_SEND_BATCH, ops::send_batch),
    request!(
        "create_conversation",
        subjects::CONV_CREATE,
        ops::create_conversation
    ),
    request!(
        "get_conversation",
        subjects::CONV_GET,
        ops::get_conversation
    ),
    request!("mark_read", subjects::RECEIPTS_MARK, ops::mark_read),
    request!("typing", subjects::TYPING, ops::typing),
    request!("list_messages", subjects::MSG_LIST, ops::list_messages),
    request!(
        "list_conversations",
        subjects::CONV_LIST,
        ops::list_conversations
    ),
    request!(
        "update_participants",
        subjects::CONV_MEMBERS,
        ops::update_participants
    ),
    request!(
        "set_participant_role",
        subjects::CONV_ROLE,
        ops::set_participant_role
    ),
    request!("get_message", subjects::MSG_GET, ops::get_message),
    request!("unread_counts", subjects::UNREAD, ops::unread_counts),
    request!("messages_since", subjects::MSG_SINCE, ops::messages_since),
    request!(
        "shared_contacts",
        subjects::CONV_SHARED,
        ops::shared_contacts
    ),
    request!("change_message", subjects::MSG_CHANGE, ops::change),
    request!("thread", subjects::MSG_THREAD, ops::thread),
    request!("pins", subjects::MSG_PINS, ops::pins),
    request!("message_reads", subjects::MSG_READS, ops::message_reads),
    request!("create_upload", subjects::MSG_UPLOAD, ops::create_upload),
    request!(
        "attachment_url",
        subjects::MSG_ATTACHMENT,
        ops::attachment_url
    ),
    route!(
        "delivery_acks",
        subjects::DELIVERY_ACKS,
        Handler::DeliveryAcks
    ),
    route!("routing", subjects::ROUTING_ALL, Handler::Routing),
];

/// The `op` labels and counts of `indaba_requests_total`.
pub(crate) fn request_counts() -> impl Iterator<Item = (&'static str, u64)> {
    ROUTES
        .iter()
        .filter(|r| matches!(r.handler, Handler::Request(_)))
        .map(|r| (r.name, r.received.get()))
}

/// Subscribes to every route: queue group for requests and acks (any number of instances
/// share the load), a plain subscription for routing (every instance needs all of it).
pub(crate) async fn subscribe(
    bus: &bus::Bus,
    send_batches: bool,
) -> anyhow::Result<Vec<(&'static Route, bus::Subscriber)>> {
    let mut subs = Vec::with_capacity(ROUTES.len());
    for route in &ROUTES {
        if route.subject == subjects::MSG_SEND_BATCH && !send_batches {
            continue;
        }
        let sub = match route.handler {
            Handler::Routing => bus.subscribe(route.subject).await?,
            Handler::Request(_) | Handler::DeliveryAcks => {
                bus.queue_subscribe(route.subject, subjects::MESSAGE_SERVICE_QUEUE)
                    .await?
            }
        };
        subs.push((route, sub));
    }
    Ok(subs)
}

/// Decodes a NATS request, runs `op`, encodes the answer; an undecodable request is an
/// `invalid_field` failure of the expected response type, and so is a `refusal` (a request
/// that was not admitted: nothing runs).
async fn over_nats<Req, Resp, Fut>(
    payload: &[u8],
    refusal: Option<pb::Error>,
    op: impl FnOnce(Req) -> Fut,
) -> Bytes
where
    Req: prost::Message + Default,
    Resp: Answer,
    Fut: std::future::Future<Output = Resp>,
{
    if let Some(e) = refusal {
        return Bytes::from(Resp::failed(e).encode_to_vec());
    }
    let resp = match Req::decode(payload) {
        Ok(req) => op(req).await,
        Err(e) => Resp::failed(pb_error(
            ErrorCode::InvalidField,
            format!("undecodable request: {e}"),
        )),
    };
    Bytes::from(resp.encode_to_vec())
}

/// Serves one subscription until it ends.
pub(crate) async fn serve(inner: Arc<Inner>, route: &'static Route, mut sub: bus::Subscriber) {
    // Only the routing subscription sees heartbeats; big ones arrive in parts.
    let mut heartbeats = bus::heartbeat::Assembler::default();
    while let Some(msg) = sub.next().await {
        match route.handler {
            Handler::Routing => apply_routing(&inner, &mut heartbeats, msg),
            Handler::DeliveryAcks => match pb::DeliveryAck::decode(msg.payload) {
                Ok(mut ack) => {
                    let more = std::mem::take(&mut ack.more);
                    tell_delivered(&inner, std::iter::once(ack).chain(more)).await;
                }
                Err(e) => tracing::warn!(error = %e, "undecodable delivery ack"),
            },
            Handler::Request(op) => {
                let arrived = tokio::time::Instant::now();
                // Bounded concurrency: when saturated we stop reading, and NATS buffers
                // (then times the requester out, who retries with the same key).
                let Ok(permit) = inner.in_flight.clone().acquire_owned().await else {
                    return;
                };
                let inner = inner.clone();
                route.received.add();
                // Continues the caller's trace (its `traceparent` header).
                let span = tracing::info_span!(
                    "request",
                    op = route.name,
                    trace_id = tracing::field::Empty
                );
                bus::trace::follow(&span, &msg);
                // This kind's own bound (`admission`): over it, refused quickly. Nobody
                // reads an answer after the requester's timeout: work still waiting then
                // is dropped, a page read still running is cancelled.
                let gate = admission::gates::named(route.name);
                let deadline = admission::deadline(arrived);
                tokio::spawn(
                    async move {
                        let reply = match inner.admission.enter(gate).await {
                            Err(refusal) => Some(op(&inner, &msg.payload, Some(refusal)).await),
                            Ok(pass) => {
                                let work = op(&inner, &msg.payload, None);
                                let reply = admission::before_deadline(gate, deadline, work).await;
                                drop(pass);
                                reply
                            }
                        };
                        if let Some(reply) = reply {
                            if let Err(e) = inner.bus.respond(&msg, reply).await {
                                tracing::warn!(error = %e, "could not send reply");
                            }
                        }
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
        }
    }
}

/// Applies one routing message (a socket event or a heartbeat part) to the table, inline
/// and in arrival order, and catches up sockets the table did not know.
fn apply_routing(
    inner: &Arc<Inner>,
    heartbeats: &mut bus::heartbeat::Assembler,
    msg: bus::Message,
) {
    if msg.subject == subjects::CONN_EVENTS {
        match pb::ConnectionEvent::decode(msg.payload) {
            Ok(ev) => {
                inner.routes.apply_event(&ev);
                if ev.kind() == pb::connection_event::Kind::Up {
                    catch_up(inner, ev.user_id, &ev.gateway_id, ev.at_ms);
                }
            }
            Err(e) => tracing::warn!(error = %e, "undecodable connection event"),
        }
    } else if msg.subject == subjects::GATEWAY_HEARTBEAT {
        match pb::GatewayHeartbeat::decode(msg.payload) {
            Ok(hb) => {
                if let Some(full) = heartbeats.push(hb) {
                    // Users the table lacked: their socket-opened event was lost; the
                    // socket opened at most one interval ago.
                    let since = full.sent_at_ms - i64::from(full.interval_ms);
                    for user in inner.routes.apply_heartbeat(&full) {
                        catch_up(inner, user, &full.gateway_id, since);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "undecodable heartbeat"),
        }
    }
    // Anything else on the routing streams (away/online status changes) matters to
    // presence, not to routing.
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_route_has_its_own_subject_and_name() {
        let subjects: HashSet<&str> = ROUTES.iter().map(|r| r.subject).collect();
        let names: HashSet<&str> = ROUTES.iter().map(|r| r.name).collect();
        assert_eq!(subjects.len(), ROUTES.len());
        assert_eq!(names.len(), ROUTES.len());
        for r in &ROUTES {
            // A metric label: lower snake case, nothing to escape.
            assert!(
                r.name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{}",
                r.name
            );
        }
    }

    #[test]
    fn every_request_route_has_its_own_bound() {
        for r in &ROUTES {
            if matches!(r.handler, Handler::Request(_)) {
                assert!(
                    admission::gates::ALL.iter().any(|g| g.name == r.name),
                    "{} has no gate in admission::gates",
                    r.name
                );
            }
        }
    }

    #[test]
    fn metrics_list_the_request_routes_in_table_order() {
        let ops: Vec<&str> = request_counts().map(|(op, _)| op).collect();
        // Every route but the delivery acks and the routing streams.
        assert_eq!(ops.len(), ROUTES.len() - 2);
        assert_eq!(ops[0], "send");
        let at = |name| ops.iter().position(|op| *op == name);
        assert_eq!(at("send_batch"), Some(1));
        assert_eq!(at("set_participant_role"), Some(9));
        assert_eq!(at("messages_since"), Some(12));
        assert!(!ops.contains(&"routing") && !ops.contains(&"delivery_acks"));
        // Only the routing route listens without a queue group.
        let plain: Vec<&str> = ROUTES
            .iter()
            .filter(|r| matches!(r.handler, Handler::Routing))
            .map(|r| r.subject)
            .collect();
        assert_eq!(plain, vec![subjects::ROUTING_ALL]);
    }
}
