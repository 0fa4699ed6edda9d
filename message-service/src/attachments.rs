//! Attachments: presigned upload slots, the checks that turn an upload into an
//! attachment, short-lived download addresses, and the removal of what is no longer
//! needed. Every door reaches these through `ops` (NATS and gRPC alike), so the rules —
//! size, type, quota, membership, one use — hold for every caller.
//!
//! What is served is what was checked: it lives under a key no client can write (images
//! and voice notes are read once and the checked bytes written there; other files are
//! copied there inside the storage before their first bytes are read), so nobody can swap
//! the bytes after the check with a still-valid upload URL.

use std::time::Duration;

use bytes::Bytes;
use proto::{pb, ErrorCode};
use storage::{Storage, StorageError};

use crate::media::{self, ImageError};
use crate::settings::Uploads;
use crate::state::Inner;
use crate::store::{invalid_attachment, refusal, Checked, NewUpload, StoreError, Upload};

/// How long a download address works.
const DOWNLOAD_URL_TTL: Duration = Duration::from_secs(5 * 60);
/// An upload never attached within this long is removed.
pub(crate) const UNATTACHED_TTL_MS: i64 = 24 * 3600 * 1000;
/// At most this many attachments per message.
pub(crate) const MAX_ATTACHMENTS: usize = 10;
/// At most this many waveform samples.
pub(crate) const MAX_WAVEFORM: usize = 100;

/// The backend, or the refusal of a deployment that has none.
fn backend(inner: &Inner) -> Result<&Storage, StoreError> {
    inner.storage.as_ref().ok_or_else(|| {
        refusal(
            ErrorCode::Unsupported,
            "attachments are not configured on this server",
        )
    })
}

/// A storage failure as clients see it: `unavailable` (retry) and a log line; a missing
/// object is the caller's to explain.
fn storage_error(e: StorageError) -> StoreError {
    tracing::warn!(error = %e, "attachment storage failed");
    crate::metrics::storage_error();
    refusal(
        ErrorCode::Unavailable,
        "attachment storage is unavailable; retry",
    )
}

/// A new random object key under `prefix` (`u/`: uploads, which clients write; `a/`:
/// attachments, which only message-service writes).
fn new_key(prefix: &str) -> String {
    let n: u128 = rand::random();
    format!("{prefix}/{n:032x}")
}

/// A file name fit to store and show: the last path component, without control and
/// bidirectional-override characters, at most 255 bytes (the extension kept).
pub(crate) fn sanitise_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}'))
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim();
    if cleaned.is_empty() {
        return "file".into();
    }
    if cleaned.len() <= 255 {
        return cleaned.to_owned();
    }
    let (stem, ext) = match cleaned.rsplit_once('.') {
        Some((s, e)) if e.len() <= 16 => (s, format!(".{e}")),
        _ => (cleaned, String::new()),
    };
    let mut cut = 255 - ext.len();
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{ext}", &stem[..cut])
}

/// Whether `declared` (normalised) is on the allowed list (`image/*`-style entries match
/// a whole top-level type).
fn allowed(limits: &Uploads, declared: &str) -> bool {
    limits
        .allowed_types
        .iter()
        .any(|a| match a.strip_suffix("/*") {
            Some(top) => declared.split_once('/').map(|(t, _)| t) == Some(top),
            None => a == declared,
        })
}

