//! S3-compatible object storage. `rusty-s3` presigns SigV4 URLs (it does no I/O); clients
//! get those for their uploads and downloads, and message-service sends its own requests
//! (size, read, write, copy, delete) the same way, over hyper with rustls.
//!
//! Chosen over `object_store` (its signer signs only `host`, so a presigned `PUT` could
//! not pin the type and size, and its AWS feature brings reqwest and a second TLS stack)
//! and the AWS SDK (dozens of crates and aws-lc): three small crates, and the signatures
//! S3, MinIO, R2 and GCS's interoperability API all check.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use crate::settings::S3Settings;
use crate::{content_disposition, expiry, Presigned, StorageError};
use bus::config::ConfigError;

/// How long message-service's own signed requests are valid (they are sent at once).
const OWN_REQUEST_TTL: Duration = Duration::from_secs(60);
/// A storage request that takes longer than this fails (`unavailable`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// An S3 bucket, as message-service reaches it and as clients do.
pub struct S3 {
    /// The endpoint message-service uses.
    internal: Bucket,
    /// The endpoint named in clients' URLs.
    public: Bucket,
    credentials: Credentials,
    client: Client<Https, Full<Bytes>>,
}

impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3")
            .field("bucket", &self.internal.name())
            .field("endpoint", &self.internal.base_url().as_str())
            .finish_non_exhaustive()
    }
}

impl S3 {
    pub(crate) fn new(s: &S3Settings) -> Result<S3, ConfigError> {
        let style = if s.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = |endpoint: &str, var: &str| {
            let url = endpoint
                .parse()
                .map_err(|e| ConfigError(format!("{var} must be a URL, got {endpoint:?}: {e}")))?;
            Bucket::new(url, style, s.bucket.clone(), s.region.clone())
                .map_err(|e| ConfigError(format!("{var} {endpoint:?}: {e}")))
        };
        let internal = bucket(&s.endpoint, proto::env::S3_ENDPOINT)?;
        let public = bucket(
            s.public_endpoint.as_deref().unwrap_or(&s.endpoint),
            proto::env::S3_PUBLIC_ENDPOINT,
        )?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        Ok(S3 {
            internal,
            public,
            credentials: Credentials::new(s.access_key_id.clone(), s.secret_access_key.clone()),
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build(https),
        })
    }

    pub(crate) fn presign_put(&self, key: &str, ct: &str, size: u64, ttl: Duration) -> Presigned {
        let mut action = self.public.put_object(Some(&self.credentials), key);
        let size = size.to_string();
        // Signed, so the bytes sent must be exactly the declared type and length.
        action.headers_mut().insert("content-type", ct.to_owned());
        action.headers_mut().insert("content-length", size.clone());
        let url = action.sign(ttl).to_string();
        Presigned {
            url,
            method: "PUT",
            headers: vec![
                ("Content-Type".into(), ct.into()),
                ("Content-Length".into(), size),
            ],
            expires_at_ms: expiry(ttl).1,
        }
    }

    pub(crate) fn presign_get(&self, key: &str, ct: &str, name: &str, ttl: Duration) -> Presigned {
        let mut action = self.public.get_object(Some(&self.credentials), key);
        let q = action.query_mut();
        q.insert("response-content-type", ct.to_owned());
        q.insert(
            "response-content-disposition",
            content_disposition(ct, name),
        );
        Presigned {
            url: action.sign(ttl).to_string(),
            method: "GET",
            headers: Vec::new(),
            expires_at_ms: expiry(ttl).1,
        }
    }

