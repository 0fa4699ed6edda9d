//! Web Push: RFC 8291 message encryption (`aes128gcm`, RFC 8188) and RFC 8292 VAPID.
//!
//! For each message: a fresh P-256 key pair and salt; ECDH with the subscription's `p256dh`
//! key; HKDF with the subscription's `auth` secret gives the input keying material, and from
//! it (salted) the content-encryption key and nonce; one record, padded with the `0x02`
//! delimiter, sealed with AES-128-GCM. The body is the RFC 8188 header (salt, record size,
//! our public key) followed by the ciphertext. The request carries
//! `Authorization: vapid t=<ES256 JWT for the endpoint's origin>, k=<our VAPID public key>`.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use bytes::Bytes;
use hkdf::Hkdf;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use p256::{PublicKey, SecretKey};
use sha2::Sha256;

use super::http::{CallError, Http};
use super::{by_status, ConfigError, Notification, Outcome, Target};

/// The record size we declare (one record always suffices for a notification).
const RECORD_SIZE: u32 = 4096;
/// Largest plaintext we send (4096 minus header, tag and delimiter, rounded down).
const MAX_PLAINTEXT: usize = 3000;

/// Why a payload could not be encrypted for a subscription.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CryptoError(pub String);

/// Encrypts `plaintext` for a subscription (RFC 8291 §3.4), with the given ephemeral key
/// and salt (random in production; fixed by the RFC's test vector in tests).
pub fn encrypt_with(
    ua_public: &[u8],
    auth_secret: &[u8],
    plaintext: &[u8],
    as_secret: &SecretKey,
    salt: &[u8; 16],
) -> Result<Vec<u8>, CryptoError> {
    let ua = PublicKey::from_sec1_bytes(ua_public)
        .map_err(|_| CryptoError("p256dh is not a P-256 public key".into()))?;
    if auth_secret.len() != 16 {
        return Err(CryptoError("auth must be 16 bytes".into()));
    }
    let as_public = as_secret.public_key().to_encoded_point(false);
    let ua_point = ua.to_encoded_point(false);
    let shared = p256::ecdh::diffie_hellman(as_secret.to_nonzero_scalar(), ua.as_affine());
    // IKM = HKDF(salt = auth_secret, ikm = ecdh_secret, info = "WebPush: info" 0 ua as)
    let mut key_info = Vec::with_capacity(14 + 65 + 65);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(ua_point.as_bytes());
    key_info.extend_from_slice(as_public.as_bytes());
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth_secret), shared.raw_secret_bytes())
        .expand(&key_info, &mut ikm)
        .map_err(|_| CryptoError("hkdf".into()))?;
    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .map_err(|_| CryptoError("hkdf".into()))?;
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .map_err(|_| CryptoError("hkdf".into()))?;
    let mut record = plaintext.to_vec();
    record.push(0x02); // last (and only) record, no padding
    let sealed = Aes128Gcm::new_from_slice(&cek)
        .map_err(|_| CryptoError("key".into()))?
        .encrypt(&Nonce::from(nonce), record.as_slice())
        .map_err(|_| CryptoError("seal".into()))?;
    let mut body = Vec::with_capacity(16 + 4 + 1 + 65 + sealed.len());
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(65);
    body.extend_from_slice(as_public.as_bytes());
    body.extend_from_slice(&sealed);
    Ok(body)
}

/// Encrypts with a fresh key pair and salt.
pub fn encrypt(
    ua_public: &[u8],
    auth_secret: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    use rand::RngCore;
    // A fresh key per message (RFC 8291 §3.1): never reused, dropped after use.
    let as_secret = SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    encrypt_with(ua_public, auth_secret, plaintext, &as_secret, &salt)
}

/// Web Push sender (VAPID identity).
pub struct WebPush {
    key: EncodingKey,
    public_b64: String,
    subject: String,
}

