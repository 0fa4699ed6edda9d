//! The message store: conversations, participants, messages, the delivery outbox.
//!
//! Two backends share every line of SQL: PostgreSQL (the distributed deployment) and
//! SQLite (the single-node program). The [`on_pool!`] macro expands each method body once
//! per backend, so the compiler checks both and there is no per-backend copy to drift.
//! The SQL sticks to what both understand: `$n` placeholders, `RETURNING`, partial
//! indexes, `UPDATE ... RETURNING` for the per-conversation sequence. One exception, on
//! purpose: storing messages on PostgreSQL takes `pg_batch` (a whole group commit in one
//! statement over arrays); the shared loop stays its fallback and SQLite's path.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use proto::pb::{ChatMessage, Conversation, ConversationKind};
use proto::ErrorCode;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Row, SqlitePool};

mod pg_batch;
mod sqlite_batch;

/// Why a store operation failed. `Rejected` carries a client-facing code; `Database` is
/// ours (retry or alert).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request is not allowed or refers to something that does not exist.
    #[error("{code}: {message}")]
    Rejected {
        /// Stable client-facing code.
        code: ErrorCode,
        /// Detail for humans.
        message: String,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

fn rejected(code: ErrorCode, message: impl Into<String>) -> StoreError {
    StoreError::Rejected {
        code,
        message: message.into(),
    }
}

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

/// What a notification says about a conversation.
#[derive(Debug, Clone, Default)]
pub struct ConversationMeta {
    /// Title (empty for direct chats).
    pub title: String,
    /// `pb::ConversationKind` as stored.
    pub kind: i64,
}

/// A message newly marked read, as the relay to its sender needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadMark {
    /// The message.
    pub message_id: i64,
    /// Its conversation.
    pub conversation_id: i64,
    /// Its author (who gets the receipt).
    pub sender_id: i64,
}

/// The result of [`Store::mark_read`].
#[derive(Debug, Clone, Default)]
pub struct MarkedRead {
    /// Ids the reader may see (now read, whether or not they already were).
    pub accepted: Vec<i64>,
    /// Ids that do not exist or belong to conversations the reader is not in.
    pub rejected: Vec<i64>,
    /// Messages read for the first time by this reader, written by someone else.
    pub newly_read: Vec<ReadMark>,
    /// The read time recorded.
    pub read_at_ms: i64,
}

/// A page of messages.
#[derive(Debug, Clone, Default)]
pub struct MessagePage {
    /// Ascending by seq.
    pub messages: Vec<ChatMessage>,
    /// More exist beyond the page in the requested direction.
    pub has_more: bool,
    /// The conversation's newest seq.
    pub last_seq: i64,
    /// Oldest seq still stored (0 when the conversation is empty).
    pub first_retained_seq: i64,
}

/// One row of a user's conversation list.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The conversation.
    pub conversation: Conversation,
    /// The user's read watermark.
    pub last_read_seq: i64,
    /// Messages after the watermark not written by the user.
    pub unread_count: i64,
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

/// The store. Cheap to clone (pools are shared).
#[derive(Clone, Debug)]
pub enum Store {
    /// PostgreSQL, for the distributed deployment.
    Postgres(PgPool),
    /// SQLite, for the single-node program.
    Sqlite(SqlitePool),
}

/// Expands `$body` once per backend with `$pool` bound to that backend's pool and
/// `$begin` to the statement that opens a write transaction. SQLite needs
/// `BEGIN IMMEDIATE`: a deferred transaction that reads then writes can fail with
/// SQLITE_BUSY instead of waiting for the write lock.
macro_rules! on_pool {
    ($store:expr, |$pool:ident, $begin:ident| $body:block) => {
        match $store {
            Store::Postgres($pool) => {
                let $begin: &'static str = "BEGIN";
                $body
            }
            Store::Sqlite($pool) => {
                let $begin: &'static str = "BEGIN IMMEDIATE";
                $body
            }
        }
    };
}

/// Most message text one page carries (JSON escaping can grow it ~6×; still under the
/// 1 MiB WebSocket write limit and NATS's 1 MB payload).
pub const PAGE_TEXT_BYTES: usize = 128 * 1024;

/// `sender_id` of system messages (sent by a backend through gRPC `as_system`). Never a
/// user: user ids are positive.
pub const SYSTEM_SENDER_ID: i64 = 0;

