//! Every NATS subject and queue group Indaba uses. No other module writes a subject string.
//!
//! All subjects live under `indaba.v1.` so that one NATS account can host several
//! deployments (prefix by account) and a future v2 can run beside v1 during a migration.

/// Request/reply: a gateway (or REST handler) asks message-service to persist a message.
/// Payload `pb::SendMessageRequest`, reply `pb::SendMessageResponse`.
pub const MSG_SEND: &str = "indaba.v1.msg.send";
/// Request/reply: create a conversation. `pb::CreateConversationRequest` →
/// `pb::CreateConversationResponse`.
pub const CONV_CREATE: &str = "indaba.v1.conv.create";
/// Request/reply: fetch one conversation. `pb::GetConversationRequest` →
/// `pb::GetConversationResponse`.
pub const CONV_GET: &str = "indaba.v1.conv.get";

/// Queue group shared by every message-service instance, so each request is handled once.
pub const MESSAGE_SERVICE_QUEUE: &str = "message-service";

/// Prefix of per-gateway delivery subjects; see [`gateway_delivery`].
pub const GATEWAY_DELIVERY_PREFIX: &str = "indaba.v1.deliver.gw.";

/// The subject a gateway listens on for `pb::Delivery` envelopes addressed to its sockets.
/// One subscription per gateway, whatever its number of connections.
pub fn gateway_delivery(gateway_id: &str) -> String {
    format!("{GATEWAY_DELIVERY_PREFIX}{gateway_id}")
}

/// Broadcast: a socket opened or closed (`pb::ConnectionEvent`).
pub const CONN_EVENTS: &str = "indaba.v1.conn.events";
/// Broadcast: a gateway's full list of connected users (`pb::GatewayHeartbeat`).
pub const GATEWAY_HEARTBEAT: &str = "indaba.v1.gateway.heartbeat";
/// Broadcast, empty payload: "every gateway, send your heartbeat now". Published by a
/// service that has just started and has no routing table yet.
pub const GATEWAY_RESYNC: &str = "indaba.v1.gateway.resync";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_subject_is_under_prefix() {
        assert_eq!(gateway_delivery("g1"), "indaba.v1.deliver.gw.g1");
    }
}
