//! The SQL vocabulary every entity of the store shares, written once: the message column
//! list and its decoding, the direct-pair key, the participant and existence lookups, and
//! the conversation insert that makes concurrent creators of one pair converge.
//!
//! Macros where a function would need a different type per backend (a transaction of
//! PostgreSQL is not one of SQLite) and `on_pool!` expands the caller once per backend;
//! `concat!` where the text must stay a `&'static str` (sqlx takes only those as SQL).

use proto::pb::ChatMessage;
use proto::ErrorCode;
use sqlx::Row;

use super::{rejected, StoreError};

/// The columns of a stored message, in [`message_from_row`]'s terms, optionally qualified
/// (`message_columns!("m.")` for a join).
macro_rules! message_columns {
    () => {
        message_columns!("")
    };
    ($p:literal) => {
        concat!(
            $p,
            "id, ",
            $p,
            "conversation_id, ",
            $p,
            "seq, ",
            $p,
            "sender_id, ",
            $p,
            "receiver_id, ",
            $p,
            "text, ",
            $p,
            "client_msg_id, ",
            $p,
            "created_at_ms, ",
            $p,
            "reply_to, ",
            $p,
            "mentions, ",
            $p,
            "edited_at_ms, ",
            $p,
            "deleted_at_ms, ",
            $p,
            "deleted_by, ",
            $p,
            "reply_count, ",
            $p,
            "last_reply_at_ms, ",
            $p,
            "pinned_at_ms, ",
            $p,
            "pinned_by, ",
            $p,
            "attachments"
        )
    };
}

/// A conversation's participants, ascending.
pub(super) const PARTICIPANTS: &str =
    "SELECT user_id FROM participants WHERE conversation_id = $1 ORDER BY user_id";

/// Whether a conversation exists (one without participants is still one).
pub(super) const CONVERSATION_EXISTS: &str = "SELECT id FROM conversations WHERE id = $1";

/// The direct conversation of a pair, by [`direct_key`].
pub(super) const DIRECT_BY_KEY: &str = "SELECT id FROM conversations WHERE direct_key = $1";

/// Inserts a conversation and its participants inside the open transaction `$tx` and
/// evaluates to its id and `true`; when the direct key is taken (a concurrent creator of
/// the same pair: `ON CONFLICT` waits for that insert, then skips), to the existing id
/// and `false`. The one place a conversation is created one at a time.
macro_rules! insert_conversation {
    ($tx:expr, $kind:expr, $title:expr, $key:expr, $created_by:expr, $members:expr, $now:expr) => {{
        let created: Option<i64> = sqlx::query_scalar(
            "INSERT INTO conversations (kind, title, direct_key, created_by, created_at_ms)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (direct_key) DO NOTHING RETURNING id",
        )
        .bind($kind as i64)
        .bind($title)
        .bind($key)
        .bind($created_by)
        .bind($now)
        .fetch_optional(&mut *$tx)
        .await?;
        match created {
            Some(id) => {
                // A group's creator owns it; everyone else (and both of a pair) is a member.
                let group = $kind as i64 == proto::pb::ConversationKind::Group as i64;
                for u in $members {
                    let role = if group && u == $created_by {
                        $crate::store::roles::role_name(proto::pb::ParticipantRole::Owner)
                    } else {
                        $crate::store::roles::role_name(proto::pb::ParticipantRole::Member)
                    };
                    sqlx::query(
                        "INSERT INTO participants (conversation_id, user_id, joined_at_ms, role)
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(id)
                    .bind(u)
                    .bind($now)
                    .bind(role)
                    .execute(&mut *$tx)
                    .await?;
                }
                (id, true)
            }
            None => {
                let id: i64 = sqlx::query_scalar($crate::store::rows::DIRECT_BY_KEY)
                    .bind($key)
                    .fetch_one(&mut *$tx)
                    .await?;
                (id, false)
            }
        }
    }};
}

/// A message row (selected with [`message_columns!`]) as the wire type.
pub(super) fn message_from_row<R: Row>(row: &R) -> Result<ChatMessage, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let deleted_at_ms: i64 = row.try_get("deleted_at_ms")?;
    Ok(ChatMessage {
        id: row.try_get("id")?,
        conversation_id: row.try_get("conversation_id")?,
        seq: row.try_get("seq")?,
        sender_id: row.try_get("sender_id")?,
        receiver_id: row.try_get("receiver_id")?,
        text: row.try_get("text")?,
        client_msg_id: row
            .try_get::<Option<String>, _>("client_msg_id")?
            .unwrap_or_default(),
        created_at_ms: row.try_get("created_at_ms")?,
        reply_to: row.try_get("reply_to")?,
        mentions: parse_ids(row.try_get::<Option<String>, _>("mentions")?.as_deref()),
        edited_at_ms: row.try_get("edited_at_ms")?,
        deleted: deleted_at_ms > 0,
        deleted_at_ms,
        deleted_by: row.try_get::<Option<i64>, _>("deleted_by")?.unwrap_or(0),
        // Per reader: filled in by the page that shows the message (`reactions`).
        reactions: Vec::new(),
        reply_count: row.try_get("reply_count")?,
        last_reply_at_ms: row.try_get("last_reply_at_ms")?,
        pinned_at_ms: row.try_get("pinned_at_ms")?,
        pinned_by: row.try_get::<Option<i64>, _>("pinned_by")?.unwrap_or(0),
        attachments: super::uploads::parse_attachments(
            row.try_get::<Option<String>, _>("attachments")?.as_deref(),
        ),
    })
}

