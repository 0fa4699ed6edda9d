//! Storing messages: one or a group commit's batch, each with its conversation's next
//! `seq` and the batch's outbox row in the same transaction, idempotent on the sender's
//! `client_msg_id`.
//!
//! PostgreSQL stores a batch in one statement (`pg_batch`), SQLite in a fixed number
//! (`sqlite_batch`); the shared loop here, four statements per message, is their fallback
//! (a pair's first message, a retried key) and stays the reference for what they do.

use proto::pb::ConversationKind;
use proto::ErrorCode;
use sqlx::Row;

use super::conversations::ConversationMeta;
use super::messages::{check_membership, no_target, NewMessage, Sent};
use super::outbox::{self, lease_until};
use super::rows::{
    conversation_not_found, direct_key, join_ids, message_from_row, CONVERSATION_EXISTS,
    DIRECT_BY_KEY, PARTICIPANTS,
};
use super::uploads::{attachments_json, invalid_attachment};
use super::{pg_batch, rejected, sqlite_batch, Store, StoreError};

/// A batch's answers, one per message in input order; `Err` for the whole batch only
/// when nothing was stored.
type BatchResult = Result<Vec<Result<Sent, StoreError>>, StoreError>;

/// The one answer of a one-message batch.
fn only(batch: BatchResult) -> Result<Sent, StoreError> {
    batch?
        .pop()
        .unwrap_or_else(|| Err(rejected(ErrorCode::Internal, "empty batch")))
}

/// `invalid_reply`: the target is not a message of this conversation.
fn invalid_reply(target: i64) -> StoreError {
    rejected(
        ErrorCode::InvalidReply,
        format!("reply_to {target} is not a message of this conversation"),
    )
}

impl Store {
    /// Stores a message: idempotent on (sender, client_msg_id), assigns the conversation's
    /// next `seq`, writes the outbox row, all in one transaction.
    pub async fn send_message(&self, m: &NewMessage) -> Result<Sent, StoreError> {
        let one = std::slice::from_ref(m);
        let inserted = if m.is_rich() {
            let now = proto::time::now_ms();
            only(self.insert_shared(one, now, lease_until(now)).await)
        } else {
            only(self.insert_messages(one).await)
        };
        self.or_original(m, inserted).await
    }

    /// Stores a batch: one transaction when it can, one per message when that fails (see
    /// `insert_messages`). Results are in input order.
    pub async fn send_many(&self, ms: &[NewMessage]) -> Vec<Result<Sent, StoreError>> {
        if ms.len() > 1 {
            if let Ok(out) = self.insert_messages(ms).await {
                return out;
            }
        }
        let mut out = Vec::with_capacity(ms.len());
        for m in ms {
            out.push(self.send_message(m).await);
        }
        out
    }

    /// No lookup before an insert: on the common path (a new message) it would be a
    /// wasted query. A retry hits the unique (sender, client_msg_id) index instead; its
    /// transaction rolls back, seq increment included, and this returns the original row.
    async fn or_original(
        &self,
        m: &NewMessage,
        inserted: Result<Sent, StoreError>,
    ) -> Result<Sent, StoreError> {
        match inserted {
            Err(StoreError::Database(sqlx::Error::Database(e)))
                if e.is_unique_violation() && m.client_msg_id.is_some() =>
            {
                match self.find_original(m).await? {
                    Some(existing) => Ok(existing),
                    None => Err(StoreError::Database(sqlx::Error::Database(e))),
                }
            }
            other => other,
        }
    }

    /// The stored message a retry of `m` repeats, answered as a duplicate.
    async fn find_original(&self, m: &NewMessage) -> Result<Option<Sent>, StoreError> {
        let Some(key) = m.client_msg_id.as_deref() else {
            return Ok(None);
        };
        let Some(message) = self.by_client_msg_id(m.sender_id, key).await? else {
            return Ok(None);
        };
        // A key reused for a different message is a client bug (e.g. a counter that
        // restarted); answering "duplicate" would silently drop the new message.
        let same_target = match m.conversation_id {
            Some(c) => c == message.conversation_id,
            None => m.receiver_id == message.receiver_id,
        };
        if !same_target || m.text != message.text {
            return Err(rejected(
                ErrorCode::InvalidField,
                "client_msg_id was already used for a different message",
            ));
        }
        let participants = self.participants(message.conversation_id).await?;
        Ok(Some(Sent {
            message,
            participants,
            meta: ConversationMeta::default(),
            duplicate: true,
            outbox_row: 0,
        }))
    }