/// A presigned upload slot for a participant.
pub(crate) async fn create_upload(
    inner: &Inner,
    req: pb::CreateUploadRequest,
) -> Result<pb::CreateUploadResponse, StoreError> {
    let storage = backend(inner)?;
    let limits = &inner.settings.uploads;
    let field = |f: &str, code: ErrorCode, m: String| StoreError::Rejected {
        code,
        message: format!("{f}: {m}"),
    };
    if req.user_id <= 0 {
        return Err(field(
            "user_id",
            ErrorCode::InvalidField,
            "must be a positive id".into(),
        ));
    }
    if req.conversation_id <= 0 {
        return Err(field(
            "conversation_id",
            ErrorCode::InvalidField,
            "must be a positive id".into(),
        ));
    }
    if req.size <= 0 {
        return Err(field(
            "size",
            ErrorCode::InvalidField,
            "must be at least 1 byte".into(),
        ));
    }
    if u64::try_from(req.size).unwrap_or(u64::MAX) > limits.max_bytes {
        return Err(field(
            "size",
            ErrorCode::PayloadTooLarge,
            format!(
                "{} bytes is more than the {} allowed",
                req.size, limits.max_bytes
            ),
        ));
    }
    let declared = media::normalise(&req.content_type);
    if declared.is_empty() || !declared.contains('/') || declared.len() > 100 {
        return Err(field(
            "content_type",
            ErrorCode::InvalidField,
            "must be a media type such as image/png".into(),
        ));
    }
    if !allowed(limits, &declared) {
        return Err(field(
            "content_type",
            ErrorCode::UnsupportedMediaType,
            format!("{declared} is not an allowed type"),
        ));
    }
    if req.waveform.len() > MAX_WAVEFORM {
        return Err(field(
            "waveform",
            ErrorCode::InvalidField,
            format!("at most {MAX_WAVEFORM} samples"),
        ));
    }
    let filename = sanitise_filename(&req.filename);
    let upload_key = new_key("u");
    let presigned = storage.presign_put(
        &upload_key,
        &declared,
        u64::try_from(req.size).unwrap_or(0),
        limits.url_ttl,
    );
    let id = inner
        .store
        .create_upload(
            &NewUpload {
                user_id: req.user_id,
                conversation_id: req.conversation_id,
                filename,
                declared_type: declared,
                declared_size: req.size,
                upload_key,
                url_expires_at_ms: presigned.expires_at_ms,
                waveform: req.waveform,
            },
            i64::try_from(limits.daily_quota_bytes).unwrap_or(i64::MAX),
        )
        .await?;
    crate::metrics::upload_created();
    Ok(pb::CreateUploadResponse {
        upload_id: id,
        url: presigned.url,
        method: presigned.method.into(),
        headers: presigned.headers.into_iter().collect(),
        expires_at_ms: presigned.expires_at_ms,
        error: None,
    })
}

/// Checks the uploads a send attaches (each the sender's, for this conversation, unused,
/// complete, of its declared size and type) and makes each safe to serve. What it
/// returns is written on the message, whose transaction claims the uploads; an upload
/// already checked (a retried send) is not checked again.
pub(crate) async fn prepare(
    inner: &Inner,
    sender: i64,
    conversation_id: Option<i64>,
    ids: &[i64],
) -> Result<Vec<pb::Attachment>, StoreError> {
    let storage = backend(inner)?;
    let found = inner.store.uploads(ids).await?;
    let now = proto::time::now_ms();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let u = found
            .iter()
            .find(|u| u.id == *id && u.user_id == sender)
            .ok_or_else(|| invalid_attachment(*id, "no such upload of yours"))?;
        if conversation_id.is_some_and(|c| c != u.conversation_id) {
            return Err(invalid_attachment(*id, "uploaded for another conversation"));
        }
        if u.message_id.is_some() {
            return Err(invalid_attachment(*id, "already attached to a message"));
        }
        if now - u.created_at_ms > UNATTACHED_TTL_MS {
            return Err(refusal(
                ErrorCode::UploadExpired,
                format!("attachment {id}: the upload has expired"),
            ));
        }
        let view = match u.view() {
            Some(v) => v,
            None => check(inner, storage, u, now).await?,
        };
        out.push(view);
    }
    Ok(out)
}

