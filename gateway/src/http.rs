//! The HTTP server on top of every door: our own accept loop (so we control hyper's
//! header-read timeout and keep upgraded sockets out of warp's graceful shutdown) and the
//! router that hands each path to its door (`ws`, `rest` with `sse`), plus the operations
//! endpoints and the embedded static files.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use proto::ErrorCode;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::ctx::Ctx;
use crate::metrics::HandshakeFailure;
use crate::reply::HttpError;
use crate::session::{PeerAddr, Transport};

/// Largest REST body accepted.
const MAX_BODY_BYTES: u64 = 64 * 1024;

fn error_response(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    HttpError::new(status, code, message).into_response()
}

/// Accepts connections until `shutdown` is cancelled.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let routes = routes(ctx.clone());
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(p) => p,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // Open connections per client address. A trusted proxy carries everyone's
        // connections, so it is not counted (its clients' attempts still are, by address).
        let ip = peer.ip();
        let slot = if ctx.settings.trusted_proxies.iter().any(|n| n.contains(ip)) {
            None
        } else {
            match ctx
                .open_per_ip
                .open(ip, ctx.settings.max_connections_per_ip)
            {
                Some(slot) => Some(slot),
                None => {
                    ctx.metrics
                        .handshake_failed(HandshakeFailure::IpConnections);
                    tokio::spawn(refuse_connection(stream));
                    continue;
                }
            }
        };
        let transport = Arc::new(Transport {
            kill: CancellationToken::new(),
            _slot: slot,
        });
        let _ = stream.set_nodelay(true);
        if let Some(n) = ctx.settings.socket_send_buffer {
            // A fixed kernel send buffer: a client that stops reading then meets the
            // outbound queue's bound, not megabytes of autotuned kernel memory.
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(n);
        }
        // warp cannot see the peer address on a connection we accept ourselves: hand it to
        // the routes as a request extension.
        let warp_svc = warp::service(routes.clone());
        let t = transport.clone();
        let blob_ctx = ctx.clone();
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer.ip()));
                req.extensions_mut().insert(t.clone());
                let mut s = warp_svc.clone();
                let ctx = blob_ctx.clone();
                async move {
                    // Attachment bytes stream to and from disk, past warp's buffered bodies.
                    if crate::blobs::handles(req.uri().path()) {
                        return Ok::<_, Infallible>(crate::blobs::serve(req, ctx).await);
                    }
                    let r = tower_service::Service::call(&mut s, req).await?;
                    Ok(crate::blobs::boxed(r))
                }
            });
        let header_timeout = ctx.settings.header_timeout;
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(64 * 1024);
            // The header-read timeout also bounds how long an idle keep-alive connection
            // waits for its next request (hyper starts it whenever it waits for a head).
            let conn = builder
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "http connection ended with error");
                },
                () = transport.kill.cancelled() => {
                    tracing::debug!(%peer, "http connection ended by the server");
                }
            }
        });
    }
}

/// Answers a connection over the per-address limit with a 429 and closes it, without
/// reading the request (best effort, bounded).
async fn refuse_connection(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = r#"{"error":{"code":"rate_limited","message":"too many open connections from this address"}}"#;
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 10\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

fn with_ctx(ctx: Arc<Ctx>) -> impl Filter<Extract = (Arc<Ctx>,), Error = Infallible> + Clone {
    warp::any().map(move || ctx.clone())
}

/// The request body, read up to [`MAX_BODY_BYTES`] whatever the method and framing
/// (`Content-Length` or chunked); a longer one is refused with 413 without reading on, and
/// one that does not arrive within `timeout` with 408 (a slow body holds a connection and
/// a task as long as the client likes otherwise).
fn limited_body(
    timeout: std::time::Duration,
) -> impl Filter<Extract = (Result<Bytes, HttpError>,), Error = Rejection> + Clone {
    warp::body::stream().then(move |s| async move {
        tokio::time::timeout(timeout, read_limited(s))
            .await
            .unwrap_or_else(|_| {
                Err(HttpError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    ErrorCode::InvalidField,
                    format!("the body did not arrive within {} s", timeout.as_secs()),
                ))
            })
    })
}

