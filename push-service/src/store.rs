//! push-service's tables (PostgreSQL, or SQLite in the single-node program): devices,
//! mutes, preferences, and the durable notification batches with their per-device progress.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use proto::pb::DevicePlatform;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Row, SqlitePool};

use crate::providers::Target;

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The store. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Store {
    /// Distributed deployment.
    Postgres(PgPool),
    /// Single-node program.
    Sqlite(SqlitePool),
}

/// Runs `$body` once per backend with `$pool` bound (the SQL text is shared).
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:block) => {
        match $store {
            Store::Postgres($pool) => $body,
            Store::Sqlite($pool) => $body,
        }
    };
}

/// A notification being assembled or sent.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Id.
    pub id: i64,
    /// Recipient.
    pub user_id: i64,
    /// Conversation.
    pub conversation_id: i64,
    /// Messages it covers.
    pub count: i64,
    /// The newest of them.
    pub last_message_id: i64,
    /// Its sender.
    pub last_sender_id: i64,
    /// Its text.
    pub last_text: String,
    /// The conversation's title.
    pub title: String,
    /// The conversation's kind (`pb::ConversationKind`).
    pub kind: i64,
    /// Failed rounds so far.
    pub attempt: i64,
    /// Who wrote the newest message in it that mentions the user (0: the system), if any.
    pub mentioned_by: Option<i64>,
    /// That message (0: none).
    pub mention_message_id: i64,
}

/// How far a mute goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MuteLevel {
    /// Nothing notifies (mutes stored before levels existed are these).
    All,
    /// Only messages mentioning the user notify.
    MentionsOnly,
}

impl MuteLevel {
    /// The stored (and API) name.
    pub fn as_str(self) -> &'static str {
        match self {
            MuteLevel::All => "all",
            MuteLevel::MentionsOnly => "mentions_only",
        }
    }

    /// A stored name; anything unknown is a full mute (never notify someone who muted).
    fn from_stored(s: &str) -> MuteLevel {
        if s == MuteLevel::MentionsOnly.as_str() {
            MuteLevel::MentionsOnly
        } else {
            MuteLevel::All
        }
    }
}

/// An edit or deletion of a message, as intake needs it.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// Its text now.
    Edited(&'a str),
    /// Deleted for everyone.
    Deleted,
}

/// `push_changes.kind` values (`pb::ChangeKind`).
const EDITED: i64 = proto::pb::ChangeKind::Edited as i64;
const DELETED: i64 = proto::pb::ChangeKind::Deleted as i64;

impl Change<'_> {
    fn kind(self) -> i64 {
        match self {
            Change::Edited(_) => EDITED,
            Change::Deleted => DELETED,
        }
    }
}

/// One committed change, as intake needs it.
#[derive(Debug, Clone, Copy)]
pub struct IncomingChange<'a> {
    /// The change's id (unique: a redelivery is recognised by it).
    pub id: i64,
    /// Its conversation.
    pub conversation_id: i64,
    /// The message it changes.
    pub message_id: i64,
    /// Its seq in the conversation (orders the changes of one message).
    pub seq: i64,
    /// What it did.
    pub change: Change<'a>,
}

/// What intake did with one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeIntake {
    /// Applied: how many pending notifications it updated, and how many it withdrew.
    Applied {
        /// Batches updated (text replaced, or count lowered).
        updated: u64,
        /// Batches deleted (their only message was deleted).
        withdrawn: u64,
    },
    /// Already applied (a redelivery).
    Duplicate,
}

/// What became of a device registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// Registered (or already the user's): its id and first registration time.
    Device {
        /// Registry id.
        id: i64,
        /// When it was first registered.
        created_at_ms: i64,
    },
    /// The (platform, token) is another user's device.
    OwnedByOther,
    /// The user already has the most devices allowed.
    TooMany,
}

/// What intake did with one (message, recipient).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    /// Counted into a batch (new or open).
    Added,
    /// This job was already counted (a redelivery).
    Duplicate,
    /// The user muted the conversation (and, under `mentions_only`, it does not
    /// mention them).
    Muted,
    /// The message was deleted before its job came (a republish): nothing to notify.
    Deleted,
    /// The user has no device.
    NoDevices,
}

