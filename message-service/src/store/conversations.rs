//! Conversations and their participants: creating (a pair's direct conversation exactly
//! once, however many create it at the same time), reading, listing with unread counts,
//! membership checks and changes.

use prost::Message as _;
use proto::pb::{ChatMessage, Conversation, ConversationKind};
use proto::ErrorCode;
use sqlx::Row;

use super::roles::{role_name, Role, Roster, ROSTER};
use super::rows::{
    conversation_not_found, cut_by, direct_key, message_from_row, take_page, CONVERSATION_EXISTS,
    PARTICIPANTS,
};
use super::{rejected, Store, StoreError};

/// Unread counts stop at this (a "999+" badge); counting further is wasted work.
pub const UNREAD_CAP: i64 = 1000;

/// What a notification says about a conversation.
#[derive(Debug, Clone, Default)]
pub struct ConversationMeta {
    /// Title (empty for direct chats).
    pub title: String,
    /// `pb::ConversationKind` as stored.
    pub kind: i64,
}

impl ConversationMeta {
    /// The `title` and `kind` columns of a row.
    pub(super) fn from_row<R: Row>(row: &R) -> Result<ConversationMeta, sqlx::Error>
    where
        for<'a> &'a str: sqlx::ColumnIndex<R>,
        for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
        for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    {
        Ok(ConversationMeta {
            title: row.try_get("title")?,
            kind: row.try_get("kind")?,
        })
    }
}

/// One row of a user's conversation list.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The conversation.
    pub conversation: Conversation,
    /// The user's read watermark.
    pub last_read_seq: i64,
    /// Messages after the watermark not written by the user and not deleted (at most
    /// [`UNREAD_CAP`]).
    pub unread_count: i64,
    /// Of those, the ones that mention the user (a deletion removes its mentions).
    pub unread_mentions: i64,
    /// The newest message, if any.
    pub last_message: Option<ChatMessage>,
}

/// Where a page of [`Store::list_conversations`] ends (the sort key of its last row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationCursor {
    /// The conversation's last activity.
    pub last_message_at_ms: i64,
    /// Its id (ties).
    pub id: i64,
}

/// A page of a user's conversation list in one statement, the same text on PostgreSQL and
/// SQLite ($1 user, $2 rows, $3/$4 the cursor, $5 [`UNREAD_CAP`]). The page itself is a
/// derived table with its own `LIMIT` (the keyset through `participants_by_user` and the
/// conversations' primary key), so the per-row work runs for the page's rows only: the
/// capped unread count (a range of the `(conversation_id, seq)` key, the user's own
/// messages excluded), the roster (`participants`' primary key; `string_agg` is
/// PostgreSQL's and SQLite's since 3.44) and the last message (`seq = last_seq` on the same
/// key). Before this, a page cost four statements per conversation.
const CONVERSATION_PAGE_SQL: &str = concat!(
    "SELECT pg.id AS c_id, pg.kind AS c_kind, pg.title AS c_title, pg.last_seq AS c_last_seq,
            pg.created_by AS c_created_by, pg.created_at_ms AS c_created_at_ms,
            pg.last_message_at_ms AS c_last_message_at_ms, pg.last_read_seq AS p_last_read_seq,
            (SELECT COUNT(*) FROM (SELECT 1 FROM messages u
                WHERE u.conversation_id = pg.id AND u.seq > pg.last_read_seq AND u.sender_id <> $1
                  AND u.deleted_at_ms = 0
                LIMIT $5) AS uc) AS unread_count,
            (SELECT COUNT(*) FROM message_mentions mm
                WHERE mm.user_id = $1 AND mm.conversation_id = pg.id
                  AND mm.seq > pg.last_read_seq) AS unread_mentions,
            (SELECT string_agg(CAST(r.user_id AS TEXT) || ':' || r.role, ',')
                FROM participants r WHERE r.conversation_id = pg.id) AS c_roster, ",
    message_columns!("m."),
    " FROM (SELECT c.id, c.kind, c.title, c.last_seq, c.created_by, c.created_at_ms,
                   c.last_message_at_ms, p.last_read_seq
            FROM participants p JOIN conversations c ON c.id = p.conversation_id
            WHERE p.user_id = $1
              AND (c.last_message_at_ms < $3 OR (c.last_message_at_ms = $3 AND c.id < $4))
            ORDER BY c.last_message_at_ms DESC, c.id DESC LIMIT $2) AS pg
     LEFT JOIN messages m ON m.conversation_id = pg.id AND m.seq = pg.last_seq
     ORDER BY pg.last_message_at_ms DESC, pg.id DESC"
);

