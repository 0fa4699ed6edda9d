//! Client authentication: JWTs from the existing auth system (e.g. Django SimpleJWT).
//!
//! The algorithm is pinned by configuration (HS256 with a shared secret, or RS256 with a
//! public key), never taken from the token, which rules out `alg: none` and HS/RS key
//! confusion. `exp` is required; `nbf` is checked when present. The user id comes from
//! `user_id` (SimpleJWT's default claim) or else `sub`, as an integer or a string of digits.
//!
//! Refresh tokens are not access tokens: SimpleJWT signs both with the same key and the same
//! `user_id`, and a refresh token lives for days. When a token carries the token-type claim
//! (`token_type` by default, `INDABA_JWT_TOKEN_TYPE_CLAIM`), its value must be the access
//! type (`access`, `INDABA_JWT_ACCESS_TOKEN_TYPE`); a token without the claim (other
//! issuers) is judged by the other rules alone.

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

/// Where the verification key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// HS256 shared secret.
    Hs256Secret(String),
    /// RS256: path to a PEM public key.
    Rs256PublicKeyFile(PathBuf),
}

/// Why a token was refused. The message is safe to show the client (it never echoes the
/// token).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No token in the query string or `Authorization` header.
    #[error("missing token")]
    Missing,
    /// Signature, format or claims are invalid.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
}

/// Verifies client tokens. Build once, share.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    /// The claim naming a token's type, and the one type accepted.
    token_type: (String, String),
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("alg", &self.validation.algorithms)
            .finish()
    }
}

impl Verifier {
    /// Loads the key. A bad key file is a configuration error at startup, not later.
    pub fn new(source: &KeySource, leeway: Duration) -> anyhow::Result<Verifier> {
        let (key, alg) = match source {
            KeySource::Hs256Secret(s) => (DecodingKey::from_secret(s.as_bytes()), Algorithm::HS256),
            KeySource::Rs256PublicKeyFile(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    anyhow::anyhow!("cannot read JWT public key {}: {e}", path.display())
                })?;
                (
                    DecodingKey::from_rsa_pem(&pem).map_err(|e| {
                        anyhow::anyhow!("bad RS256 public key {}: {e}", path.display())
                    })?,
                    Algorithm::RS256,
                )
            }
        };
        let mut validation = Validation::new(alg);
        validation.leeway = leeway.as_secs();
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Ok(Verifier {
            key,
            validation,
            token_type: (
                DEFAULT_TOKEN_TYPE_CLAIM.to_owned(),
                DEFAULT_ACCESS_TOKEN_TYPE.to_owned(),
            ),
        })
    }

    /// Accepts only tokens whose `claim`, when present, equals `access_type`.
    pub fn expecting_token_type(mut self, claim: &str, access_type: &str) -> Verifier {
        self.token_type = (claim.to_owned(), access_type.to_owned());
        self
    }

    /// Also requires `iss` to equal `issuer` and `aud` to contain `audience`, when given
    /// (`INDABA_JWT_ISSUER`, `INDABA_JWT_AUDIENCE`): a token minted for another service
    /// by the same identity provider is then refused.
    pub fn expecting(mut self, issuer: Option<&str>, audience: Option<&str>) -> Verifier {
        let mut required = vec!["exp"];
        if let Some(iss) = issuer {
            self.validation.set_issuer(&[iss]);
            required.push("iss");
        }
        if let Some(aud) = audience {
            self.validation.set_audience(&[aud]);
            self.validation.validate_aud = true;
            required.push("aud");
        }
        self.validation.set_required_spec_claims(&required);
        self
    }

    /// Returns the user id the token was issued to.
    pub fn verify(&self, token: &str) -> Result<i64, AuthError> {
        self.identify(token).map(|i| i.user_id)
    }

    /// Verifies a token and returns who it names and until when it is valid.
    pub fn identify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        })?;
        let claims = data.claims;
        let (type_claim, access) = &self.token_type;
        if let Some(t) = claims.get(type_claim) {
            if t.as_str() != Some(access.as_str()) {
                return Err(AuthError::Invalid(format!(
                    "{type_claim} must be {access:?}: a refresh token is not an access token"
                )));
            }
        }
        let id = claims
            .get("user_id")
            .or_else(|| claims.get("sub"))
            .ok_or_else(|| AuthError::Invalid("no user_id or sub claim".into()))?;
        let id = match id {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .filter(|id| *id > 0)
        .ok_or_else(|| AuthError::Invalid("user id must be a positive integer".into()))?;
        // `exp` is required by the validation, so it is present and numeric here.
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        let leeway = i64::try_from(self.validation.leeway).unwrap_or(0);
        Ok(Identity {
            user_id: id,
            valid_until_ms: exp.saturating_add(leeway).saturating_mul(1000),
        })
    }
}

