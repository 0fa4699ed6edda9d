//! Durable `last_seen`: the one thing presence keeps across restarts (everything else is
//! soft state rebuilt from gateway heartbeats). PostgreSQL in a cluster, SQLite in the
//! single-node program, memory only when neither is configured.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, Row, SqlitePool};

/// Where `last_seen` lives.
#[derive(Debug, Clone)]
pub enum LastSeenStore {
    /// Not kept across restarts.
    Memory,
    /// PostgreSQL.
    Postgres(PgPool),
    /// SQLite.
    Sqlite(SqlitePool),
}

/// Expands `$body` once per SQL backend (same idea as message-service's store).
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:block, $none:expr) => {
        match $store {
            LastSeenStore::Memory => $none,
            LastSeenStore::Postgres($pool) => $body,
            LastSeenStore::Sqlite($pool) => $body,
        }
    };
}

impl LastSeenStore {
    /// Connects to PostgreSQL and applies presence's migrations. Other services'
    /// migrations in the same database are left alone.
    pub async fn connect_postgres(url: &str) -> anyhow::Result<LastSeenStore> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(PgConnectOptions::from_str(url)?)
            .await?;
        let mut m = sqlx::migrate!("./migrations/postgres");
        m.set_ignore_missing(true);
        m.run(&pool).await?;
        Ok(LastSeenStore::Postgres(pool))
    }

    /// Opens (creating) a SQLite file and applies presence's migrations.
    pub async fn open_sqlite(path: &Path) -> anyhow::Result<LastSeenStore> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await?;
        let mut m = sqlx::migrate!("./migrations/sqlite");
        m.set_ignore_missing(true);
        m.run(&pool).await?;
        Ok(LastSeenStore::Sqlite(pool))
    }

    /// Records last-seen times (a later time never goes backwards).
    pub async fn save(&self, batch: &[(i64, i64)]) -> Result<(), sqlx::Error> {
        on_pool!(
            self,
            |pool| {
                let mut tx = pool.begin().await?;
                for (user, at) in batch {
                    sqlx::query(
                        "INSERT INTO presence_last_seen (user_id, last_seen_ms) VALUES ($1, $2)
                         ON CONFLICT (user_id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms
                         WHERE presence_last_seen.last_seen_ms < excluded.last_seen_ms",
                    )
                    .bind(*user)
                    .bind(*at)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await
            },
            Ok(())
        )
    }

    /// Last-seen times of the users that have one.
    pub async fn load(&self, users: &[i64]) -> Result<HashMap<i64, i64>, sqlx::Error> {
        if users.is_empty() {
            return Ok(HashMap::new());
        }
        on_pool!(
            self,
            |pool| {
                let mut qb = sqlx::QueryBuilder::new(
                    "SELECT user_id, last_seen_ms FROM presence_last_seen WHERE user_id IN (",
                );
                let mut sep = qb.separated(", ");
                for u in users {
                    sep.push_bind(*u);
                }
                qb.push(")");
                let rows = qb.build().fetch_all(pool).await?;
                let mut out = HashMap::with_capacity(rows.len());
                for r in &rows {
                    out.insert(
                        r.try_get::<i64, _>("user_id")?,
                        r.try_get::<i64, _>("last_seen_ms")?,
                    );
                }
                Ok(out)
            },
            Ok(HashMap::new())
        )
    }
}
