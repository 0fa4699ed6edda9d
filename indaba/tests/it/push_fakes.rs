//! Local fakes of the push providers. Each speaks the provider's protocol and *checks* what
//! the real one checks: the FCM token endpoint verifies the service-account assertion
//! (RS256) and the send endpoint the access token it issued; the APNs fake is HTTP/2 only
//! and verifies the ES256 provider token and headers; the Web Push fake verifies the VAPID
//! JWT against the `k=` key and decrypts the `aes128gcm` body with the subscription's
//! private key (written here from RFC 8291, independently of the service's code); the
//! webhook receiver verifies the HMAC. A request that fails a check is answered like the
//! real service would (401/403/400) and recorded as a failure, never as a notification.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use bytes::Bytes;
use hkdf::Hkdf;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::EncodePrivateKey;
use serde_json::{json, Value};
use sha2::Sha256;

/// A received request, reduced to what tests look at.
#[derive(Debug, Clone)]
pub struct Got {
    /// `path` of the request.
    pub path: String,
    /// The notification as the provider would show it (decrypted for Web Push).
    pub payload: Value,
    /// Request headers (lower-case names).
    pub headers: HashMap<String, String>,
    /// The status answered.
    pub status: u16,
}

/// Shared state of one fake.
#[derive(Default)]
pub struct State {
    /// Every request that passed the checks, with the status it got.
    pub accepted: Vec<Got>,
    /// Requests that failed a check (reason).
    pub rejected: Vec<String>,
    /// Statuses to answer next, before the normal answer (e.g. 503 then 200).
    pub script: VecDeque<(u16, Option<u64>)>,
    /// Tokens/paths answered as dead (404/410).
    pub dead: Vec<String>,
    /// Delay before answering.
    pub delay: Duration,
}

/// A running fake.
#[derive(Clone)]
pub struct Fake {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
}

impl Fake {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Notifications accepted with a 2xx.
    pub fn delivered(&self) -> Vec<Got> {
        let s = self.state.lock().unwrap();
        s.accepted
            .iter()
            .filter(|g| (200..300).contains(&g.status))
            .cloned()
            .collect()
    }

    pub fn rejected(&self) -> Vec<String> {
        self.state.lock().unwrap().rejected.clone()
    }

    pub fn all(&self) -> Vec<Got> {
        self.state.lock().unwrap().accepted.clone()
    }

    /// Waits until `n` notifications were delivered (or 15 s).
    pub async fn wait_delivered(&self, n: usize) -> Vec<Got> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let d = self.delivered();
            if d.len() >= n || tokio::time::Instant::now() > deadline {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

type Handler =
    Arc<dyn Fn(&Incoming, &mut State) -> (u16, Vec<(String, String)>, String) + Send + Sync>;

/// A fake's answer: status, headers, body.
type Answer = (u16, Vec<(String, String)>, String);

/// Subscriptions by endpoint path: the user agent's private key and auth secret.
type Subscriptions = Arc<Mutex<HashMap<String, (p256::SecretKey, [u8; 16])>>>;

/// A request as handlers see it.
pub struct Incoming {
    pub method: String,
    pub path: String,
    pub version: http::Version,
    pub headers: HashMap<String, String>,
    pub body: Bytes,
}

async fn start(http2_only: bool, handler: Handler) -> Fake {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(Mutex::new(State::default()));
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (st, handler) = (st.clone(), handler.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (st, handler) = (st.clone(), handler.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let inc = Incoming {
                            method: parts.method.to_string(),
                            path: parts.uri.path().to_owned(),
                            version: parts.version,
                            headers: parts
                                .headers
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                                })
                                .collect(),
                            body,
                        };
                        let delay = st.lock().unwrap().delay;
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        let (status, headers, body) = {
                            let mut s = st.lock().unwrap();
                            handler(&inc, &mut s)
                        };
                        let mut resp = Response::builder().status(status);
                        for (k, v) in headers {
                            resp = resp.header(k, v);
                        }
                        Ok::<_, Infallible>(resp.body(Full::new(Bytes::from(body))).unwrap())
                    }
                });
                let io = TokioIo::new(stream);
                if http2_only {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
    Fake { addr, state }
}

