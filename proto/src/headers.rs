//! Header names Indaba sets or reads, on NATS messages and HTTP requests.

/// HTTP: bearer credentials (`Authorization: Bearer <jwt>`).
pub const AUTHORIZATION: &str = "authorization";
/// HTTP/REST: idempotency key for message creation (same meaning as `client_msg_id`).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// NATS: W3C trace context, propagated from gateway to services.
pub const TRACEPARENT: &str = "traceparent";
