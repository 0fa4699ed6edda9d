//! Device registration, mutes and preferences: one typed function per request, served over
//! NATS (for the gateway's REST routes) and gRPC (for backends).

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use futures_util::StreamExt;
use prost::Message as _;
use proto::pb::{self, DevicePlatform};
use proto::{field_error, pb_error, subjects, ErrorCode};

use crate::outbound;
use crate::store::{MuteLevel, Registered};
use crate::Inner;

/// Longest token or URL accepted.
const MAX_TOKEN: usize = 4096;
/// Most devices one user may register (old phones pile up otherwise).
pub const MAX_DEVICES_PER_USER: usize = 20;

/// The request subjects.
#[derive(Debug, Clone, Copy)]
pub enum Route {
    /// Register.
    Register,
    /// Unregister.
    Unregister,
    /// List.
    List,
    /// Mute.
    Mute,
    /// Preferences.
    Prefs,
}

/// Route ↔ subject.
pub const ROUTES: [(Route, &str); 5] = [
    (Route::Register, subjects::PUSH_REGISTER),
    (Route::Unregister, subjects::PUSH_UNREGISTER),
    (Route::List, subjects::PUSH_LIST_DEVICES),
    (Route::Mute, subjects::PUSH_MUTE),
    (Route::Prefs, subjects::PUSH_PREFS),
];

fn unavailable(e: crate::store::StoreError) -> pb::Error {
    tracing::error!(error = %e, "push store failure");
    pb_error(
        ErrorCode::Unavailable,
        "the push store is unavailable; retry",
    )
}

fn user(id: i64) -> Result<(), pb::Error> {
    if id > 0 {
        Ok(())
    } else {
        Err(field_error(
            "user_id",
            ErrorCode::InvalidField,
            "user_id must be a positive integer",
        ))
    }
}

fn platform(inner: &Inner, p: i32) -> Result<DevicePlatform, pb::Error> {
    let p = DevicePlatform::try_from(p)
        .ok()
        .filter(|p| *p != DevicePlatform::Unspecified)
        .ok_or_else(|| {
            field_error(
                "platform",
                ErrorCode::InvalidField,
                "platform must be fcm, apns, webpush or webhook",
            )
        })?;
    if !inner.providers.supports(p) {
        return Err(field_error(
            "platform",
            ErrorCode::Unsupported,
            format!("{} is not configured on this server", p.as_str_name()),
        ));
    }
    Ok(p)
}

/// Checks a user-chosen URL (webhook, Web Push endpoint) against the outbound policy: its
/// form, and what its host resolves to now (the connector checks again at send time). A
/// name that does not resolve is refused like one that resolves to a private address, and
/// with the same words, so registration cannot be used to probe internal DNS names.
async fn check_target(inner: &Inner, url: &str, what: &str) -> Result<(), pb::Error> {
    let guard = inner.providers.guard();
    let bad = |detail: String| {
        field_error(
            "token",
            ErrorCode::InvalidField,
            format!("{what} must be an https URL on port 443 whose host resolves only to public addresses{detail}"),
        )
    };
    let uri: http::Uri = url.parse().map_err(|_| bad(String::new()))?;
    // The form (scheme, port, literal address, localhost) may be named.
    outbound::check_uri(guard.policy, &uri).map_err(|why| bad(format!(" ({why})")))?;
    if !guard.policy.allow_private {
        guard
            .addresses(&uri)
            .await
            .map_err(|_| bad(String::new()))?;
    }
    Ok(())
}

/// Checks a registration's token (and Web Push keys) for its platform.
async fn validate(
    inner: &Inner,
    req: &pb::RegisterDeviceRequest,
    p: DevicePlatform,
) -> Result<(), pb::Error> {
    let bad = |field: &str, msg: &str| Err(field_error(field, ErrorCode::InvalidField, msg));
    let t = &req.token;
    if t.is_empty() || t.len() > MAX_TOKEN || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return bad(
            "token",
            "token must be 1 to 4096 printable ASCII characters",
        );
    }
    match p {
        DevicePlatform::Apns if !(t.len() >= 32 && t.bytes().all(|b| b.is_ascii_hexdigit())) => {
            bad("token", "an APNs device token is hex")
        }
        DevicePlatform::Webpush => {
            let key = B64
                .decode(req.p256dh.trim_end_matches('='))
                .unwrap_or_default();
            if p256::PublicKey::from_sec1_bytes(&key).is_err() {
                return bad("p256dh", "p256dh must be a base64url P-256 public key");
            }
            if B64.decode(req.auth.trim_end_matches('=')).map(|a| a.len()) != Ok(16) {
                return bad("auth", "auth must be 16 bytes, base64url");
            }
            check_target(inner, t, "a Web Push endpoint").await
        }
        DevicePlatform::Webhook => check_target(inner, t, "a webhook").await,
        _ => Ok(()),
    }
}