/// Turns one upload into an attachment (see [`prepare`]).
async fn check(
    inner: &Inner,
    storage: &Storage,
    u: &Upload,
    now: i64,
) -> Result<pb::Attachment, StoreError> {
    let id = u.id;
    let limits = &inner.settings.uploads;
    let size = storage.size(&u.upload_key).await.map_err(storage_error)?;
    let Some(size) = size else {
        return Err(match now > u.url_expires_at_ms {
            true => refusal(
                ErrorCode::UploadExpired,
                format!("attachment {id}: the upload URL expired before the bytes arrived"),
            ),
            false => invalid_attachment(id, "nothing was uploaded yet"),
        });
    };
    if i64::try_from(size).ok() != Some(u.declared_size) {
        return Err(refusal(
            ErrorCode::SizeMismatch,
            format!(
                "attachment {id}: {size} bytes were uploaded, {} declared",
                u.declared_size
            ),
        ));
    }
    let final_key = new_key("a");
    let checked = match examine(inner, storage, u, &final_key, limits).await {
        Ok(c) => c,
        Err(e) => {
            // Nothing of a refused upload stays but the client's own object (removed
            // with the slot after a day).
            let _ = storage.delete(&final_key).await;
            return Err(e);
        }
    };
    inner.store.set_checked(id, &checked).await?;
    if let Err(e) = storage.delete(&u.upload_key).await {
        tracing::debug!(error = %e, upload = id, "upload object left for the sweep");
    }
    Ok(u.view_as(&checked))
}

/// Checks an upload and stores what is served under `final_key`, a key only this service
/// writes, so what was checked is what is served even if the client sends other bytes with
/// its still-valid upload URL. Images and voice notes are read once and what was read is
/// checked, processed and written; anything else is copied inside the storage and its first
/// bytes read from the copy.
async fn examine(
    inner: &Inner,
    storage: &Storage,
    u: &Upload,
    final_key: &str,
    limits: &Uploads,
) -> Result<Checked, StoreError> {
    let id = u.id;
    let declared = media::normalise(&u.declared_type);
    let whole = media::is_processed_image(&declared) || declared.starts_with("audio/");
    let data = match whole {
        true => {
            let data = storage
                .read(&u.upload_key, limits.max_bytes)
                .await
                .map_err(|e| missing_or(e, id))?;
            if i64::try_from(data.len()).ok() != Some(u.declared_size) {
                return Err(refusal(
                    ErrorCode::SizeMismatch,
                    format!("attachment {id}: the object changed size while it was checked"),
                ));
            }
            Some(data)
        }
        false => {
            storage
                .copy(&u.upload_key, final_key)
                .await
                .map_err(|e| missing_or(e, id))?;
            None
        }
    };
    let head = match &data {
        Some(d) => d.slice(..d.len().min(media::SNIFF_BYTES as usize)),
        None => storage
            .read_prefix(final_key, media::SNIFF_BYTES)
            .await
            .map_err(storage_error)?,
    };
    let content_type = media::stored_type(&u.declared_type, media::sniff(&head)).map_err(|()| {
        refusal(
            ErrorCode::TypeMismatch,
            format!("attachment {id}: the bytes are not {}", u.declared_type),
        )
    })?;
    let mut checked = Checked {
        final_key: final_key.to_owned(),
        thumbnail_key: None,
        content_type,
        stored_size: u.declared_size,
        width: 0,
        height: 0,
        duration_ms: 0,
    };
    let Some(data) = data else {
        return Ok(checked);
    };
    if checked.content_type.starts_with("audio/") {
        // A malformed file that trips the demuxer costs the duration, not the message.
        let audio = data.clone();
        checked.duration_ms = inner
            .media
            .run(move || media::audio_duration_ms(audio))
            .await
            .flatten()
            .unwrap_or(0);
        storage
            .write(final_key, data, &checked.content_type)
            .await
            .map_err(storage_error)?;
        return Ok(checked);
    }
    let kind = checked.content_type.clone();
    let max_pixels = limits.max_image_pixels;
    // Within the instance's media budget: decoding is CPU work chat must not wait behind.
    let (cleaned, took) = inner
        .media
        .run(move || {
            let started = std::time::Instant::now();
            (
                media::clean_image(data, &kind, max_pixels),
                started.elapsed(),
            )
        })
        .await
        .ok_or_else(|| refusal(ErrorCode::Internal, "image processing failed"))?;
    crate::metrics::image_processed(took);
    let clean = cleaned.map_err(|e| match e {
        ImageError::TooManyPixels { .. } => {
            refusal(ErrorCode::ImageTooLarge, format!("attachment {id}: {e}"))
        }
        ImageError::Unreadable(_) => {
            refusal(ErrorCode::TypeMismatch, format!("attachment {id}: {e}"))
        }
    })?;
    let thumb_key = format!("{final_key}-thumb");
    checked.stored_size = i64::try_from(clean.bytes.len()).unwrap_or(i64::MAX);
    storage
        .write(final_key, clean.bytes, &checked.content_type)
        .await
        .map_err(storage_error)?;
    storage
        .write(&thumb_key, Bytes::from(clean.thumbnail), "image/jpeg")
        .await
        .map_err(storage_error)?;
    checked.thumbnail_key = Some(thumb_key);
    checked.width = i32::try_from(clean.width).unwrap_or(i32::MAX);
    checked.height = i32::try_from(clean.height).unwrap_or(i32::MAX);
    Ok(checked)
}

