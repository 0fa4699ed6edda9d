//! Every NATS subject and queue group Indaba uses. No other module writes a subject string.
//!
//! All subjects live under `indaba.v1.` so that one NATS account can host several
//! deployments (prefix by account) and a future v2 can run beside v1 during a migration.

/// Request/reply: a gateway (or REST handler) asks message-service to persist a message.
/// Payload `pb::SendMessageRequest`, reply `pb::SendMessageResponse`.
pub const MSG_SEND: &str = "indaba.v1.msg.send";
/// Request/reply: several sends of one gateway at once. `pb::SendBatchRequest` →
/// `pb::SendBatchResponse` (answers in request order).
pub const MSG_SEND_BATCH: &str = "indaba.v1.msg.send_batch";
/// Request/reply: create a conversation. `pb::CreateConversationRequest` →
/// `pb::CreateConversationResponse`.
pub const CONV_CREATE: &str = "indaba.v1.conv.create";
/// Request/reply: fetch one conversation. `pb::GetConversationRequest` →
/// `pb::GetConversationResponse`.
pub const CONV_GET: &str = "indaba.v1.conv.get";
/// Request: which of some users share a conversation with a user (presence visibility).
pub const CONV_SHARED: &str = "indaba.v1.conv.shared";

/// Request/reply: mark messages read. `pb::MarkReadRequest` → `pb::MarkReadResponse`.
pub const RECEIPTS_MARK: &str = "indaba.v1.receipts.mark";
/// Request/reply: route a typing indicator. `pb::TypingRequest` → `pb::TypingResponse`.
pub const TYPING: &str = "indaba.v1.typing";
/// Request/reply: a page of messages (resume and history). `pb::ListMessagesRequest` →
/// `pb::ListMessagesResponse`.
pub const MSG_LIST: &str = "indaba.v1.msg.list";
/// Request/reply: a user's conversations with unread counts. `pb::ListConversationsRequest`
/// → `pb::ListConversationsResponse`.
pub const CONV_LIST: &str = "indaba.v1.conv.list";
/// Request/reply: add/remove group members. `pb::UpdateParticipantsRequest` →
/// `pb::UpdateParticipantsResponse`.
pub const CONV_MEMBERS: &str = "indaba.v1.conv.members";
/// Request/reply: appoint or demote an admin, or transfer ownership.
/// `pb::SetParticipantRoleRequest` → `pb::SetParticipantRoleResponse`.
pub const CONV_ROLE: &str = "indaba.v1.conv.role";
/// Request/reply: one message. `pb::GetMessageRequest` → `pb::GetMessageResponse`.
pub const MSG_GET: &str = "indaba.v1.msg.get";
/// Request/reply: edit, delete, react to, pin or unpin a message.
/// `pb::ChangeMessageRequest` → `pb::ChangeMessageResponse`.
pub const MSG_CHANGE: &str = "indaba.v1.msg.change";
/// Request/reply: a thread's root and replies. `pb::GetThreadRequest` →
/// `pb::GetThreadResponse`.
pub const MSG_THREAD: &str = "indaba.v1.msg.thread";
/// Request/reply: a conversation's pinned messages. `pb::ListPinsRequest` →
/// `pb::ListPinsResponse`.
pub const MSG_PINS: &str = "indaba.v1.msg.pins";
/// Request/reply: who read a message ("seen by"). `pb::GetMessageReadsRequest` →
/// `pb::GetMessageReadsResponse`.
pub const MSG_READS: &str = "indaba.v1.msg.reads";
/// Request/reply: a presigned upload. `pb::CreateUploadRequest` → `pb::CreateUploadResponse`.
pub const MSG_UPLOAD: &str = "indaba.v1.msg.upload";
/// Request/reply: a short-lived address of an attachment's bytes.
/// `pb::GetAttachmentUrlRequest` → `pb::GetAttachmentUrlResponse`.
pub const MSG_ATTACHMENT: &str = "indaba.v1.msg.attachment";
/// Request/reply: a user's unread counts. `pb::GetUnreadCountsRequest` →
/// `pb::GetUnreadCountsResponse`.
pub const UNREAD: &str = "indaba.v1.msg.unread";
/// Request/reply: the event stream's resume. `pb::MessagesSinceRequest` →
/// `pb::ListMessagesResponse`.
pub const MSG_SINCE: &str = "indaba.v1.msg.since";
/// Publish (queue group): a gateway handed a `new_message` to a recipient's socket
/// (`pb::DeliveryAck`); message-service tells the sender (`message_delivered`).
pub const DELIVERY_ACKS: &str = "indaba.v1.msg.delivered";

/// Request/reply: presence of users. `pb::GetPresenceRequest` → `pb::GetPresenceResponse`.
pub const PRESENCE_GET: &str = "indaba.v1.presence.get";
/// Broadcast: presence-service → gateways, `pb::PresenceChange`.
pub const PRESENCE_CHANGES: &str = "indaba.v1.presence.changes";
/// Broadcast between presence-service instances: "I am alive" (payload: the instance id
/// as 8 big-endian bytes). The live instance with the lowest id publishes changes.
pub const PRESENCE_INSTANCES: &str = "indaba.v1.presence.instances";
/// Queue group shared by every presence-service instance.
pub const PRESENCE_SERVICE_QUEUE: &str = "presence-service";

/// The push job queue: JetStream stream, subject and durable consumer.
pub const PUSH_STREAM: &str = "INDABA_PUSH";
/// Durable (JetStream): `pb::PushJob`, one per committed message (id = message id).
pub const PUSH_JOBS: &str = "indaba.v1.push.jobs";
/// The durable consumer (and in-process queue group) of push-service.
pub const PUSH_CONSUMER: &str = "push-service";
/// Request/reply: `pb::RegisterDeviceRequest` → `pb::RegisterDeviceResponse`.
pub const PUSH_REGISTER: &str = "indaba.v1.push.devices.register";
/// Request/reply: `pb::UnregisterDeviceRequest` → `pb::UnregisterDeviceResponse`.
pub const PUSH_UNREGISTER: &str = "indaba.v1.push.devices.unregister";
/// Request/reply: `pb::ListDevicesRequest` → `pb::ListDevicesResponse`.
pub const PUSH_LIST_DEVICES: &str = "indaba.v1.push.devices.list";
/// Request/reply: `pb::SetMuteRequest` → `pb::SetMuteResponse`.
pub const PUSH_MUTE: &str = "indaba.v1.push.mute";
/// Request/reply: `pb::SetPushPreferencesRequest` → `pb::SetPushPreferencesResponse`.
pub const PUSH_PREFS: &str = "indaba.v1.push.prefs";
/// Queue group shared by every push-service instance.
pub const PUSH_SERVICE_QUEUE: &str = "push-service";

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
pub const CONN_EVENTS: &str = "indaba.v1.routing.conn";
/// Broadcast: a gateway's full list of connected users (`pb::GatewayHeartbeat`).
pub const GATEWAY_HEARTBEAT: &str = "indaba.v1.routing.heartbeat";
/// Broadcast: a socket went away/idle or came back (`pb::SocketStatus`).
pub const SOCKET_STATUS: &str = "indaba.v1.routing.status";
/// Wildcard covering [`CONN_EVENTS`], [`GATEWAY_HEARTBEAT`] and [`SOCKET_STATUS`]. Routing tables subscribe
/// to both through this one subscription: NATS keeps one publisher's messages in order
/// within a subscription, and a heartbeat applied out of order with a socket event would
/// make the table forget a live socket.
pub const ROUTING_ALL: &str = "indaba.v1.routing.>";
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
