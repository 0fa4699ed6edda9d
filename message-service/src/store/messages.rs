//! Messages: what a send is and the rules about who may speak where (shared by every
//! insert path: `send`, `pg_batch`, `sqlite_batch`), and every read of stored messages
//! (one, a conversation's page, the event stream's resume), retention and the tests'
//! idempotency count.

use proto::limits::MESSAGE_PAGE;
use proto::pb::{self, ChatMessage};
use proto::ErrorCode;

use super::changes::compact_changes;
use super::conversations::ConversationMeta;
use super::rows::{cut_to_page_budget, message_from_row, take_page};
use super::{rejected, Store, StoreError};

/// `sender_id` of system messages (sent by a backend through gRPC `as_system`). Never a
/// user: user ids are positive.
pub(crate) const SYSTEM_SENDER_ID: i64 = 0;

/// Most messages one page of the event stream's resume carries.
const SINCE_PAGE_MAX: u32 = 500;
/// Most changes to earlier messages an event stream's resume replays (past it the client
/// is told to reload with REST pages).
pub(crate) const SINCE_CHANGES_MAX: i64 = 1000;

/// A message to store.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Author.
    pub sender_id: i64,
    /// Target conversation; when `None`, the direct conversation with `receiver_id`.
    pub conversation_id: Option<i64>,
    /// The named receiver (required without `conversation_id`).
    pub receiver_id: Option<i64>,
    /// Body (already validated for length).
    pub text: String,
    /// Idempotency key.
    pub client_msg_id: Option<String>,
    /// Sending connection, kept in the outbox so a republished delivery still skips it.
    pub origin_connection_id: String,
    /// The message replied to (its thread's root is stored); checked in the insert.
    pub reply_to: Option<i64>,
    /// Users mentioned (validated against the participants in the insert).
    pub mentions: Vec<i64>,
    /// Checked uploads to attach (claimed in the insert's transaction).
    pub attachments: Vec<proto::pb::Attachment>,
}

impl NewMessage {
    /// Whether the message needs the rich path: a reply or mentions are checked and
    /// written by the shared loop, not the batch statements (which stay lean for plain
    /// text, the bulk of traffic).
    pub(crate) fn is_rich(&self) -> bool {
        self.reply_to.is_some() || !self.mentions.is_empty() || !self.attachments.is_empty()
    }

    /// The message as stored under `id` at `seq` of `conversation_id` (the batch paths
    /// know every column without reading the row back).
    pub(super) fn stored(&self, id: i64, conversation_id: i64, seq: i64, now: i64) -> ChatMessage {
        ChatMessage {
            id,
            conversation_id,
            seq,
            sender_id: self.sender_id,
            receiver_id: self.receiver_id,
            text: self.text.clone(),
            client_msg_id: self.client_msg_id.clone().unwrap_or_default(),
            created_at_ms: now,
            ..Default::default()
        }
    }
}

/// The result of [`Store::send_message`].
#[derive(Debug, Clone)]
pub struct Sent {
    /// The stored message (the original one for a retried `client_msg_id`).
    pub message: ChatMessage,
    /// Everyone in the conversation, sender included.
    pub participants: Vec<i64>,
    /// The conversation's title and kind (for notifications).
    pub meta: ConversationMeta,
    /// True when `client_msg_id` matched an already stored message.
    pub duplicate: bool,
    /// The outbox row its delivery is recorded in, shared with the rest of its batch
    /// (0 for a duplicate: its delivery went out with the original).
    pub outbox_row: i64,
}

/// A page of messages.
#[derive(Debug, Clone, Default)]
pub(crate) struct MessagePage {
    /// Ascending by seq.
    pub(crate) messages: Vec<ChatMessage>,
    /// More exist beyond the page in the requested direction.
    pub(crate) has_more: bool,
    /// The conversation's newest seq.
    pub(crate) last_seq: i64,
    /// Oldest seq still stored (0 when the conversation is empty).
    pub(crate) first_retained_seq: i64,
    /// Forward pages: changes to messages before the page, ascending by seq.
    pub(crate) changes: Vec<pb::MessageChange>,
    /// Forward pages: the seq the page covers up to (the next page's `after_seq`).
    pub(crate) end_seq: i64,
}

/// A message naming neither a conversation nor a receiver.
pub(super) fn no_target() -> StoreError {
    rejected(
        ErrorCode::InvalidField,
        "conversation_id or receiver_id is required",
    )
}

/// The send rules about who may speak where (`pg_batch` applies the same ones in SQL and
/// words its refusals with this). `members` is sorted.
pub(super) fn check_membership(m: &NewMessage, id: i64, members: &[i64]) -> Result<(), StoreError> {
    // The system sender (backends' notices) speaks in any conversation.
    if m.sender_id != SYSTEM_SENDER_ID && members.binary_search(&m.sender_id).is_err() {
        return Err(rejected(
            ErrorCode::Forbidden,
            format!("you are not a participant of conversation {id}"),
        ));
    }
    if let Some(r) = m.receiver_id {
        if members.binary_search(&r).is_err() {
            return Err(rejected(
                ErrorCode::InvalidReceiver,
                format!("user {r} is not a participant of conversation {id}"),
            ));
        }
    }
    Ok(())
}

