//! Header names Indaba sets or reads, on NATS messages and HTTP requests.

/// HTTP: bearer credentials (`Authorization: Bearer <jwt>`).
pub const AUTHORIZATION: &str = "authorization";
/// HTTP/REST: idempotency key for message creation (same meaning as `client_msg_id`).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// NATS: W3C trace context, propagated from gateway to services.
pub const TRACEPARENT: &str = "traceparent";
/// NATS JetStream: a published job's id; the stream drops a repeat within its duplicate
/// window (push jobs carry the message id).
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
/// HTTP: the client address as seen by a trusted proxy in front of the gateway.
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
/// HTTP/SSE: the id of the last event a reconnecting `EventSource` received.
pub const LAST_EVENT_ID: &str = "last-event-id";
/// HTTP/SSE: tells nginx-style proxies not to buffer an event stream.
pub const X_ACCEL_BUFFERING: &str = "x-accel-buffering";
/// HTTP: the WebSocket handshake's key (RFC 6455).
pub const SEC_WEBSOCKET_KEY: &str = "sec-websocket-key";
/// HTTP: the WebSocket protocol version a client asks for (RFC 6455; we speak 13).
pub const SEC_WEBSOCKET_VERSION: &str = "sec-websocket-version";
/// HTTP: when to retry a refused request (RFC 9110), in seconds.
pub const RETRY_AFTER: &str = "retry-after";
/// HTTP: a rate-limit policy, `"<name>";q=<quota>;w=<window seconds>` (IETF httpapi
/// RateLimit header fields draft).
pub const RATELIMIT_POLICY: &str = "ratelimit-policy";
/// HTTP: a rate-limit policy's state, `"<name>";r=<remaining>;t=<seconds to reset>`.
pub const RATELIMIT: &str = "ratelimit";
