//! Changes to existing messages — edits, deletions for everyone, reactions, pins — and
//! the reads that show a message as it is now (reactions per reader, threads, pins, who
//! read it).
//!
//! A change takes the conversation's next `seq`, the same counter messages take, under the
//! conversation's row lock, and is recorded in `message_changes` in the same transaction.
//! So a conversation is one ordered, gap-free stream of messages and changes, and "what
//! happened after seq N" (a resume, a forward page) is two range reads merged by seq. Who
//! may make a change is not decided here: the rule is `ops`', judged inside the
//! transaction on the locked roster and message.

use std::collections::{HashMap, HashSet};

use proto::pb::{self, ChangeKind, ChatMessage, MessageChange, ReactionCount};
use proto::ErrorCode;
use sqlx::Row;

use super::roles::Roster;
use super::rows::{cut_to_page_budget, message_from_row, take_page};
use super::{rejected, Store, StoreError};

/// Most pinned messages a conversation lists.
pub(crate) const PINS_MAX: i64 = 100;

/// A change someone asks for.
#[derive(Debug, Clone)]
pub(crate) struct ChangeRequest {
    /// Who (0: the system).
    pub(crate) actor_id: i64,
    /// The message.
    pub(crate) message_id: i64,
    /// What.
    pub(crate) kind: ChangeKind,
    /// `Edited`: the new text (already validated).
    pub(crate) text: String,
    /// `Reaction*`: the emoji (already validated).
    pub(crate) emoji: String,
}

/// What the rule check of a change sees: the message as stored, and its conversation's
/// roster, both read under the conversation's row lock.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Its author.
    pub(crate) sender_id: i64,
    /// When it was sent.
    pub(crate) created_at_ms: i64,
    /// Deleted for everyone already.
    pub(crate) deleted: bool,
    /// The conversation's participants and roles.
    pub(crate) roster: Roster,
}

/// A committed change and who should hear of it.
#[derive(Debug, Clone)]
pub(crate) struct Changed {
    /// The change. `id` 0: nothing changed (a repeated reaction, pin or deletion), so
    /// nothing was stored or numbered; the answer still says how things stand.
    pub(crate) change: MessageChange,
    /// The conversation's participants.
    pub(crate) participants: Vec<i64>,
}

/// What a reader who had everything up to `after_seq` needs of `changes` (ascending):
/// none about messages after `after_seq` (those are shown as they are now), only the
/// deletion of a deleted message (its edits and reactions are gone with its text), and
/// only the last edit of a message edited several times (each carries the text now).
pub(super) fn compact_changes(changes: Vec<MessageChange>, after_seq: i64) -> Vec<MessageChange> {
    let kind = |c: &MessageChange| ChangeKind::try_from(c.kind).unwrap_or_default();
    let deleted: HashSet<i64> = changes
        .iter()
        .filter(|c| kind(c) == ChangeKind::Deleted)
        .map(|c| c.message_id)
        .collect();
    let mut last_edit: HashMap<i64, i64> = HashMap::new();
    for c in changes.iter().filter(|c| kind(c) == ChangeKind::Edited) {
        last_edit.insert(c.message_id, c.seq);
    }
    changes
        .into_iter()
        .filter(|c| c.message_seq <= after_seq)
        .filter(|c| !deleted.contains(&c.message_id) || kind(c) == ChangeKind::Deleted)
        .filter(|c| kind(c) != ChangeKind::Edited || last_edit.get(&c.message_id) == Some(&c.seq))
        .collect()
}

/// A thread page: its root, the conversation, the messages (ascending), whether more follow.
#[derive(Debug, Clone, Default)]
pub(crate) struct ThreadPage {
    pub(crate) root_id: i64,
    pub(crate) conversation_id: i64,
    pub(crate) messages: Vec<ChatMessage>,
    pub(crate) has_more: bool,
}

/// What the member-only reads of one message need to know of it.
struct Located {
    conversation_id: i64,
    sender_id: i64,
    reply_to: Option<i64>,
}