/// A scripted status, if any, with its `Retry-After`.
fn scripted(s: &mut State) -> Option<Answer> {
    s.script.pop_front().map(|(status, retry)| {
        let headers = retry
            .map(|r| vec![("retry-after".to_owned(), r.to_string())])
            .unwrap_or_default();
        (status, headers, json!({"error": "scripted"}).to_string())
    })
}

fn reject(s: &mut State, status: u16, why: String) -> Answer {
    s.rejected.push(why.clone());
    (status, vec![], json!({"error": why}).to_string())
}

// ---------------------------------------------------------------- FCM

/// A test service account: the RSA key in gateway/testdata, token URI on the fake.
pub struct FcmFake {
    pub fake: Fake,
    pub service_account_json: String,
}

pub async fn fcm() -> FcmFake {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../gateway/testdata");
    let private = std::fs::read_to_string(root.join("test-rs256-private.pem")).unwrap();
    let public = std::fs::read_to_string(root.join("test-rs256-public.pem")).unwrap();
    let decoding = DecodingKey::from_rsa_pem(public.as_bytes()).unwrap();
    let issued: Arc<Mutex<Vec<String>>> = Arc::default();
    let email = "indaba-test@test-project.iam.gserviceaccount.com";
    // The token URI is on the fake itself; its port is known only after start.
    let token_uri: Arc<Mutex<String>> = Arc::default();
    let uri = token_uri.clone();
    let handler: Handler = Arc::new(move |req, s| {
        if req.path == "/token" {
            // OAuth2 JWT-bearer grant (RFC 7523) as Google's token endpoint takes it.
            let form: HashMap<String, String> = String::from_utf8_lossy(&req.body)
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.replace("%3A", ":")))
                .collect();
            if form.get("grant_type").map(String::as_str)
                != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
            {
                return reject(
                    s,
                    400,
                    format!("bad grant_type {:?}", form.get("grant_type")),
                );
            }
            let mut v = Validation::new(Algorithm::RS256);
            v.set_audience(&[uri.lock().unwrap().clone()]);
            v.set_issuer(&[email]);
            v.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
            let claims = match jsonwebtoken::decode::<Value>(
                form.get("assertion").map(String::as_str).unwrap_or(""),
                &decoding,
                &v,
            ) {
                Ok(c) => c.claims,
                Err(e) => return reject(s, 400, format!("assertion: {e}")),
            };
            if claims["scope"] != "https://www.googleapis.com/auth/firebase.messaging" {
                return reject(s, 400, format!("scope {}", claims["scope"]));
            }
            let token = format!("ya29.fake-{}", issued.lock().unwrap().len() + 1);
            issued.lock().unwrap().push(token.clone());
            return (
                200,
                vec![],
                json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})
                    .to_string(),
            );
        }
        if req.path != "/v1/projects/test-project/messages:send" || req.method != "POST" {
            return reject(s, 404, format!("unexpected {} {}", req.method, req.path));
        }
        let bearer = req
            .headers
            .get("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or("");
        if !issued.lock().unwrap().iter().any(|t| t == bearer) {
            return reject(
                s,
                401,
                "send without a token the token endpoint issued".into(),
            );
        }
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let m = &body["message"];
        let token = m["token"].as_str().unwrap_or("").to_owned();
        if token.is_empty() || m["data"]["conversation_id"].as_str().is_none() {
            return reject(s, 400, format!("bad message {body}"));
        }
        let answer = if let Some(a) = scripted(s) {
            a
        } else if s.dead.contains(&token) {
            (404, vec![], json!({"error": {"code": 404, "status": "NOT_FOUND", "details": [
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}}).to_string())
        } else {
            (
                200,
                vec![],
                json!({"name": format!("projects/test-project/messages/{}", s.accepted.len() + 1)})
                    .to_string(),
            )
        };
        s.accepted.push(Got {
            path: req.path.clone(),
            payload: m.clone(),
            headers: req.headers.clone(),
            status: answer.0,
        });
        answer
    });
    let fake = start(false, handler).await;
    *token_uri.lock().unwrap() = format!("{}/token", fake.url());
    let service_account_json = json!({
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": "test",
        "private_key": private,
        "client_email": email,
        "token_uri": format!("{}/token", fake.url()),
    })
    .to_string();
    FcmFake {
        fake,
        service_account_json,
    }
}

