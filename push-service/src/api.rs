//! Device registration, mutes and preferences: one typed function per request, served over
//! NATS (for the gateway's REST routes) and gRPC (for backends).

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use futures_util::StreamExt;
use prost::Message as _;
use proto::pb::{self, DevicePlatform};
use proto::{field_error, pb_error, subjects, ErrorCode};

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

/// Checks a registration's token (and Web Push keys) for its platform.
fn validate(
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
            if !(t.starts_with("https://")
                || (inner.settings.allow_http && t.starts_with("http://")))
            {
                return bad("token", "a Web Push endpoint is an https URL");
            }
            let key = B64
                .decode(req.p256dh.trim_end_matches('='))
                .unwrap_or_default();
            if p256::PublicKey::from_sec1_bytes(&key).is_err() {
                return bad("p256dh", "p256dh must be a base64url P-256 public key");
            }
            if B64.decode(req.auth.trim_end_matches('=')).map(|a| a.len()) != Ok(16) {
                return bad("auth", "auth must be 16 bytes, base64url");
            }
            Ok(())
        }
        DevicePlatform::Webhook
            if !inner
                .providers
                .webhook
                .as_ref()
                .is_some_and(|w| w.accepts(t)) =>
        {
            bad("token", "a webhook is an https URL")
        }
        _ => Ok(()),
    }
}

/// Registers a device.
pub(crate) async fn register(
    inner: &Inner,
    req: pb::RegisterDeviceRequest,
) -> pb::RegisterDeviceResponse {
    use pb::register_device_response::Result as R;
    let res = async {
        user(req.user_id)?;
        let p = platform(inner, req.platform)?;
        validate(inner, &req, p)?;
        let existing = inner
            .store
            .devices(req.user_id)
            .await
            .map_err(unavailable)?;
        let known = existing
            .iter()
            .any(|(d, _)| d.platform == p && d.token == req.token);
        if !known && existing.len() >= MAX_DEVICES_PER_USER {
            return Err(pb_error(
                ErrorCode::RateLimited,
                format!("at most {MAX_DEVICES_PER_USER} devices per user; unregister old ones"),
            ));
        }
        let (id, created) = inner
            .store
            .register_device(req.user_id, p, &req.token, &req.p256dh, &req.auth)
            .await
            .map_err(unavailable)?;
        Ok(pb::Device {
            id,
            user_id: req.user_id,
            platform: p as i32,
            token: req.token.clone(),
            created_at_ms: created,
        })
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

/// Mutes or unmutes a conversation.
pub(crate) async fn mute(inner: &Inner, req: pb::SetMuteRequest) -> pb::SetMuteResponse {
    let res = async {
        user(req.user_id)?;
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
            .set_mute(req.user_id, req.conversation_id, req.muted, req.until_ms)
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