/// `message_not_found` for `id`: also the answer to someone outside its conversation, so
/// a message's existence is no business of non-members.
pub(crate) fn message_not_found(id: i64) -> StoreError {
    rejected(
        ErrorCode::MessageNotFound,
        format!("message {id} does not exist"),
    )
}

/// A `message_changes` row joined with its message's `text` (an edit shows the text now;
/// the change rows keep none).
fn change_from_row<R: Row>(r: &R) -> Result<MessageChange, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let kind = i32::try_from(r.try_get::<i64, _>("kind")?).unwrap_or_default();
    Ok(MessageChange {
        id: r.try_get("id")?,
        conversation_id: r.try_get("conversation_id")?,
        seq: r.try_get("seq")?,
        message_id: r.try_get("message_id")?,
        message_seq: r.try_get("message_seq")?,
        kind,
        actor_id: r.try_get("actor_id")?,
        text: if kind == ChangeKind::Edited as i32 {
            r.try_get("text")?
        } else {
            String::new()
        },
        emoji: r.try_get("emoji")?,
        count: r.try_get("count")?,
        at_ms: r.try_get("at_ms")?,
    })
}

impl Store {
    /// Applies a change in one transaction: locks the conversation, reads the message,
    /// lets `rule` judge, writes the change, numbers it and records it. Idempotent: a
    /// reaction that exists, a pin that is pinned, a deletion of a tombstone change
    /// nothing (`id` 0 in the answer).
    pub(crate) async fn change_message(
        &self,
        req: &ChangeRequest,
        rule: impl Fn(&Target) -> Result<(), StoreError>,
    ) -> Result<Changed, StoreError> {
        let now = proto::time::now_ms();
        on_pool!(self, |pool, begin| {
            let mut tx = pool.begin_with(begin).await?;
            let row: Option<(i64, i64)> =
                sqlx::query_as("SELECT conversation_id, seq FROM messages WHERE id = $1")
                    .bind(req.message_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some((conversation_id, message_seq)) = row else {
                return Err(message_not_found(req.message_id));
            };
            // The lock, and the change's place in the conversation's stream, in one
            // statement: a change that is refused or changes nothing rolls back, the
            // increment with it (as a retried send does), so seq never skips.
            let locked: Option<(i64, i64)> = sqlx::query_as(
                "UPDATE conversations SET last_seq = last_seq + 1 WHERE id = $1
                 RETURNING last_seq, kind",
            )
            .bind(conversation_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((next_seq, kind)) = locked else {
                return Err(message_not_found(req.message_id));
            };
            let roster_rows: Vec<(i64, String)> = sqlx::query_as(super::roles::ROSTER)
                .bind(conversation_id)
                .fetch_all(&mut *tx)
                .await?;
            let roster = Roster::from_rows(kind, roster_rows);
            // Read after the lock: a concurrent change to the same message has committed.
            let (sender_id, created_at_ms, deleted_at_ms, pinned_at_ms): (i64, i64, i64, i64) =
                sqlx::query_as(
                    "SELECT sender_id, created_at_ms, deleted_at_ms, pinned_at_ms
                     FROM messages WHERE id = $1",
                )
                .bind(req.message_id)
                .fetch_one(&mut *tx)
                .await?;
            let participants: Vec<i64> = roster.members.keys().copied().collect();
            rule(&Target {
                sender_id,
                created_at_ms,
                deleted: deleted_at_ms > 0,
                roster,
            })?;
            let mut change = MessageChange {
                id: 0,
                conversation_id,
                seq: 0,
                message_id: req.message_id,
                message_seq,
                kind: req.kind as i32,
                actor_id: req.actor_id,
                text: String::new(),
                emoji: req.emoji.clone(),
                count: 0,
                at_ms: now,
            };
            let changed = match req.kind {
                ChangeKind::Unspecified => {
                    return Err(rejected(ErrorCode::InvalidField, "unknown change"))
                }
                ChangeKind::Edited => {
                    sqlx::query("UPDATE messages SET text = $2, edited_at_ms = $3 WHERE id = $1")
                        .bind(req.message_id)
                        .bind(&req.text)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    change.text = req.text.clone();
                    true
                }
                ChangeKind::Deleted if deleted_at_ms > 0 => false,
                ChangeKind::Deleted => {
                    // For everyone, and from storage: the text, mentions and reactions go;
                    // the tombstone keeps id, seq, sender, time and thread place.
                    sqlx::query(
                        "UPDATE messages SET text = '', mentions = NULL, attachments = NULL, deleted_at_ms = $2,
                             deleted_by = $3, pinned_at_ms = 0, pinned_by = NULL
                         WHERE id = $1",
                    )
                    .bind(req.message_id)
                    .bind(now)
                    .bind(req.actor_id)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("DELETE FROM message_reactions WHERE message_id = $1")
                        .bind(req.message_id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("DELETE FROM message_mentions WHERE message_id = $1")
                        .bind(req.message_id)
                        .execute(&mut *tx)
                        .await?;
                    true
                }
                ChangeKind::ReactionAdded | ChangeKind::ReactionRemoved => {
                    // One read tells the message's distinct emoji, this emoji's count and
                    // whether the actor has it; the count after the change follows from it.
                    let (distinct, count, mine): (i64, i64, i64) = sqlx::query_as(
                        "SELECT COUNT(DISTINCT emoji),
                                COALESCE(SUM(CASE WHEN emoji = $2 THEN 1 ELSE 0 END), 0),
                                COALESCE(SUM(CASE WHEN emoji = $2 AND user_id = $3
                                                  THEN 1 ELSE 0 END), 0)
                         FROM message_reactions WHERE message_id = $1",
                    )
                    .bind(req.message_id)
                    .bind(&req.emoji)
                    .bind(req.actor_id)
                    .fetch_one(&mut *tx)
                    .await?;
                    let adding = req.kind == ChangeKind::ReactionAdded;
                    change.count = count;
                    if adding && mine == 0 {
                        if count == 0 && distinct >= proto::limits::MAX_REACTIONS_PER_MESSAGE {
                            return Err(rejected(
                                ErrorCode::TooManyReactions,
                                format!(
                                    "a message carries at most {} distinct reactions",
                                    proto::limits::MAX_REACTIONS_PER_MESSAGE
                                ),
                            ));
                        }
                        sqlx::query(
                            "INSERT INTO message_reactions (message_id, emoji, user_id, created_at_ms)
                             VALUES ($1, $2, $3, $4)",
                        )
                        .bind(req.message_id)
                        .bind(&req.emoji)
                        .bind(req.actor_id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                        change.count = count + 1;
                        true
                    } else if !adding && mine > 0 {
                        sqlx::query(
                            "DELETE FROM message_reactions
                             WHERE message_id = $1 AND emoji = $2 AND user_id = $3",
                        )
                        .bind(req.message_id)
                        .bind(&req.emoji)
                        .bind(req.actor_id)
                        .execute(&mut *tx)
                        .await?;
                        change.count = count - 1;
                        true
                    } else {
                        false
                    }
                }
                ChangeKind::Pinned if pinned_at_ms > 0 => false,
                ChangeKind::Unpinned if pinned_at_ms == 0 => false,
                ChangeKind::Pinned | ChangeKind::Unpinned => {
                    let pinned = req.kind == ChangeKind::Pinned;
                    sqlx::query(
                        "UPDATE messages SET pinned_at_ms = $2, pinned_by = $3 WHERE id = $1",
                    )
                    .bind(req.message_id)
                    .bind(if pinned { now } else { 0 })
                    .bind(pinned.then_some(req.actor_id))
                    .execute(&mut *tx)
                    .await?;
                    true
                }
            };
            if changed {
                change.seq = next_seq;
                change.id = sqlx::query_scalar(
                    "INSERT INTO message_changes
                         (conversation_id, seq, message_id, message_seq, kind, actor_id, emoji,
                          count, at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                )
                .bind(conversation_id)
                .bind(change.seq)
                .bind(req.message_id)
                .bind(message_seq)
                .bind(i64::from(change.kind))
                .bind(req.actor_id)
                .bind(&change.emoji)
                .bind(change.count)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
            }
            Ok(Changed {
                change,
                participants,
            })
        })
    }

    /// Changes of conversation `conversation_id` with a seq in `(after, upto]`, ascending,
    /// at most `limit`. An edit carries the message's text now (the change rows keep no
    /// text, so a deletion leaves none behind).
    pub(crate) async fn changes_between(
        &self,
        conversation_id: i64,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<MessageChange>, StoreError> {
        Ok(on_pool!(self, |pool, _begin| {
            let rows = sqlx::query(
                "SELECT c.id, c.conversation_id, c.seq, c.message_id, c.message_seq, c.kind,
                        c.actor_id, c.emoji, c.count, c.at_ms, m.text
                 FROM message_changes c JOIN messages m ON m.id = c.message_id
                 WHERE c.conversation_id = $1 AND c.seq > $2 AND c.seq <= $3
                 ORDER BY c.seq LIMIT $4",
            )
            .bind(conversation_id)
            .bind(after)
            .bind(upto)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(change_from_row)
                .collect::<Result<Vec<_>, _>>()?
        }))
    }

    /// Changes in any of `user_id`'s conversations to messages up to `after_id` (the event
    /// stream's cursor) made since `since_ms`, oldest first per conversation, compacted
    /// like a page's, at most `limit`: what an event stream that resumes from `after_id`
    /// replays before the newer messages (which show their own changes).
    pub(crate) async fn changes_since(
        &self,
        user_id: i64,
        after_id: i64,
        since_ms: i64,
        limit: i64,
    ) -> Result<Vec<MessageChange>, StoreError> {
        let changes = on_pool!(self, |pool, _begin| {
            let rows = sqlx::query(
                "SELECT c.id, c.conversation_id, c.seq, c.message_id, c.message_seq, c.kind,
                        c.actor_id, c.emoji, c.count, c.at_ms, m.text
                 FROM message_changes c
                 JOIN participants p ON p.conversation_id = c.conversation_id AND p.user_id = $1
                 JOIN messages m ON m.id = c.message_id
                 WHERE c.message_id <= $2 AND c.at_ms >= $3
                 ORDER BY c.conversation_id, c.seq LIMIT $4",
            )
            .bind(user_id)
            .bind(after_id)
            .bind(since_ms)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(change_from_row)
                .collect::<Result<Vec<_>, _>>()?
        });
        Ok(compact_changes(changes, i64::MAX))
    }

    /// Fills in each message's reactions as `viewer` sees them (`me`), in one statement
    /// for the whole page, emoji in the order they were first used.
    pub(crate) async fn add_reactions(
        &self,
        viewer: i64,
        messages: &mut [ChatMessage],
    ) -> Result<(), StoreError> {
        let ids: Vec<i64> = messages
            .iter()
            .filter(|m| !m.deleted)
            .map(|m| m.id)
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let rows: Vec<(i64, String, i64, i64)> = on_pool!(self, |pool, _begin| {
            let mut qb = sqlx::QueryBuilder::new(
                "SELECT message_id, emoji, COUNT(*) AS n,
                        CAST(MAX(CASE WHEN user_id = ",
            );
            qb.push_bind(viewer);
            qb.push(
                " THEN 1 ELSE 0 END) AS BIGINT) AS me FROM message_reactions WHERE message_id IN (",
            );
            let mut sep = qb.separated(", ");
            for id in &ids {
                sep.push_bind(*id);
            }
            qb.push(") GROUP BY message_id, emoji ORDER BY message_id, MIN(created_at_ms), emoji");
            let rows = qb.build().fetch_all(pool).await?;
            let mut v = Vec::with_capacity(rows.len());
            for r in &rows {
                v.push((
                    r.try_get("message_id")?,
                    r.try_get("emoji")?,
                    r.try_get("n")?,
                    r.try_get::<i64, _>("me")?,
                ));
            }
            v
        });
        let mut by_id: HashMap<i64, Vec<ReactionCount>> = HashMap::new();
        for (id, emoji, count, me) in rows {
            by_id.entry(id).or_default().push(ReactionCount {
                emoji,
                count,
                me: me > 0,
            });
        }
        for m in messages.iter_mut() {
            if let Some(r) = by_id.remove(&m.id) {
                m.reactions = r;
            }
        }
        Ok(())
    }

    /// Message `message_id`, if `user_id` is a participant of its conversation; else
    /// `message_not_found`, whether it exists or not.
    async fn locate_for_member(
        &self,
        user_id: i64,
        message_id: i64,
    ) -> Result<Located, StoreError> {
        let found: Option<(i64, i64, Option<i64>)> = on_pool!(self, |pool, _begin| {
            sqlx::query_as(
                "SELECT conversation_id, sender_id, reply_to FROM messages WHERE id = $1",
            )
            .bind(message_id)
            .fetch_optional(pool)
            .await?
        });
        let Some((conversation_id, sender_id, reply_to)) = found else {
            return Err(message_not_found(message_id));
        };
        if !self.participants(conversation_id).await?.contains(&user_id) {
            return Err(message_not_found(message_id));
        }
        Ok(Located {
            conversation_id,
            sender_id,
            reply_to,
        })
    }

    /// A page of `root_id`'s thread for a member: the root (when `after_seq` is below it)
    /// and its replies, ascending by seq. `root_id` may name a reply: its root's thread.
    pub(crate) async fn thread(
        &self,
        user_id: i64,
        message_id: i64,
        after_seq: i64,
        limit: u32,
    ) -> Result<ThreadPage, StoreError> {
        let page = proto::limits::MESSAGE_PAGE;
        let limit = i64::from(page.check(limit).unwrap_or(page.max));
        let found = self.locate_for_member(user_id, message_id).await?;
        let root = found.reply_to.unwrap_or(message_id);
        let mut messages = on_pool!(self, |pool, _begin| {
            let rows = sqlx::query(concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE (id = $1 OR reply_to = $1) AND seq > $2
                 ORDER BY seq ASC LIMIT $3"
            ))
            .bind(root)
            .bind(after_seq)
            .bind(limit + 1)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(message_from_row)
                .collect::<Result<Vec<_>, _>>()?
        });
        let mut has_more = take_page(&mut messages, limit);
        has_more |= cut_to_page_budget(&mut messages);
        self.add_reactions(user_id, &mut messages).await?;
        Ok(ThreadPage {
            root_id: root,
            conversation_id: found.conversation_id,
            messages,
            has_more,
        })
    }

    /// A conversation's pinned messages for a member, most recently pinned first.
    pub(crate) async fn pins(
        &self,
        user_id: i64,
        conversation_id: i64,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.require_member(conversation_id, user_id).await?;
        let mut messages = on_pool!(self, |pool, _begin| {
            let rows = sqlx::query(concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE conversation_id = $1 AND pinned_at_ms > 0
                 ORDER BY pinned_at_ms DESC, id DESC LIMIT $2"
            ))
            .bind(conversation_id)
            .bind(PINS_MAX)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(message_from_row)
                .collect::<Result<Vec<_>, _>>()?
        });
        cut_to_page_budget(&mut messages);
        self.add_reactions(user_id, &mut messages).await?;
        Ok(messages)
    }

    /// Who read `message_id` and when, earliest first, for a member of its conversation
    /// (the sender's own read is not listed). Returns the conversation too.
    pub(crate) async fn message_reads(
        &self,
        user_id: i64,
        message_id: i64,
    ) -> Result<(i64, Vec<pb::MessageRead>), StoreError> {
        let Located {
            conversation_id,
            sender_id,
            ..
        } = self.locate_for_member(user_id, message_id).await?;
        let rows: Vec<(i64, i64)> = on_pool!(self, |pool, _begin| {
            sqlx::query_as(
                "SELECT user_id, read_at_ms FROM message_reads
                 WHERE message_id = $1 AND user_id <> $2
                 ORDER BY read_at_ms, user_id LIMIT 1000",
            )
            .bind(message_id)
            .bind(sender_id)
            .fetch_all(pool)
            .await?
        });
        Ok((
            conversation_id,
            rows.into_iter()
                .map(|(user_id, read_at_ms)| pb::MessageRead {
                    user_id,
                    read_at_ms,
                })
                .collect(),
        ))
    }
}