// ---------------------------------------------------------------- APNs

pub struct ApnsFake {
    pub fake: Fake,
    /// The `.p8` key (PKCS#8 PEM) the service signs with.
    pub key_pem: String,
}

pub const APNS_TEAM: &str = "TEAM123456";
pub const APNS_KEY_ID: &str = "KEY1234567";
pub const APNS_TOPIC: &str = "com.example.indaba";

pub async fn apns() -> ApnsFake {
    let secret = p256::SecretKey::random(&mut rand_core::OsRng);
    let key_pem = secret.to_pkcs8_pem(Default::default()).unwrap().to_string();
    let point = secret.public_key().to_encoded_point(false);
    let (x, y) = (
        B64.encode(point.x().unwrap()),
        B64.encode(point.y().unwrap()),
    );
    let decoding = DecodingKey::from_ec_components(&x, &y).unwrap();
    let handler: Handler = Arc::new(move |req, s| {
        if req.version != http::Version::HTTP_2 {
            return reject(s, 505, format!("APNs needs HTTP/2, got {:?}", req.version));
        }
        let Some(token) = req.path.strip_prefix("/3/device/") else {
            return reject(s, 404, format!("unexpected path {}", req.path));
        };
        let jwt = req
            .headers
            .get("authorization")
            .and_then(|a| a.strip_prefix("bearer "))
            .unwrap_or("");
        let header = jsonwebtoken::decode_header(jwt);
        if header.as_ref().ok().and_then(|h| h.kid.clone()).as_deref() != Some(APNS_KEY_ID) {
            return reject(s, 403, "InvalidProviderToken: kid".into());
        }
        let mut v = Validation::new(Algorithm::ES256);
        v.set_required_spec_claims(&["iat", "iss"]);
        v.validate_exp = false; // provider tokens carry iat only
        v.set_issuer(&[APNS_TEAM]);
        let claims = match jsonwebtoken::decode::<Value>(jwt, &decoding, &v) {
            Ok(c) => c.claims,
            Err(e) => return reject(s, 403, format!("InvalidProviderToken: {e}")),
        };
        let age = proto::time::now_ms() / 1000 - claims["iat"].as_i64().unwrap_or(0);
        if !(0..3600).contains(&age) {
            return reject(s, 403, "ExpiredProviderToken".into());
        }
        for (h, want) in [
            ("apns-topic", Some(APNS_TOPIC)),
            ("apns-push-type", Some("alert")),
            ("apns-collapse-id", None),
            ("apns-id", None),
        ] {
            match (req.headers.get(h), want) {
                (None, _) => return reject(s, 400, format!("missing {h}")),
                (Some(got), Some(w)) if got != w => return reject(s, 400, format!("{h} = {got}")),
                _ => {}
            }
        }
        let payload: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        if payload["aps"]["alert"]["title"].as_str().is_none() {
            return reject(s, 400, "PayloadEmpty".into());
        }
        let answer = if let Some(a) = scripted(s) {
            a
        } else if s.dead.iter().any(|d| d == token) {
            (
                410,
                vec![],
                json!({"reason": "Unregistered", "timestamp": proto::time::now_ms()}).to_string(),
            )
        } else {
            (
                200,
                vec![("apns-id".into(), req.headers["apns-id"].clone())],
                String::new(),
            )
        };
        s.accepted.push(Got {
            path: req.path.clone(),
            payload,
            headers: req.headers.clone(),
            status: answer.0,
        });
        answer
    });
    ApnsFake {
        fake: start(true, handler).await,
        key_pem,
    }
}