/// The `user:role,…` list [`CONVERSATION_PAGE_SQL`] aggregates, as roster rows.
fn parse_roster(list: Option<&str>) -> Vec<(i64, String)> {
    list.unwrap_or_default()
        .split(',')
        .filter_map(|entry| {
            let (user, role) = entry.split_once(':')?;
            Some((user.parse().ok()?, role.to_owned()))
        })
        .collect()
}

/// A conversation that was just written but cannot be read back (a concurrent delete).
fn vanished() -> StoreError {
    StoreError::Database(sqlx::Error::Protocol("conversation vanished".into()))
}

impl Store {
    /// User ids of a conversation's participants, ascending.
    pub(crate) async fn participants(&self, conversation_id: i64) -> Result<Vec<i64>, StoreError> {
        Ok(on_pool!(self, |pool, _begin| {
            sqlx::query_scalar(PARTICIPANTS)
                .bind(conversation_id)
                .fetch_all(pool)
                .await?
        }))
    }

    /// Creates a conversation. A direct conversation of a pair that already has one
    /// returns the existing one (`true` in the result).
    pub async fn create_conversation(
        &self,
        creator_id: i64,
        participant_ids: &[i64],
        title: &str,
        kind: ConversationKind,
    ) -> Result<(Conversation, bool), StoreError> {
        let mut members: Vec<i64> = participant_ids.to_vec();
        members.push(creator_id);
        members.sort_unstable();
        members.dedup();
        let kind = match kind {
            ConversationKind::Unspecified if members.len() == 2 && title.is_empty() => {
                ConversationKind::Direct
            }
            ConversationKind::Unspecified => ConversationKind::Group,
            k => k,
        };
        if kind == ConversationKind::Direct && members.len() != 2 {
            return Err(rejected(
                ErrorCode::InvalidField,
                "a direct conversation has exactly two distinct participants",
            ));
        }
        let key = (kind == ConversationKind::Direct).then(|| direct_key(members[0], members[1]));
        let now = proto::time::now_ms();
        let (id, created) = on_pool!(self, |pool, begin| {
            let mut tx = pool.begin_with(begin).await?;
            let out = insert_conversation!(
                tx,
                kind,
                title,
                key.as_deref(),
                creator_id,
                members.iter().copied(),
                now
            );
            tx.commit().await?;
            out
        });
        let conv = self.get_conversation(id).await?.ok_or_else(vanished)?;
        Ok((conv, !created))
    }

    /// Which of `others` share at least one conversation with `user_id` (who may see whose
    /// presence). One query, however many users are asked about.
    pub(crate) async fn shared_contacts(
        &self,
        user_id: i64,
        others: &[i64],
    ) -> Result<Vec<i64>, StoreError> {
        // Both backends walk `participants_by_user` for the asker, then the primary key.
        const PG: &str = "SELECT DISTINCT o.user_id FROM participants me \
             JOIN participants o ON o.conversation_id = me.conversation_id \
             WHERE me.user_id = $1 AND o.user_id = ANY($2)";
        // SQLite has no arrays: the list travels as JSON, like the batch statements'.
        const SQLITE: &str = "SELECT DISTINCT o.user_id FROM participants me \
             JOIN participants o ON o.conversation_id = me.conversation_id \
             WHERE me.user_id = $1 AND o.user_id IN (SELECT value FROM json_each($2))";
        Ok(match self {
            Store::Postgres(pool) => {
                sqlx::query_scalar(PG)
                    .bind(user_id)
                    .bind(others)
                    .fetch_all(pool)
                    .await?
            }
            Store::Sqlite(pool) => {
                let list = format!(
                    "[{}]",
                    others
                        .iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                );
                sqlx::query_scalar(SQLITE)
                    .bind(user_id)
                    .bind(list)
                    .fetch_all(pool)
                    .await?
            }
        })
    }

