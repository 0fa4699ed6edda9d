//! Firebase Cloud Messaging, HTTP v1 API.
//!
//! Auth is OAuth2 with a service account: we sign a JWT (RS256, the account's private key,
//! `scope` = firebase.messaging, `aud` = the token URI), exchange it at the token URI for an
//! access token (grant type `jwt-bearer`), and cache that token until shortly before it
//! expires. Sends are `POST {base}/v1/projects/{project}/messages:send` with the bearer
//! token. A token FCM reports `UNREGISTERED` (or 404) is dead.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::http::Http;
use super::{by_status, ConfigError, Notification, Outcome};

/// The OAuth2 scope for sending.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Default API base.
pub const DEFAULT_BASE_URL: &str = "https://fcm.googleapis.com";

/// The fields of a Google service-account key file we use.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceAccount {
    /// The Firebase project.
    pub project_id: String,
    /// PEM RSA private key.
    pub private_key: String,
    /// The account (`iss` of the assertion).
    pub client_email: String,
    /// Where assertions are exchanged for access tokens.
    pub token_uri: String,
}

/// FCM client state.
pub struct Fcm {
    account: ServiceAccount,
    key: EncodingKey,
    base_url: String,
    token: Mutex<Option<(String, Instant)>>,
}

impl Fcm {
    /// From a service-account key (JSON text) and the API base URL.
    pub fn new(service_account_json: &str, base_url: Option<String>) -> Result<Fcm, ConfigError> {
        let account: ServiceAccount = serde_json::from_str(service_account_json)
            .map_err(|e| ConfigError(format!("FCM service account: {e}")))?;
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|e| ConfigError(format!("FCM service account private_key: {e}")))?;
        Ok(Fcm {
            account,
            key,
            base_url: base_url
                .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned())
                .trim_end_matches('/')
                .to_owned(),
            token: Mutex::new(None),
        })
    }

    async fn access_token(&self, http: &Http, force: bool) -> Result<String, Outcome> {
        let mut cached = self.token.lock().await;
        if let Some((t, until)) = cached.as_ref() {
            if !force && Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        let now = proto::time::now_ms() / 1000;
        let claims = serde_json::json!({
            "iss": self.account.client_email,
            "scope": SCOPE,
            "aud": self.account.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        let assertion = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(|e| Outcome::Failed(format!("FCM assertion: {e}")))?;
        let body = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        let req = http::Request::post(&self.account.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Outcome::Failed(format!("FCM token request: {e}")))?;
        let r = http
            .call(req, false)
            .await
            .map_err(|e| Outcome::Retry(None, format!("FCM token: {e}")))?;
        if !r.status.is_success() {
            return Err(match by_status(&r, "FCM token") {
                Outcome::Sent => Outcome::Failed("FCM token: unexpected".into()),
                o => o,
            });
        }
        let v = r.json();
        let token = v["access_token"]
            .as_str()
            .ok_or_else(|| Outcome::Failed("FCM token: no access_token".into()))?
            .to_owned();
        let ttl = v["expires_in"].as_u64().unwrap_or(3600);
        // Renew a minute early so a send never carries a token that expires in flight.
        let until = Instant::now() + Duration::from_secs(ttl.saturating_sub(60).max(1));
        *cached = Some((token.clone(), until));
        Ok(token)
    }

    /// Sends to one registration token.
    pub async fn send(&self, http: &Http, token: &str, n: &Notification) -> Outcome {
        // One retry with a fresh access token if FCM says ours is no good.
        for force in [false, true] {
            let access = match self.access_token(http, force).await {
                Ok(a) => a,
                Err(o) => return o,
            };
            let collapse = n.collapse_key();
            let message = serde_json::json!({
                "message": {
                    "token": token,
                    "notification": {"title": n.title, "body": n.body},
                    "data": n.data(),
                    "android": {
                        "collapse_key": collapse,
                        "priority": "HIGH",
                        "notification": {"tag": collapse},
                    },
                    "apns": {"headers": {"apns-collapse-id": collapse}},
                }
            });
            let url = format!(
                "{}/v1/projects/{}/messages:send",
                self.base_url, self.account.project_id
            );
            let req = match http::Request::post(url)
                .header("authorization", format!("Bearer {access}"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(message.to_string())))
            {
                Ok(r) => r,
                Err(e) => return Outcome::Failed(format!("FCM request: {e}")),
            };
            let r = match http.call(req, false).await {
                Ok(r) => r,
                Err(e) => return Outcome::Retry(None, format!("FCM: {e}")),
            };
            if r.status == http::StatusCode::UNAUTHORIZED && !force {
                continue;
            }
            let error_code = r.json()["error"]["details"].as_array().and_then(|d| {
                d.iter()
                    .find_map(|x| x["errorCode"].as_str().map(str::to_owned))
            });
            if r.status == http::StatusCode::NOT_FOUND
                || error_code.as_deref() == Some("UNREGISTERED")
            {
                return Outcome::Gone(format!(
                    "FCM: {}",
                    error_code.unwrap_or_else(|| "NOT_FOUND".into())
                ));
            }
            return by_status(&r, "FCM");
        }
        Outcome::Failed("FCM: access token refused twice".into())
    }
}
