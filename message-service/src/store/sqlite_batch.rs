//! SQLite's group commit in a fixed number of statements.
//!
//! sqlx runs SQLite on a worker thread, so every statement is a round trip between that
//! thread and the caller's task: the shared path's four statements per message made the
//! single-node program's one writer the limit (~4,000 msg/s, with the CPU half idle). Here
//! a batch is `BEGIN IMMEDIATE`, (direct conversations by key), the conversations with
//! their members, one `INSERT` of the messages, one of the batch's outbox row, one `UPDATE` of
//! the sequence numbers, `COMMIT` — lists travel as JSON arrays (`json_each`), the
//! SQLite stand-in for PostgreSQL's `unnest`. SQLite has one writer, so nothing here needs
//! row locks: `BEGIN IMMEDIATE` takes the write lock before the first read.
//!
//! A pair's first message (no direct conversation yet), or a text holding a NUL, sends the
//! whole batch back to the shared path (`Ok(None)`); the first happens once per pair.

use std::collections::HashMap;

use proto::ErrorCode;
use serde_json::json;
use sqlx::{Row, SqlitePool};

use super::conversations::ConversationMeta;
use super::messages::{check_membership, no_target, NewMessage, Sent};
use super::outbox;
use super::rows::{conversation_not_found, direct_key};
use super::{rejected, StoreError};

/// One conversation of the batch, read under the write lock.
struct Target {
    last_seq: i64,
    meta: ConversationMeta,
    members: Vec<i64>,
}

/// Stores `ms` in one transaction; `Ok(None)` when a direct conversation is missing.
pub(super) async fn insert(
    pool: &SqlitePool,
    ms: &[NewMessage],
    now: i64,
    lease: i64,
) -> Result<Option<Vec<Result<Sent, StoreError>>>, StoreError> {
    // JSON carries any text, but a NUL inside SQLite text is cut short by some of its
    // functions; requests never carry one (validation refuses it), other callers of the
    // store take the shared path, which binds text directly.
    if ms.iter().any(|m| m.text.contains('\0')) {
        return Ok(None);
    }
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;

    let keys: Vec<String> = ms
        .iter()
        .filter(|m| m.conversation_id.is_none())
        .filter_map(|m| m.receiver_id.map(|r| direct_key(m.sender_id, r)))
        .collect();
    let mut by_key: HashMap<String, i64> = HashMap::with_capacity(keys.len());
    if !keys.is_empty() {
        let rows = sqlx::query(
            "SELECT id, direct_key FROM conversations
             WHERE direct_key IN (SELECT value FROM json_each(?1))",
        )
        .bind(json!(keys).to_string())
        .fetch_all(&mut *tx)
        .await?;
        for r in rows {
            by_key.insert(r.try_get("direct_key")?, r.try_get("id")?);
        }
        if keys.iter().any(|k| !by_key.contains_key(k)) {
            return Ok(None);
        }
    }
    let ids: Vec<i64> = ms
        .iter()
        .filter_map(|m| match (m.conversation_id, m.receiver_id) {
            (Some(id), _) => Some(id),
            (None, Some(r)) => by_key.get(&direct_key(m.sender_id, r)).copied(),
            (None, None) => None,
        })
        .collect();
    let rows = sqlx::query(
        "SELECT c.id, c.last_seq, c.title, c.kind,
                (SELECT json_group_array(user_id) FROM
                    (SELECT user_id FROM participants p
                     WHERE p.conversation_id = c.id ORDER BY user_id)) AS members
         FROM conversations c WHERE c.id IN (SELECT value FROM json_each(?1))",
    )
    .bind(json!(ids).to_string())
    .fetch_all(&mut *tx)
    .await?;
    let mut convs: HashMap<i64, Target> = HashMap::with_capacity(rows.len());
    for r in rows {
        let members: String = r.try_get("members")?;
        convs.insert(
            r.try_get("id")?,
            Target {
                last_seq: r.try_get("last_seq")?,
                meta: ConversationMeta::from_row(&r)?,
                members: {
                    let mut v: Vec<i64> = serde_json::from_str(&members)
                        .map_err(|e| rejected(ErrorCode::Internal, format!("members: {e}")))?;
                    v.sort_unstable(); // check_membership searches it
                    v
                },
            },
        );
    }

    // The rules, and the next seqs in batch order.
    let mut out: Vec<Result<Sent, StoreError>> = Vec::with_capacity(ms.len());
    for m in ms {
        out.push((|| {
            let id = match (m.conversation_id, m.receiver_id) {
                (Some(id), _) => id,
                // Every key was found above (else the batch went to the shared path).
                (None, Some(r)) => by_key
                    .get(&direct_key(m.sender_id, r))
                    .copied()
                    .ok_or_else(|| rejected(ErrorCode::Internal, "direct conversation vanished"))?,
                (None, None) => return Err(no_target()),
            };
            let Some(c) = convs.get_mut(&id) else {
                return Err(conversation_not_found(id));
            };
            check_membership(m, id, &c.members)?;
            c.last_seq += 1;
            Ok(Sent {
                // The id is assigned by the insert below.
                message: m.stored(0, id, c.last_seq, now),
                participants: c.members.clone(),
                meta: c.meta.clone(),
                duplicate: false,
                outbox_row: 0, // set once the row is written
            })
        })());
    }
    let rows: Vec<serde_json::Value> = ms
        .iter()
        .zip(&out)
        .filter_map(|(m, r)| {
            let s = r.as_ref().ok()?;
            Some(json!([
                s.message.conversation_id,
                s.message.seq,
                m.sender_id,
                m.receiver_id,
                m.text,
                m.client_msg_id,
            ]))
        })
        .collect();
    if !rows.is_empty() {
        let inserted = sqlx::query(
            "INSERT INTO messages (conversation_id, seq, sender_id, receiver_id, text,
                                   client_msg_id, created_at_ms)
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4,
                    value ->> 5, ?2
             FROM json_each(?1)
             RETURNING id, conversation_id, seq",
        )
        .bind(serde_json::Value::Array(rows).to_string())
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut new_ids: HashMap<(i64, i64), i64> = HashMap::with_capacity(inserted.len());
        for r in inserted {
            new_ids.insert(
                (r.try_get("conversation_id")?, r.try_get("seq")?),
                r.try_get("id")?,
            );
        }
        let mut stored = Vec::with_capacity(new_ids.len());
        for (m, r) in ms.iter().zip(out.iter_mut()) {
            let Ok(s) = r else { continue };
            s.message.id = new_ids
                .get(&(s.message.conversation_id, s.message.seq))
                .copied()
                .ok_or_else(|| rejected(ErrorCode::Internal, "inserted message not returned"))?;
            stored.push((s.message.id, m.origin_connection_id.as_str()));
        }
        outbox::insert_row(&mut *tx, stored, lease, &mut out).await?;
        let seqs: Vec<serde_json::Value> = convs
            .iter()
            .map(|(id, c)| json!([id, c.last_seq]))
            .collect();
        sqlx::query(
            "UPDATE conversations SET last_seq = j.value ->> 1, last_message_at_ms = ?2
             FROM json_each(?1) AS j
             WHERE conversations.id = j.value ->> 0 AND conversations.last_seq < j.value ->> 1",
        )
        .bind(serde_json::Value::Array(seqs).to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Some(out))
}
