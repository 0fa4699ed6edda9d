//! Test harness: real nats-server and PostgreSQL processes on random ports, the real
//! services built with their own `App::build`, and small WebSocket/HTTP/SSE clients.
//!
//! - [`processes`]: free ports, nats-server, the throwaway PostgreSQL cluster
//!   ([`fresh_database`]), service tasks ([`Running`]), `indaba <role>` processes;
//! - [`services`]: one `spawn_*` per service, with test settings, and [`token`];
//! - [`cluster`]: [`TestCluster`], NATS + PostgreSQL + services + gateways in one builder;
//! - [`ws_client`]: [`Client`], the spec's WebSocket protocol;
//! - [`http_client`]: [`http`], [`http_text`], [`http_full`];
//! - [`sse_client`]: [`SseClient`], the event stream.
//!
//! Tests `use crate::support::*;` and get all of it.

#![allow(dead_code)]

use std::time::Duration;

pub mod cluster;
pub mod http_client;
pub mod processes;
pub mod services;
pub mod sse_client;
pub mod ws_client;

pub use cluster::*;
pub use http_client::*;
pub use processes::*;
pub use services::*;
pub use sse_client::*;
pub use ws_client::*;

/// The HS256 secret every test gateway and token shares.
pub const SECRET: &str = "integration-test-secret-0123456789";
/// How long a test waits for something that should happen before failing.
pub const WAIT: Duration = Duration::from_secs(10);