async fn read_limited<S, B>(stream: S) -> Result<Bytes, HttpError>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    use futures_util::StreamExt;
    let limit = usize::try_from(MAX_BODY_BYTES).unwrap_or(usize::MAX);
    let mut stream = std::pin::pin!(stream);
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk =
            chunk.map_err(|e| HttpError::bad(format!("could not read the body: {e}")))?;
        if buf.len() + chunk.remaining() > limit {
            return Err(HttpError::coded(
                ErrorCode::PayloadTooLarge,
                format!("body larger than {MAX_BODY_BYTES} bytes"),
            ));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            buf.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

/// Every HTTP route of the gateway.
fn routes(ctx: Arc<Ctx>) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let ws = warp::path("ws")
        .and(warp::path("chat"))
        .and(warp::path::end())
        .and(warp::get())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<OnUpgrade>())
        .and(warp::ext::optional::<PeerAddr>())
        .and(warp::ext::optional::<Arc<Transport>>())
        .and(with_ctx(ctx.clone()))
        .then(crate::ws::handshake);
    let api = warp::path("api")
        .and(warp::path("v1"))
        .and(warp::path::tail())
        .and(warp::method())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(limited_body(ctx.settings.body_timeout))
        .and(warp::ext::optional::<PeerAddr>())
        .and(warp::ext::optional::<Arc<Transport>>())
        .and(with_ctx(ctx.clone()))
        .then(
            |tail: warp::path::Tail,
             method,
             query,
             headers,
             body: Result<Bytes, HttpError>,
             peer: Option<PeerAddr>,
             transport: Option<Arc<Transport>>,
             ctx: Arc<Ctx>| async move {
                match body {
                    Ok(body) => {
                        let req = crate::rest::Request {
                            tail: tail.as_str().to_owned(),
                            method,
                            query,
                            headers,
                            body,
                            peer,
                            transport,
                        };
                        crate::rest::dispatch(req, ctx).await
                    }
                    Err(e) => e.into_response(),
                }
            },
        );
    let static_files = warp::get()
        .and(warp::path::full())
        .and(with_ctx(ctx.clone()))
        .and_then(|path: warp::path::FullPath, ctx: Arc<Ctx>| async move {
            let name = match path.as_str() {
                "/" => "index.html",
                p => p.trim_start_matches('/'),
            };
            match ctx.settings.static_files.iter().find(|f| f.name == name) {
                Some(f) => Ok(warp::reply::with_header(
                    warp::reply::with_header(f.body, "content-type", f.content_type),
                    "cache-control",
                    "no-cache",
                )
                .into_response()),
                None => Err(warp::reject::not_found()),
            }
        });
    let livez = warp::path("livez")
        .and(warp::path::end())
        .map(|| warp::reply::json(&serde_json::json!({"status": "ok"})).into_response());
    let metrics = warp::path("metrics")
        .and(warp::path::end())
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .map(|ctx: Arc<Ctx>| {
            warp::reply::with_header(
                ctx.metrics.render(),
                "content-type",
                "text/plain; version=0.0.4",
            )
            .into_response()
        });
    let readyz = warp::path("readyz")
        .and(warp::path::end())
        .and(with_ctx(ctx))
        .map(|ctx: Arc<Ctx>| {
            if ctx.bus.is_connected() && !ctx.draining.is_cancelled() {
                warp::reply::json(&serde_json::json!({"status": "ready"})).into_response()
            } else {
                error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    "not ready",
                )
            }
        });
    ws.or(api)
        .unify()
        .or(static_files)
        .unify()
        .or(livez)
        .unify()
        .or(metrics)
        .unify()
        .or(readyz)
        .unify()
        .recover(recover)
        .unify()
}

async fn recover(r: Rejection) -> Result<Response, Infallible> {
    Ok(if r.is_not_found() {
        error_response(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such route")
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::MethodNotAllowed,
            "method not allowed",
        )
    } else if r.find::<warp::reject::PayloadTooLarge>().is_some() {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            "body too large",
        )
    } else if r.find::<warp::reject::LengthRequired>().is_some() {
        error_response(
            StatusCode::LENGTH_REQUIRED,
            ErrorCode::InvalidField,
            "content-length required",
        )
    } else {
        error_response(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidField,
            format!("bad request: {r:?}"),
        )
    })
}