    /// Stores several messages in one transaction (group commit): one commit, and one
    /// fsync, for all of them. A message the rules refuse (not a member, no such
    /// conversation) gets its error and the others go on; a database error (a retried
    /// idempotency key hitting the unique index, a deadlock) aborts the whole batch and
    /// the caller falls back to one transaction per message. PostgreSQL takes
    /// [`pg_batch`]; what that cannot store (a pair's first message) comes here after it,
    /// each in its own transaction.
    async fn insert_messages(&self, ms: &[NewMessage]) -> BatchResult {
        let now = proto::time::now_ms();
        let lease = lease_until(now);
        let pool = match self {
            Store::Postgres(pool) => pool,
            Store::Sqlite(pool) => {
                if let Some(out) = sqlite_batch::insert(pool, ms, now, lease).await? {
                    return Ok(out);
                }
                return self.insert_shared(ms, now, lease).await;
            }
        };
        let outcomes = pg_batch::insert_creating_pairs(pool, ms, now, lease).await?;
        // The batch is committed: from here on every message gets its own answer, never
        // an error for the whole (the caller would store the committed ones again).
        let mut out = Vec::with_capacity(ms.len());
        for (m, o) in ms.iter().zip(outcomes) {
            out.push(match o {
                pg_batch::Outcome::Done(r) => r,
                // Left over (its pair's conversation could not be created in bulk).
                pg_batch::Outcome::NeedsSharedPath => {
                    let one = self
                        .insert_shared(std::slice::from_ref(m), now, lease)
                        .await;
                    self.or_original(m, only(one)).await
                }
            });
        }
        Ok(out)
    }

