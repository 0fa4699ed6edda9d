//! Webhooks for backends: `POST <url>` with a JSON body, signed so the receiver can trust
//! it: `X-Indaba-Timestamp: <unix seconds>` and
//! `X-Indaba-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`. The receiver
//! recomputes the HMAC and rejects stale timestamps (replays). 410 means "stop sending".

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use sha2::Sha256;

use super::http::Http;
use super::{by_status, ConfigError, Notification, Outcome};

/// The signature of a body at a timestamp.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        // HMAC takes keys of any length; this cannot happen.
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("v1={hex}")
}

/// Webhook sender.
pub struct Webhook {
    secret: Vec<u8>,
    allow_http: bool,
}

impl Webhook {
    /// With the signing secret (≥ 16 bytes). `allow_http` admits plain `http://` URLs
    /// (development and tests only).
    pub fn new(secret: &str, allow_http: bool) -> Result<Webhook, ConfigError> {
        if secret.len() < 16 {
            return Err(ConfigError(
                "webhook secret must be at least 16 characters".into(),
            ));
        }
        Ok(Webhook {
            secret: secret.as_bytes().to_vec(),
            allow_http,
        })
    }

    /// Whether a URL may be registered.
    pub fn accepts(&self, url: &str) -> bool {
        url.starts_with("https://") || (self.allow_http && url.starts_with("http://"))
    }

    /// Calls one webhook.
    pub async fn send(
        &self,
        http: &Http,
        url: &str,
        delivery_id: &str,
        n: &Notification,
    ) -> Outcome {
        if !self.accepts(url) {
            return Outcome::Gone("webhook URL must be https".into());
        }
        let body = serde_json::json!({"event": "notification", "notification": n}).to_string();
        let ts = proto::time::now_ms() / 1000;
        let req = match http::Request::post(url)
            .header("content-type", "application/json")
            .header("x-indaba-timestamp", ts.to_string())
            .header("x-indaba-delivery-id", delivery_id)
            .header(
                "x-indaba-signature",
                signature(&self.secret, ts, body.as_bytes()),
            )
            .body(Full::new(Bytes::from(body)))
        {
            Ok(r) => r,
            Err(e) => return Outcome::Gone(format!("webhook URL: {e}")),
        };
        match http.call(req, false).await {
            Ok(r) if r.status == http::StatusCode::GONE => Outcome::Gone("webhook: 410".into()),
            Ok(r) => by_status(&r, "webhook"),
            Err(e) => Outcome::Retry(None, format!("webhook: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Independent value: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret-0123456789ab
        let s = signature(b"secret-0123456789ab", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            s,
            "v1=69fe823047b10e2f52d9330dbaf8749b59fe74bc25cf4aed18673be90f20c15c"
        );
        assert_ne!(
            s,
            signature(b"secret-0123456789ab", 1_700_000_001, br#"{"a":1}"#)
        );
    }
}
