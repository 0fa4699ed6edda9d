//! The WebSocket door's HTTP half: checks the upgrade request, answers `101 Switching
//! Protocols` by hand (so tungstenite's buffers and limits are ours, see `socket`), and hands
//! the upgraded connection to [`super::socket::run`]. Every refusal is a JSON HTTP error;
//! nothing is upgraded.

use std::sync::Arc;

use http::{HeaderMap, StatusCode};
use hyper::upgrade::OnUpgrade;
use proto::ErrorCode;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use warp::reply::Response;

use crate::auth::AuthError;
use crate::ctx::Ctx;
use crate::metrics::HandshakeFailure;
use crate::reply::{connection_token, header_has_token, Answer, HttpError};
use crate::session::{self, PeerAddr, Transport};

/// `GET /ws/chat/`.
pub(crate) async fn handshake(
    query: String,
    headers: HeaderMap,
    on_upgrade: Option<OnUpgrade>,
    peer: Option<PeerAddr>,
    transport: Option<Arc<Transport>>,
    ctx: Arc<Ctx>,
) -> Response {
    upgrade(&query, &headers, on_upgrade, peer, transport, ctx)
        .await
        .unwrap_or_else(HttpError::into_response)
}

async fn upgrade(
    query: &str,
    headers: &HeaderMap,
    on_upgrade: Option<OnUpgrade>,
    peer: Option<PeerAddr>,
    transport: Option<Arc<Transport>>,
    ctx: Arc<Ctx>,
) -> Answer {
    // Before any work (token verification included): a flood from one address stops here.
    session::attempt(&ctx, peer, headers)?;
    let is_upgrade = header_has_token(headers, "connection", "upgrade")
        && header_has_token(headers, "upgrade", "websocket")
        && headers
            .get(proto::headers::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v.as_bytes() == b"13");
    // No token at all on a real upgrade: first-message authentication (the socket opens,
    // and its first frame must be `authenticate`). Anything else without a valid token is
    // refused before the upgrade.
    let identity = match connection_token(query, headers).map(|t| ctx.verifier.identify(&t)) {
        None if is_upgrade => None,
        None => {
            ctx.metrics.handshake_failed(HandshakeFailure::Unauthorized);
            return Err(AuthError::Missing.into());
        }
        Some(Err(e)) => {
            ctx.metrics.handshake_failed(HandshakeFailure::Unauthorized);
            tracing::info!(reason = %e, "websocket handshake refused");
            return Err(e.into());
        }
        Some(Ok(i)) => Some(i),
    };
    check_origin(&ctx, headers)?;
    session::not_draining(&ctx)?;
    let key = headers
        .get(proto::headers::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().to_vec());
    let (Some(key), Some(on_upgrade), true) = (key, on_upgrade, is_upgrade) else {
        ctx.metrics.handshake_failed(HandshakeFailure::BadUpgrade);
        return Err(HttpError::new(
            StatusCode::UPGRADE_REQUIRED,
            ErrorCode::InvalidField,
            "expected a WebSocket upgrade (version 13)",
        ));
    };
    let accept = derive_accept_key(&key);
    // With a token the cap is checked now, so the refusal is an HTTP 429; with
    // first-message authentication, once the user is known.
    let admission = match &identity {
        Some(i) => Some(session::admit(&ctx, i).await?),
        None => None,
    };
    tokio::spawn(async move {
        match on_upgrade.await {
            // The socket keeps the connection's place in the per-address count.
            Ok(upgraded) => {
                super::socket::run(ctx, upgraded, admission).await;
                drop(transport);
            }
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
    Ok(resp)
}

/// Cross-site WebSocket hijacking: a browser sends the page's Origin; refuse origins not on
/// the allowlist. Clients without an Origin (apps, servers) are not browsers.
fn check_origin(ctx: &Ctx, headers: &HeaderMap) -> Result<(), HttpError> {
    let Some(origin) = headers.get(http::header::ORIGIN) else {
        return Ok(());
    };
    let allowed = ctx.settings.allowed_origins.is_empty()
        || origin.to_str().is_ok_and(|o| {
            let o = o.trim_end_matches('/');
            ctx.settings
                .allowed_origins
                .iter()
                .any(|a| a.eq_ignore_ascii_case(o))
        });
    if allowed {
        return Ok(());
    }
    tracing::info!("websocket handshake refused: origin not allowed");
    ctx.metrics.handshake_failed(HandshakeFailure::Origin);
    Err(HttpError::coded(ErrorCode::Forbidden, "origin not allowed"))
}