/// The stored form of a list of user ids (`mentions`): ascending, comma-separated; `None`
/// for none (both backends read and write it as text, so one SQL serves both).
pub(super) fn join_ids(ids: &[i64]) -> Option<String> {
    if ids.is_empty() {
        return None;
    }
    let mut v = ids.to_vec();
    v.sort_unstable();
    v.dedup();
    Some(v.iter().map(i64::to_string).collect::<Vec<_>>().join(","))
}

/// [`join_ids`] read back (anything unreadable is skipped: the column is ours).
pub(super) fn parse_ids(text: Option<&str>) -> Vec<i64> {
    text.unwrap_or_default()
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The unique key of a pair's direct conversation (either order gives the same key).
pub(super) fn direct_key(a: i64, b: i64) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("{lo}:{hi}")
}

/// `conversation_not_found` for `id` (every path that looks a conversation up says it alike).
pub(super) fn conversation_not_found(id: i64) -> StoreError {
    rejected(
        ErrorCode::ConversationNotFound,
        format!("conversation {id} does not exist"),
    )
}

/// Most bytes one page of answers carries, whatever it lists (messages of a history or
/// resume page, conversations with their last messages): far below NATS's 1 MiB payload,
/// and as JSON (escaping can grow text ~6×) still under the 1 MiB WebSocket write limit.
pub(crate) const PAGE_BYTES: usize = 128 * 1024;

/// What one item of a page costs against [`PAGE_BYTES`] beyond its encoded size: room
/// for its JSON field names.
const PAGE_ITEM_OVERHEAD: usize = 64;

/// Cuts a page to [`PAGE_BYTES`] (keeping at least one item, so paging always advances);
/// returns whether it cut. The one byte rule of every page that crosses the bus.
pub(super) fn cut_to_page_budget<T: prost::Message>(items: &mut Vec<T>) -> bool {
    cut_by(items, |item| item.encoded_len())
}

/// [`cut_to_page_budget`] for items whose encoded size `size` tells.
pub(super) fn cut_by<T>(items: &mut Vec<T>, size: impl Fn(&T) -> usize) -> bool {
    let mut bytes = 0;
    let mut keep = 0;
    for item in items.iter() {
        bytes += size(item) + PAGE_ITEM_OVERHEAD;
        if keep > 0 && bytes > PAGE_BYTES {
            break;
        }
        keep += 1;
    }
    let cut = keep < items.len();
    items.truncate(keep);
    cut
}

/// Whether `rows` (fetched with `LIMIT limit + 1`) reach past the page; cuts them to it.
pub(super) fn take_page<T>(rows: &mut Vec<T>, limit: i64) -> bool {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = rows.len() > limit;
    rows.truncate(limit);
    more
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_list_is_one_text_with_or_without_a_qualifier() {
        assert!(message_columns!().starts_with(
            "id, conversation_id, seq, sender_id, receiver_id, text, client_msg_id, created_at_ms, reply_to"
        ));
        assert!(message_columns!("m.").starts_with("m.id, m.conversation_id, "));
        assert_eq!(message_columns!("m.").matches("m.").count(), 18);
        assert_eq!(join_ids(&[7, 3, 7]).as_deref(), Some("3,7"));
        assert_eq!(parse_ids(Some("3,7")), vec![3, 7]);
        assert_eq!(join_ids(&[]), None);
        assert!(parse_ids(None).is_empty());
    }

    #[test]
    fn direct_keys_ignore_order_and_pages_cut_the_probe_row() {
        assert_eq!(direct_key(7, 3), direct_key(3, 7));
        assert_eq!(direct_key(3, 7), "3:7");
        let mut v = vec![1, 2, 3];
        assert!(take_page(&mut v, 2));
        assert_eq!(v, vec![1, 2]);
        assert!(!take_page(&mut v, 2));
    }
}
