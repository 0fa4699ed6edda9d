//! Webhooks for backends: `POST <url>` with a JSON body, signed so the receiver can trust
//! it: `X-Indaba-Timestamp: <unix seconds>` and
//! `X-Indaba-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`. The receiver
//! recomputes the HMAC and rejects stale timestamps (replays). 410 means "stop sending".

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use sha2::Sha256;

use super::http::{CallError, Http};
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
}

impl Webhook {
    /// With the signing secret (≥ 16 bytes). Which URLs may be called is the outbound
    /// policy's business ([`crate::outbound`]).
    pub fn new(secret: &str) -> Result<Webhook, ConfigError> {
        if secret.len() < 16 {
            return Err(ConfigError(
                "webhook secret must be at least 16 characters".into(),
            ));
        }
        Ok(Webhook {
            secret: secret.as_bytes().to_vec(),
        })
    }

    /// Calls one webhook.
    pub async fn send(
        &self,
        http: &Http,
        url: &str,
        delivery_id: &str,
        n: &Notification,
    ) -> Outcome {
        // Checked again here (the policy may have changed since registration) and, against
        // the resolved address, by the connector. A refusal is dead-lettered, never
        // "gone": deleting the device would tell the user something about the target.
        if let Err(why) = crate::outbound::check_url(http.guard().policy, url) {
            return Outcome::Failed(format!("webhook: refused by the outbound policy: {why}"));
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
        match http.call_guarded(req).await {
            Ok(r) if r.status == http::StatusCode::GONE => Outcome::Gone("webhook: 410".into()),
            Ok(r) => by_status(&r, "webhook"),
            Err(CallError::Refused(why)) => Outcome::Failed(format!("webhook: {why}")),
            Err(CallError::Failed(e)) => Outcome::Retry(None, format!("webhook: {e}")),
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