/// Registers a device. The per-user limit and the one-owner rule are enforced by the store
/// in one transaction, so they hold under concurrent registrations.
pub(crate) async fn register(
    inner: &Inner,
    req: pb::RegisterDeviceRequest,
) -> pb::RegisterDeviceResponse {
    use pb::register_device_response::Result as R;
    let res = async {
        user(req.user_id)?;
        let p = platform(inner, req.platform)?;
        validate(inner, &req, p).await?;
        match inner
            .store
            .register_device(
                req.user_id,
                p,
                &req.token,
                &req.p256dh,
                &req.auth,
                MAX_DEVICES_PER_USER,
            )
            .await
            .map_err(unavailable)?
        {
            Registered::Device { id, created_at_ms } => Ok(pb::Device {
                id,
                user_id: req.user_id,
                platform: p as i32,
                token: req.token.clone(),
                created_at_ms,
            }),
            Registered::OwnedByOther => Err(field_error(
                "token",
                ErrorCode::Forbidden,
                "this device is registered to another account; unregister it there first",
            )),
            Registered::TooMany => Err(pb_error(
                ErrorCode::RateLimited,
                format!("at most {MAX_DEVICES_PER_USER} devices per user; unregister old ones"),
            )),
        }
    }
    .await;
    pb::RegisterDeviceResponse {
        result: Some(match res {
            Ok(d) => R::Device(d),
            Err(e) => R::Error(e),
        }),
    }
}

/// Forgets a device.
pub(crate) async fn unregister(
    inner: &Inner,
    req: pb::UnregisterDeviceRequest,
) -> pb::UnregisterDeviceResponse {
    let res = async {
        user(req.user_id)?;
        let p = DevicePlatform::try_from(req.platform)
            .map_err(|_| field_error("platform", ErrorCode::InvalidField, "unknown platform"))?;
        inner
            .store
            .unregister_device(req.user_id, p, &req.token)
            .await
            .map_err(unavailable)
    }
    .await;
    match res {
        Ok(removed) => pb::UnregisterDeviceResponse {
            removed,
            error: None,
        },
        Err(e) => pb::UnregisterDeviceResponse {
            removed: false,
            error: Some(e),
        },
    }
}

/// A user's devices.
pub(crate) async fn list(inner: &Inner, req: pb::ListDevicesRequest) -> pb::ListDevicesResponse {
    let res = async {
        user(req.user_id)?;
        inner.store.devices(req.user_id).await.map_err(unavailable)
    }
    .await;
    match res {
        Ok(devices) => pb::ListDevicesResponse {
            devices: devices
                .into_iter()
                .map(|(t, created)| pb::Device {
                    id: t.id,
                    user_id: t.user_id,
                    platform: t.platform as i32,
                    token: t.token,
                    created_at_ms: created,
                })
                .collect(),
            error: None,
        },
        Err(e) => pb::ListDevicesResponse {
            devices: Vec::new(),
            error: Some(e),
        },
    }
}

/// A mute's `level`, the one rule every door (REST through NATS, gRPC) shares: `all`,
/// `mentions_only`, or empty for `mentions_only`.
pub fn mute_level(level: &str) -> Result<MuteLevel, pb::Error> {
    match level {
        "" | "mentions_only" => Ok(MuteLevel::MentionsOnly),
        "all" => Ok(MuteLevel::All),
        _ => Err(field_error(
            "level",
            ErrorCode::InvalidField,
            "level must be \"all\" or \"mentions_only\"",
        )),
    }
}