    /// [`Store::insert_messages`] one statement at a time, in one transaction (SQLite's
    /// fallback, and PostgreSQL's for what [`pg_batch`] leaves).
    async fn insert_shared(&self, ms: &[NewMessage], now: i64, lease: i64) -> BatchResult {
        on_pool!(self, |pool, begin| {
            let mut tx = pool.begin_with(begin).await?;
            let mut out = Vec::with_capacity(ms.len());
            for m in ms {
                let one: Result<Sent, StoreError> = async {
                    // Every branch yields the participants too, so no second query is needed.
                    let (conversation_id, participants) = match m.conversation_id {
                        Some(id) => {
                            let members: Vec<i64> = sqlx::query_scalar(PARTICIPANTS)
                                .bind(id)
                                .fetch_all(&mut *tx)
                                .await?;
                            if members.is_empty() {
                                let exists: Option<i64> = sqlx::query_scalar(CONVERSATION_EXISTS)
                                    .bind(id)
                                    .fetch_optional(&mut *tx)
                                    .await?;
                                if exists.is_none() {
                                    return Err(conversation_not_found(id));
                                }
                            }
                            check_membership(m, id, &members)?;
                            (id, members)
                        }
                        None => {
                            let Some(r) = m.receiver_id else {
                                return Err(no_target());
                            };
                            let key = direct_key(m.sender_id, r);
                            // A direct conversation's members never change: exactly the pair.
                            let pair = vec![m.sender_id.min(r), m.sender_id.max(r)];
                            let found: Option<i64> = sqlx::query_scalar(DIRECT_BY_KEY)
                                .bind(&key)
                                .fetch_optional(&mut *tx)
                                .await?;
                            let id = match found {
                                Some(id) => id,
                                None => {
                                    insert_conversation!(
                                        tx,
                                        ConversationKind::Direct,
                                        "",
                                        Some(key.as_str()),
                                        m.sender_id,
                                        pair.iter().copied(),
                                        now
                                    )
                                    .0
                                }
                            };
                            (id, pair)
                        }
                    };
                    for u in &m.mentions {
                        if participants.binary_search(u).is_err() {
                            return Err(rejected(
                                ErrorCode::InvalidMention,
                                format!("user {u} is not a participant of this conversation"),
                            ));
                        }
                    }
                    // Checked before anything of the message is written, so a refusal
                    // leaves nothing behind; claimed after the insert (below).
                    for a in &m.attachments {
                        let usable: Option<i64> = sqlx::query_scalar(
                            "SELECT id FROM uploads WHERE id = $1 AND user_id = $2
                             AND conversation_id = $3 AND message_id IS NULL
                             AND final_key IS NOT NULL",
                        )
                        .bind(a.id)
                        .bind(m.sender_id)
                        .bind(conversation_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                        if usable.is_none() {
                            return Err(invalid_attachment(
                                a.id,
                                "not an unused upload of yours in this conversation",
                            ));
                        }
                    }
                    // A reply joins its target's thread: the root is stored (threads are
                    // one level deep, so a reply to a reply lands beside it).
                    let root = match m.reply_to {
                        None => None,
                        Some(target) => {
                            let row: Option<(i64, Option<i64>, i64)> = sqlx::query_as(
                                "SELECT conversation_id, reply_to, deleted_at_ms FROM messages WHERE id = $1",
                            )
                            .bind(target)
                            .fetch_optional(&mut *tx)
                            .await?;
                            match row {
                                Some((c, _, _)) if c != conversation_id => {
                                    return Err(invalid_reply(target))
                                }
                                None => return Err(invalid_reply(target)),
                                Some((_, _, deleted)) if deleted > 0 => {
                                    return Err(rejected(
                                        ErrorCode::MessageDeleted,
                                        format!("message {target} was deleted"),
                                    ))
                                }
                                Some((_, parent_root, _)) => Some(parent_root.unwrap_or(target)),
                            }
                        }
                    };
                    // The row lock taken here serializes writers of one conversation, which is
                    // what makes seq gap-free; other conversations proceed in parallel.
                    let bumped = sqlx::query(
                        "UPDATE conversations SET last_seq = last_seq + 1, last_message_at_ms = $2
                         WHERE id = $1 RETURNING last_seq, title, kind",
                    )
                    .bind(conversation_id)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                    let seq: i64 = bumped.try_get("last_seq")?;
                    let meta = ConversationMeta::from_row(&bumped)?;
                    let row = sqlx::query(concat!(
                        "INSERT INTO messages (conversation_id, seq, sender_id, receiver_id, text, client_msg_id, created_at_ms, reply_to, mentions, attachments)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                         RETURNING ",
                        message_columns!()
                    ))
                    .bind(conversation_id)
                    .bind(seq)
                    .bind(m.sender_id)
                    .bind(m.receiver_id)
                    .bind(&m.text)
                    .bind(m.client_msg_id.as_deref())
                    .bind(now)
                    .bind(root)
                    .bind(join_ids(&m.mentions))
                    .bind(attachments_json(&m.attachments))
                    .fetch_one(&mut *tx)
                    .await?;
                    let message = message_from_row(&row)?;
                    for a in &m.attachments {
                        // Two sends racing for one upload both passed the check above; the
                        // second waits on the first's row lock and finds it taken.
                        let claimed = sqlx::query(
                            "UPDATE uploads SET message_id = $1 WHERE id = $2 AND message_id IS NULL",
                        )
                        .bind(message.id)
                        .bind(a.id)
                        .execute(&mut *tx)
                        .await?;
                        if claimed.rows_affected() != 1 {
                            return Err(StoreError::Conflict {
                                code: ErrorCode::InvalidAttachment,
                                message: format!("attachment {}: already attached", a.id),
                            });
                        }
                    }
                    if let Some(root) = root {
                        sqlx::query(
                            "UPDATE messages SET reply_count = reply_count + 1, last_reply_at_ms = $2
                             WHERE id = $1",
                        )
                        .bind(root)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }
                    // Mentioning yourself notifies nobody and counts as no unread mention.
                    for u in message.mentions.iter().filter(|u| **u != m.sender_id) {
                        sqlx::query(
                            "INSERT INTO message_mentions (message_id, user_id, conversation_id, seq)
                             VALUES ($1, $2, $3, $4)",
                        )
                        .bind(message.id)
                        .bind(*u)
                        .bind(conversation_id)
                        .bind(seq)
                        .execute(&mut *tx)
                        .await?;
                    }
                    Ok(Sent {
                        message,
                        participants,
                        meta,
                        duplicate: false,
                        outbox_row: 0, // set below, once the batch's row is written
                    })
                }
                .await;
                match one {
                    Ok(sent) => out.push(Ok(sent)),
                    Err(e @ StoreError::Rejected { .. }) => out.push(Err(e)),
                    Err(e) => return Err(e),
                }
            }
            // One outbox row for everything this transaction stored.
            let stored: Vec<(i64, &str)> = ms
                .iter()
                .zip(&out)
                .filter_map(|(m, r)| {
                    Some((r.as_ref().ok()?.message.id, m.origin_connection_id.as_str()))
                })
                .collect();
            outbox::insert_row(&mut *tx, stored, lease, &mut out).await?;
            tx.commit().await?;
            Ok(out)
        })
    }
}
