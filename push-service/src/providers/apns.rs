//! Apple Push Notification service, token-based (HTTP/2).
//!
//! The provider token is an ES256 JWT (`iss` = team id, `iat`; header `kid` = key id) signed
//! with the `.p8` key. Apple wants it reused, and refreshed at least once an hour: we renew
//! after 50 minutes, or at once when APNs says `ExpiredProviderToken`. Requests are
//! `POST {base}/3/device/{token}` with `apns-topic`, `apns-push-type`, `apns-priority`,
//! `apns-expiration` and `apns-collapse-id`. 410 and `BadDeviceToken` mean the token is dead.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::sync::Mutex;

use super::http::Http;
use super::{by_status, ConfigError, Notification, Outcome};

/// Default API base (production).
pub const DEFAULT_BASE_URL: &str = "https://api.push.apple.com";
/// Provider tokens are renewed after this (Apple rejects ones older than an hour).
const TOKEN_TTL: Duration = Duration::from_secs(50 * 60);

/// APNs settings.
#[derive(Debug, Clone)]
pub struct ApnsConfig {
    /// The `.p8` key (PKCS#8 PEM).
    pub key_pem: String,
    /// Its key id (10 characters).
    pub key_id: String,
    /// The team id (10 characters).
    pub team_id: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// API base URL.
    pub base_url: Option<String>,
}

/// APNs client state.
pub struct Apns {
    cfg: ApnsConfig,
    key: EncodingKey,
    base_url: String,
    token: Mutex<Option<(String, Instant)>>,
}

impl Apns {
    /// Checks the key and builds the client.
    pub fn new(cfg: ApnsConfig) -> Result<Apns, ConfigError> {
        let key = EncodingKey::from_ec_pem(cfg.key_pem.as_bytes())
            .map_err(|e| ConfigError(format!("APNs key: {e}")))?;
        if cfg.key_id.is_empty() || cfg.team_id.is_empty() || cfg.topic.is_empty() {
            return Err(ConfigError("APNs needs key id, team id and topic".into()));
        }
        let base_url = cfg
            .base_url
            .clone()
            .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned())
            .trim_end_matches('/')
            .to_owned();
        Ok(Apns {
            cfg,
            key,
            base_url,
            token: Mutex::new(None),
        })
    }

    async fn provider_token(&self, force: bool) -> Result<String, Outcome> {
        let mut cached = self.token.lock().await;
        if let Some((t, at)) = cached.as_ref() {
            if !force && at.elapsed() < TOKEN_TTL {
                return Ok(t.clone());
            }
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.cfg.key_id.clone());
        let claims = serde_json::json!({
            "iss": self.cfg.team_id,
            "iat": proto::time::now_ms() / 1000,
        });
        let t = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| Outcome::Failed(format!("APNs token: {e}")))?;
        *cached = Some((t.clone(), Instant::now()));
        Ok(t)
    }

    /// Sends to one device token.
    pub async fn send(&self, http: &Http, token: &str, apns_id: &str, n: &Notification) -> Outcome {
        for force in [false, true] {
            let jwt = match self.provider_token(force).await {
                Ok(t) => t,
                Err(o) => return o,
            };
            let mut payload = serde_json::json!({
                "aps": {
                    "alert": {"title": n.title, "body": n.body},
                    "sound": "default",
                    "thread-id": n.collapse_key(),
                    "mutable-content": 1,
                },
                "conversation_id": n.conversation_id,
                "message_id": n.message_id,
                "sender_id": n.sender_id,
                "count": n.count,
            });
            if let Some(by) = n.mentioned_by {
                payload["mentioned_by"] = by.into();
            }
            let expiration = proto::time::now_ms() / 1000 + 24 * 3600;
            let req = match http::Request::post(format!("{}/3/device/{token}", self.base_url))
                .header("authorization", format!("bearer {jwt}"))
                .header("apns-topic", &self.cfg.topic)
                .header("apns-push-type", "alert")
                .header("apns-priority", "10")
                .header("apns-expiration", expiration.to_string())
                .header("apns-collapse-id", n.collapse_key())
                .header("apns-id", apns_id)
                .body(Full::new(Bytes::from(payload.to_string())))
            {
                Ok(r) => r,
                Err(e) => return Outcome::Failed(format!("APNs request: {e}")),
            };
            let r = match http.call(req, true).await {
                Ok(r) => r,
                Err(e) => return Outcome::Retry(None, format!("APNs: {e}")),
            };
            let reason = r.json()["reason"].as_str().unwrap_or_default().to_owned();
            if reason == "ExpiredProviderToken" && !force {
                continue;
            }
            if r.status == http::StatusCode::GONE
                || matches!(
                    reason.as_str(),
                    "BadDeviceToken" | "Unregistered" | "DeviceTokenNotForTopic"
                )
            {
                return Outcome::Gone(format!("APNs: {} {reason}", r.status.as_u16()));
            }
            return by_status(&r, "APNs");
        }
        Outcome::Failed("APNs: provider token refused twice".into())
    }
}
