//! presence-service: who is online, across many gateways.
//!
//! Skeleton only. The inputs it will consume already flow on the bus: every gateway
//! publishes `pb::ConnectionEvent`s on `subjects::CONN_EVENTS` and a full
//! `pb::GatewayHeartbeat` on `subjects::GATEWAY_HEARTBEAT` (message-service's routing table
//! is built from the same two streams). The service itself (TTL'd per-user connection sets,
//! online/away/offline with a grace period, `GetPresence`) is the subject of issue 4.