    /// One conversation with its participants, if it exists.
    pub async fn get_conversation(&self, id: i64) -> Result<Option<Conversation>, StoreError> {
        let row = on_pool!(self, |pool, _begin| {
            let row = sqlx::query(
                "SELECT id, kind, title, last_seq, created_by, created_at_ms FROM conversations WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?;
            match row {
                Some(r) => Some((
                    r.try_get::<i64, _>("kind")?,
                    r.try_get::<String, _>("title")?,
                    r.try_get::<i64, _>("last_seq")?,
                    r.try_get::<i64, _>("created_by")?,
                    r.try_get::<i64, _>("created_at_ms")?,
                )),
                None => None,
            }
        });
        let Some((kind, title, last_seq, created_by, created_at_ms)) = row else {
            return Ok(None);
        };
        let rows: Vec<(i64, String)> = on_pool!(self, |pool, _begin| {
            sqlx::query_as(ROSTER).bind(id).fetch_all(pool).await?
        });
        let roster = Roster::from_rows(kind, rows);
        Ok(Some(Conversation {
            id,
            kind: i32::try_from(kind).unwrap_or_default(),
            title,
            participant_ids: roster.members.keys().copied().collect(),
            last_seq,
            created_at_ms,
            created_by,
            owner_id: roster.owner().unwrap_or_default(),
            admin_ids: roster.admins(),
        }))
    }

    /// Fails with `conversation_not_found` or `forbidden` unless `user_id` is a participant;
    /// returns the participants.
    pub(crate) async fn require_member(
        &self,
        conversation_id: i64,
        user_id: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let members = self.participants(conversation_id).await?;
        if members.is_empty() {
            let exists: Option<i64> = on_pool!(self, |pool, _begin| {
                sqlx::query_scalar(CONVERSATION_EXISTS)
                    .bind(conversation_id)
                    .fetch_optional(pool)
                    .await?
            });
            if exists.is_none() {
                return Err(conversation_not_found(conversation_id));
            }
        }
        if !members.contains(&user_id) {
            return Err(rejected(
                ErrorCode::Forbidden,
                format!("you are not a participant of conversation {conversation_id}"),
            ));
        }
        Ok(members)
    }

    /// The user's conversations, most recently active first, with unread counts. `limit`
    /// follows [`proto::limits::CONVERSATION_PAGE`] (0: its default; above its maximum:
    /// the maximum, since callers check the request first). One statement
    /// ([`CONVERSATION_PAGE_SQL`]), whatever the page size; the page is cut to
    /// [`PAGE_BYTES`](super::rows::PAGE_BYTES) (last messages can be long), and the cursor
    /// then points after the last row kept.
    pub async fn list_conversations(
        &self,
        user_id: i64,
        limit: u32,
        after: Option<ConversationCursor>,
    ) -> Result<(Vec<Summary>, Option<ConversationCursor>), StoreError> {
        let (mut rows, mut more) = self.conversation_page(user_id, limit, after).await?;
        more |= cut_by(&mut rows, |(s, _)| {
            s.conversation.encoded_len() + s.last_message.as_ref().map_or(0, |m| m.encoded_len())
        });
        let next = if more {
            rows.last().map(|(_, c)| *c)
        } else {
            None
        };
        Ok((rows.into_iter().map(|(s, _)| s).collect(), next))
    }

    /// The first `limit` rows of [`Store::list_conversations`], not cut to the byte budget
    /// (for the unread summary, which keeps only the counts).
    pub async fn unread_summaries(
        &self,
        user_id: i64,
        limit: u32,
    ) -> Result<Vec<Summary>, StoreError> {
        let (rows, _) = self.conversation_page(user_id, limit, None).await?;
        Ok(rows.into_iter().map(|(s, _)| s).collect())
    }

    /// One page of the conversation list with each row's cursor, and whether more follow.
    async fn conversation_page(
        &self,
        user_id: i64,
        limit: u32,
        after: Option<ConversationCursor>,
    ) -> Result<(Vec<(Summary, ConversationCursor)>, bool), StoreError> {
        let page = proto::limits::CONVERSATION_PAGE;
        let limit = i64::from(page.check(limit).unwrap_or(page.max));
        // Keyset paging on the sort key: stable while new messages reorder the list
        // (a conversation that jumps to the top is simply not repeated on later pages).
        let after = after.unwrap_or(ConversationCursor {
            last_message_at_ms: i64::MAX,
            id: i64::MAX,
        });
        let mut rows = on_pool!(self, |pool, _begin| {
            let rows = sqlx::query(CONVERSATION_PAGE_SQL)
                .bind(user_id)
                .bind(limit + 1)
                .bind(after.last_message_at_ms)
                .bind(after.id)
                .bind(UNREAD_CAP)
                .fetch_all(pool)
                .await?;
            let mut v = Vec::with_capacity(rows.len());
            for r in &rows {
                let id: i64 = r.try_get("c_id")?;
                let kind: i64 = r.try_get("c_kind")?;
                let roster = Roster::from_rows(
                    kind,
                    parse_roster(r.try_get::<Option<String>, _>("c_roster")?.as_deref()),
                );
                let last_message = match r.try_get::<Option<i64>, _>("id")? {
                    Some(_) => Some(message_from_row(r)?),
                    None => None,
                };
                let conversation = Conversation {
                    id,
                    kind: i32::try_from(kind).unwrap_or_default(),
                    title: r.try_get("c_title")?,
                    participant_ids: roster.members.keys().copied().collect(),
                    last_seq: r.try_get("c_last_seq")?,
                    created_at_ms: r.try_get("c_created_at_ms")?,
                    created_by: r.try_get("c_created_by")?,
                    owner_id: roster.owner().unwrap_or_default(),
                    admin_ids: roster.admins(),
                };
                let cursor = ConversationCursor {
                    last_message_at_ms: r.try_get("c_last_message_at_ms")?,
                    id,
                };
                let summary = Summary {
                    conversation,
                    last_read_seq: r.try_get("p_last_read_seq")?,
                    unread_count: r.try_get("unread_count")?,
                    unread_mentions: r.try_get("unread_mentions")?,
                    last_message,
                };
                v.push((summary, cursor));
            }
            v
        });
        let more = take_page(&mut rows, limit);
        Ok((rows, more))
    }

    /// Adds and removes members of a conversation, if `allow` (the caller's rules, run
    /// under the conversation's row lock) accepts the change on its current roster. New
    /// members are plain members. Returns the updated conversation and the users actually
    /// added and removed.
    pub async fn update_participants(
        &self,
        conversation_id: i64,
        add: &[i64],
        remove: &[i64],
        max_group_size: usize,
        allow: impl FnOnce(&Roster) -> Result<(), StoreError>,
    ) -> Result<(Conversation, Vec<i64>, Vec<i64>), StoreError> {
        let now = proto::time::now_ms();
        let (added, removed): (Vec<i64>, Vec<i64>) = on_pool!(self, |pool, begin| {
            let mut tx = pool.begin_with(begin).await?;
            // Locked first: concurrent edits then see each other's result, so the size
            // limit and the rules hold.
            let Some(roster) = lock_roster!(tx, conversation_id) else {
                return Err(conversation_not_found(conversation_id));
            };
            allow(&roster)?;
            let current: std::collections::BTreeSet<i64> = roster.members.keys().copied().collect();
            let added: Vec<i64> = add
                .iter()
                .copied()
                .filter(|u| !current.contains(u))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let removed: Vec<i64> = remove
                .iter()
                .copied()
                .filter(|u| current.contains(u))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            if current.len() + added.len() - removed.len() > max_group_size {
                return Err(rejected(
                    ErrorCode::TooManyParticipants,
                    format!("a group has at most {max_group_size} members"),
                ));
            }
            for u in &added {
                sqlx::query(
                    "INSERT INTO participants (conversation_id, user_id, joined_at_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (conversation_id, user_id) DO NOTHING",
                )
                .bind(conversation_id)
                .bind(*u)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            for u in &removed {
                sqlx::query("DELETE FROM participants WHERE conversation_id = $1 AND user_id = $2")
                    .bind(conversation_id)
                    .bind(*u)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            (added, removed)
        });
        let conv = self
            .get_conversation(conversation_id)
            .await?
            .ok_or_else(vanished)?;
        Ok((conv, added, removed))
    }

    /// Gives participant `user_id` `role`, if `allow` (the caller's rules, run under the
    /// conversation's row lock) accepts it on the current roster. [`Role::Owner`]
    /// transfers ownership: the previous owner becomes an admin, in the same transaction
    /// (a partial unique index keeps one owner per conversation).
    pub async fn set_role(
        &self,
        conversation_id: i64,
        user_id: i64,
        role: Role,
        allow: impl FnOnce(&Roster) -> Result<(), StoreError>,
    ) -> Result<Conversation, StoreError> {
        if role == Role::Unspecified {
            return Err(rejected(
                ErrorCode::InvalidField,
                "role must be member, admin or owner",
            ));
        }
        on_pool!(self, |pool, begin| {
            let mut tx = pool.begin_with(begin).await?;
            let Some(roster) = lock_roster!(tx, conversation_id) else {
                return Err(conversation_not_found(conversation_id));
            };
            allow(&roster)?;
            if roster.role(user_id).is_none() {
                return Err(rejected(
                    ErrorCode::InvalidField,
                    format!("user {user_id} is not a participant of this conversation"),
                ));
            }
            if role == Role::Owner {
                sqlx::query(
                    "UPDATE participants SET role = $3
                     WHERE conversation_id = $1 AND role = $4 AND user_id <> $2",
                )
                .bind(conversation_id)
                .bind(user_id)
                .bind(role_name(Role::Admin))
                .bind(role_name(Role::Owner))
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "UPDATE participants SET role = $3 WHERE conversation_id = $1 AND user_id = $2",
            )
            .bind(conversation_id)
            .bind(user_id)
            .bind(role_name(role))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        self.get_conversation(conversation_id)
            .await?
            .ok_or_else(vanished)
    }
}