impl Store {
    /// One message by id.
    pub async fn get_message(&self, id: i64) -> Result<Option<ChatMessage>, StoreError> {
        Ok(on_pool!(self, |pool, _begin| {
            let row = sqlx::query(concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(message_from_row).transpose()?
        }))
    }

    /// The message a sender stored under an idempotency key, if any.
    pub(super) async fn by_client_msg_id(
        &self,
        sender_id: i64,
        key: &str,
    ) -> Result<Option<ChatMessage>, StoreError> {
        Ok(on_pool!(self, |pool, _begin| {
            let row = sqlx::query(concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE sender_id = $1 AND client_msg_id = $2"
            ))
            .bind(sender_id)
            .bind(key)
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(message_from_row).transpose()?
        }))
    }

    /// A page of a conversation for a member: forward from `after_seq` (resume) or, with
    /// `before_seq > 0` and `after_seq == 0`, backward from `before_seq` (history). `limit`
    /// follows [`MESSAGE_PAGE`] (0: its default; above its maximum: the maximum, since
    /// callers check the request first).
    pub(crate) async fn list_messages(
        &self,
        user_id: i64,
        conversation_id: i64,
        after_seq: i64,
        before_seq: i64,
        limit: u32,
    ) -> Result<MessagePage, StoreError> {
        self.require_member(conversation_id, user_id).await?;
        let limit = i64::from(MESSAGE_PAGE.check(limit).unwrap_or(MESSAGE_PAGE.max));
        let backward = before_seq > 0 && after_seq == 0;
        // Read first: every seq up to it is committed (seq is taken under the row lock and
        // published by the commit), so reading (after, last_seq] of messages and changes
        // sees a settled range whatever commits meanwhile; later seqs are the next page's,
        // or live traffic.
        let (last_seq, first) = on_pool!(self, |pool, _begin| {
            let last_seq: i64 =
                sqlx::query_scalar("SELECT last_seq FROM conversations WHERE id = $1")
                    .bind(conversation_id)
                    .fetch_one(pool)
                    .await?;
            let first: Option<i64> =
                sqlx::query_scalar("SELECT MIN(seq) FROM messages WHERE conversation_id = $1")
                    .bind(conversation_id)
                    .fetch_one(pool)
                    .await?;
            (last_seq, first)
        });
        let upper = if before_seq > 0 {
            before_seq
        } else {
            last_seq.saturating_add(1)
        };
        let mut messages = on_pool!(self, |pool, _begin| {
            let sql = if backward {
                concat!(
                    "SELECT ",
                    message_columns!(),
                    " FROM messages WHERE conversation_id = $1 AND seq > $2 AND seq < $3
                     ORDER BY seq DESC LIMIT $4"
                )
            } else {
                concat!(
                    "SELECT ",
                    message_columns!(),
                    " FROM messages WHERE conversation_id = $1 AND seq > $2 AND seq < $3
                     ORDER BY seq ASC LIMIT $4"
                )
            };
            let rows = sqlx::query(sql)
                .bind(conversation_id)
                .bind(after_seq)
                .bind(upper)
                .bind(limit + 1)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(message_from_row)
                .collect::<Result<Vec<_>, _>>()?
        });
        let mut changes = Vec::new();
        let mut has_more;
        let mut end_seq = 0;
        if backward {
            has_more = take_page(&mut messages, limit);
            has_more |= cut_to_page_budget(&mut messages);
            messages.reverse();
        } else {
            // Messages and changes share the seq: the page is the first `limit` of both,
            // merged by seq, and ends where its last item does (or at `last_seq`).
            let mut all_changes = self
                .changes_between(conversation_id, after_seq, upper - 1, limit + 1)
                .await?;
            let mut seqs: Vec<i64> = messages
                .iter()
                .map(|m| m.seq)
                .chain(all_changes.iter().map(|c| c.seq))
                .collect();
            seqs.sort_unstable();
            let limit_items = usize::try_from(limit).unwrap_or(usize::MAX);
            has_more = seqs.len() > limit_items;
            end_seq = if has_more {
                seqs[limit_items - 1]
            } else {
                last_seq.max(after_seq)
            };
            messages.retain(|m| m.seq <= end_seq);
            if cut_to_page_budget(&mut messages) {
                has_more = true;
                end_seq = messages.last().map_or(end_seq, |m| m.seq);
            }
            all_changes.retain(|c| c.seq <= end_seq);
            // A message in this page is shown as it is now: its changes would repeat it.
            changes = compact_changes(all_changes, after_seq);
        }
        self.add_reactions(user_id, &mut messages).await?;
        Ok(MessagePage {
            messages,
            changes,
            has_more,
            last_seq,
            // No rows but a non-zero last_seq: retention removed them all.
            first_retained_seq: first.unwrap_or(if last_seq > 0 { last_seq + 1 } else { 0 }),
            end_seq,
        })
    }

