//! message-service: the only writer of conversations and messages.
//!
//! It answers requests from the gateways (NATS, queue group: any number of instances share
//! the load) and from backends (gRPC), answers a send after its commit, then publishes
//! the delivery to the gateways holding the recipients' sockets.
//!
//! Delivery is at-least-once and survives a crash between commit and publish: the message
//! and its outbox row commit together; the row is deleted after the delivery is published;
//! rows left behind by a dead instance are republished by any instance once their lease
//! runs out. Gateways drop repeats by message id.
//!
//! Layout, bottom up (a module imports only from those on lines above it):
//! - [`settings`], `metrics`: configuration read in one place; counters.
//! - [`store`]: PostgreSQL/SQLite persistence (one SQL text for both) and the outbox;
//!   `media`: what an attachment's bytes are, and an image made safe to serve (no I/O).
//! - `routes`: which gateways hold which users' sockets; `recent`: what was published in
//!   the last seconds, for sockets that open meanwhile.
//! - `outbox`: batched cleanup of published deliveries; `commit`: group commit;
//!   `push_jobs`: durable jobs for push-service; `publisher`: deliveries coalesced per
//!   gateway into one NATS message.
//! - `admission`: each request kind's bound and the deadline past which work is
//!   abandoned (both doors apply it).
//! - `state`: what the instance's tasks share (`Inner`).
//! - `delivery`: every publish to gateways (new messages, events, catch-up, delivered
//!   notices); `attachments`: upload slots, the checks that make an upload an attachment,
//!   download addresses, removal of stale objects.
//! - `ops`: one typed operation per request (validation, store, publish).
//! - `dispatch` (the NATS route table and serve loop), `grpc` (the gRPC door), `sweep`
//!   (republishing, expiry, retention).
//! - `app`: [`App`], building and running all of the above.

mod admission;
mod app;
mod attachments;
mod commit;
mod delivery;
mod dispatch;
mod grpc;
mod media;
mod metrics;
mod ops;
mod outbox;
mod publisher;
mod push_jobs;
mod recent;
mod routes;
pub mod settings;
mod state;
pub mod store;
mod sweep;

pub use app::App;
pub use settings::{BusSettings, Settings, StoreSettings};
pub use store::{Store, StoreError};

/// The distributed-mode program: settings from the environment, run until SIGTERM/SIGINT.
/// Shared by the `message-service` binary and `indaba message-service`, so one image
/// serves every role alike.
pub async fn run_from_env() -> anyhow::Result<()> {
    let app = App::build(Settings::from_env()?).await?;
    app.run(bus::runtime::shutdown_signal()).await
}
