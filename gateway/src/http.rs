//! The HTTP side of the gateway: our own accept loop (so we control hyper's header-read
//! timeout and keep upgraded sockets out of warp's graceful shutdown), the WebSocket
//! handshake done by hand (so we choose tungstenite's buffers and limits), and the REST
//! routes.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use prost::Message as _;
use proto::{pb, subjects, ErrorCode};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::sync::CancellationToken;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::auth::AuthError;
use crate::metrics::HandshakeFailure;
use crate::Ctx;

/// The TCP peer of a request (a load balancer, when there is one).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::IpAddr);

/// Counts a connection attempt against the client address's budget; `Some` is the 429.
pub(crate) fn check_ip_rate(
    ctx: &Ctx,
    peer: Option<PeerAddr>,
    headers: &HeaderMap,
) -> Option<Response> {
    let xff = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    let ip = crate::limits::client_ip(peer.map(|p| p.0), xff, &ctx.settings.trusted_proxies)?;
    if ctx.per_ip.allow(
        ip,
        ctx.settings.connect_rate_per_ip_10s,
        std::time::Instant::now(),
    ) {
        return None;
    }
    ctx.metrics.handshake_failed(HandshakeFailure::IpRate);
    Some(error_response(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::RateLimited,
        "too many connection attempts from this address; back off and retry",
    ))
}

/// Largest REST body accepted.
const MAX_BODY_BYTES: u64 = 64 * 1024;

/// The error body of every non-2xx HTTP answer: `{"error":{"code":…,"message":…}}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message of an HTTP error.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable code.
    pub code: String,
    /// Human-readable detail.
    pub message: String,
}

/// Builds a JSON error response.
pub fn error_response(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.as_str().to_owned(),
            message: message.into(),
        },
    };
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// A REST failure on its way to becoming a JSON error response.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl HttpError {
    pub(crate) fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        HttpError {
            status,
            code,
            message: message.into(),
        }
    }

    /// The JSON response.
    pub fn into_response(self) -> Response {
        error_response(self.status, self.code, self.message)
    }
}

fn auth_error(e: &AuthError) -> Response {
    error_response(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthorized,
        e.to_string(),
    )
}

/// Accepts connections until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>, shutdown: CancellationToken) {
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
        let _ = stream.set_nodelay(true);
        if let Some(n) = ctx.settings.socket_send_buffer {
            // A fixed kernel send buffer: a client that stops reading then meets the
            // outbound queue's bound, not megabytes of autotuned kernel memory.
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(n);
        }
        // warp cannot see the peer address on a connection we accept ourselves: hand it to
        // the routes as a request extension.
        let warp_svc = warp::service(routes.clone());
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer.ip()));
                let mut s = warp_svc.clone();
                async move { tower_service::Service::call(&mut s, req).await }
            });
        let header_timeout = ctx.settings.header_timeout;
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(64 * 1024);
            let conn = builder
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "http connection ended with error");
            }
        });
    }
}

fn with_ctx(ctx: Arc<Ctx>) -> impl Filter<Extract = (Arc<Ctx>,), Error = Infallible> + Clone {
    warp::any().map(move || ctx.clone())
}