/// A verified token's subject and lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The user.
    pub user_id: i64,
    /// When the token stops being accepted (its `exp` plus leeway), unix ms. A socket
    /// opened with it is closed with 4001 then, unless the client sent `refresh_token`.
    pub valid_until_ms: i64,
}

/// The claim SimpleJWT names a token's type with.
pub const DEFAULT_TOKEN_TYPE_CLAIM: &str = "token_type";
/// The type of SimpleJWT's access tokens.
pub const DEFAULT_ACCESS_TOKEN_TYPE: &str = "access";

/// Mints an HS256 token for `user_id` valid for `ttl` (the single-node program's
/// `token` command, and tests).
pub fn mint_hs256(secret: &str, user_id: i64, ttl: Duration) -> anyhow::Result<String> {
    let now = proto::time::now_ms() / 1000;
    let claims = serde_json::json!({
        "user_id": user_id,
        "token_type": "access",
        "iat": now,
        "exp": now + i64::try_from(ttl.as_secs()).unwrap_or(3600),
    });
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_and_audience_are_enforced_when_configured() {
        let now = proto::time::now_ms() / 1000;
        let sign = |claims: serde_json::Value| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap()
        };
        let v = verifier().expecting(Some("https://auth.example"), Some("indaba"));
        let good = sign(
            serde_json::json!({"user_id": 5, "exp": now + 60, "iss": "https://auth.example", "aud": "indaba"}),
        );
        assert_eq!(v.verify(&good), Ok(5));
        let list_aud = sign(
            serde_json::json!({"user_id": 5, "exp": now + 60, "iss": "https://auth.example", "aud": ["billing", "indaba"]}),
        );
        assert_eq!(v.verify(&list_aud), Ok(5));
        for (what, claims) in [
            (
                "wrong audience",
                serde_json::json!({"user_id": 5, "exp": now + 60, "iss": "https://auth.example", "aud": "billing"}),
            ),
            (
                "no audience",
                serde_json::json!({"user_id": 5, "exp": now + 60, "iss": "https://auth.example"}),
            ),
            (
                "wrong issuer",
                serde_json::json!({"user_id": 5, "exp": now + 60, "iss": "https://evil.example", "aud": "indaba"}),
            ),
            (
                "no issuer",
                serde_json::json!({"user_id": 5, "exp": now + 60, "aud": "indaba"}),
            ),
        ] {
            assert!(
                matches!(v.verify(&sign(claims)), Err(AuthError::Invalid(_))),
                "{what}"
            );
        }
        // Not configured: iss/aud are not looked at.
        let plain = sign(serde_json::json!({"user_id": 5, "exp": now + 60, "aud": "billing"}));
        assert_eq!(verifier().verify(&plain), Ok(5));
    }

    const SECRET: &str = "test-secret-0123456789";

    fn verifier() -> Verifier {
        Verifier::new(
            &KeySource::Hs256Secret(SECRET.into()),
            Duration::from_secs(0),
        )
        .unwrap()
    }

    fn sign(claims: Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn refresh_tokens_are_not_access_tokens() {
        let exp = proto::time::now_ms() / 1000 + 86_400;
        let v = verifier();
        let refresh = sign(serde_json::json!({"user_id": 7, "exp": exp, "token_type": "refresh"}));
        assert!(matches!(v.verify(&refresh), Err(AuthError::Invalid(_))));
        let odd = sign(serde_json::json!({"user_id": 7, "exp": exp, "token_type": 1}));
        assert!(matches!(v.verify(&odd), Err(AuthError::Invalid(_))));
        let access = sign(serde_json::json!({"user_id": 7, "exp": exp, "token_type": "access"}));
        assert_eq!(v.verify(&access), Ok(7));
        // Another issuer's names.
        let v = verifier().expecting_token_type("typ", "at");
        let theirs =
            sign(serde_json::json!({"user_id": 7, "exp": exp, "typ": "at", "token_type": "x"}));
        assert_eq!(v.verify(&theirs), Ok(7));
        let rt = sign(serde_json::json!({"user_id": 7, "exp": exp, "typ": "rt"}));
        assert!(v.verify(&rt).is_err());
    }

    #[test]
    fn accepts_simplejwt_and_sub_tokens() {
        let exp = proto::time::now_ms() / 1000 + 60;
        assert_eq!(
            verifier().verify(&sign(serde_json::json!({"user_id": 7, "exp": exp}))),
            Ok(7)
        );
        assert_eq!(
            verifier().verify(&sign(serde_json::json!({"sub": "8", "exp": exp}))),
            Ok(8)
        );
        assert_eq!(
            verifier().verify(&mint_hs256(SECRET, 9, Duration::from_secs(60)).unwrap()),
            Ok(9)
        );
    }

    #[test]
    fn refuses_bad_tokens() {
        let exp = proto::time::now_ms() / 1000 + 60;
        let v = verifier();
        assert_eq!(v.verify(""), Err(AuthError::Missing));
        assert!(matches!(v.verify("garbage"), Err(AuthError::Invalid(_))));
        // No exp.
        assert!(matches!(
            v.verify(&sign(serde_json::json!({"user_id": 7}))),
            Err(AuthError::Invalid(_))
        ));
        // Expired.
        assert_eq!(
            v.verify(&sign(serde_json::json!({"user_id": 7, "exp": exp - 3600}))),
            Err(AuthError::Expired)
        );
        // Not yet valid.
        assert!(v
            .verify(&sign(
                serde_json::json!({"user_id": 7, "exp": exp, "nbf": exp})
            ))
            .is_err());
        // No usable user id.
        assert!(v
            .verify(&sign(serde_json::json!({"user_id": "bob", "exp": exp})))
            .is_err());
        assert!(v.verify(&sign(serde_json::json!({"exp": exp}))).is_err());
        // Wrong key.
        let other = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"user_id": 7, "exp": exp}),
            &EncodingKey::from_secret(b"another-secret-xxxxxx"),
        )
        .unwrap();
        assert!(v.verify(&other).is_err());
        // alg: none.
        use base64_like::b64;
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&format!(r#"{{"user_id":7,"exp":{exp}}}"#))
        );
        assert!(v.verify(&none).is_err());
    }

    #[test]
    fn rs256_keys_and_no_key_confusion() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata");
        let public_path = dir.join("test-rs256-public.pem");
        let v = Verifier::new(
            &KeySource::Rs256PublicKeyFile(public_path.clone()),
            Duration::ZERO,
        )
        .unwrap();
        let private = std::fs::read(dir.join("test-rs256-private.pem")).unwrap();
        let claims = serde_json::json!({"user_id": 5, "exp": proto::time::now_ms() / 1000 + 60});
        let good = jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(&private).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&good), Ok(5));
        // The classic confusion: HS256 "signed" with the public key as the shared secret.
        let public = std::fs::read(&public_path).unwrap();
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&public),
        )
        .unwrap();
        assert!(v.verify(&forged).is_err());
        // An HS256 verifier refuses RS256 tokens too.
        assert!(verifier().verify(&good).is_err());
        // A missing or bad key file fails at startup.
        assert!(Verifier::new(
            &KeySource::Rs256PublicKeyFile(dir.join("missing.pem")),
            Duration::ZERO
        )
        .is_err());
        assert!(Verifier::new(
            &KeySource::Rs256PublicKeyFile(dir.join("README.md")),
            Duration::ZERO
        )
        .is_err());
    }

    /// Minimal unpadded base64url, so the test needs no extra dependency.
    mod base64_like {
        pub fn b64(s: &str) -> String {
            const T: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let b = s.as_bytes();
            let mut out = String::new();
            for chunk in b.chunks(3) {
                let n = (u32::from(chunk[0]) << 16)
                    | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
                    | u32::from(*chunk.get(2).unwrap_or(&0));
                for i in 0..=chunk.len() {
                    out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            out
        }
    }
}