// ---------------------------------------------------------------- Web Push

/// A browser subscription: the keys a user agent keeps private, and what it gives out.
pub struct Subscription {
    pub secret: p256::SecretKey,
    pub auth: [u8; 16],
    pub endpoint: String,
}

impl Subscription {
    pub fn p256dh(&self) -> String {
        B64.encode(self.secret.public_key().to_encoded_point(false).as_bytes())
    }
    pub fn auth_b64(&self) -> String {
        B64.encode(self.auth)
    }
}

pub struct WebPushFake {
    pub fake: Fake,
    pub subscriptions: Subscriptions,
}

impl WebPushFake {
    /// A new subscription on this push service.
    pub fn subscribe(&self, name: &str) -> Subscription {
        let secret = p256::SecretKey::random(&mut rand_core::OsRng);
        let mut auth = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut auth);
        let path = format!("/push/{name}");
        self.subscriptions
            .lock()
            .unwrap()
            .insert(path.clone(), (secret.clone(), auth));
        Subscription {
            secret,
            auth,
            endpoint: format!("{}{path}", self.fake.url()),
        }
    }
}

/// RFC 8291 decryption, as a user agent does it.
fn decrypt(body: &[u8], ua_secret: &p256::SecretKey, auth: &[u8; 16]) -> Result<Vec<u8>, String> {
    if body.len() < 21 {
        return Err("short body".into());
    }
    let salt = &body[..16];
    let rs = u32::from_be_bytes(body[16..20].try_into().unwrap());
    let idlen = body[20] as usize;
    if rs < 18 || idlen != 65 || body.len() < 21 + idlen {
        return Err(format!("bad header rs={rs} idlen={idlen}"));
    }
    let as_public = p256::PublicKey::from_sec1_bytes(&body[21..21 + idlen])
        .map_err(|_| "keyid is not a P-256 point")?;
    let ciphertext = &body[21 + idlen..];
    let shared = p256::ecdh::diffie_hellman(ua_secret.to_nonzero_scalar(), as_public.as_affine());
    let mut info = b"WebPush: info\0".to_vec();
    info.extend_from_slice(ua_secret.public_key().to_encoded_point(false).as_bytes());
    info.extend_from_slice(as_public.to_encoded_point(false).as_bytes());
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth), shared.raw_secret_bytes())
        .expand(&info, &mut ikm)
        .map_err(|e| e.to_string())?;
    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let (mut cek, mut nonce) = ([0u8; 16], [0u8; 12]);
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .map_err(|e| e.to_string())?;
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .map_err(|e| e.to_string())?;
    let mut plain = aes_gcm::Aes128Gcm::new_from_slice(&cek)
        .map_err(|e| e.to_string())?
        .decrypt(&aes_gcm::Nonce::from(nonce), ciphertext)
        .map_err(|_| "AEAD tag mismatch".to_owned())?;
    // Strip padding: zeros, then the 0x02 last-record delimiter.
    while plain.last() == Some(&0) {
        plain.pop();
    }
    match plain.pop() {
        Some(2) => Ok(plain),
        other => Err(format!("bad record delimiter {other:?}")),
    }
}

