//! Uploads and the attachments they become: the presigned slot a client fills, what
//! checking it found, and which message holds it. The message row keeps its readers' view
//! of its attachments as JSON (`attachments_json`), so pages read no second table.

use proto::pb;
use proto::ErrorCode;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::rows::PARTICIPANTS;
use super::{rejected, Store, StoreError};

/// A slot to create.
#[derive(Debug, Clone)]
pub(crate) struct NewUpload {
    pub(crate) user_id: i64,
    pub(crate) conversation_id: i64,
    pub(crate) filename: String,
    pub(crate) declared_type: String,
    pub(crate) declared_size: i64,
    pub(crate) upload_key: String,
    pub(crate) url_expires_at_ms: i64,
    pub(crate) waveform: Vec<u8>,
}

/// An upload as stored.
#[derive(Debug, Clone)]
pub(crate) struct Upload {
    pub(crate) id: i64,
    pub(crate) user_id: i64,
    pub(crate) conversation_id: i64,
    pub(crate) filename: String,
    pub(crate) declared_type: String,
    pub(crate) declared_size: i64,
    pub(crate) upload_key: String,
    pub(crate) created_at_ms: i64,
    pub(crate) url_expires_at_ms: i64,
    pub(crate) waveform: Vec<u8>,
    /// Set once checked.
    pub(crate) checked: Option<Checked>,
    pub(crate) message_id: Option<i64>,
}

/// What checking an upload found, and where its served bytes are.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Checked {
    pub(crate) final_key: String,
    pub(crate) thumbnail_key: Option<String>,
    pub(crate) content_type: String,
    pub(crate) stored_size: i64,
    pub(crate) width: i32,
    pub(crate) height: i32,
    pub(crate) duration_ms: i64,
}

impl Upload {
    /// The readers' view of this upload once attached.
    pub(crate) fn view(&self) -> Option<pb::Attachment> {
        self.checked.as_ref().map(|c| self.view_as(c))
    }

    /// The readers' view of this upload as `c` found it.
    pub(crate) fn view_as(&self, c: &Checked) -> pb::Attachment {
        pb::Attachment {
            id: self.id,
            filename: self.filename.clone(),
            content_type: c.content_type.clone(),
            size: c.stored_size,
            width: c.width,
            height: c.height,
            duration_ms: c.duration_ms,
            has_thumbnail: c.thumbnail_key.is_some(),
            waveform: self.waveform.clone(),
        }
    }
}

/// The objects of an upload (to remove with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Objects {
    pub(crate) id: i64,
    pub(crate) keys: Vec<String>,
}

/// What a reader may fetch: the object, its type and name, and whose conversation it is in.
#[derive(Debug, Clone)]
pub(crate) struct Served {
    pub(crate) final_key: String,
    pub(crate) thumbnail_key: Option<String>,
    pub(crate) content_type: String,
    pub(crate) filename: String,
    pub(crate) participants: Vec<i64>,
}

/// One upload by id, every column [`upload_from_row`] reads.
const UPLOAD_BY_ID: &str = "SELECT id, user_id, conversation_id, filename, declared_type,
    declared_size, upload_key, created_at_ms, url_expires_at_ms, waveform, final_key,
    thumbnail_key, content_type, stored_size, width, height, duration_ms, message_id
    FROM uploads WHERE id = $1";

fn upload_from_row<R: Row>(row: &R) -> Result<Upload, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<Vec<u8>>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let final_key: Option<String> = row.try_get("final_key")?;
    let checked = match final_key {
        None => None,
        Some(final_key) => Some(Checked {
            final_key,
            thumbnail_key: row.try_get("thumbnail_key")?,
            content_type: row
                .try_get::<Option<String>, _>("content_type")?
                .unwrap_or_default(),
            stored_size: row.try_get::<Option<i64>, _>("stored_size")?.unwrap_or(0),
            width: i32::try_from(row.try_get::<i64, _>("width")?).unwrap_or(0),
            height: i32::try_from(row.try_get::<i64, _>("height")?).unwrap_or(0),
            duration_ms: row.try_get("duration_ms")?,
        }),
    };
    Ok(Upload {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        conversation_id: row.try_get("conversation_id")?,
        filename: row.try_get("filename")?,
        declared_type: row.try_get("declared_type")?,
        declared_size: row.try_get("declared_size")?,
        upload_key: row.try_get("upload_key")?,
        created_at_ms: row.try_get("created_at_ms")?,
        url_expires_at_ms: row.try_get("url_expires_at_ms")?,
        waveform: row
            .try_get::<Option<Vec<u8>>, _>("waveform")?
            .unwrap_or_default(),
        checked,
        message_id: row.try_get("message_id")?,
    })
}

