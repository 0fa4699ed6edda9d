//! PostgreSQL's group commit: a whole batch in one statement, one round trip.
//!
//! The shared path (`send`'s loop) runs four statements per
//! message inside the batch's transaction; sqlx does not pipeline, so a batch of 100 was
//! ~400 sequential round trips, and at a few thousand messages a second that — not the
//! commit — was where message-service waited (issue 8's profile). Here the batch travels
//! as arrays and one statement (an implicit transaction, so no `BEGIN`/`COMMIT` round
//! trips either) locks the conversations in id order, applies the send rules, numbers the
//! accepted messages per conversation, bumps `last_seq`, and inserts the messages and the
//! batch's outbox row. SQLite keeps the shared path: its statements are function calls,
//! not round trips, and it has no arrays.
//!
//! Same rules and answers as the shared path: a refused message gets its own error and
//! the others go on; a database error (a retried `client_msg_id` hitting the unique index)
//! fails the whole statement, nothing is stored, and the caller retries one by one. The
//! first message between two users finds no direct conversation here: it is answered
//! [`Outcome::NeedsSharedPath`] (nothing of it was written); the caller creates every such
//! conversation of the batch in one statement ([`create_direct`]) and runs those messages
//! through [`insert`] again ([`insert_creating_pairs`] does both).

use proto::ErrorCode;
use sqlx::{PgPool, Row};

use proto::pb::ConversationKind;

use super::conversations::ConversationMeta;
use super::messages::{check_membership, no_target, NewMessage, Sent};
use super::rows::{conversation_not_found, direct_key};
use super::{rejected, StoreError};

/// What became of one message of the batch.
// Nearly every outcome is `Done`: boxing it would cost an allocation per message of a
// batch to save bytes in a short-lived vector.
#[allow(clippy::large_enum_variant)]
pub(super) enum Outcome {
    /// Stored, or refused by the rules.
    Done(Result<Sent, StoreError>),
    /// A direct message to someone the sender never wrote to: not written; create the
    /// conversation ([`create_direct`]) and store it again.
    NeedsSharedPath,
}