/// The request body, read up to [`MAX_BODY_BYTES`] whatever the method and framing
/// (`Content-Length` or chunked); a longer one is refused with 413 without reading on.
fn limited_body() -> impl Filter<Extract = (Result<Bytes, HttpError>,), Error = Rejection> + Clone {
    warp::body::stream().then(read_limited)
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
        let mut chunk = chunk.map_err(|e| {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidField,
                format!("could not read the body: {e}"),
            )
        })?;
        if buf.len() + chunk.remaining() > limit {
            return Err(HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
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
pub fn routes(ctx: Arc<Ctx>) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let ws = warp::path("ws")
        .and(warp::path("chat"))
        .and(warp::path::end())
        .and(warp::get())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<OnUpgrade>())
        .and(warp::ext::optional::<PeerAddr>())
        .and(with_ctx(ctx.clone()))
        .then(ws_handshake);
    let api = warp::path("api")
        .and(warp::path("v1"))
        .and(warp::path::tail())
        .and(warp::method())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(limited_body())
        .and(warp::ext::optional::<PeerAddr>())
        .and(with_ctx(ctx.clone()))
        .then(
            |tail: warp::path::Tail,
             method,
             query,
             headers,
             body: Result<Bytes, HttpError>,
             peer: Option<PeerAddr>,
             ctx: Arc<Ctx>| async move {
                // Event streams are connections too: same per-address budget as sockets.
                if tail.as_str().trim_end_matches('/') == "events" {
                    if let Some(resp) = check_ip_rate(&ctx, peer, &headers) {
                        return resp;
                    }
                }
                match body {
                    Ok(body) => {
                        crate::rest::dispatch(
                            tail.as_str().to_owned(),
                            method,
                            query,
                            headers,
                            body,
                            ctx,
                        )
                        .await
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

/// Percent-decodes a query value (tokens are URL-safe, but clients may encode anyway).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(proto::headers::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn header_has_token(headers: &HeaderMap, name: &str, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Whether the user already holds the maximum number of sockets across all gateways.
/// Fails open when presence-service cannot answer: a presence outage must not lock
/// everyone out.
pub(crate) async fn over_connection_cap(ctx: &Ctx, user_id: i64) -> bool {
    let req = pb::GetPresenceRequest {
        user_ids: vec![user_id],
    };
    let here = u32::try_from(ctx.hub.user_sockets(user_id)).unwrap_or(u32::MAX);
    let counted = match crate::ws::call::<_, pb::GetPresenceResponse>(
        ctx,
        subjects::PRESENCE_GET,
        &req,
    )
    .await
    {
        Ok(r) => r.users.first().map_or(0, |u| u.connections),
        Err(_) => 0,
    };
    // Presence lags by a tick; never count fewer than this gateway itself holds.
    let over = counted.max(here) >= ctx.settings.max_connections_per_user;
    if over {
        tracing::info!(user_id, "websocket refused: connection cap");
        ctx.metrics
            .handshake_failed(HandshakeFailure::ConnectionCap);
    }
    over
}

/// Refuses a new socket (429) when the user is at the connection cap.
async fn check_connection_cap(ctx: &Ctx, user_id: i64) -> Result<(), Response> {
    if over_connection_cap(ctx, user_id).await {
        return Err(error_response(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            format!(
                "at most {} simultaneous connections per user",
                ctx.settings.max_connections_per_user
            ),
        ));
    }
    Ok(())
}

/// Authenticates, validates the upgrade request, answers 101 and hands the socket to
/// [`crate::ws::serve`]. Failures are JSON HTTP errors; nothing is upgraded.
async fn ws_handshake(
    query: String,
    headers: HeaderMap,
    on_upgrade: Option<OnUpgrade>,
    peer: Option<PeerAddr>,
    ctx: Arc<Ctx>,
) -> Response {
    // Before any work (token verification included): a flood from one address stops here.
    if let Some(resp) = check_ip_rate(&ctx, peer, &headers) {
        return resp;
    }
    let token = query_param(&query, "token")
        .filter(|t| !t.is_empty())
        .or_else(|| bearer(&headers));
    let is_upgrade = header_has_token(&headers, "connection", "upgrade")
        && header_has_token(&headers, "upgrade", "websocket")
        && headers
            .get("sec-websocket-version")
            .is_some_and(|v| v.as_bytes() == b"13");
    // No token at all on a real upgrade: first-message authentication (the socket opens,
    // and its first frame must be `authenticate`). Anything else without a valid token is
    // refused before the upgrade.
    let identity = match token.as_deref().map(|t| ctx.verifier.identify(t)) {
        None if is_upgrade => None,
        None => {
            ctx.metrics.handshake_failed(HandshakeFailure::Unauthorized);
            return auth_error(&AuthError::Missing);
        }
        Some(Err(e)) => {
            ctx.metrics.handshake_failed(HandshakeFailure::Unauthorized);
            tracing::info!(reason = %e, "websocket handshake refused");
            return auth_error(&e);
        }
        Some(Ok(i)) => Some(i),
    };
    // Cross-site WebSocket hijacking: a browser sends the page's Origin; refuse origins
    // not on the allowlist. Clients without an Origin (apps, servers) are not browsers.
    if let Some(origin) = headers.get(http::header::ORIGIN) {
        let allowed = ctx.settings.allowed_origins.is_empty()
            || origin.to_str().is_ok_and(|o| {
                let o = o.trim_end_matches('/');
                ctx.settings
                    .allowed_origins
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(o))
            });
        if !allowed {
            tracing::info!("websocket handshake refused: origin not allowed");
            ctx.metrics.handshake_failed(HandshakeFailure::Origin);
            return error_response(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "origin not allowed",
            );
        }
    }
    if ctx.draining.is_cancelled() {
        ctx.metrics.handshake_failed(HandshakeFailure::Draining);
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "gateway is draining",
        );
    }
    let key = headers
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec());
    let (Some(key), Some(on_upgrade), true) = (key, on_upgrade, is_upgrade) else {
        ctx.metrics.handshake_failed(HandshakeFailure::BadUpgrade);
        return error_response(
            StatusCode::UPGRADE_REQUIRED,
            ErrorCode::InvalidField,
            "expected a WebSocket upgrade (version 13)",
        );
    };
    let accept = derive_accept_key(&key);
    // The per-user cap counts sockets on every gateway (presence-service knows them all).
    // With first-message auth it is checked once the user is known.
    if let Some(i) = &identity {
        if let Err(resp) = check_connection_cap(&ctx, i.user_id).await {
            return resp;
        }
    }
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => crate::ws::serve(ctx, upgraded, identity).await,
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    let mut resp = Response::new(Default::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&accept) {
        h.insert(http::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

/// `POST /api/v1/conversations/` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateConversationBody {
    participant_ids: Vec<proto::frames::Id>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    kind: Option<String>,
}

/// A conversation as the REST API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConversationJson {
    /// Id.
    pub id: i64,
    /// `direct` or `group`.
    pub kind: String,
    /// Title (empty for direct chats).
    pub title: String,
    /// Members.
    pub participant_ids: Vec<i64>,
    /// Newest message's seq.
    pub last_seq: i64,
    /// Creator.
    pub created_by: i64,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

/// The wire name of a conversation kind.
pub fn kind_name(kind: i32) -> &'static str {
    match pb::ConversationKind::try_from(kind) {
        Ok(pb::ConversationKind::Direct) => "direct",
        _ => "group",
    }
}

impl From<pb::Conversation> for ConversationJson {
    fn from(c: pb::Conversation) -> Self {
        ConversationJson {
            id: c.id,
            kind: kind_name(c.kind).to_owned(),
            title: c.title,
            participant_ids: c.participant_ids,
            last_seq: c.last_seq,
            created_by: c.created_by,
            created_at: proto::time::rfc3339_ms(c.created_at_ms),
        }
    }
}

pub(crate) async fn create_conversation(
    headers: HeaderMap,
    body: Bytes,
    ctx: Arc<Ctx>,
) -> Response {
    let user_id = match bearer(&headers).map(|t| ctx.verifier.verify(&t)) {
        None => return auth_error(&AuthError::Missing),
        Some(Err(e)) => return auth_error(&e),
        Some(Ok(u)) => u,
    };
    let parsed: CreateConversationBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) if e.is_syntax() || e.is_eof() => {
            return error_response(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidJson,
                format!("body is not valid JSON: {e}"),
            )
        }
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidField,
                e.to_string(),
            )
        }
    };
    let kind = match parsed.kind.as_deref() {
        None => pb::ConversationKind::Unspecified,
        Some("direct") => pb::ConversationKind::Direct,
        Some("group") => pb::ConversationKind::Group,
        Some(other) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidField,
                format!("kind must be \"direct\" or \"group\", got {other:?}"),
            )
        }
    };
    let req = pb::CreateConversationRequest {
        creator_id: user_id,
        participant_ids: parsed.participant_ids.iter().map(|i| i.0).collect(),
        title: parsed.title.unwrap_or_default(),
        kind: kind as i32,
    };
    let reply = match ctx
        .bus
        .request(
            subjects::CONV_CREATE,
            Bytes::from(req.encode_to_vec()),
            ctx.settings.request_timeout,
        )
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "message-service request failed");
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "message service unavailable",
            );
        }
    };
    match pb::CreateConversationResponse::decode(reply.payload) {
        Ok(pb::CreateConversationResponse {
            result: Some(pb::create_conversation_response::Result::Conversation(c)),
            existing,
        }) => {
            let status = if existing {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            warp::reply::with_status(warp::reply::json(&ConversationJson::from(c)), status)
                .into_response()
        }
        Ok(pb::CreateConversationResponse {
            result: Some(pb::create_conversation_response::Result::Error(e)),
            ..
        }) => {
            let code = ErrorCode::parse(&e.code);
            error_response(status_for(code), code, e.message)
        }
        _ => error_response(
            StatusCode::BAD_GATEWAY,
            ErrorCode::Internal,
            "bad reply from message service",
        ),
    }
}

