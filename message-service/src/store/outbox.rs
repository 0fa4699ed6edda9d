//! The delivery outbox: one row per committed message until its delivery is published.
//!
//! The row commits with the message (see `send` and the batch files), so a crash between
//! commit and publish loses nothing: the writer holds the row for [`OUTBOX_LEASE`], after
//! which any instance claims it and republishes. Publishing twice is harmless (gateways
//! drop repeats by message id); losing a row is not, so rows go only once published.

use std::collections::HashMap;
use std::time::Duration;

use proto::pb::ChatMessage;
use sqlx::{PgPool, Row};

use super::conversations::ConversationMeta;
use super::rows::message_from_row;
use super::{Store, StoreError};

/// How long a freshly written outbox row is left to the instance that wrote it before
/// any instance may republish it.
pub(crate) const OUTBOX_LEASE: Duration = Duration::from_secs(5);

/// When a lease taken at `now_ms` runs out.
pub(super) fn lease_until(now_ms: i64) -> i64 {
    now_ms + i64::try_from(OUTBOX_LEASE.as_millis()).unwrap_or(5_000)
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

impl Store {
    /// Claims up to `limit` outbox rows whose lease has run out (their writer died or is
    /// stuck), extending the lease so other instances leave them alone, and returns what
    /// to republish. A row claimed twice is published twice; gateways drop the repeat by
    /// message id.
    pub async fn claim_expired_outbox(
        &self,
        limit: i64,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        let now = proto::time::now_ms();
        let lease = lease_until(now);
        let claimed: Vec<(i64, String)> = on_pool!(self, |pool, _begin| {
            let rows = sqlx::query(
                "UPDATE outbox SET lease_until_ms = $1
                 WHERE message_id IN (SELECT message_id FROM outbox WHERE lease_until_ms < $2
                                      ORDER BY message_id LIMIT $3)
                   AND lease_until_ms < $2
                 RETURNING message_id, origin_connection_id",
            )
            .bind(lease)
            .bind(now)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push((
                    r.try_get::<i64, _>("message_id")?,
                    r.try_get::<String, _>("origin_connection_id")?,
                ));
            }
            out
        });
        if let Store::Postgres(pool) = self {
            return pending_deliveries(pool, claimed).await;
        }
        // SQLite: lookups are function calls, not round trips.
        let mut pending = Vec::with_capacity(claimed.len());
        for (id, origin) in claimed {
            let Some(message) = self.get_message(id).await? else {
                continue;
            };
            if let Some(conv) = self.get_conversation(message.conversation_id).await? {
                pending.push(PendingDelivery {
                    message,
                    participants: conv.participant_ids,
                    meta: ConversationMeta {
                        title: conv.title,
                        kind: i64::from(conv.kind),
                    },
                    origin_connection_id: origin,
                });
            }
        }
        pending.sort_by_key(|p| p.message.id);
        Ok(pending)
    }

    /// Extends the leases of rows this instance still works on (see
    /// the outbox completions): a live writer's late delivery is not an orphan.
    pub async fn renew_outbox(&self, message_ids: &[i64]) -> Result<(), StoreError> {
        if message_ids.is_empty() {
            return Ok(());
        }
        let lease = lease_until(proto::time::now_ms());
        if let Store::Postgres(pool) = self {
            sqlx::query("UPDATE outbox SET lease_until_ms = $1 WHERE message_id = ANY($2)")
                .bind(lease)
                .bind(message_ids)
                .execute(pool)
                .await?;
            return Ok(());
        }
        on_pool!(self, |pool, _begin| {
            let mut qb = sqlx::QueryBuilder::new("UPDATE outbox SET lease_until_ms = ");
            qb.push_bind(lease);
            qb.push(" WHERE message_id IN ");
            push_id_list(&mut qb, message_ids);
            qb.build().execute(pool).await?;
        });
        Ok(())
    }

    /// Forgets outbox rows whose delivery was published.
    pub async fn complete_outbox(&self, message_ids: &[i64]) -> Result<(), StoreError> {
        if message_ids.is_empty() {
            return Ok(());
        }
        if let Store::Postgres(pool) = self {
            // One statement text whatever the count: an `IN` list of N binds is a new
            // prepared statement (parse, plan, cache churn) for every distinct N.
            sqlx::query("DELETE FROM outbox WHERE message_id = ANY($1)")
                .bind(message_ids)
                .execute(pool)
                .await?;
            return Ok(());
        }
        on_pool!(self, |pool, _begin| {
            let mut qb = sqlx::QueryBuilder::new("DELETE FROM outbox WHERE message_id IN ");
            push_id_list(&mut qb, message_ids);
            qb.build().execute(pool).await?;
        });
        Ok(())
    }

    /// Number of outbox rows (for tests and the readiness report).
    pub async fn outbox_len(&self) -> Result<i64, StoreError> {
        Ok(on_pool!(self, |pool, _begin| {
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
                .fetch_one(pool)
                .await?
        }))
    }
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

/// The deliveries of claimed outbox rows (`(message_id, origin)`) on PostgreSQL, read in
/// one statement: after a restart the sweeper republishes thousands of rows, and three
/// lookups per row were thousands of round trips a second.
async fn pending_deliveries(
    pool: &PgPool,
    claimed: Vec<(i64, String)>,
) -> Result<Vec<PendingDelivery>, StoreError> {
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = claimed.iter().map(|(id, _)| *id).collect();
    let mut origins: HashMap<i64, String> = claimed.into_iter().collect();
    let rows = sqlx::query(concat!(
        "SELECT ",
        message_columns!("m."),
        ", c.title, c.kind,
                ARRAY(SELECT p.user_id FROM participants p
                      WHERE p.conversation_id = c.id ORDER BY p.user_id) AS members
         FROM messages m JOIN conversations c ON c.id = m.conversation_id
         WHERE m.id = ANY($1) ORDER BY m.id"
    ))
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let message = message_from_row(r)?;
        out.push(PendingDelivery {
            origin_connection_id: origins.remove(&message.id).unwrap_or_default(),
            participants: r.try_get("members")?,
            meta: ConversationMeta::from_row(r)?,
            message,
        });
    }
    Ok(out)
}
