//! The delivery outbox: one row per committed batch (a group commit's messages, or one
//! message) until every delivery of the batch is published.
//!
//! The row commits with its messages (see `send` and the batch files), so a crash between
//! commit and publish loses nothing: the writer holds the row for [`OUTBOX_LEASE`], after
//! which any instance claims it and republishes every message in it. Publishing twice is
//! harmless (gateways drop repeats by message id); losing a row is not, so a row goes only
//! once all of its deliveries are out. One row per batch rather than per message: at a
//! few thousand messages a second the per-message insert, index entries and delete were a
//! share of PostgreSQL's work that grew with every message, not with every commit.

use std::collections::HashMap;
use std::time::Duration;

use proto::pb::ChatMessage;
use proto::ErrorCode;
use sqlx::{PgPool, Row};

use super::conversations::ConversationMeta;
use super::messages::Sent;
use super::rows::message_from_row;
use super::{rejected, Store, StoreError};

/// How long a freshly written outbox row is left to the instance that wrote it before
/// any instance may republish it.
pub(crate) const OUTBOX_LEASE: Duration = Duration::from_secs(5);

/// When a lease taken at `now_ms` runs out.
pub(super) fn lease_until(now_ms: i64) -> i64 {
    now_ms + i64::try_from(OUTBOX_LEASE.as_millis()).unwrap_or(5_000)
}

/// Writes one batch's row (same text on both backends): binds the ids and origins as
/// [`row_lists`] encodes them, and the lease; returns the row's id.
const INSERT_ROW: &str =
    "INSERT INTO outbox_batches (message_ids, origins, lease_until_ms) VALUES ($1, $2, $3)
     RETURNING id";

/// A batch's message ids and their origin connections as the row stores them: two JSON
/// arrays in the same order.
fn row_lists<'a>(messages: impl IntoIterator<Item = (i64, &'a str)>) -> (String, String) {
    let (ids, origins): (Vec<i64>, Vec<&str>) = messages.into_iter().unzip();
    (
        serde_json::Value::from(ids).to_string(),
        serde_json::Value::from(origins).to_string(),
    )
}

/// Writes the one outbox row of a transaction's stored messages (`(id, origin)` each) and
/// stamps its id on their results; with nothing stored there is no row.
pub(super) async fn insert_row<'c, DB, E>(
    tx: E,
    stored: Vec<(i64, &str)>,
    lease: i64,
    out: &mut [Result<Sent, StoreError>],
) -> Result<(), StoreError>
where
    DB: sqlx::Database,
    E: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments: sqlx::IntoArguments<DB>,
    String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    if stored.is_empty() {
        return Ok(());
    }
    let (ids, origins) = row_lists(stored);
    let row: i64 = sqlx::query_scalar(INSERT_ROW)
        .bind(ids)
        .bind(origins)
        .bind(lease)
        .fetch_one(tx)
        .await?;
    for s in out.iter_mut().flatten() {
        s.outbox_row = row;
    }
    Ok(())
}

/// An outbox entry whose delivery must be (re)published.
#[derive(Debug, Clone)]
pub struct PendingDelivery {
    /// The message.
    pub message: ChatMessage,
    /// Its conversation's participants.
    pub participants: Vec<i64>,
    /// The conversation's title and kind.
    pub meta: ConversationMeta,
    /// The connection that sent it.
    pub origin_connection_id: String,
}

/// A claimed outbox row: what to republish before the row may go.
#[derive(Debug, Clone)]
pub struct ClaimedRow {
    /// The row (for [`Store::complete_outbox`]).
    pub row: i64,
    /// Its messages that still exist, in id order (retention may have removed some).
    pub deliveries: Vec<PendingDelivery>,
}

/// A claimed row as stored: its id, and its messages with their origins.
type RawRow = (i64, Vec<(i64, String)>);