/// One message for one recipient, as intake needs it.
#[derive(Debug, Clone)]
pub struct Incoming<'a> {
    /// The message.
    pub message_id: i64,
    /// Its conversation.
    pub conversation_id: i64,
    /// Its sender.
    pub sender_id: i64,
    /// Its text.
    pub text: &'a str,
    /// Users it mentions.
    pub mentions: &'a [i64],
    /// The conversation's title and kind.
    pub title: &'a str,
    /// `pb::ConversationKind`.
    pub kind: i64,
}

fn target_from_row<R: Row>(r: &R) -> Result<Target, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let platform: i64 = r.try_get("platform")?;
    Ok(Target {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        platform: DevicePlatform::try_from(i32::try_from(platform).unwrap_or(0))
            .unwrap_or(DevicePlatform::Unspecified),
        token: r.try_get("token")?,
        p256dh: r.try_get("p256dh")?,
        auth: r.try_get("auth")?,
    })
}

fn batch_from_row<R: Row>(r: &R) -> Result<Batch, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Batch {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        conversation_id: r.try_get("conversation_id")?,
        count: r.try_get("count")?,
        last_message_id: r.try_get("last_message_id")?,
        last_sender_id: r.try_get("last_sender_id")?,
        last_text: r.try_get("last_text")?,
        title: r.try_get("title")?,
        kind: r.try_get("kind")?,
        attempt: r.try_get("attempt")?,
        mentioned_by: r.try_get("mentioned_by")?,
        mention_message_id: r.try_get("mention_message_id")?,
    })
}

