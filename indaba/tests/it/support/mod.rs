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

/// The migrations of `backend` (`postgres` or `sqlite`) before the one numbered `first_left_out`
/// (e.g. `"0004"`), in a directory of their own: a database as an older release left it.
pub fn migrations_before(backend: &str, first_left_out: &str) -> tempfile::TempDir {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../message-service/migrations")
        .join(backend);
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(src).expect("migrations") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < first_left_out {
            std::fs::copy(&path, dir.path().join(&name)).expect("copy");
        }
    }
    dir
}

/// A connection to the PostgreSQL database at `url`, migrated as the release before the
/// migration `first_left_out` left it.
pub async fn postgres_before(url: &str, first_left_out: &str) -> sqlx::PgPool {
    let pool = sqlx::PgPool::connect(url).await.expect("connect");
    migrate_before(&pool, "postgres", first_left_out).await;
    pool
}

/// Runs on `pool` the migrations of `backend` before the one numbered `first_left_out`.
pub async fn migrate_before<'a, A>(pool: A, backend: &str, first_left_out: &str)
where
    A: sqlx::Acquire<'a>,
    <A::Connection as std::ops::Deref>::Target: sqlx::migrate::Migrate,
{
    let before = migrations_before(backend, first_left_out);
    sqlx::migrate::Migrator::new(before.path())
        .await
        .expect("migrator")
        .run(pool)
        .await
        .expect("old migrations");
}