impl Store {
    /// Claims up to `limit` outbox rows whose lease has run out (their writer died or is
    /// stuck), extending the lease so other instances leave them alone, and returns what
    /// to republish. A row claimed twice is published twice; gateways drop the repeat by
    /// message id.
    pub async fn claim_expired_outbox(&self, limit: i64) -> Result<Vec<ClaimedRow>, StoreError> {
        let now = proto::time::now_ms();
        let lease = lease_until(now);
        if let Store::Postgres(pool) = self {
            adopt_per_message_rows(pool, now, limit).await?;
        }
        let claimed: Vec<RawRow> = on_pool!(self, |pool, _begin| {
            let rows = sqlx::query(
                "UPDATE outbox_batches SET lease_until_ms = $1
                 WHERE id IN (SELECT id FROM outbox_batches WHERE lease_until_ms < $2
                              ORDER BY id LIMIT $3)
                   AND lease_until_ms < $2
                 RETURNING id, message_ids, origins",
            )
            .bind(lease)
            .bind(now)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(decode_row(
                    r.try_get("id")?,
                    r.try_get("message_ids")?,
                    r.try_get("origins")?,
                )?);
            }
            out
        });
        let ids: Vec<i64> = claimed
            .iter()
            .flat_map(|(_, ms)| ms.iter().map(|(id, _)| *id))
            .collect();
        let mut found: HashMap<i64, PendingDelivery> = match self {
            Store::Postgres(pool) => pending_deliveries(pool, &ids).await?,
            // SQLite: lookups are function calls, not round trips.
            Store::Sqlite(_) => {
                let mut found = HashMap::with_capacity(ids.len());
                for id in ids {
                    let Some(message) = self.get_message(id).await? else {
                        continue;
                    };
                    if let Some(conv) = self.get_conversation(message.conversation_id).await? {
                        let p = PendingDelivery {
                            message,
                            participants: conv.participant_ids,
                            meta: ConversationMeta {
                                title: conv.title,
                                kind: i64::from(conv.kind),
                            },
                            origin_connection_id: String::new(),
                        };
                        found.insert(id, p);
                    }
                }
                found
            }
        };
        let mut out: Vec<ClaimedRow> = claimed
            .into_iter()
            .map(|(row, messages)| {
                let mut deliveries: Vec<PendingDelivery> = messages
                    .into_iter()
                    .filter_map(|(id, origin)| {
                        let mut p = found.remove(&id)?;
                        p.origin_connection_id = origin;
                        Some(p)
                    })
                    .collect();
                deliveries.sort_by_key(|p| p.message.id);
                ClaimedRow { row, deliveries }
            })
            .collect();
        out.sort_by_key(|r| r.row);
        Ok(out)
    }

    /// Extends the leases of rows this instance still works on (see
    /// the outbox completions): a live writer's late delivery is not an orphan.
    pub async fn renew_outbox(&self, rows: &[i64]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let lease = lease_until(proto::time::now_ms());
        if let Store::Postgres(pool) = self {
            sqlx::query("UPDATE outbox_batches SET lease_until_ms = $1 WHERE id = ANY($2)")
                .bind(lease)
                .bind(rows)
                .execute(pool)
                .await?;
            return Ok(());
        }
        on_pool!(self, |pool, _begin| {
            let mut qb = sqlx::QueryBuilder::new("UPDATE outbox_batches SET lease_until_ms = ");
            qb.push_bind(lease);
            qb.push(" WHERE id IN ");
            push_id_list(&mut qb, rows);
            qb.build().execute(pool).await?;
        });
        Ok(())
    }

    /// Forgets outbox rows whose deliveries were all published.
    pub async fn complete_outbox(&self, rows: &[i64]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        if let Store::Postgres(pool) = self {
            // One statement text whatever the count: an `IN` list of N binds is a new
            // prepared statement (parse, plan, cache churn) for every distinct N.
            sqlx::query("DELETE FROM outbox_batches WHERE id = ANY($1)")
                .bind(rows)
                .execute(pool)
                .await?;
            return Ok(());
        }
        on_pool!(self, |pool, _begin| {
            let mut qb = sqlx::QueryBuilder::new("DELETE FROM outbox_batches WHERE id IN ");
            push_id_list(&mut qb, rows);
            qb.build().execute(pool).await?;
        });
        Ok(())
    }

    /// Number of outbox rows (for tests and the readiness report).
    pub async fn outbox_len(&self) -> Result<i64, StoreError> {
        Ok(on_pool!(self, |pool, _begin| {
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox_batches")
                .fetch_one(pool)
                .await?
        }))
    }
}

/// A stored row's two lists back as `(message_id, origin)` pairs. A row that cannot be
/// read is an error of the sweep (logged, retried next sweep), not silently dropped.
fn decode_row(row: i64, ids: String, origins: String) -> Result<RawRow, StoreError> {
    let unreadable = |e: serde_json::Error| {
        rejected(
            ErrorCode::Internal,
            format!("outbox row {row} is unreadable: {e}"),
        )
    };
    let ids: Vec<i64> = serde_json::from_str(&ids).map_err(unreadable)?;
    let mut origins: Vec<String> = serde_json::from_str(&origins).map_err(unreadable)?;
    origins.resize(ids.len(), String::new());
    Ok((row, ids.into_iter().zip(origins).collect()))
}

/// Moves expired rows of the per-message outbox, which instances of the previous release
/// still write during a rolling upgrade, into one batch row whose lease has run out, in one
/// statement (so a row is either still there or moved, never lost).
async fn adopt_per_message_rows(pool: &PgPool, now: i64, limit: i64) -> Result<(), StoreError> {
    sqlx::query(
        "WITH moved AS (
             DELETE FROM outbox WHERE message_id IN (
                 SELECT message_id FROM outbox WHERE lease_until_ms < $1
                 ORDER BY message_id LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING message_id, origin_connection_id
         )
         INSERT INTO outbox_batches (message_ids, origins, lease_until_ms)
         SELECT json_agg(message_id ORDER BY message_id)::text,
                json_agg(origin_connection_id ORDER BY message_id)::text, 0
         FROM moved HAVING count(*) > 0",
    )
    .bind(now)
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(())
}

/// `(?, ?, …)`: the ids as an `IN` list of binds (SQLite has no arrays; PostgreSQL takes
/// `= ANY($1)` instead, one statement text whatever the count).
fn push_id_list<DB: sqlx::Database>(qb: &mut sqlx::QueryBuilder<DB>, ids: &[i64])
where
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    qb.push("(");
    let mut sep = qb.separated(", ");
    for id in ids {
        sep.push_bind(*id);
    }
    qb.push(")");
}

/// The deliveries of claimed outbox rows' messages on PostgreSQL, read in one statement
/// (origins are filled in by the caller): after a restart the sweeper republishes
/// thousands of messages, and three lookups per message were thousands of round trips a
/// second.
async fn pending_deliveries(
    pool: &PgPool,
    ids: &[i64],
) -> Result<HashMap<i64, PendingDelivery>, StoreError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(concat!(
        "SELECT ",
        message_columns!("m."),
        ", c.title, c.kind,
                ARRAY(SELECT p.user_id FROM participants p
                      WHERE p.conversation_id = c.id ORDER BY p.user_id) AS members
         FROM messages m JOIN conversations c ON c.id = m.conversation_id
         WHERE m.id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in &rows {
        let message = message_from_row(r)?;
        out.insert(
            message.id,
            PendingDelivery {
                origin_connection_id: String::new(),
                participants: r.try_get("members")?,
                meta: ConversationMeta::from_row(r)?,
                message,
            },
        );
    }
    Ok(out)
}
