//! push-service: notifications for users with no online device.
//!
//! Skeleton only; the service (device registry, JetStream job stream, FCM/APNs/Web Push/
//! webhook providers) is the subject of issue 5. message-service already publishes every
//! committed message exactly once per delivery attempt, which is where push jobs will be
//! derived from.
