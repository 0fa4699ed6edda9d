//! The local-directory backend: objects are files under `<dir>/objects/`, and URLs are
//! signed with a key kept in `<dir>/.signing-key` (made on first start, mode 0600), so the
//! gateway and message-service of one node agree on it without configuration and URLs
//! survive a restart. The gateway serves the URLs (`/api/v1/blobs/<key>?…`) after
//! [`Local::verify`].

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
use sha2::Sha256;
use tokio::io::AsyncReadExt;

use crate::{expiry, Presigned, StorageError};
use bus::config::ConfigError;

/// The path under which the gateway serves local objects.
pub const BLOB_PATH: &str = "/api/v1/blobs/";

/// What a signed URL allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    Put,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
        }
    }
}

/// A verified URL: what the request may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub op: Op,
    pub key: String,
    /// `PUT`: exactly this many bytes.
    pub len: u64,
    /// `PUT`: the `Content-Type` the request must carry; `GET`: the one to serve.
    pub content_type: String,
    /// `GET`: the download name.
    pub filename: String,
}

/// Why a signed URL is refused (all answered 403 but `Expired`, which is 410 so a client
/// knows to ask again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error("the URL is not validly signed")]
    BadSignature,
    #[error("the URL has expired")]
    Expired,
    #[error("the URL is for another method")]
    WrongMethod,
}

/// The directory backend.
#[derive(Debug)]
pub struct Local {
    objects: PathBuf,
    key: [u8; 32],
}

impl Local {
    /// Opens (creating) the directory and its signing key.
    pub fn open(dir: &Path) -> Result<Local, ConfigError> {
        let bad =
            |e: std::io::Error| ConfigError(format!("storage directory {}: {e}", dir.display()));
        let objects = dir.join("objects");
        std::fs::create_dir_all(&objects).map_err(bad)?;
        let key = signing_key(&dir.join(".signing-key")).map_err(bad)?;
        Ok(Local { objects, key })
    }

    fn sign(&self, op: Op, key: &str, exp: u64, len: u64, ct: &str, name: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        for part in [
            op.as_str(),
            key,
            &exp.to_string(),
            &len.to_string(),
            ct,
            name,
        ] {
            mac.update(part.as_bytes());
            mac.update(b"\n");
        }
        mac
    }

    fn url(
        &self,
        op: Op,
        key: &str,
        ttl: Duration,
        len: u64,
        ct: &str,
        name: &str,
    ) -> (String, i64) {
        let (exp, exp_ms) = expiry(ttl);
        let sig = hex(&self
            .sign(op, key, exp, len, ct, name)
            .finalize()
            .into_bytes());
        let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
        (
            format!(
                "{BLOB_PATH}{key}?op={}&exp={exp}&len={len}&type={}&name={}&sig={sig}",
                op.as_str(),
                enc(ct),
                enc(name)
            ),
            exp_ms,
        )
    }

    pub(crate) fn presign_put(&self, key: &str, ct: &str, size: u64, ttl: Duration) -> Presigned {
        let (url, expires_at_ms) = self.url(Op::Put, key, ttl, size, ct, "");
        Presigned {
            url,
            method: "PUT",
            headers: vec![("Content-Type".into(), ct.into())],
            expires_at_ms,
        }
    }

    pub(crate) fn presign_get(&self, key: &str, ct: &str, name: &str, ttl: Duration) -> Presigned {
        let (url, expires_at_ms) = self.url(Op::Get, key, ttl, 0, ct, name);
        Presigned {
            url,
            method: "GET",
            headers: Vec::new(),
            expires_at_ms,
        }
    }