impl Store {
    /// Connects to PostgreSQL and applies push-service's migrations.
    pub async fn connect_postgres(url: &str, pool_size: u32) -> Result<Store, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(PgConnectOptions::from_str(url)?)
            .await?;
        // Other services keep their own migrations in the same database.
        let mut m = sqlx::migrate!("./migrations/postgres");
        m.set_ignore_missing(true);
        m.run(&pool).await?;
        Ok(Store::Postgres(pool))
    }

    /// Opens (creating) a SQLite file and applies the migrations.
    pub async fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        let mut m = sqlx::migrate!("./migrations/sqlite");
        m.set_ignore_missing(true);
        m.run(&pool).await?;
        Ok(Store::Sqlite(pool))
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// Registers (or re-registers) a device, atomically with the per-user limit: the
    /// user's registrations are serialized (PostgreSQL: a transaction-scoped advisory lock
    /// on the user; SQLite: `BEGIN IMMEDIATE`), so concurrent ones cannot pass `max` together.
    /// A (platform, token) is one device and belongs to one user: registering another
    /// user's is refused ([`Registered::OwnedByOther`]), never moved; the same user
    /// registering it again updates its keys (idempotent).
    pub async fn register_device(
        &self,
        user_id: i64,
        platform: DevicePlatform,
        token: &str,
        p256dh: &str,
        auth: &str,
        max: usize,
    ) -> Result<Registered, StoreError> {
        let now = proto::time::now_ms();
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        // The same statements on both backends, inside their transaction.
        macro_rules! register_in {
            ($tx:ident) => {{
                let existing = sqlx::query(
                    "SELECT id, user_id, created_at_ms FROM push_devices
                     WHERE platform = $1 AND token = $2",
                )
                .bind(platform as i64)
                .bind(token)
                .fetch_optional(&mut *$tx)
                .await?;
                match existing {
                    Some(r) if r.try_get::<i64, _>("user_id")? != user_id => {
                        Registered::OwnedByOther
                    }
                    Some(r) => {
                        let id: i64 = r.try_get("id")?;
                        sqlx::query("UPDATE push_devices SET p256dh = $2, auth = $3 WHERE id = $1")
                            .bind(id)
                            .bind(p256dh)
                            .bind(auth)
                            .execute(&mut *$tx)
                            .await?;
                        Registered::Device {
                            id,
                            created_at_ms: r.try_get("created_at_ms")?,
                        }
                    }
                    None => {
                        let n: i64 = sqlx::query_scalar(
                            "SELECT COUNT(*) FROM push_devices WHERE user_id = $1",
                        )
                        .bind(user_id)
                        .fetch_one(&mut *$tx)
                        .await?;
                        if n >= max {
                            Registered::TooMany
                        } else {
                            // A conflict here: another user registered the token meanwhile.
                            let r = sqlx::query(
                                "INSERT INTO push_devices
                                     (user_id, platform, token, p256dh, auth, created_at_ms)
                                 VALUES ($1, $2, $3, $4, $5, $6)
                                 ON CONFLICT (platform, token) DO NOTHING
                                 RETURNING id, created_at_ms",
                            )
                            .bind(user_id)
                            .bind(platform as i64)
                            .bind(token)
                            .bind(p256dh)
                            .bind(auth)
                            .bind(now)
                            .fetch_optional(&mut *$tx)
                            .await?;
                            match r {
                                Some(r) => Registered::Device {
                                    id: r.try_get("id")?,
                                    created_at_ms: r.try_get("created_at_ms")?,
                                },
                                None => Registered::OwnedByOther,
                            }
                        }
                    }
                }
            }};
        }
        Ok(match self {
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                // Two-key form: its key space is apart from single-key advisory locks.
                sqlx::query("SELECT pg_advisory_xact_lock(1886745448, hashint8($1))")
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?;
                let r = register_in!(tx);
                tx.commit().await?;
                r
            }
            Store::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let r = register_in!(tx);
                tx.commit().await?;
                r
            }
        })
    }

    /// Forgets a user's device; false if there was none.
    pub async fn unregister_device(
        &self,
        user_id: i64,
        platform: DevicePlatform,
        token: &str,
    ) -> Result<bool, StoreError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query(
                "DELETE FROM push_devices WHERE user_id = $1 AND platform = $2 AND token = $3",
            )
            .bind(user_id)
            .bind(platform as i64)
            .bind(token)
            .execute(pool)
            .await?
            .rows_affected()
                > 0
        }))
    }

    /// Forgets a device the provider declared dead.
    pub async fn delete_device(&self, id: i64) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query("DELETE FROM push_devices WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// A user's devices (with creation times).
    pub async fn devices(&self, user_id: i64) -> Result<Vec<(Target, i64)>, StoreError> {
        Ok(on_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT id, user_id, platform, token, p256dh, auth, created_at_ms
                 FROM push_devices WHERE user_id = $1 ORDER BY id",
            )
            .bind(user_id)
            .fetch_all(pool)
            .await?;
            let mut v = Vec::with_capacity(rows.len());
            for r in &rows {
                v.push((target_from_row(r)?, r.try_get("created_at_ms")?));
            }
            v
        }))
    }

    /// Mutes (until a time, 0 = until unmuted; at `level`) or unmutes a conversation.
    pub async fn set_mute(
        &self,
        user_id: i64,
        conversation_id: i64,
        muted: bool,
        until_ms: i64,
        level: MuteLevel,
    ) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            if muted {
                sqlx::query(
                    "INSERT INTO push_mutes (user_id, conversation_id, until_ms, level)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (user_id, conversation_id)
                     DO UPDATE SET until_ms = excluded.until_ms, level = excluded.level",
                )
                .bind(user_id)
                .bind(conversation_id)
                .bind(until_ms)
                .bind(level.as_str())
                .execute(pool)
                .await?;
            } else {
                sqlx::query("DELETE FROM push_mutes WHERE user_id = $1 AND conversation_id = $2")
                    .bind(user_id)
                    .bind(conversation_id)
                    .execute(pool)
                    .await?;
            }
        });
        Ok(())
    }

    /// Sets whether the user's notifications hide message text.
    pub async fn set_hide_text(&self, user_id: i64, hide: bool) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO push_prefs (user_id, hide_text) VALUES ($1, $2)
                 ON CONFLICT (user_id) DO UPDATE SET hide_text = excluded.hide_text",
            )
            .bind(user_id)
            .bind(i64::from(hide))
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The user's choice, if they made one.
    pub async fn hide_text(&self, user_id: i64) -> Result<Option<bool>, StoreError> {
        Ok(on_pool!(self, |pool| {
            let v: Option<i64> =
                sqlx::query_scalar("SELECT hide_text FROM push_prefs WHERE user_id = $1")
                    .bind(user_id)
                    .fetch_optional(pool)
                    .await?;
            v.map(|h| h != 0)
        }))
    }

    /// Counts one message for one offline recipient, in one transaction: remembers the
    /// (message, user) pair so a redelivered job is ignored, honours mutes (a message
    /// mentioning the user passes a `mentions_only` one) and changes that came before the
    /// message (deleted: nothing; edited: its text now), and adds the message to the user's
    /// open batch for the conversation or opens one due after `collapse`.
    pub async fn intake(
        &self,
        user_id: i64,
        m: &Incoming<'_>,
        collapse: Duration,
    ) -> Result<Intake, StoreError> {
        let now = proto::time::now_ms();
        let due = now + i64::try_from(collapse.as_millis()).unwrap_or(0);
        Ok(on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let fresh = sqlx::query(
                "INSERT INTO push_seen (message_id, user_id, seen_at_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (message_id, user_id) DO NOTHING",
            )
            .bind(m.message_id)
            .bind(user_id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            if !fresh {
                return Ok(Intake::Duplicate);
            }
            // Its newest change, if one came first (nothing follows a deletion).
            let changed: Option<(i64, String)> = sqlx::query_as(
                "SELECT kind, text FROM push_changes WHERE message_id = $1
                 ORDER BY seq DESC LIMIT 1",
            )
            .bind(m.message_id)
            .fetch_optional(&mut *tx)
            .await?;
            let text = match &changed {
                Some((EDITED, t)) => t.as_str(),
                _ => m.text,
            };
            let mute: Option<(i64, String)> = sqlx::query_as(
                "SELECT until_ms, level FROM push_mutes WHERE user_id = $1 AND conversation_id = $2",
            )
            .bind(user_id)
            .bind(m.conversation_id)
            .fetch_optional(&mut *tx)
            .await?;
            let mentioned = m.mentions.contains(&user_id);
            let muted = mute.is_some_and(|(until, level)| {
                (until == 0 || until > now)
                    && !(mentioned && MuteLevel::from_stored(&level) == MuteLevel::MentionsOnly)
            });
            let outcome = if matches!(changed, Some((DELETED, _))) {
                Intake::Deleted
            } else if muted {
                Intake::Muted
            } else {
                let has_device: Option<i64> =
                    sqlx::query_scalar("SELECT id FROM push_devices WHERE user_id = $1 LIMIT 1")
                        .bind(user_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if has_device.is_none() {
                    Intake::NoDevices
                } else {
                    // A mention is remembered until the batch is sent (later messages that
                    // do not mention the user keep it).
                    let (mentioned_by, mention_id) = if mentioned {
                        (Some(m.sender_id), Some(m.message_id))
                    } else {
                        (None, None)
                    };
                    let grown = sqlx::query(
                        "UPDATE push_batches
                         SET count = count + 1, last_message_id = $3, last_sender_id = $4,
                             last_text = $5, title = $6,
                             mentioned_by = COALESCE($7, mentioned_by),
                             mention_message_id = COALESCE($8, mention_message_id)
                         WHERE user_id = $1 AND conversation_id = $2 AND is_open = 1",
                    )
                    .bind(user_id)
                    .bind(m.conversation_id)
                    .bind(m.message_id)
                    .bind(m.sender_id)
                    .bind(text)
                    .bind(m.title)
                    .bind(mentioned_by)
                    .bind(mention_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if grown == 0 {
                        sqlx::query(
                            "INSERT INTO push_batches (user_id, conversation_id, is_open, count,
                                 last_message_id, last_sender_id, last_text, title, kind, due_at_ms,
                                 mentioned_by, mention_message_id)
                             VALUES ($1, $2, 1, 1, $3, $4, $5, $6, $7, $8, $9, $10)",
                        )
                        .bind(user_id)
                        .bind(m.conversation_id)
                        .bind(m.message_id)
                        .bind(m.sender_id)
                        .bind(text)
                        .bind(m.title)
                        .bind(m.kind)
                        .bind(due)
                        .bind(mentioned_by)
                        .bind(mention_id.unwrap_or(0))
                        .execute(&mut *tx)
                        .await?;
                    }
                    Intake::Added
                }
            };
            tx.commit().await?;
            outcome
        }))
    }

    /// Applies an edit or deletion to the notifications not sent yet, in one transaction
    /// (remembering the change so a redelivery is ignored, and so the message's own job,
    /// should it come later, honours it). Only open batches (collecting messages, never
    /// claimed) whose newest message is the changed one are touched; a notification being
    /// sent or sent stays as it is.
    ///
    /// Deleted: a batch of that message alone is withdrawn (never notified); a larger one
    /// counts one message less and shows no text. Edited: the batch shows the new text
    /// (unless a later change of the message came first). A deleted message that is not a
    /// batch's newest stays counted in it.
    pub async fn message_changed(
        &self,
        c: &IncomingChange<'_>,
    ) -> Result<ChangeIntake, StoreError> {
        let now = proto::time::now_ms();
        Ok(on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let text = match c.change {
                Change::Edited(t) => t,
                Change::Deleted => "",
            };
            let fresh = sqlx::query(
                "INSERT INTO push_changes (change_id, message_id, seq, kind, text, seen_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (change_id) DO NOTHING",
            )
            .bind(c.id)
            .bind(c.message_id)
            .bind(c.seq)
            .bind(c.change.kind())
            .bind(text)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            if !fresh {
                return Ok(ChangeIntake::Duplicate);
            }
            let (updated, withdrawn) = match c.change {
                Change::Deleted => {
                    let withdrawn = sqlx::query(
                        "DELETE FROM push_batches
                         WHERE conversation_id = $1 AND last_message_id = $2 AND is_open = 1
                           AND count = 1",
                    )
                    .bind(c.conversation_id)
                    .bind(c.message_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    let updated = sqlx::query(
                        "UPDATE push_batches SET count = count - 1, last_text = ''
                         WHERE conversation_id = $1 AND last_message_id = $2 AND is_open = 1
                           AND count > 1",
                    )
                    .bind(c.conversation_id)
                    .bind(c.message_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    (updated, withdrawn)
                }
                Change::Edited(t) => {
                    // A later change of the message applied first (jobs may be reordered)
                    // wins: a newer edit's text, or a deletion's blank.
                    let updated = sqlx::query(
                        "UPDATE push_batches SET last_text = $3
                         WHERE conversation_id = $1 AND last_message_id = $2 AND is_open = 1
                           AND NOT EXISTS (SELECT 1 FROM push_changes
                                           WHERE message_id = $2 AND seq > $4)",
                    )
                    .bind(c.conversation_id)
                    .bind(c.message_id)
                    .bind(t)
                    .bind(c.seq)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    (updated, 0)
                }
            };
            tx.commit().await?;
            ChangeIntake::Applied { updated, withdrawn }
        }))
    }

    /// Claims up to `limit` batches that are due (collapse window over, or retry time
    /// reached) and not leased by a live instance; closes them to new messages.
    pub async fn claim_due(&self, lease: Duration, limit: i64) -> Result<Vec<Batch>, StoreError> {
        let now = proto::time::now_ms();
        let until = now + i64::try_from(lease.as_millis()).unwrap_or(30_000);
        Ok(on_pool!(self, |pool| {
            let rows = sqlx::query(
                "UPDATE push_batches SET is_open = 0, lease_until_ms = $1
                 WHERE id IN (SELECT id FROM push_batches
                              WHERE due_at_ms <= $2 AND lease_until_ms < $2
                              ORDER BY due_at_ms LIMIT $3)
                   AND lease_until_ms < $2
                 RETURNING id, user_id, conversation_id, count, last_message_id, last_sender_id,
                           last_text, title, kind, attempt, mentioned_by, mention_message_id",
            )
            .bind(until)
            .bind(now)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            let mut v = Vec::with_capacity(rows.len());
            for r in &rows {
                v.push(batch_from_row(r)?);
            }
            v
        }))
    }

    /// Devices a batch has already reached.
    pub async fn sent_devices(&self, batch_id: i64) -> Result<Vec<i64>, StoreError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_scalar("SELECT device_id FROM push_sent WHERE batch_id = $1")
                .bind(batch_id)
                .fetch_all(pool)
                .await?
        }))
    }

    /// Records that a device has it (or will never get it: pruned, dead-lettered).
    pub async fn mark_done(&self, batch_id: i64, device_id: i64) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO push_sent (batch_id, device_id) VALUES ($1, $2)
                 ON CONFLICT (batch_id, device_id) DO NOTHING",
            )
            .bind(batch_id)
            .bind(device_id)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Gives up on one device for one batch.
    pub async fn dead_letter(
        &self,
        b: &Batch,
        device_id: i64,
        reason: &str,
    ) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO push_dead_letters (batch_id, device_id, user_id, conversation_id, reason, at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(b.id)
            .bind(device_id)
            .bind(b.user_id)
            .bind(b.conversation_id)
            .bind(reason)
            .bind(proto::time::now_ms())
            .execute(pool)
            .await?;
        });
        self.mark_done(b.id, device_id).await
    }

    /// Dead letters so far (for operators and tests).
    pub async fn dead_letters(&self) -> Result<Vec<(i64, String)>, StoreError> {
        Ok(on_pool!(self, |pool| {
            let rows = sqlx::query("SELECT device_id, reason FROM push_dead_letters ORDER BY id")
                .fetch_all(pool)
                .await?;
            let mut v = Vec::new();
            for r in &rows {
                v.push((r.try_get("device_id")?, r.try_get("reason")?));
            }
            v
        }))
    }

    /// The batch reached everyone it could: forget it.
    pub async fn finish(&self, batch_id: i64) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM push_sent WHERE batch_id = $1")
                .bind(batch_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM push_batches WHERE id = $1")
                .bind(batch_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Some devices must be tried again at `due_at_ms`.
    pub async fn reschedule(&self, batch_id: i64, due_at_ms: i64) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE push_batches SET due_at_ms = $2, lease_until_ms = 0, attempt = attempt + 1
                 WHERE id = $1",
            )
            .bind(batch_id)
            .bind(due_at_ms)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Batches not yet finished (tests and metrics).
    pub async fn pending_batches(&self) -> Result<i64, StoreError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_scalar("SELECT COUNT(*) FROM push_batches")
                .fetch_one(pool)
                .await?
        }))
    }

    /// Forgets job ids and changes older than `cutoff_ms` (redeliveries come within
    /// minutes, and jobs live at most a day in the queue).
    pub async fn prune_seen(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        Ok(on_pool!(self, |pool| {
            let seen = sqlx::query("DELETE FROM push_seen WHERE seen_at_ms < $1")
                .bind(cutoff_ms)
                .execute(pool)
                .await?
                .rows_affected();
            let changes = sqlx::query("DELETE FROM push_changes WHERE seen_at_ms < $1")
                .bind(cutoff_ms)
                .execute(pool)
                .await?
                .rows_affected();
            seen + changes
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The single-node store (SQLite): 40 registrations of one user at once give exactly
    /// `max` devices; another user's token is refused, not moved; re-registering is
    /// idempotent. (PostgreSQL: `device_limit_holds_under_concurrent_registrations` and
    /// `another_users_device_is_not_taken_over` in indaba's integration tests.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_registration_is_atomic_and_owned() {
        let path = std::env::temp_dir().join(format!(
            "push-store-test-{}-{}.db",
            std::process::id(),
            proto::time::now_ms()
        ));
        let store = Store::open_sqlite(&path).await.unwrap();
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .register_device(7, DevicePlatform::Fcm, &format!("t{i}"), "", "", 20)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut added = 0;
        for t in tasks {
            match t.await.unwrap() {
                Registered::Device { .. } => added += 1,
                Registered::TooMany => {}
                Registered::OwnedByOther => panic!("no other owner here"),
            }
        }
        assert_eq!(added, 20);
        assert_eq!(store.devices(7).await.unwrap().len(), 20);
        let first = store.devices(7).await.unwrap()[0].0.clone();
        assert_eq!(
            store
                .register_device(8, DevicePlatform::Fcm, &first.token, "", "", 20)
                .await
                .unwrap(),
            Registered::OwnedByOther
        );
        assert!(matches!(
            store
                .register_device(7, DevicePlatform::Fcm, &first.token, "", "", 20)
                .await
                .unwrap(),
            Registered::Device { id, .. } if id == first.id
        ));
        assert!(store.devices(8).await.unwrap().is_empty());
        drop(store);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