/// Unread counts stop at this (a "999+" badge); counting further is wasted work.
pub const UNREAD_CAP: i64 = 1000;

/// How long a freshly written outbox row is left to the instance that wrote it before
/// any instance may republish it.
pub const OUTBOX_LEASE: Duration = Duration::from_secs(5);

fn message_from_row<R: Row>(row: &R) -> Result<ChatMessage, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
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
    })
}

/// `conversation_not_found` for `id` (every path that looks a conversation up says it alike).
fn conversation_not_found(id: i64) -> StoreError {
    rejected(
        ErrorCode::ConversationNotFound,
        format!("conversation {id} does not exist"),
    )
}

/// A message naming neither a conversation nor a receiver.
fn no_target() -> StoreError {
    rejected(
        ErrorCode::InvalidField,
        "conversation_id or receiver_id is required",
    )
}

/// The send rules about who may speak where (`pg_batch` applies the same ones in SQL and
/// words its refusals with this). `members` is sorted.
fn check_membership(m: &NewMessage, id: i64, members: &[i64]) -> Result<(), StoreError> {
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

/// The one answer of a one-message batch.
fn only(batch: Result<Vec<Result<Sent, StoreError>>, StoreError>) -> Result<Sent, StoreError> {
    batch?
        .pop()
        .unwrap_or_else(|| Err(rejected(ErrorCode::Internal, "empty batch")))
}

fn direct_key(a: i64, b: i64) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("{lo}:{hi}")
}

impl Store {
    /// Connects to PostgreSQL and applies pending migrations.
    pub async fn connect_postgres(url: &str, pool_size: u32) -> Result<Store, StoreError> {
        // Generic plans: every statement here is an indexed lookup whose best plan does
        // not depend on the values, and PostgreSQL's default (a custom plan per execution
        // until it trusts the generic one) re-planned the group-commit statement on every
        // batch: ~28% of the server's time at 4,000 msg/s in the benchmark's profile.
        let opts =
            PgConnectOptions::from_str(url)?.options([("plan_cache_mode", "force_generic_plan")]);
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await?;
        // Other services (presence) keep their own migrations in the same database.
        let mut migrator = sqlx::migrate!("./migrations/postgres");
        migrator.set_ignore_missing(true);
        migrator.run(&pool).await?;
        Ok(Store::Postgres(pool))
    }