/// Mutes or unmutes a conversation.
pub(crate) async fn mute(inner: &Inner, req: pb::SetMuteRequest) -> pb::SetMuteResponse {
    let res = async {
        user(req.user_id)?;
        let level = mute_level(&req.level)?;
        if req.conversation_id <= 0 {
            return Err(field_error(
                "conversation_id",
                ErrorCode::InvalidField,
                "conversation_id must be a positive integer",
            ));
        }
        if req.until_ms < 0 {
            return Err(field_error(
                "until_ms",
                ErrorCode::InvalidField,
                "until_ms must not be negative",
            ));
        }
        inner
            .store
            .set_mute(
                req.user_id,
                req.conversation_id,
                req.muted,
                req.until_ms,
                level,
            )
            .await
            .map_err(unavailable)
    }
    .await;
    pb::SetMuteResponse { error: res.err() }
}

/// Sets notification preferences.
pub(crate) async fn prefs(
    inner: &Inner,
    req: pb::SetPushPreferencesRequest,
) -> pb::SetPushPreferencesResponse {
    let res = async {
        user(req.user_id)?;
        inner
            .store
            .set_hide_text(req.user_id, req.hide_text)
            .await
            .map_err(unavailable)
    }
    .await;
    pb::SetPushPreferencesResponse { error: res.err() }
}

fn undecodable(e: prost::DecodeError) -> pb::Error {
    pb_error(ErrorCode::InvalidField, format!("undecodable request: {e}"))
}

/// Answers one route's requests until the subscription ends.
pub(crate) async fn serve(inner: Arc<Inner>, route: Route, mut sub: bus::Subscriber) {
    while let Some(msg) = sub.next().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let p = &msg.payload[..];
            let reply = match route {
                Route::Register => match pb::RegisterDeviceRequest::decode(p) {
                    Ok(r) => register(&inner, r).await.encode_to_vec(),
                    Err(e) => pb::RegisterDeviceResponse {
                        result: Some(pb::register_device_response::Result::Error(undecodable(e))),
                    }
                    .encode_to_vec(),
                },
                Route::Unregister => match pb::UnregisterDeviceRequest::decode(p) {
                    Ok(r) => unregister(&inner, r).await.encode_to_vec(),
                    Err(e) => pb::UnregisterDeviceResponse {
                        removed: false,
                        error: Some(undecodable(e)),
                    }
                    .encode_to_vec(),
                },
                Route::List => match pb::ListDevicesRequest::decode(p) {
                    Ok(r) => list(&inner, r).await.encode_to_vec(),
                    Err(e) => pb::ListDevicesResponse {
                        devices: Vec::new(),
                        error: Some(undecodable(e)),
                    }
                    .encode_to_vec(),
                },
                Route::Mute => match pb::SetMuteRequest::decode(p) {
                    Ok(r) => mute(&inner, r).await.encode_to_vec(),
                    Err(e) => pb::SetMuteResponse {
                        error: Some(undecodable(e)),
                    }
                    .encode_to_vec(),
                },
                Route::Prefs => match pb::SetPushPreferencesRequest::decode(p) {
                    Ok(r) => prefs(&inner, r).await.encode_to_vec(),
                    Err(e) => pb::SetPushPreferencesResponse {
                        error: Some(undecodable(e)),
                    }
                    .encode_to_vec(),
                },
            };
            if let Err(e) = inner.bus.respond(&msg, bytes::Bytes::from(reply)).await {
                tracing::warn!(error = %e, "push api reply failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mute_levels_parse_with_mentions_only_by_default() {
        assert_eq!(mute_level("all").ok(), Some(MuteLevel::All));
        assert_eq!(
            mute_level("mentions_only").ok(),
            Some(MuteLevel::MentionsOnly)
        );
        assert_eq!(mute_level("").ok(), Some(MuteLevel::MentionsOnly));
        for bad in ["ALL", " all", "mentions", "none", "all\0"] {
            let e = mute_level(bad).expect_err(bad);
            assert_eq!(e.code, ErrorCode::InvalidField.as_str(), "{bad}");
            assert_eq!(e.field, "level", "{bad}");
        }
        for l in [MuteLevel::All, MuteLevel::MentionsOnly] {
            assert_eq!(mute_level(l.as_str()).ok(), Some(l), "round trip");
        }
    }
}
