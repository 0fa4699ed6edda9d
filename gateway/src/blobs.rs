//! The local attachment directory's door (`/api/v1/blobs/<key>?…`): the single-node
//! program's stand-in for object storage, with the same contract clients have with S3 —
//! a URL signed by message-service (HMAC, expiring, bound to one method, and for uploads
//! to one type and length) is the only authority; no token is asked for.
//!
//! Bodies stream to and from disk, so a 25 MiB upload costs a buffer, not 25 MiB.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use proto::ErrorCode;
use storage::{BlobError, Local, Op, BLOB_PATH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ctx::Ctx;
use crate::reply::HttpError;

/// Any body this server answers with.
pub(crate) type AnyBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// An upload must arrive within this long (as long as its URL is valid for).
const UPLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15 * 60);
/// Bytes read from disk per frame of a download.
const CHUNK: usize = 64 * 1024;

/// Whether `path` is this door's.
pub(crate) fn handles(path: &str) -> bool {
    path.starts_with(BLOB_PATH)
}

/// Serves one request for a local object.
pub(crate) async fn serve(req: hyper::Request<Incoming>, ctx: Arc<Ctx>) -> http::Response<AnyBody> {
    match answer(req, &ctx).await {
        Ok(r) => r,
        Err(e) => boxed(e.into_response()),
    }
}

/// A warp response as one of this server's.
pub(crate) fn boxed(r: warp::reply::Response) -> http::Response<AnyBody> {
    r.map(|b| {
        b.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
            .boxed()
    })
}

fn refused(e: BlobError) -> HttpError {
    match e {
        BlobError::Expired => {
            HttpError::new(StatusCode::GONE, ErrorCode::UploadExpired, e.to_string())
        }
        BlobError::BadSignature | BlobError::WrongMethod => {
            HttpError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, e.to_string())
        }
    }
}

async fn answer(
    req: hyper::Request<Incoming>,
    ctx: &Ctx,
) -> Result<http::Response<AnyBody>, HttpError> {
    let Some(local) = ctx.blobs.as_deref() else {
        return Err(HttpError::no_route());
    };
    let key = req
        .uri()
        .path()
        .strip_prefix(BLOB_PATH)
        .unwrap_or("")
        .to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let now = u64::try_from(proto::time::now_ms() / 1000).unwrap_or(0);
    let op = match *req.method() {
        Method::PUT => Op::Put,
        Method::GET | Method::HEAD => Op::Get,
        _ => {
            return Err(HttpError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "GET or PUT",
            ))
        }
    };
    let grant = local.verify(op, &key, &query, now).map_err(refused)?;
    match op {
        Op::Put => upload(local, &grant, req).await,
        Op::Get => download(local, &grant, req.method() == Method::HEAD).await,
    }
}

/// Stores the body under the key: exactly the signed length and type, or nothing.
async fn upload(
    local: &Local,
    grant: &storage::Grant,
    req: hyper::Request<Incoming>,
) -> Result<http::Response<AnyBody>, HttpError> {
    let declared_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if declared_type != grant.content_type {
        return Err(HttpError::coded(
            ErrorCode::TypeMismatch,
            format!("Content-Type must be {} (as signed)", grant.content_type),
        ));
    }
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if length.is_some_and(|n| n != grant.len) {
        return Err(size_mismatch(grant.len));
    }
    let unavailable = |e: std::io::Error| {
        tracing::warn!(error = %e, "local storage write failed");
        HttpError::coded(ErrorCode::Unavailable, "storage is unavailable; retry")
    };
    let path = local.path(&grant.key).map_err(|_| HttpError::no_route())?;
    let tmp = local
        .temp_path(&grant.key)
        .map_err(|_| HttpError::no_route())?;
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(unavailable)?;
    }
    let mut file = tokio::fs::File::create(&tmp).await.map_err(unavailable)?;
    let written = tokio::time::timeout(UPLOAD_TIMEOUT, async {
        let mut body = req.into_body();
        let mut n: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| HttpError::bad(format!("could not read the body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                n += data.len() as u64;
                if n > grant.len {
                    return Err(size_mismatch(grant.len));
                }
                file.write_all(&data).await.map_err(unavailable)?;
            }
        }
        file.flush().await.map_err(unavailable)?;
        Ok(n)
    })
    .await
    .unwrap_or_else(|_| {
        Err(HttpError::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorCode::InvalidField,
            "the upload did not arrive in time",
        ))
    });
    let stored = match written {
        Ok(n) if n == grant.len => tokio::fs::rename(&tmp, &path).await.map_err(unavailable),
        Ok(_) => Err(size_mismatch(grant.len)),
        Err(e) => Err(e),
    };
    if stored.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    stored?;
    Ok(boxed(warp::reply::Reply::into_response(StatusCode::OK)))
}

fn size_mismatch(len: u64) -> HttpError {
    HttpError::coded(
        ErrorCode::SizeMismatch,
        format!("the body must be exactly {len} bytes (as signed)"),
    )
}

/// Streams the object with the signed type and name; never sniffed, never run.
async fn download(
    local: &Local,
    grant: &storage::Grant,
    head_only: bool,
) -> Result<http::Response<AnyBody>, HttpError> {
    let path = local.path(&grant.key).map_err(|_| HttpError::no_route())?;
    let not_found = || HttpError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such object");
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| not_found())?;
    let len = file.metadata().await.map_err(|_| not_found())?.len();
    let body: AnyBody = if head_only {
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed()
    } else {
        let chunks = futures_util::stream::unfold(file, |mut f| async move {
            let mut buf = vec![0u8; CHUNK];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Frame::data(Bytes::from(buf))), f))
                }
                Err(e) => Some((
                    Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
                    f,
                )),
            }
        });
        StreamBody::new(chunks).boxed()
    };
    let mut resp = http::Response::new(body);
    let h = resp.headers_mut();
    let value = |s: &str| {
        HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("application/octet-stream"))
    };
    h.insert(header::CONTENT_TYPE, value(&grant.content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(d) = HeaderValue::from_str(&storage::content_disposition(
        &grant.content_type,
        &grant.filename,
    )) {
        h.insert(header::CONTENT_DISPOSITION, d);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Served from the gateway's own origin: whatever the bytes are, they run nothing.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=300"),
    );
    Ok(resp)
}