impl WebPush {
    /// From the VAPID private key (PKCS#8 PEM, or the raw 32-byte scalar in base64url as
    /// most tools print it) and the contact (`mailto:` or `https:`).
    pub fn new(private_key: &str, subject: &str) -> Result<WebPush, ConfigError> {
        let secret = if private_key.contains("BEGIN") {
            SecretKey::from_pkcs8_pem(private_key)
                .map_err(|e| ConfigError(format!("VAPID key: {e}")))?
        } else {
            let raw = B64
                .decode(private_key.trim().trim_end_matches('='))
                .map_err(|e| ConfigError(format!("VAPID key: {e}")))?;
            SecretKey::from_slice(&raw).map_err(|e| ConfigError(format!("VAPID key: {e}")))?
        };
        if !(subject.starts_with("mailto:") || subject.starts_with("https://")) {
            return Err(ConfigError(
                "VAPID subject must be a mailto: or https: URL".into(),
            ));
        }
        let pem = secret
            .to_pkcs8_pem(Default::default())
            .map_err(|e| ConfigError(format!("VAPID key: {e}")))?;
        let key = EncodingKey::from_ec_pem(pem.as_bytes())
            .map_err(|e| ConfigError(format!("VAPID key: {e}")))?;
        let public_b64 = B64.encode(secret.public_key().to_encoded_point(false).as_bytes());
        Ok(WebPush {
            key,
            public_b64,
            subject: subject.to_owned(),
        })
    }

    /// The application server key browsers subscribe with (`applicationServerKey`).
    pub fn public_key(&self) -> &str {
        &self.public_b64
    }

    fn vapid(&self, endpoint: &str) -> Result<String, Outcome> {
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|_| Outcome::Gone("Web Push: endpoint is not a URL".into()))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(Outcome::Gone("Web Push: endpoint is not absolute".into()));
        };
        let claims = serde_json::json!({
            "aud": format!("{scheme}://{authority}"),
            "exp": proto::time::now_ms() / 1000 + 12 * 3600,
            "sub": self.subject,
        });
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("JWT".into());
        let jwt = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| Outcome::Failed(format!("VAPID: {e}")))?;
        Ok(format!("vapid t={jwt}, k={}", self.public_b64))
    }

    /// Sends to one subscription.
    pub async fn send(&self, http: &Http, t: &Target, n: &Notification) -> Outcome {
        // See the webhook: checked here, and by the connector against the resolved address.
        if let Err(why) = crate::outbound::check_url(http.guard().policy, &t.token) {
            return Outcome::Failed(format!("Web Push: refused by the outbound policy: {why}"));
        }
        let (Ok(p256dh), Ok(auth)) = (
            B64.decode(t.p256dh.trim_end_matches('=')),
            B64.decode(t.auth.trim_end_matches('=')),
        ) else {
            return Outcome::Gone("Web Push: subscription keys are not base64url".into());
        };
        let mut plaintext = serde_json::json!({
            "title": n.title,
            "body": n.body,
            "data": n.data(),
        })
        .to_string();
        plaintext.truncate(MAX_PLAINTEXT);
        let body = match encrypt(&p256dh, &auth, plaintext.as_bytes()) {
            Ok(b) => b,
            Err(e) => return Outcome::Gone(format!("Web Push: {e}")),
        };
        let authorization = match self.vapid(&t.token) {
            Ok(a) => a,
            Err(o) => return o,
        };
        let req = match http::Request::post(&t.token)
            .header("authorization", authorization)
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .header("ttl", "86400")
            .header("urgency", "high")
            .header("topic", n.collapse_key())
            .body(Full::new(Bytes::from(body)))
        {
            Ok(r) => r,
            Err(e) => return Outcome::Gone(format!("Web Push endpoint: {e}")),
        };
        let r = match http.call_guarded(req).await {
            Ok(r) => r,
            Err(CallError::Refused(why)) => return Outcome::Failed(format!("Web Push: {why}")),
            Err(CallError::Failed(e)) => return Outcome::Retry(None, format!("Web Push: {e}")),
        };
        match r.status.as_u16() {
            404 | 410 => Outcome::Gone(format!("Web Push: HTTP {}", r.status.as_u16())),
            _ => by_status(&r, "Web Push"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> Vec<u8> {
        B64.decode(s).unwrap_or_default()
    }

    /// RFC 8291 §5: the worked example, byte for byte.
    #[test]
    fn rfc8291_example() {
        let as_secret = SecretKey::from_slice(&b64("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"))
            .unwrap_or_else(|_| panic!("key"));
        let ua_public = b64("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4");
        let auth = b64("BTBZMqHH6r4Tts7J_aSIgg");
        let salt: [u8; 16] = b64("DGv6ra1nlYgDCS1FRnbzlw").try_into().unwrap_or_default();
        let body = encrypt_with(
            &ua_public,
            &auth,
            b"When I grow up, I want to be a watermelon",
            &as_secret,
            &salt,
        )
        .unwrap_or_default();
        assert_eq!(
            B64.encode(body),
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
        );
    }
}