pub async fn webpush() -> WebPushFake {
    let subscriptions: Subscriptions = Arc::default();
    let subs = subscriptions.clone();
    let origin: Arc<Mutex<String>> = Arc::default();
    let org = origin.clone();
    let handler: Handler = Arc::new(move |req, s| {
        let Some((secret, auth)) = subs.lock().unwrap().get(&req.path).cloned() else {
            if s.dead.contains(&req.path) {
                s.accepted.push(Got {
                    path: req.path.clone(),
                    payload: Value::Null,
                    headers: req.headers.clone(),
                    status: 410,
                });
                return (410, vec![], String::new());
            }
            return reject(s, 404, format!("no subscription {}", req.path));
        };
        if req.headers.get("content-encoding").map(String::as_str) != Some("aes128gcm") {
            return reject(s, 415, "content-encoding must be aes128gcm".into());
        }
        if !req.headers.contains_key("ttl") {
            return reject(s, 400, "TTL required".into());
        }
        // RFC 8292: Authorization: vapid t=<jwt>, k=<public key>
        let auth_header = req
            .headers
            .get("authorization")
            .cloned()
            .unwrap_or_default();
        let Some(rest) = auth_header.strip_prefix("vapid ") else {
            return reject(s, 401, "not a vapid authorization".into());
        };
        let params: HashMap<&str, &str> = rest
            .split(',')
            .filter_map(|p| p.trim().split_once('='))
            .collect();
        let (Some(t), Some(k)) = (params.get("t"), params.get("k")) else {
            return reject(s, 401, "vapid t= and k= required".into());
        };
        let Ok(key) = B64
            .decode(k)
            .map_err(|_| ())
            .and_then(|b| p256::PublicKey::from_sec1_bytes(&b).map_err(|_| ()))
        else {
            return reject(s, 401, "k is not a P-256 key".into());
        };
        let point = key.to_encoded_point(false);
        let decoding = DecodingKey::from_ec_components(
            &B64.encode(point.x().unwrap()),
            &B64.encode(point.y().unwrap()),
        )
        .unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&[org.lock().unwrap().clone()]);
        v.set_required_spec_claims(&["exp", "aud", "sub"]);
        let claims = match jsonwebtoken::decode::<Value>(t, &decoding, &v) {
            Ok(c) => c.claims,
            Err(e) => return reject(s, 403, format!("vapid: {e}")),
        };
        if claims["exp"].as_i64().unwrap_or(0) > proto::time::now_ms() / 1000 + 24 * 3600 {
            return reject(s, 403, "vapid exp more than 24 h ahead".into());
        }
        let plain = match decrypt(&req.body, &secret, &auth) {
            Ok(p) => p,
            Err(e) => return reject(s, 400, format!("decrypt: {e}")),
        };
        let payload: Value = serde_json::from_slice(&plain).unwrap_or(Value::Null);
        let status = scripted(s).map_or(201, |a| a.0);
        s.accepted.push(Got {
            path: req.path.clone(),
            payload,
            headers: req.headers.clone(),
            status,
        });
        (status, vec![], String::new())
    });
    let fake = start(false, handler).await;
    *origin.lock().unwrap() = fake.url();
    WebPushFake {
        fake,
        subscriptions,
    }
}

// ---------------------------------------------------------------- webhook

pub async fn webhook(secret: &'static str) -> Fake {
    let handler: Handler = Arc::new(move |req, s| {
        let ts = req
            .headers
            .get("x-indaba-timestamp")
            .and_then(|t| t.parse::<i64>().ok())
            .unwrap_or(0);
        if (proto::time::now_ms() / 1000 - ts).abs() > 300 {
            return reject(s, 400, "stale or missing timestamp".into());
        }
        use hmac::Mac;
        let mut mac = <hmac::Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{ts}.").as_bytes());
        mac.update(&req.body);
        let want = format!(
            "v1={}",
            mac.finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        if req.headers.get("x-indaba-signature") != Some(&want) {
            return reject(s, 401, "bad signature".into());
        }
        let payload: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let answer = if let Some(a) = scripted(s) {
            a
        } else if s.dead.contains(&req.path) {
            (410, vec![], String::new())
        } else {
            (200, vec![], String::new())
        };
        s.accepted.push(Got {
            path: req.path.clone(),
            payload,
            headers: req.headers.clone(),
            status: answer.0,
        });
        answer
    });
    start(false, handler).await
}