/// `POST /api/v1/conversations/{id}/participants/` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ParticipantsBody {
    #[serde(default)]
    add: Vec<proto::frames::Id>,
    #[serde(default)]
    remove: Vec<proto::frames::Id>,
}

/// Parses a JSON body into `T`, telling bad JSON (`invalid_json`) from bad fields.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, HttpError> {
    serde_json::from_slice(body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidJson,
                format!("body is not valid JSON: {e}"),
            )
        } else {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidField,
                e.to_string(),
            )
        }
    })
}

pub(crate) fn authenticate(headers: &HeaderMap, ctx: &Ctx) -> Result<i64, HttpError> {
    let e = match bearer(headers).map(|t| ctx.verifier.verify(&t)) {
        Some(Ok(u)) => return Ok(u),
        None => AuthError::Missing,
        Some(Err(e)) => e,
    };
    Err(HttpError::new(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthorized,
        e.to_string(),
    ))
}

pub(crate) async fn update_participants(
    conversation_id: i64,
    headers: HeaderMap,
    body: Bytes,
    ctx: Arc<Ctx>,
) -> Response {
    let user_id = match authenticate(&headers, &ctx) {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let parsed: ParticipantsBody = match parse_body(&body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let req = pb::UpdateParticipantsRequest {
        actor_id: user_id,
        conversation_id,
        add_user_ids: parsed.add.iter().map(|i| i.0).collect(),
        remove_user_ids: parsed.remove.iter().map(|i| i.0).collect(),
    };
    match crate::ws::call::<_, pb::UpdateParticipantsResponse>(&ctx, subjects::CONV_MEMBERS, &req)
        .await
    {
        Ok(pb::UpdateParticipantsResponse {
            result: Some(pb::update_participants_response::Result::Conversation(c)),
        }) => warp::reply::json(&ConversationJson::from(c)).into_response(),
        Ok(pb::UpdateParticipantsResponse {
            result: Some(pb::update_participants_response::Result::Error(e)),
        }) => {
            let code = ErrorCode::parse(&e.code);
            error_response(status_for(code), code, e.message)
        }
        Ok(_) => error_response(
            StatusCode::BAD_GATEWAY,
            ErrorCode::Internal,
            "bad reply from message service",
        ),
        Err((code, message)) => error_response(status_for(code), code, message),
    }
}

/// The HTTP status that goes with an error code.
pub fn status_for(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::ConversationNotFound | ErrorCode::MessageNotFound | ErrorCode::NotFound => {
            StatusCode::NOT_FOUND
        }
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_percent_decoding() {
        assert_eq!(
            query_param("token=abc.def&x=1", "token").as_deref(),
            Some("abc.def")
        );
        assert_eq!(
            query_param("x=1&token=a%2Eb", "token").as_deref(),
            Some("a.b")
        );
        assert_eq!(query_param("x=1", "token"), None);
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