    /// Opens (creating if needed) a SQLite file and applies pending migrations.
    pub async fn open_sqlite(path: &Path, pool_size: u32) -> Result<Store, StoreError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL is durable across process crashes; only an OS crash can lose
            // the newest transactions. The single-node program accepts that trade.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(pool_size.max(1))
            .connect_with(opts)
            .await?;
        let mut migrator = sqlx::migrate!("./migrations/sqlite");
        migrator.set_ignore_missing(true);
        migrator.run(&pool).await?;
        Ok(Store::Sqlite(pool))
    }

    /// Checks the database answers (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, |pool, _begin| {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// Stores a message: idempotent on (sender, client_msg_id), assigns the conversation's
    /// next `seq`, writes the outbox row, all in one transaction.
    pub async fn send_message(&self, m: &NewMessage) -> Result<Sent, StoreError> {
        let inserted = self.insert_message(m).await;
        self.or_original(m, inserted).await
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
                match self.find_by_client_msg_id(m).await? {
                    Some(existing) => Ok(existing),
                    None => Err(StoreError::Database(sqlx::Error::Database(e))),
                }
            }
            other => other,
        }
    }

    /// Stores a batch: one transaction when it can, one per message when that fails (see
    /// [`Store::insert_messages`]). Results are in input order.
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

    async fn insert_message(&self, m: &NewMessage) -> Result<Sent, StoreError> {
        only(self.insert_messages(std::slice::from_ref(m)).await)
    }

    /// Stores several messages in one transaction (group commit): one commit, and one
    /// fsync, for all of them. A message the rules refuse (not a member, no such
    /// conversation) gets its error and the others go on; a database error (a retried
    /// idempotency key hitting the unique index, a deadlock) aborts the whole batch and
    /// the caller falls back to one transaction per message. PostgreSQL takes
    /// [`pg_batch`]; what that cannot store (a pair's first message) comes here after it,
    /// each in its own transaction.
    async fn insert_messages(
        &self,
        ms: &[NewMessage],
    ) -> Result<Vec<Result<Sent, StoreError>>, StoreError> {
        let now = proto::time::now_ms();
        let lease = now + i64::try_from(OUTBOX_LEASE.as_millis()).unwrap_or(5_000);
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
    /// path, and PostgreSQL's for what [`pg_batch`] leaves).
    async fn insert_shared(
        &self,
        ms: &[NewMessage],
        now: i64,
        lease: i64,
    ) -> Result<Vec<Result<Sent, StoreError>>, StoreError> {
        on_pool!(self, |pool, begin| {
            let mut tx = pool.begin_with(begin).await?;
            let mut out = Vec::with_capacity(ms.len());
            for m in ms {
                let one: Result<Sent, StoreError> = async {
                    // Every branch yields the participants too, so no second query is needed.
                    let (conversation_id, participants) = match m.conversation_id {
                        Some(id) => {
                            let members: Vec<i64> = sqlx::query_scalar(
                                "SELECT user_id FROM participants WHERE conversation_id = $1 ORDER BY user_id",
                            )
                            .bind(id)
                            .fetch_all(&mut *tx)
                            .await?;
                            if members.is_empty() {
                                let exists: Option<i64> =
                                    sqlx::query_scalar("SELECT id FROM conversations WHERE id = $1")
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
                            let pair = if m.sender_id < r {
                                vec![m.sender_id, r]
                            } else {
                                vec![r, m.sender_id]
                            };
                            let found: Option<i64> =
                                sqlx::query_scalar("SELECT id FROM conversations WHERE direct_key = $1")
                                    .bind(&key)
                                    .fetch_optional(&mut *tx)
                                    .await?;
                            let id = match found {
                                Some(id) => id,
                                None => {
                                    // ON CONFLICT: a concurrent first message of the same pair
                                    // waits for the other insert and then reuses its row.
                                    let created: Option<i64> = sqlx::query_scalar(
                                        "INSERT INTO conversations (kind, title, direct_key, created_by, created_at_ms)
                                         VALUES ($1, '', $2, $3, $4)
                                         ON CONFLICT (direct_key) DO NOTHING RETURNING id",
                                    )
                                    .bind(ConversationKind::Direct as i64)
                                    .bind(&key)
                                    .bind(m.sender_id)
                                    .bind(now)
                                    .fetch_optional(&mut *tx)
                                    .await?;
                                    match created {
                                        Some(id) => {
                                            for u in [m.sender_id, r] {
                                                sqlx::query(
                                                    "INSERT INTO participants (conversation_id, user_id, joined_at_ms)
                                                     VALUES ($1, $2, $3)",
                                                )
                                                .bind(id)
                                                .bind(u)
                                                .bind(now)
                                                .execute(&mut *tx)
                                                .await?;
                                            }
                                            id
                                        }
                                        None => {
                                            sqlx::query_scalar(
                                                "SELECT id FROM conversations WHERE direct_key = $1",
                                            )
                                            .bind(&key)
                                            .fetch_one(&mut *tx)
                                            .await?
                                        }
                                    }
                                }
                            };
                            (id, pair)
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
                    let meta = ConversationMeta {
                        title: bumped.try_get("title")?,
                        kind: bumped.try_get("kind")?,
                    };
                    let row = sqlx::query(
                        "INSERT INTO messages (conversation_id, seq, sender_id, receiver_id, text, client_msg_id, created_at_ms)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)
                         RETURNING id, conversation_id, seq, sender_id, receiver_id, text, client_msg_id, created_at_ms",
                    )
                    .bind(conversation_id)
                    .bind(seq)
                    .bind(m.sender_id)
                    .bind(m.receiver_id)
                    .bind(&m.text)
                    .bind(m.client_msg_id.as_deref())
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                    let message = message_from_row(&row)?;
                    sqlx::query(
                        "INSERT INTO outbox (message_id, origin_connection_id, lease_until_ms) VALUES ($1, $2, $3)",
                    )
                    .bind(message.id)
                    .bind(&m.origin_connection_id)
                    .bind(lease)
                    .execute(&mut *tx)
                    .await?;
                    Ok(Sent {
                        message,
                        participants,
                        meta,
                        duplicate: false,
                    })
                }
                .await;
                match one {
                    Ok(sent) => out.push(Ok(sent)),
                    Err(e @ StoreError::Rejected { .. }) => out.push(Err(e)),
                    Err(e) => return Err(e),
                }
            }
            tx.commit().await?;
            Ok(out)
        })
    }

    async fn find_by_client_msg_id(&self, m: &NewMessage) -> Result<Option<Sent>, StoreError> {
        let Some(key) = m.client_msg_id.as_deref() else {
            return Ok(None);
        };
        let message = on_pool!(self, |pool, _begin| {
            let row = sqlx::query(
                "SELECT id, conversation_id, seq, sender_id, receiver_id, text, client_msg_id, created_at_ms
                 FROM messages WHERE sender_id = $1 AND client_msg_id = $2",
            )
            .bind(m.sender_id)
            .bind(key)
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(message_from_row).transpose()?
        });
        let Some(message) = message else {
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
        }))
    }

    /// User ids of a conversation's participants, ascending.
    pub async fn participants(&self, conversation_id: i64) -> Result<Vec<i64>, StoreError> {
        Ok(on_pool!(self, |pool, _begin| {
            sqlx::query_scalar(
                "SELECT user_id FROM participants WHERE conversation_id = $1 ORDER BY user_id",
            )
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
        let created: Option<i64> = on_pool!(self, |pool, begin| {
            let mut tx = pool.begin_with(begin).await?;
            // ON CONFLICT on the unique direct_key makes concurrent creators of the same
            // pair converge on one row instead of failing.
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO conversations (kind, title, direct_key, created_by, created_at_ms)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (direct_key) DO NOTHING RETURNING id",
            )
            .bind(kind as i64)
            .bind(title)
            .bind(key.as_deref())
            .bind(creator_id)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(id) = id {
                for u in &members {
                    sqlx::query(
                        "INSERT INTO participants (conversation_id, user_id, joined_at_ms) VALUES ($1, $2, $3)",
                    )
                    .bind(id)
                    .bind(*u)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
            id
        });
        let (id, existing) = match created {
            Some(id) => (id, false),
            None => {
                let id: Option<i64> = on_pool!(self, |pool, _begin| {
                    sqlx::query_scalar("SELECT id FROM conversations WHERE direct_key = $1")
                        .bind(key.as_deref())
                        .fetch_optional(pool)
                        .await?
                });
                let id = id.ok_or_else(|| {
                    StoreError::Database(sqlx::Error::Protocol(
                        "direct conversation vanished after conflict".into(),
                    ))
                })?;
                (id, true)
            }
        };
        let conv = self.get_conversation(id).await?.ok_or_else(|| {
            StoreError::Database(sqlx::Error::Protocol("conversation vanished".into()))
        })?;
        Ok((conv, existing))
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
        let participant_ids = self.participants(id).await?;
        Ok(Some(Conversation {
            id,
            kind: i32::try_from(kind).unwrap_or_default(),
            title,
            participant_ids,
            last_seq,
            created_at_ms,
            created_by,
        }))
    }

    /// One message by id.
    pub async fn get_message(&self, id: i64) -> Result<Option<ChatMessage>, StoreError> {
        Ok(on_pool!(self, |pool, _begin| {
            let row = sqlx::query(
                "SELECT id, conversation_id, seq, sender_id, receiver_id, text, client_msg_id, created_at_ms
                 FROM messages WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(message_from_row).transpose()?
        }))
    }

    /// Claims up to `limit` outbox rows whose lease has run out (their writer died or is
    /// stuck), extending the lease so other instances leave them alone, and returns what
    /// to republish. A row claimed twice is published twice; gateways drop the repeat by
    /// message id.
    pub async fn claim_expired_outbox(
        &self,
        limit: i64,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        let now = proto::time::now_ms();
        let lease = now + i64::try_from(OUTBOX_LEASE.as_millis()).unwrap_or(5_000);
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
            return pg_batch::pending_deliveries(pool, claimed).await;
        }
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
            let mut qb = sqlx::QueryBuilder::new("DELETE FROM outbox WHERE message_id IN (");
            let mut sep = qb.separated(", ");
            for id in message_ids {
                sep.push_bind(*id);
            }
            qb.push(")");
            qb.build().execute(pool).await?;
        });
        Ok(())
    }

    /// Fails with `conversation_not_found` or `forbidden` unless `user_id` is a participant;
    /// returns the participants.
    pub async fn require_member(
        &self,
        conversation_id: i64,
        user_id: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let members = self.participants(conversation_id).await?;
        if members.is_empty() {
            let exists: Option<i64> = on_pool!(self, |pool, _begin| {
                sqlx::query_scalar("SELECT id FROM conversations WHERE id = $1")
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

    /// Records that `reader` read `ids`: per-message read time (first read wins) and the
    /// reader's per-conversation watermark, in one transaction.
    pub async fn mark_read(&self, reader: i64, ids: &[i64]) -> Result<MarkedRead, StoreError> {
        let mut ids: Vec<i64> = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let now = proto::time::now_ms();
        let mut out = MarkedRead {
            read_at_ms: now,
            ..MarkedRead::default()
        };
        if ids.is_empty() {
            return Ok(out);
        }
        let visible: Vec<(i64, i64, i64, i64)> = on_pool!(self, |pool, begin| {
            let mut tx = pool.begin_with(begin).await?;
            let mut qb = sqlx::QueryBuilder::new(
                "SELECT m.id, m.conversation_id, m.sender_id, m.seq FROM messages m
                 JOIN participants p ON p.conversation_id = m.conversation_id AND p.user_id = ",
            );
            qb.push_bind(reader);
            qb.push(" WHERE m.id IN (");
            let mut sep = qb.separated(", ");
            for id in &ids {
                sep.push_bind(*id);
            }
            qb.push(") ORDER BY m.id");
            let rows = qb.build().fetch_all(&mut *tx).await?;
            let mut visible = Vec::with_capacity(rows.len());
            for r in &rows {
                visible.push((
                    r.try_get::<i64, _>("id")?,
                    r.try_get::<i64, _>("conversation_id")?,
                    r.try_get::<i64, _>("sender_id")?,
                    r.try_get::<i64, _>("seq")?,
                ));
            }
            for (id, conv, sender, _) in &visible {
                let inserted: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO message_reads (message_id, user_id, read_at_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (message_id, user_id) DO NOTHING RETURNING message_id",
                )
                .bind(*id)
                .bind(reader)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                if inserted.is_some() && *sender != reader {
                    out.newly_read.push(ReadMark {
                        message_id: *id,
                        conversation_id: *conv,
                        sender_id: *sender,
                    });
                }
            }
            let mut marks: std::collections::BTreeMap<i64, i64> = std::collections::BTreeMap::new();
            for (_, conv, _, seq) in &visible {
                let e = marks.entry(*conv).or_insert(0);
                *e = (*e).max(*seq);
            }
            for (conv, seq) in marks {
                sqlx::query(
                    "UPDATE participants SET last_read_seq = $1
                     WHERE conversation_id = $2 AND user_id = $3 AND last_read_seq < $1",
                )
                .bind(seq)
                .bind(conv)
                .bind(reader)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            visible
        });
        let seen: std::collections::HashSet<i64> = visible.iter().map(|v| v.0).collect();
        for id in ids {
            if seen.contains(&id) {
                out.accepted.push(id);
            } else {
                out.rejected.push(id);
            }
        }
        Ok(out)
    }

    /// A page of a conversation for a member: forward from `after_seq` (resume) or, with
    /// `before_seq > 0` and `after_seq == 0`, backward from `before_seq` (history).
    pub async fn list_messages(
        &self,
        user_id: i64,
        conversation_id: i64,
        after_seq: i64,
        before_seq: i64,
        limit: u32,
    ) -> Result<MessagePage, StoreError> {
        self.require_member(conversation_id, user_id).await?;
        let limit = i64::from(limit.clamp(1, 500));
        let backward = before_seq > 0 && after_seq == 0;
        let upper = if before_seq > 0 { before_seq } else { i64::MAX };
        let (mut messages, last_seq, first) = on_pool!(self, |pool, _begin| {
            let sql = if backward {
                "SELECT id, conversation_id, seq, sender_id, receiver_id, text, client_msg_id, created_at_ms
                 FROM messages WHERE conversation_id = $1 AND seq > $2 AND seq < $3
                 ORDER BY seq DESC LIMIT $4"
            } else {
                "SELECT id, conversation_id, seq, sender_id, receiver_id, text, client_msg_id, created_at_ms
                 FROM messages WHERE conversation_id = $1 AND seq > $2 AND seq < $3
                 ORDER BY seq ASC LIMIT $4"
            };
            let rows = sqlx::query(sql)
                .bind(conversation_id)
                .bind(after_seq)
                .bind(upper)
                .bind(limit + 1)
                .fetch_all(pool)
                .await?;
            let mut v = Vec::with_capacity(rows.len());
            for r in &rows {
                v.push(message_from_row(r)?);
            }
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
            // No rows but a non-zero last_seq: retention removed them all.
            (
                v,
                last_seq,
                first.unwrap_or(if last_seq > 0 { last_seq + 1 } else { 0 }),
            )
        });
        let mut has_more = messages.len() > usize::try_from(limit).unwrap_or(usize::MAX);
        messages.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        // Bound the page by size too, so it fits a NATS message (1 MB by default) and,
        // as JSON, a WebSocket write: at most PAGE_TEXT_BYTES of text, at least one message.
        let mut bytes = 0;
        let mut keep = 0;
        for m in &messages {
            bytes += m.text.len() + 64;
            if keep > 0 && bytes > PAGE_TEXT_BYTES {
                break;
            }
            keep += 1;
        }
        if keep < messages.len() {
            messages.truncate(keep);
            has_more = true;
        }
        if backward {
            messages.reverse();
        }
        Ok(MessagePage {
            messages,
            has_more,
            last_seq,
            first_retained_seq: first,
        })
    }

    /// Messages in any of `user_id`'s conversations after the event-stream cursor
    /// `after_id` (a message id the client has), oldest id first, at most `limit`.
    ///
    /// Message ids are assigned before commit, so across conversations a smaller id can
    /// commit (and be delivered live) after a larger one: "id > cursor" alone could skip a
    /// message. Messages created up to `window_ms` before the cursor's message are
    /// included too (transactions are far shorter than the window); the client drops
    /// repeats by `message_id`. `scan_from` pages: pass the last id of the previous page.
    pub async fn messages_since(
        &self,
        user_id: i64,
        after_id: i64,
        window_ms: i64,
        scan_from: i64,
        limit: u32,
    ) -> Result<(Vec<ChatMessage>, bool), StoreError> {
        let limit = i64::from(limit.clamp(1, 500));
        let mut messages = on_pool!(self, |pool, _begin| {
            let anchor: Option<i64> =
                sqlx::query_scalar("SELECT created_at_ms FROM messages WHERE id = $1")
                    .bind(after_id)
                    .fetch_optional(pool)
                    .await?;
            // An unknown cursor (pruned, or from another deployment): only newer ids.
            let cutoff = anchor.map_or(i64::MAX, |t| t.saturating_sub(window_ms));
            let rows = sqlx::query(
                "SELECT m.id, m.conversation_id, m.seq, m.sender_id, m.receiver_id, m.text,
                        m.client_msg_id, m.created_at_ms
                 FROM messages m
                 JOIN participants p ON p.conversation_id = m.conversation_id AND p.user_id = $1
                 WHERE m.id > $2 AND m.id <> $3 AND (m.id > $3 OR m.created_at_ms >= $4)
                 ORDER BY m.id ASC LIMIT $5",
            )
            .bind(user_id)
            .bind(scan_from)
            .bind(after_id)
            .bind(cutoff)
            .bind(limit + 1)
            .fetch_all(pool)
            .await?;
            let mut v = Vec::with_capacity(rows.len());
            for r in &rows {
                v.push(message_from_row(r)?);
            }
            v
        });
        let has_more = messages.len() > usize::try_from(limit).unwrap_or(usize::MAX);
        messages.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok((messages, has_more))
    }

    /// The user's conversations, most recently active first, with unread counts.
    pub async fn list_conversations(
        &self,
        user_id: i64,
        limit: u32,
        after: Option<ConversationCursor>,
    ) -> Result<(Vec<Summary>, Option<ConversationCursor>), StoreError> {
        let limit = i64::from(limit.clamp(1, 500));
        // Keyset paging on the sort key: stable while new messages reorder the list
        // (a conversation that jumps to the top is simply not repeated on later pages).
        let after = after.unwrap_or(ConversationCursor {
            last_message_at_ms: i64::MAX,
            id: i64::MAX,
        });
        let rows: Vec<(i64, i64, i64)> = on_pool!(self, |pool, _begin| {
            let rows = sqlx::query(
                "SELECT c.id, p.last_read_seq, c.last_message_at_ms FROM participants p
                 JOIN conversations c ON c.id = p.conversation_id
                 WHERE p.user_id = $1
                   AND (c.last_message_at_ms < $3 OR (c.last_message_at_ms = $3 AND c.id < $4))
                 ORDER BY c.last_message_at_ms DESC, c.id DESC LIMIT $2",
            )
            .bind(user_id)
            .bind(limit + 1)
            .bind(after.last_message_at_ms)
            .bind(after.id)
            .fetch_all(pool)
            .await?;
            let mut v = Vec::with_capacity(rows.len());
            for r in &rows {
                v.push((
                    r.try_get::<i64, _>("id")?,
                    r.try_get::<i64, _>("last_read_seq")?,
                    r.try_get::<i64, _>("last_message_at_ms")?,
                ));
            }
            v
        });
        let mut rows = rows;
        let next = if rows.len() > usize::try_from(limit).unwrap_or(usize::MAX) {
            rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            rows.last().map(|(id, _, at)| ConversationCursor {
                last_message_at_ms: *at,
                id: *id,
            })
        } else {
            None
        };
        let mut out = Vec::with_capacity(rows.len());
        for (id, last_read_seq, _) in rows {
            let Some(conversation) = self.get_conversation(id).await? else {
                continue;
            };
            let (unread_count, last_message) = on_pool!(self, |pool, _begin| {
                let unread: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM messages
                     WHERE conversation_id = $1 AND seq > $2 AND sender_id <> $3 LIMIT $4) AS u",
                )
                .bind(id)
                .bind(last_read_seq)
                .bind(user_id)
                .bind(UNREAD_CAP)
                .fetch_one(pool)
                .await?;
                let row = sqlx::query(
                    "SELECT id, conversation_id, seq, sender_id, receiver_id, text, client_msg_id, created_at_ms
                     FROM messages WHERE conversation_id = $1 AND seq = $2",
                )
                .bind(id)
                .bind(conversation.last_seq)
                .fetch_optional(pool)
                .await?;
                (unread, row.as_ref().map(message_from_row).transpose()?)
            });
            out.push(Summary {
                conversation,
                last_read_seq,
                unread_count,
                last_message,
            });
        }
        Ok((out, next))
    }

    /// Adds and removes members of a group the actor belongs to. Returns the updated
    /// conversation and the users actually added and removed.
    pub async fn update_participants(
        &self,
        actor: i64,
        conversation_id: i64,
        add: &[i64],
        remove: &[i64],
        max_group_size: usize,
    ) -> Result<(Conversation, Vec<i64>, Vec<i64>), StoreError> {
        let now = proto::time::now_ms();
        let (added, removed): (Vec<i64>, Vec<i64>) = on_pool!(self, |pool, begin| {
            let mut tx = pool.begin_with(begin).await?;
            // Lock the conversation row first: concurrent edits then see each other's
            // result, so the size limit and the actor's membership hold.
            let kind: Option<i64> = sqlx::query_scalar(
                "UPDATE conversations SET last_seq = last_seq WHERE id = $1 RETURNING kind",
            )
            .bind(conversation_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(kind) = kind else {
                return Err(conversation_not_found(conversation_id));
            };
            let members: Vec<i64> =
                sqlx::query_scalar("SELECT user_id FROM participants WHERE conversation_id = $1")
                    .bind(conversation_id)
                    .fetch_all(&mut *tx)
                    .await?;
            if !members.contains(&actor) {
                return Err(rejected(
                    ErrorCode::Forbidden,
                    "you are not a participant of this conversation",
                ));
            }
            if kind == ConversationKind::Direct as i64 {
                return Err(rejected(
                    ErrorCode::InvalidField,
                    "members of a direct conversation cannot change",
                ));
            }
            let current: std::collections::BTreeSet<i64> = members.iter().copied().collect();
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
            .ok_or_else(|| {
                StoreError::Database(sqlx::Error::Protocol("conversation vanished".into()))
            })?;
        Ok((conv, added, removed))
    }

    /// Deletes up to `limit` messages created before `cutoff_ms` (retention). Returns how
    /// many went. Their read marks and outbox rows go with them (ON DELETE CASCADE).
    pub async fn prune_before(&self, cutoff_ms: i64, limit: i64) -> Result<u64, StoreError> {
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

    /// Number of outbox rows (for tests and the readiness report).
    pub async fn outbox_len(&self) -> Result<i64, StoreError> {
        Ok(on_pool!(self, |pool, _begin| {
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
                .fetch_one(pool)
                .await?
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