impl Store {
    /// Creates an upload slot for a participant, within the daily quota (`quota` bytes per
    /// user over the last 24 hours, counted in the same transaction as the insert).
    pub(crate) async fn create_upload(&self, u: &NewUpload, quota: i64) -> Result<i64, StoreError> {
        let now = proto::time::now_ms();
        on_pool!(self, |pool, begin| {
            let mut tx = pool.begin_with(begin).await?;
            let members: Vec<i64> = sqlx::query_scalar(PARTICIPANTS)
                .bind(u.conversation_id)
                .fetch_all(&mut *tx)
                .await?;
            if members.binary_search(&u.user_id).is_err() {
                // The same answer whether or not the conversation exists.
                return Err(rejected(
                    ErrorCode::ConversationNotFound,
                    format!("conversation {} not found", u.conversation_id),
                ));
            }
            let used: i64 = sqlx::query_scalar(
                "SELECT CAST(COALESCE(SUM(declared_size), 0) AS BIGINT) FROM uploads
                 WHERE user_id = $1 AND created_at_ms > $2",
            )
            .bind(u.user_id)
            .bind(now - 86_400_000)
            .fetch_one(&mut *tx)
            .await?;
            if used.saturating_add(u.declared_size) > quota {
                return Err(rejected(
                    ErrorCode::QuotaExceeded,
                    format!("the daily upload allowance of {quota} bytes is spent ({used} used)"),
                ));
            }
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO uploads (user_id, conversation_id, filename, declared_type,
                     declared_size, upload_key, created_at_ms, url_expires_at_ms, waveform)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
            )
            .bind(u.user_id)
            .bind(u.conversation_id)
            .bind(&u.filename)
            .bind(&u.declared_type)
            .bind(u.declared_size)
            .bind(&u.upload_key)
            .bind(now)
            .bind(u.url_expires_at_ms)
            .bind((!u.waveform.is_empty()).then_some(&u.waveform))
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(id)
        })
    }

    /// Uploads by id (those that exist, in no particular order).
    pub(crate) async fn uploads(&self, ids: &[i64]) -> Result<Vec<Upload>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let row = on_pool!(self, |pool, _begin| {
                match sqlx::query(UPLOAD_BY_ID)
                    .bind(id)
                    .fetch_optional(pool)
                    .await?
                {
                    Some(r) => Some(upload_from_row(&r)?),
                    None => None,
                }
            });
            out.extend(row);
        }
        Ok(out)
    }

    /// Records what checking an upload found (only while it is unattached).
    pub(crate) async fn set_checked(&self, id: i64, c: &Checked) -> Result<(), StoreError> {
        on_pool!(self, |pool, _begin| {
            sqlx::query(
                "UPDATE uploads SET final_key = $2, thumbnail_key = $3, content_type = $4,
                     stored_size = $5, width = $6, height = $7, duration_ms = $8
                 WHERE id = $1 AND message_id IS NULL",
            )
            .bind(id)
            .bind(&c.final_key)
            .bind(c.thumbnail_key.as_deref())
            .bind(&c.content_type)
            .bind(c.stored_size)
            .bind(i64::from(c.width))
            .bind(i64::from(c.height))
            .bind(c.duration_ms)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// What `GET /attachments/{id}` serves, if the attachment is on a live message.
    pub(crate) async fn served(&self, id: i64) -> Result<Option<Served>, StoreError> {
        on_pool!(self, |pool, _begin| {
            let row = sqlx::query(
                "SELECT u.conversation_id, u.final_key, u.thumbnail_key, u.content_type, u.filename
                 FROM uploads u JOIN messages m ON m.id = u.message_id
                 WHERE u.id = $1 AND m.deleted_at_ms = 0 AND u.final_key IS NOT NULL",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let conversation_id: i64 = row.try_get("conversation_id")?;
            let participants: Vec<i64> = sqlx::query_scalar(PARTICIPANTS)
                .bind(conversation_id)
                .fetch_all(pool)
                .await?;
            Ok(Some(Served {
                final_key: row
                    .try_get::<Option<String>, _>("final_key")?
                    .unwrap_or_default(),
                thumbnail_key: row.try_get("thumbnail_key")?,
                content_type: row
                    .try_get::<Option<String>, _>("content_type")?
                    .unwrap_or_default(),
                filename: row.try_get("filename")?,
                participants,
            }))
        })
    }

    /// Uploads whose objects should go: never attached within `unattached_before_ms`, or
    /// attached to a message that was deleted or removed by retention.
    pub(crate) async fn stale_uploads(
        &self,
        unattached_before_ms: i64,
        limit: i64,
    ) -> Result<Vec<Objects>, StoreError> {
        let rows = on_pool!(self, |pool, _begin| {
            sqlx::query(
                "SELECT u.id, u.upload_key, u.final_key, u.thumbnail_key FROM uploads u
                 WHERE u.message_id IS NULL AND u.created_at_ms < $1
                 UNION ALL
                 SELECT u.id, u.upload_key, u.final_key, u.thumbnail_key FROM uploads u
                 LEFT JOIN messages m ON m.id = u.message_id
                 WHERE u.message_id IS NOT NULL AND (m.id IS NULL OR m.deleted_at_ms > 0)
                 LIMIT $2",
            )
            .bind(unattached_before_ms)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| {
                let mut keys = vec![r.try_get::<String, _>("upload_key")?];
                for k in ["final_key", "thumbnail_key"] {
                    keys.extend(r.try_get::<Option<String>, _>(k)?);
                }
                Ok(Objects {
                    id: r.try_get("id")?,
                    keys,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    /// Forgets an upload whose objects are gone.
    pub(crate) async fn delete_upload(&self, id: i64) -> Result<(), StoreError> {
        on_pool!(self, |pool, _begin| {
            sqlx::query("DELETE FROM uploads WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }
}

/// The stored form of a message's attachments (`messages.attachments`): `None` for none.
pub(super) fn attachments_json(list: &[pb::Attachment]) -> Option<String> {
    if list.is_empty() {
        return None;
    }
    let stored: Vec<Stored> = list.iter().map(Stored::from).collect();
    serde_json::to_string(&stored).ok()
}

/// A message's attachments from their stored form (none when absent or unreadable).
pub(super) fn parse_attachments(text: Option<&str>) -> Vec<pb::Attachment> {
    let Some(text) = text else {
        return Vec::new();
    };
    serde_json::from_str::<Vec<Stored>>(text)
        .map(|v| v.into_iter().map(pb::Attachment::from).collect())
        .unwrap_or_default()
}

#[derive(Serialize, Deserialize)]
struct Stored {
    id: i64,
    filename: String,
    content_type: String,
    size: i64,
    #[serde(default, skip_serializing_if = "is_zero32")]
    width: i32,
    #[serde(default, skip_serializing_if = "is_zero32")]
    height: i32,
    #[serde(default, skip_serializing_if = "is_zero64")]
    duration_ms: i64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    thumbnail: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    waveform: Vec<u8>,
}

fn is_zero32(v: &i32) -> bool {
    *v == 0
}

fn is_zero64(v: &i64) -> bool {
    *v == 0
}

impl From<&pb::Attachment> for Stored {
    fn from(a: &pb::Attachment) -> Stored {
        Stored {
            id: a.id,
            filename: a.filename.clone(),
            content_type: a.content_type.clone(),
            size: a.size,
            width: a.width,
            height: a.height,
            duration_ms: a.duration_ms,
            thumbnail: a.has_thumbnail,
            waveform: a.waveform.clone(),
        }
    }
}

impl From<Stored> for pb::Attachment {
    fn from(s: Stored) -> pb::Attachment {
        pb::Attachment {
            id: s.id,
            filename: s.filename,
            content_type: s.content_type,
            size: s.size,
            width: s.width,
            height: s.height,
            duration_ms: s.duration_ms,
            has_thumbnail: s.thumbnail,
            waveform: s.waveform,
        }
    }
}

/// The refusal of an attachment that cannot be used.
pub(crate) fn invalid_attachment(id: i64, why: &str) -> StoreError {
    rejected(
        ErrorCode::InvalidAttachment,
        format!("attachment {id}: {why}"),
    )
}