/// The statement. Every CTE runs once; `c` and `n` are referenced more than once and so
/// are evaluated once and shared (that matters for the row locks and `row_number`).
const INSERT_BATCH: &str = "
WITH x AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[],
                         $6::text[], $7::text[], $8::text[])
        AS x(idx, conv, dkey, sender_id, receiver_id, text, client_msg_id, origin)
), c AS MATERIALIZED (
    -- Locked in id order, so two batches in flight never deadlock; read under the lock,
    -- so last_seq is the newest committed one.
    SELECT c.id, c.direct_key, c.last_seq, c.title, c.kind,
           ARRAY(SELECT p.user_id FROM participants p
                 WHERE p.conversation_id = c.id ORDER BY p.user_id) AS members
    -- (One id list, not `id IN … OR direct_key IN …`: an OR of two lookups is a scan of
    -- the whole table.)
    FROM conversations c
    WHERE c.id = ANY (ARRAY(
        SELECT conv FROM x WHERE conv IS NOT NULL
        UNION ALL
        SELECT d.id FROM x JOIN conversations d ON x.conv IS NULL AND d.direct_key = x.dkey))
    ORDER BY c.id
    FOR UPDATE OF c
), r AS MATERIALIZED (
    SELECT x.*, c.id AS cid, c.last_seq, c.title, c.kind, c.members,
           CASE
               WHEN c.id IS NULL AND x.conv IS NULL THEN 'missing_direct'
               WHEN c.id IS NULL THEN 'not_found'
               -- user 0 is the system sender (backends' notices): it speaks anywhere
               WHEN x.sender_id <> 0 AND NOT (x.sender_id = ANY (c.members)) THEN 'forbidden'
               WHEN x.receiver_id IS NOT NULL AND NOT (x.receiver_id = ANY (c.members))
                   THEN 'invalid_receiver'
           END AS err
    FROM x LEFT JOIN c
        ON (x.conv IS NOT NULL AND c.id = x.conv)
        OR (x.conv IS NULL AND c.direct_key = x.dkey)
), n AS MATERIALIZED (
    SELECT r.idx, r.cid,
           r.last_seq + row_number() OVER (PARTITION BY r.cid ORDER BY r.idx) AS seq,
           r.sender_id, r.receiver_id, r.text, r.client_msg_id, r.origin
    FROM r WHERE r.err IS NULL
), bump AS (
    UPDATE conversations c SET last_seq = b.seq, last_message_at_ms = $9
    FROM (SELECT cid, max(seq) AS seq FROM n GROUP BY cid) b
    WHERE c.id = b.cid
), m AS (
    INSERT INTO messages (conversation_id, seq, sender_id, receiver_id, text, client_msg_id,
                          created_at_ms)
    SELECT cid, seq, sender_id, receiver_id, text, client_msg_id, $9 FROM n
    RETURNING id, conversation_id, seq
), o AS (
    -- One outbox row for the batch (none when everything was refused).
    INSERT INTO outbox_batches (message_ids, origins, lease_until_ms)
    SELECT json_agg(m.id ORDER BY m.id)::text, json_agg(n.origin ORDER BY m.id)::text, $10
    FROM m JOIN n ON n.cid = m.conversation_id AND n.seq = m.seq
    HAVING count(*) > 0
    RETURNING id
)
SELECT r.idx, r.err, r.cid, n.seq, m.id, r.title, r.kind, r.members,
       (SELECT id FROM o) AS outbox_row
FROM r
LEFT JOIN n ON n.idx = r.idx
LEFT JOIN m ON m.conversation_id = n.cid AND m.seq = n.seq";

/// Stores `ms` with one statement; the outcomes are in input order.
pub(super) async fn insert(
    pool: &PgPool,
    ms: &[NewMessage],
    now: i64,
    lease: i64,
) -> Result<Vec<Outcome>, StoreError> {
    let mut out: Vec<Option<Outcome>> = Vec::with_capacity(ms.len());
    let mut idx: Vec<i64> = Vec::with_capacity(ms.len());
    let mut conv: Vec<Option<i64>> = Vec::with_capacity(ms.len());
    let mut dkey: Vec<Option<String>> = Vec::with_capacity(ms.len());
    let mut sender: Vec<i64> = Vec::with_capacity(ms.len());
    let mut receiver: Vec<Option<i64>> = Vec::with_capacity(ms.len());
    let mut text: Vec<&str> = Vec::with_capacity(ms.len());
    let mut key: Vec<Option<&str>> = Vec::with_capacity(ms.len());
    let mut origin: Vec<&str> = Vec::with_capacity(ms.len());
    for (i, m) in ms.iter().enumerate() {
        if m.conversation_id.is_none() && m.receiver_id.is_none() {
            out.push(Some(Outcome::Done(Err(no_target()))));
            continue;
        }
        out.push(None);
        idx.push(i64::try_from(i).unwrap_or(i64::MAX));
        conv.push(m.conversation_id);
        dkey.push(match (m.conversation_id, m.receiver_id) {
            (None, Some(r)) => Some(direct_key(m.sender_id, r)),
            _ => None,
        });
        sender.push(m.sender_id);
        receiver.push(m.receiver_id);
        text.push(&m.text);
        key.push(m.client_msg_id.as_deref());
        origin.push(&m.origin_connection_id);
    }
    if !idx.is_empty() {
        let rows = sqlx::query(INSERT_BATCH)
            .bind(&idx)
            .bind(&conv)
            .bind(&dkey)
            .bind(&sender)
            .bind(&receiver)
            .bind(&text)
            .bind(&key)
            .bind(&origin)
            .bind(now)
            .bind(lease)
            .fetch_all(pool)
            .await?;
        // The statement has committed: from here on a row that cannot be read is that
        // message's own error, never the batch's (the caller would store the batch again).
        for row in rows {
            let Ok(i) = row.try_get::<i64, _>("idx") else {
                continue;
            };
            let Some(i) = usize::try_from(i).ok().filter(|i| *i < ms.len()) else {
                continue;
            };
            let outcome = decode(&row, &ms[i], now).unwrap_or_else(|e| {
                Some(Outcome::Done(Err(rejected(
                    ErrorCode::Internal,
                    format!("outcome unreadable ({e}); retry with the same client_msg_id"),
                ))))
            });
            if let Some(o) = outcome {
                out[i] = Some(o);
            }
        }
    }
    // Every input comes back as one row; were one missing, its outcome is unknown.
    Ok(out
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| {
                Outcome::Done(Err(rejected(
                    ErrorCode::Internal,
                    "no answer for this message; retry with the same client_msg_id",
                )))
            })
        })
        .collect::<Vec<_>>())
}