    async fn send(
        &self,
        method: Method,
        url: url::Url,
        headers: &[(&str, String)],
        body: Bytes,
        limit: usize,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), StorageError> {
        let mut req = Request::builder().method(method).uri(url.as_str());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| StorageError::Unavailable(e.to_string()))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, limit)
                .collect()
                .await
                .map_err(|e| StorageError::Unavailable(e.to_string()))?
                .to_bytes();
            Ok((parts.status, parts.headers, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, work)
            .await
            .map_err(|_| StorageError::Unavailable("storage request timed out".into()))?
    }

    /// The failure for an answer that is not a success.
    fn refused(status: StatusCode, body: &Bytes) -> StorageError {
        if status == StatusCode::NOT_FOUND {
            return StorageError::NotFound;
        }
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        StorageError::Unavailable(format!("storage answered {status}: {text}"))
    }

    pub(crate) async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        let url = self
            .internal
            .head_object(Some(&self.credentials), key)
            .sign(OWN_REQUEST_TTL);
        let (status, headers, body) = self.send(Method::HEAD, url, &[], Bytes::new(), 0).await?;
        match status {
            s if s.is_success() => headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .map(Some)
                .ok_or_else(|| StorageError::Unavailable("HEAD without Content-Length".into())),
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(Self::refused(s, &body)),
        }
    }

    pub(crate) async fn read_prefix(&self, key: &str, n: u64) -> Result<Bytes, StorageError> {
        if n == 0 {
            return Ok(Bytes::new());
        }
        let url = self
            .internal
            .get_object(Some(&self.credentials), key)
            .sign(OWN_REQUEST_TTL);
        let range = [("range", format!("bytes=0-{}", n - 1))];
        let limit = usize::try_from(n).unwrap_or(usize::MAX);
        let (status, _, mut body) = self
            .send(
                Method::GET,
                url,
                &range,
                Bytes::new(),
                limit.saturating_add(1),
            )
            .await?;
        match status {
            s if s.is_success() => {
                // A server that ignores Range sends the whole object: keep what was asked.
                body.truncate(limit);
                Ok(body)
            }
            // An empty object has no byte 0.
            StatusCode::RANGE_NOT_SATISFIABLE => Ok(Bytes::new()),
            s => Err(Self::refused(s, &body)),
        }
    }

    pub(crate) async fn write(&self, key: &str, body: Bytes, ct: &str) -> Result<(), StorageError> {
        let mut action = self.internal.put_object(Some(&self.credentials), key);
        action.headers_mut().insert("content-type", ct.to_owned());
        let url = action.sign(OWN_REQUEST_TTL);
        let headers = [("content-type", ct.to_owned())];
        let (status, _, resp) = self
            .send(Method::PUT, url, &headers, body, 64 * 1024)
            .await?;
        match status.is_success() {
            true => Ok(()),
            false => Err(Self::refused(status, &resp)),
        }
    }

    pub(crate) async fn copy(&self, from: &str, to: &str) -> Result<(), StorageError> {
        // CopyObject is a PUT naming its source; the source is signed too.
        let source = format!("/{}/{}", self.internal.name(), from);
        let mut action = self.internal.put_object(Some(&self.credentials), to);
        action
            .headers_mut()
            .insert("x-amz-copy-source", source.clone());
        let url = action.sign(OWN_REQUEST_TTL);
        let headers = [("x-amz-copy-source", source)];
        let (status, _, resp) = self
            .send(Method::PUT, url, &headers, Bytes::new(), 64 * 1024)
            .await?;
        // S3 can answer 200 with an error document when a copy fails part way.
        if status.is_success() && !resp.windows(7).any(|w| w == b"<Error>") {
            return Ok(());
        }
        if status == StatusCode::NOT_FOUND {
            return Err(StorageError::NotFound);
        }
        Err(Self::refused(status, &resp))
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let url = self
            .internal
            .delete_object(Some(&self.credentials), key)
            .sign(OWN_REQUEST_TTL);
        let (status, _, resp) = self
            .send(Method::DELETE, url, &[], Bytes::new(), 64 * 1024)
            .await?;
        match status.is_success() || status == StatusCode::NOT_FOUND {
            true => Ok(()),
            false => Err(Self::refused(status, &resp)),
        }
    }
}
