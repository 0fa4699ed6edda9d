//! Where attachment bytes live, behind one type whatever the backend.
//!
//! Clients send and fetch bytes directly with short-lived signed URLs, so bytes never pass
//! through a gateway in a deployment; message-service reads what it must check (the first
//! bytes, an image to strip and shrink) and writes what it produces (the stripped image,
//! the thumbnail).
//!
//! - `s3`: S3-compatible object storage (AWS S3, MinIO, R2, GCS interoperability) through
//!   SigV4-presigned URLs (`rusty-s3`, which signs and does no I/O) sent over the hyper and
//!   rustls stack the workspace already uses.
//! - `local`: a directory, for the single-node program. URLs are HMAC-signed and expire;
//!   the gateway serves them itself (`/api/v1/blobs/…`), with the same API for clients.
//! - `settings`: which backend, from `INDABA_STORAGE_DIR` / `INDABA_S3_*`.

mod local;
mod s3;
mod settings;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use local::{BlobError, Grant, Local, Op, BLOB_PATH};
pub use s3::S3;
pub use settings::StorageSettings;

/// A request a client may make once, until `expires_at_ms`: the `method` on `url`, with
/// exactly these `headers` (they are part of the signature).
#[derive(Debug, Clone)]
pub struct Presigned {
    pub url: String,
    pub method: &'static str,
    pub headers: Vec<(String, String)>,
    pub expires_at_ms: i64,
}

/// What a storage call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No object under the key.
    #[error("no such object")]
    NotFound,
    /// The object is larger than the caller would read.
    #[error("object larger than {0} bytes")]
    TooLarge(u64),
    /// The storage could not be reached or refused the request; a retry may succeed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// The attachment store: cheap to clone.
#[derive(Debug, Clone)]
pub enum Storage {
    Local(Arc<Local>),
    S3(Arc<S3>),
}

impl Storage {
    /// The configured backend, or `None` when attachments are not configured.
    pub fn open(settings: &StorageSettings) -> Result<Option<Storage>, bus::config::ConfigError> {
        Ok(match settings {
            StorageSettings::None => None,
            StorageSettings::Local { dir } => Some(Storage::Local(Arc::new(Local::open(dir)?))),
            StorageSettings::S3(s) => Some(Storage::S3(Arc::new(S3::new(s)?))),
        })
    }

    /// The backend's name, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Storage::Local(_) => "local",
            Storage::S3(_) => "s3",
        }
    }

    /// A signed `PUT` of exactly `size` bytes of `content_type` to `key`.
    pub fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        size: u64,
        ttl: Duration,
    ) -> Presigned {
        match self {
            Storage::Local(l) => l.presign_put(key, content_type, size, ttl),
            Storage::S3(s) => s.presign_put(key, content_type, size, ttl),
        }
    }

    /// A signed `GET` of `key`, served as `content_type` under `filename`.
    pub fn presign_get(
        &self,
        key: &str,
        content_type: &str,
        filename: &str,
        ttl: Duration,
    ) -> Presigned {
        match self {
            Storage::Local(l) => l.presign_get(key, content_type, filename, ttl),
            Storage::S3(s) => s.presign_get(key, content_type, filename, ttl),
        }
    }

    /// The object's size, `None` when there is none.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        match self {
            Storage::Local(l) => l.size(key).await,
            Storage::S3(s) => s.size(key).await,
        }
    }

    /// The whole object, refused when it is over `limit` bytes.
    pub async fn read(&self, key: &str, limit: u64) -> Result<Bytes, StorageError> {
        // One byte past the limit tells "too large" from "exactly the limit".
        let data = self.read_prefix(key, limit.saturating_add(1)).await?;
        if data.len() as u64 > limit {
            return Err(StorageError::TooLarge(limit));
        }
        Ok(data)
    }

    /// The object's first `n` bytes (fewer when it is shorter).
    pub async fn read_prefix(&self, key: &str, n: u64) -> Result<Bytes, StorageError> {
        match self {
            Storage::Local(l) => l.read_prefix(key, n).await,
            Storage::S3(s) => s.read_prefix(key, n).await,
        }
    }

    /// Stores `body` under `key`, replacing what was there.
    pub async fn write(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<(), StorageError> {
        match self {
            Storage::Local(l) => l.write(key, body).await,
            Storage::S3(s) => s.write(key, body, content_type).await,
        }
    }

    /// Copies `from` to `to` inside the store (no bytes through the caller).
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), StorageError> {
        match self {
            Storage::Local(l) => l.copy(from, to).await,
            Storage::S3(s) => s.copy(from, to).await,
        }
    }

    /// Removes `key`; an absent object is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self {
            Storage::Local(l) => l.delete(key).await,
            Storage::S3(s) => s.delete(key).await,
        }
    }
}

/// `Content-Disposition` for a download named `filename`: an ASCII fallback and the exact
/// name as RFC 5987 `filename*`, so no name can break out of the header. Images, audio,
/// video and PDF open inline; everything else is a download.
pub fn content_disposition(content_type: &str, filename: &str) -> String {
    let inline = ["image/", "audio/", "video/", "application/pdf"]
        .iter()
        .any(|p| content_type.starts_with(p));
    let ascii: String = filename
        .chars()
        .map(|c| match c {
            ' ' | '-' | '_' | '.' | '(' | ')' => c,
            c if c.is_ascii_alphanumeric() => c,
            _ => '_',
        })
        .collect();
    let exact = percent_encoding::utf8_percent_encode(filename, percent_encoding::NON_ALPHANUMERIC);
    format!(
        "{}; filename=\"{ascii}\"; filename*=UTF-8''{exact}",
        if inline { "inline" } else { "attachment" }
    )
}

/// Unix seconds of `now + ttl`, and the same in ms.
fn expiry(ttl: Duration) -> (u64, i64) {
    let now_ms = proto::time::now_ms();
    let secs = u64::try_from(now_ms / 1000).unwrap_or(0) + ttl.as_secs().max(1);
    (secs, i64::try_from(secs * 1000).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filename_cannot_break_out_of_the_header() {
        let d = content_disposition("application/pdf", "a\"; b.pdf\r\nX-Evil: 1");
        assert!(!d.contains('\r') && !d.contains('\n'));
        assert!(
            d.starts_with("inline; filename=\"a__ b.pdf__X-Evil_ 1\""),
            "{d}"
        );
        assert!(content_disposition("application/octet-stream", "x").starts_with("attachment"));
    }
}