    /// Messages in any of `user_id`'s conversations after the event-stream cursor
    /// `after_id` (a message id the client has), oldest id first, at most `limit` and at
    /// most [`PAGE_BYTES`](super::rows::PAGE_BYTES) (then `true`: more follow).
    ///
    /// Message ids are assigned before commit, so across conversations a smaller id can
    /// commit (and be delivered live) after a larger one: "id > cursor" alone could skip a
    /// message. Messages created up to `window_ms` before the cursor's message are
    /// included too (transactions are far shorter than the window); the client drops
    /// repeats by `message_id`. `scan_from` pages: pass the last id of the previous page.
    /// The first page also returns the changes made since the same time to the messages up
    /// to the cursor (compacted; at most [`SINCE_CHANGES_MAX`]).
    pub(crate) async fn messages_since(
        &self,
        user_id: i64,
        after_id: i64,
        window_ms: i64,
        scan_from: i64,
        limit: u32,
    ) -> Result<(Vec<ChatMessage>, bool, Vec<pb::MessageChange>), StoreError> {
        let limit = i64::from(limit.clamp(1, SINCE_PAGE_MAX));
        let (mut messages, cutoff) = on_pool!(self, |pool, _begin| {
            let anchor: Option<i64> =
                sqlx::query_scalar("SELECT created_at_ms FROM messages WHERE id = $1")
                    .bind(after_id)
                    .fetch_optional(pool)
                    .await?;
            // An unknown cursor (pruned, or from another deployment): only newer ids.
            let cutoff = anchor.map_or(i64::MAX, |t| t.saturating_sub(window_ms));
            let rows = sqlx::query(concat!(
                "SELECT ",
                message_columns!("m."),
                " FROM messages m
                 JOIN participants p ON p.conversation_id = m.conversation_id AND p.user_id = $1
                 WHERE m.id > $2 AND m.id <> $3 AND (m.id > $3 OR m.created_at_ms >= $4)
                 ORDER BY m.id ASC LIMIT $5"
            ))
            .bind(user_id)
            .bind(scan_from)
            .bind(after_id)
            .bind(cutoff)
            .bind(limit + 1)
            .fetch_all(pool)
            .await?;
            let messages = rows
                .iter()
                .map(message_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            (messages, cutoff)
        });
        let mut has_more = take_page(&mut messages, limit);
        // Bounded in bytes like every page: the stream pages on from the last id kept.
        has_more |= cut_to_page_budget(&mut messages);
        self.add_reactions(user_id, &mut messages).await?;
        // The first page also brings what changed meanwhile in the messages the client had.
        let changes = if scan_from == 0 && cutoff < i64::MAX {
            self.changes_since(user_id, after_id, cutoff, SINCE_CHANGES_MAX)
                .await?
        } else {
            Vec::new()
        };
        Ok((messages, has_more, changes))
    }

    /// Deletes up to `limit` messages created before `cutoff_ms` (retention). Returns how
    /// many went. Their read marks go with them (ON DELETE CASCADE); an outbox row naming one
    /// is still republished, without it (the sweeper reads messages by id).
    pub(crate) async fn prune_before(&self, cutoff_ms: i64, limit: i64) -> Result<u64, StoreError> {
        Ok(on_pool!(self, |pool, _begin| {
            sqlx::query(
                "DELETE FROM messages WHERE id IN
                 (SELECT id FROM messages WHERE created_at_ms < $1 ORDER BY id LIMIT $2)",
            )
            .bind(cutoff_ms)
            .bind(limit)
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }

    /// Counts messages with a given idempotency key (tests use it to prove one row).
    pub async fn count_by_client_msg_id(
        &self,
        sender_id: i64,
        key: &str,
    ) -> Result<i64, StoreError> {
        Ok(on_pool!(self, |pool, _begin| {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM messages WHERE sender_id = $1 AND client_msg_id = $2",
            )
            .bind(sender_id)
            .bind(key)
            .fetch_one(pool)
            .await?
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize) -> ChatMessage {
        ChatMessage {
            text: "x".repeat(n),
            ..Default::default()
        }
    }

    use super::super::rows::PAGE_BYTES;

    #[test]
    fn pages_keep_at_least_one_message_and_cut_at_the_byte_budget() {
        let mut one = vec![text(PAGE_BYTES * 2)];
        assert!(!cut_to_page_budget(&mut one));
        assert_eq!(one.len(), 1);
        let mut many = vec![text(PAGE_BYTES / 2); 3];
        assert!(cut_to_page_budget(&mut many));
        assert_eq!(
            many.len(),
            1,
            "the second would pass the budget (64 B per row)"
        );
        let mut small = vec![text(10); 5];
        assert!(!cut_to_page_budget(&mut small));
        assert_eq!(small.len(), 5);
    }
}