/// An upload object that went missing between its size and its bytes is not there; any
/// other failure is the storage's.
fn missing_or(e: StorageError, id: i64) -> StoreError {
    match e {
        StorageError::NotFound => invalid_attachment(id, "nothing was uploaded yet"),
        StorageError::TooLarge(_) => refusal(
            ErrorCode::SizeMismatch,
            format!("attachment {id}: the object is larger than declared"),
        ),
        e => storage_error(e),
    }
}

/// A short-lived address of an attachment (or its thumbnail) for a member of its
/// conversation. Anyone else, and any attachment of a deleted message, gets `not_found`.
pub(crate) async fn url(
    inner: &Inner,
    req: pb::GetAttachmentUrlRequest,
) -> Result<pb::GetAttachmentUrlResponse, StoreError> {
    let storage = backend(inner)?;
    let not_found = || {
        refusal(
            ErrorCode::NotFound,
            format!("attachment {} not found", req.attachment_id),
        )
    };
    let served = inner
        .store
        .served(req.attachment_id)
        .await?
        .ok_or_else(not_found)?;
    if served.participants.binary_search(&req.user_id).is_err() {
        return Err(not_found());
    }
    let (key, ct, name) = match (req.thumbnail, &served.thumbnail_key) {
        (false, _) => (
            &served.final_key,
            served.content_type.as_str(),
            served.filename.clone(),
        ),
        (true, Some(t)) => (
            t,
            "image/jpeg",
            format!("thumbnail-{}.jpg", served.filename),
        ),
        (true, None) => return Err(not_found()),
    };
    let p = storage.presign_get(key, ct, &name, DOWNLOAD_URL_TTL);
    Ok(pb::GetAttachmentUrlResponse {
        url: p.url,
        expires_at_ms: p.expires_at_ms,
        error: None,
    })
}

/// Removes the objects and rows of uploads never attached within a day and of
/// attachments whose message was deleted or retention removed. Returns how many went.
pub(crate) async fn sweep(inner: &Inner) -> Result<usize, StoreError> {
    let Some(storage) = inner.storage.as_ref() else {
        return Ok(0);
    };
    let stale = inner
        .store
        .stale_uploads(proto::time::now_ms() - UNATTACHED_TTL_MS, 100)
        .await?;
    let mut removed = 0;
    for s in stale {
        let mut ok = true;
        for k in &s.keys {
            if let Err(e) = storage.delete(k).await {
                tracing::warn!(error = %e, upload = s.id, "cannot remove attachment object; next sweep retries");
                ok = false;
            }
        }
        if ok {
            inner.store.delete_upload(s.id).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_are_sanitised() {
        assert_eq!(sanitise_filename("../../etc/passwd"), "passwd");
        assert_eq!(sanitise_filename("C:\\Users\\me\\photo.jpg"), "photo.jpg");
        assert_eq!(sanitise_filename("a\u{0}b\r\nc.pdf"), "abc.pdf");
        assert_eq!(
            sanitise_filename("invoice\u{202E}fdp.exe"),
            "invoicefdp.exe"
        );
        assert_eq!(sanitise_filename("..."), "file");
        assert_eq!(sanitise_filename(""), "file");
        let long = format!("{}.pdf", "é".repeat(300));
        let s = sanitise_filename(&long);
        assert!(s.len() <= 255 && s.ends_with(".pdf"), "{s}");
    }
}
