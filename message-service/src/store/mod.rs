//! The message store: conversations, participants, messages, read receipts, the delivery
//! outbox.
//!
//! Two backends share every line of SQL: PostgreSQL (the distributed deployment) and
//! SQLite (the single-node program). The `on_pool!` macro expands each method body once
//! per backend, so the compiler checks both and there is no per-backend copy to drift.
//! The SQL sticks to what both understand: `$n` placeholders, `RETURNING`, partial
//! indexes, `UPDATE ... RETURNING` for the per-conversation sequence. One exception, on
//! purpose: the group commit has one file per backend (`pg_batch`, `sqlite_batch`); the
//! shared loop stays their fallback.
//!
//! Layout (each file adds `impl Store` methods for one entity; a file uses only those
//! above it in this list):
//! - `rows`: the SQL vocabulary every entity shares (the message column list, row
//!   decoding, the direct-pair key, the conversation insert).
//! - `roles`: group roles (owner, admins, members) as stored, and the roster a rule check
//!   sees, read under the conversation's row lock.
//! - `conversations`: conversations and their participants.
//! - `changes`: edits, deletions, reactions and pins (each numbered in the conversation's
//!   seq), the changes a forward page carries, and the reads that show a message as it is
//!   now (reactions per reader, threads, pins, who read it).
//! - `messages`: what a send is, the rules of who may speak where, every message read.
//! - `receipts`: read marks and watermarks.
//! - `outbox`: leases, republishing and cleanup of deliveries.
//! - `pg_batch`, `sqlite_batch`: one backend's group commit each.
//! - `send`: storing messages (one or a batch, idempotent retries), the shared loop.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use proto::ErrorCode;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

/// Expands `$body` once per backend with `$pool` bound to that backend's pool and
/// `$begin` to the statement that opens a write transaction. SQLite needs
/// `BEGIN IMMEDIATE`: a deferred transaction that reads then writes can fail with
/// SQLITE_BUSY instead of waiting for the write lock.
macro_rules! on_pool {
    ($store:expr, |$pool:ident, $begin:ident| $body:block) => {
        match $store {
            Store::Postgres($pool) => {
                let $begin: &'static str = "BEGIN";
                $body
            }
            Store::Sqlite($pool) => {
                let $begin: &'static str = "BEGIN IMMEDIATE";
                $body
            }
        }
    };
}

#[macro_use]
mod rows;
#[macro_use]
mod roles;
mod changes;
mod conversations;
mod messages;
mod outbox;
mod pg_batch;
mod receipts;
mod send;
mod sqlite_batch;
mod uploads;

pub(crate) use changes::{ChangeRequest, Target};
pub use conversations::ConversationMeta;
pub use messages::{NewMessage, Sent};
pub use outbox::{ClaimedRow, PendingDelivery};
pub use roles::{Role, Roster};
pub(crate) use uploads::{invalid_attachment, Checked, NewUpload, Upload};

pub use conversations::{ConversationCursor, Summary, UNREAD_CAP};
pub(crate) use messages::SYSTEM_SENDER_ID;

/// Why a store operation failed. `Rejected` carries a client-facing code; `Database` is
/// ours (retry or alert).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request is not allowed or refers to something that does not exist.
    #[error("{code}: {message}")]
    Rejected {
        /// Stable client-facing code.
        code: ErrorCode,
        /// Detail for humans.
        message: String,
    },
    /// More sends wait for the store than it commits within the send queue budget: refused
    /// before anything was stored (the group commit decides it).
    #[error("overloaded: retry in {retry_after_ms} ms")]
    Overloaded {
        /// When a retry can succeed.
        retry_after_ms: u64,
    },
    /// Another transaction won a race this one needed (an upload attached to two messages
    /// at once): this one was rolled back whole, and its client gets the code.
    #[error("{code}: {message}")]
    Conflict {
        /// Stable client-facing code.
        code: ErrorCode,
        /// Detail for humans.
        message: String,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A refusal with a client-facing code, for the operations beside the store (attachments).
pub(crate) fn refusal(code: ErrorCode, message: impl Into<String>) -> StoreError {
    rejected(code, message)
}

/// A refusal with a client-facing code.
fn rejected(code: ErrorCode, message: impl Into<String>) -> StoreError {
    StoreError::Rejected {
        code,
        message: message.into(),
    }
}

/// The store. Cheap to clone (pools are shared).
#[derive(Clone, Debug)]
pub enum Store {
    /// PostgreSQL, for the distributed deployment.
    Postgres(PgPool),
    /// SQLite, for the single-node program.
    Sqlite(SqlitePool),
}

impl Store {
    /// Connects to PostgreSQL and applies pending migrations.
    pub async fn connect_postgres(url: &str, pool_size: u32) -> Result<Store, StoreError> {
        // Generic plans: every statement here is an indexed lookup whose best plan does
        // not depend on the values, and PostgreSQL's default (a custom plan per execution
        // until it trusts the generic one) re-planned the group-commit statement on every
        // batch: ~28% of the server's time at 4,000 msg/s in the benchmark's profile.
        let opts =
            PgConnectOptions::from_str(url)?.options([("plan_cache_mode", "force_generic_plan")]);
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await?;
        // Other services (presence) keep their own migrations in the same database.
        let mut migrator = sqlx::migrate!("./migrations/postgres");
        migrator.set_ignore_missing(true);
        migrator.run(&pool).await?;
        Ok(Store::Postgres(pool))
    }

    /// Opens (creating if needed) a SQLite file and applies pending migrations.
    pub async fn open_sqlite(path: &Path, pool_size: u32) -> Result<Store, StoreError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL is durable across process crashes; only an OS crash can lose
            // the newest transactions. The single-node program accepts that trade.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(pool_size.max(1))
            .connect_with(opts)
            .await?;
        let mut migrator = sqlx::migrate!("./migrations/sqlite");
        migrator.set_ignore_missing(true);
        migrator.run(&pool).await?;
        Ok(Store::Sqlite(pool))
    }

    /// Checks the database answers (readiness).
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, |pool, _begin| {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }
}