    /// Checks a request for `key` with `query` (the URL's query string) at unix second
    /// `now`: the signature first (constant time), then the method and the expiry.
    pub fn verify(&self, op: Op, key: &str, query: &str, now: u64) -> Result<Grant, BlobError> {
        let mut fields = [None, None, None, None, None, None];
        const NAMES: [&str; 6] = ["op", "exp", "len", "type", "name", "sig"];
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let Some(i) = NAMES.iter().position(|n| *n == k) else {
                continue;
            };
            if fields[i].is_some() {
                return Err(BlobError::BadSignature);
            }
            fields[i] = Some(
                percent_decode_str(v)
                    .decode_utf8()
                    .map_err(|_| BlobError::BadSignature)?
                    .into_owned(),
            );
        }
        let [Some(url_op), Some(exp), Some(len), Some(ct), Some(name), Some(sig)] = fields else {
            return Err(BlobError::BadSignature);
        };
        let signed_op = match url_op.as_str() {
            "get" => Op::Get,
            "put" => Op::Put,
            _ => return Err(BlobError::BadSignature),
        };
        let exp: u64 = exp.parse().map_err(|_| BlobError::BadSignature)?;
        let len: u64 = len.parse().map_err(|_| BlobError::BadSignature)?;
        let sig = unhex(&sig).ok_or(BlobError::BadSignature)?;
        if !valid_key(key) {
            return Err(BlobError::BadSignature);
        }
        self.sign(signed_op, key, exp, len, &ct, &name)
            .verify_slice(&sig)
            .map_err(|_| BlobError::BadSignature)?;
        if signed_op != op {
            return Err(BlobError::WrongMethod);
        }
        if now > exp {
            return Err(BlobError::Expired);
        }
        Ok(Grant {
            op,
            key: key.to_owned(),
            len,
            content_type: ct,
            filename: name,
        })
    }

    /// The file of `key` (keys are made by message-service; anything else is refused).
    pub fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        if !valid_key(key) {
            return Err(StorageError::NotFound);
        }
        Ok(self.objects.join(key))
    }

    /// A fresh temporary file beside `key`'s, for writing before an atomic rename.
    pub fn temp_path(&self, key: &str) -> Result<PathBuf, StorageError> {
        let path = self.path(key)?;
        let n: u64 = rand::random();
        Ok(path.with_file_name(format!(".tmp-{n:016x}")))
    }

    pub(crate) async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        match tokio::fs::metadata(self.path(key)?).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    pub(crate) async fn read_prefix(&self, key: &str, n: u64) -> Result<Bytes, StorageError> {
        let file = tokio::fs::File::open(self.path(key)?)
            .await
            .map_err(not_found_or)?;
        let mut buf = Vec::new();
        file.take(n)
            .read_to_end(&mut buf)
            .await
            .map_err(unavailable)?;
        Ok(buf.into())
    }

    pub(crate) async fn write(&self, key: &str, body: Bytes) -> Result<(), StorageError> {
        let path = self.path(key)?;
        let tmp = self.temp_path(key)?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(unavailable)?;
        }
        tokio::fs::write(&tmp, &body).await.map_err(unavailable)?;
        tokio::fs::rename(&tmp, &path).await.map_err(unavailable)
    }

    pub(crate) async fn copy(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let (src, dst, tmp) = (self.path(from)?, self.path(to)?, self.temp_path(to)?);
        if let Some(parent) = dst.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(unavailable)?;
        }
        tokio::fs::copy(&src, &tmp).await.map_err(not_found_or)?;
        tokio::fs::rename(&tmp, &dst).await.map_err(unavailable)
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(unavailable(e)),
            _ => Ok(()),
        }
    }
}

/// Keys are lower-case letters, digits, `-`, `_` and `/`-separated segments that do not
/// start with a dot: nothing can climb out of the directory or name the signing key.
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 200
        && key.split('/').all(|seg| {
            !seg.is_empty()
                && !seg.starts_with('.')
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        })
}

/// Reads the signing key, or makes one. Two processes starting at once agree: the key is
/// written to a temporary file and linked into place, which fails if another got there first.
fn signing_key(path: &Path) -> std::io::Result<[u8; 32]> {
    if let Ok(k) = read_key(path) {
        return Ok(k);
    }
    let key: [u8; 32] = rand::random();
    let tmp = path.with_extension(format!("tmp-{:016x}", rand::random::<u64>()));
    std::fs::write(&tmp, hex(&key))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => read_key(path),
        Err(e) => Err(e),
    }
}

fn read_key(path: &Path) -> std::io::Result<[u8; 32]> {
    let text = std::fs::read_to_string(path)?;
    unhex(text.trim())
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| {
            std::io::Error::new(ErrorKind::InvalidData, "signing key is not 64 hex digits")
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn unavailable(e: std::io::Error) -> StorageError {
    StorageError::Unavailable(e.to_string())
}

fn not_found_or(e: std::io::Error) -> StorageError {
    match e.kind() {
        ErrorKind::NotFound => StorageError::NotFound,
        _ => unavailable(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(url: &str) -> (&str, &str) {
        let rest = url.strip_prefix(BLOB_PATH).unwrap();
        rest.split_once('?').unwrap()
    }

    #[test]
    fn urls_verify_only_as_signed() {
        let dir = tempfile::tempdir().unwrap();
        let l = Local::open(dir.path()).unwrap();
        let put = l.presign_put("u/1-ab", "image/png", 10, Duration::from_secs(60));
        let (key, q) = query(&put.url);
        let now = u64::try_from(proto::time::now_ms() / 1000).unwrap();
        let g = l.verify(Op::Put, key, q, now).unwrap();
        assert_eq!((g.len, g.content_type.as_str()), (10, "image/png"));
        assert_eq!(l.verify(Op::Get, key, q, now), Err(BlobError::WrongMethod));
        assert_eq!(
            l.verify(Op::Put, key, q, now + 3600),
            Err(BlobError::Expired)
        );
        assert_eq!(
            l.verify(Op::Put, "u/2-ab", q, now),
            Err(BlobError::BadSignature)
        );
        let longer = q.replace("len=10", "len=11");
        assert_eq!(
            l.verify(Op::Put, key, &longer, now),
            Err(BlobError::BadSignature)
        );
        // The same directory opened again (another process) verifies the same URL.
        assert!(Local::open(dir.path())
            .unwrap()
            .verify(Op::Put, key, q, now)
            .is_ok());
    }

    #[test]
    fn keys_cannot_leave_the_directory() {
        for bad in [
            "",
            "../x",
            "a/../../b",
            ".signing-key",
            "a//b",
            "A",
            "a/.x",
            "a\\b",
        ] {
            assert!(!valid_key(bad), "{bad}");
        }
        assert!(valid_key("a/12-0f_x.thumb"));
    }
}