/// [`insert`], and for the first messages of new pairs (answered
/// [`Outcome::NeedsSharedPath`]) their conversations created together ([`create_direct`])
/// and a second [`insert`]: one transaction per such message, in turn, held up the batch's
/// slot ~1 ms per pair when many users start talking at once. What is still left comes back
/// as `NeedsSharedPath`. `Err` only when the first statement failed (nothing written).
pub(super) async fn insert_creating_pairs(
    pool: &PgPool,
    ms: &[NewMessage],
    now: i64,
    lease: i64,
) -> Result<Vec<Outcome>, StoreError> {
    let mut outcomes = insert(pool, ms, now, lease).await?;
    let missing: Vec<usize> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o, Outcome::NeedsSharedPath))
        .map(|(i, _)| i)
        .collect();
    if missing.is_empty() {
        return Ok(outcomes);
    }
    let firsts: Vec<NewMessage> = missing.iter().map(|i| ms[*i].clone()).collect();
    match create_direct(pool, &firsts, now).await {
        // A failed second statement wrote nothing: those stay `NeedsSharedPath`.
        Ok(()) => {
            if let Ok(again) = insert(pool, &firsts, now, lease).await {
                for (i, o) in missing.into_iter().zip(again) {
                    outcomes[i] = o;
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "creating direct conversations failed"),
    }
    Ok(outcomes)
}

/// One result row of [`INSERT_BATCH`] as the outcome of its message `m`; `None` for a row
/// that cannot occur (no error, no conversation).
fn decode(
    row: &sqlx::postgres::PgRow,
    m: &NewMessage,
    now: i64,
) -> Result<Option<Outcome>, sqlx::Error> {
    let err: Option<String> = row.try_get("err")?;
    let cid: Option<i64> = row.try_get("cid")?;
    Ok(Some(match (err.as_deref(), cid) {
        (Some("missing_direct"), _) => Outcome::NeedsSharedPath,
        // The rules refused it: the shared check words the refusal (it cannot pass here).
        (Some("forbidden" | "invalid_receiver"), Some(id)) => {
            let members: Vec<i64> = row.try_get("members")?;
            Outcome::Done(Err(check_membership(m, id, &members).err().unwrap_or_else(
                || rejected(ErrorCode::Internal, "refused by the batch statement"),
            )))
        }
        (Some(_), _) => Outcome::Done(Err(conversation_not_found(
            m.conversation_id.unwrap_or_default(),
        ))),
        (None, Some(cid)) => Outcome::Done(Ok(Sent {
            message: m.stored(row.try_get("id")?, cid, row.try_get("seq")?, now),
            participants: row.try_get("members")?,
            meta: ConversationMeta::from_row(row)?,
            duplicate: false,
            outbox_row: row
                .try_get::<Option<i64>, _>("outbox_row")?
                .unwrap_or_default(),
        })),
        (None, None) => return Ok(None),
    }))
}

/// Creates the direct conversations of `messages` (those [`insert`] found missing), with
/// both participants, in one statement. A pair created meanwhile by another batch is left
/// as it is (`ON CONFLICT DO NOTHING` waits for that insert and then skips).
async fn create_direct(pool: &PgPool, messages: &[NewMessage], now: i64) -> Result<(), StoreError> {
    // Sorted by key: two batches creating the same pairs insert them in the same order,
    // so neither waits on the other in a cycle (a deadlock PostgreSQL breaks after 1 s).
    let mut pairs = std::collections::BTreeMap::new();
    for m in messages {
        let Some(r) = m.receiver_id else { continue };
        pairs.entry(direct_key(m.sender_id, r)).or_insert((
            m.sender_id.min(r),
            m.sender_id.max(r),
            m.sender_id,
        ));
    }
    let (mut keys, mut low, mut high, mut by) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (key, (l, h, b)) in pairs {
        keys.push(key);
        low.push(l);
        high.push(h);
        by.push(b);
    }
    sqlx::query(
        "WITH p AS (
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])
                 AS p(dkey, low, high, created_by)
         ), c AS (
             INSERT INTO conversations (kind, title, direct_key, created_by, created_at_ms)
             SELECT $5, '', dkey, created_by, $6 FROM p
             ON CONFLICT (direct_key) DO NOTHING
             RETURNING id, direct_key
         )
         INSERT INTO participants (conversation_id, user_id, joined_at_ms)
         SELECT DISTINCT c.id, u.user_id, $6::bigint
         FROM c JOIN p ON p.dkey = c.direct_key
         CROSS JOIN LATERAL (VALUES (p.low), (p.high)) AS u(user_id)",
    )
    .bind(&keys)
    .bind(&low)
    .bind(&high)
    .bind(&by)
    .bind(ConversationKind::Direct as i64)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(())
}
