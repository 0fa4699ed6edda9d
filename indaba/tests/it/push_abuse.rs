//! Abuse of push targets, performed against the real push-service (over real NATS and
//! PostgreSQL, behind the real gateway) and seen refused, with nothing lost for others:
//!
//! - stalls: devices on a tarpit (accepts, never answers) do not delay anyone else's
//!   notifications, a batch never outlives its lease, one host gets a bounded number of
//!   connections, and the device limit per user holds under concurrent registrations;
//! - SSRF: webhook URLs and Web Push endpoints on loopback, private, link-local (metadata),
//!   CGNAT, unique-local addresses, names resolving there, other ports and `http://` are
//!   refused at registration; a name that rebinds to loopback after registration is
//!   refused at connect time (no connection is made, the device is kept: no oracle); a
//!   device token that belongs to another user is not taken over.
//!
//! Names are resolved by a test resolver (`App::build_with_resolver`): the sandbox has no
//! DNS, and a rebinding answer has to be scripted.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use push_service::providers::http::{Resolve, Resolving};
use serde_json::{json, Value};

use crate::push_fakes;
use crate::support::*;

const WEBHOOK_SECRET: &str = "webhook-secret-0123456789";

/// Scripted DNS: each name answers its queued answers in turn, the last one forever;
/// unknown names do not resolve. Remembers every question.
#[derive(Default)]
struct Names {
    answers: Mutex<HashMap<String, VecDeque<Vec<IpAddr>>>>,
    asked: Mutex<Vec<String>>,
}

impl Names {
    fn with(pairs: &[(&str, &[&[&str]])]) -> Arc<Names> {
        let n = Names::default();
        for (name, answers) in pairs {
            n.answers.lock().unwrap().insert(
                (*name).to_owned(),
                answers
                    .iter()
                    .map(|a| a.iter().map(|ip| ip.parse().unwrap()).collect())
                    .collect(),
            );
        }
        Arc::new(n)
    }

    fn asked(&self, name: &str) -> usize {
        self.asked
            .lock()
            .unwrap()
            .iter()
            .filter(|n| *n == name)
            .count()
    }
}

impl Resolve for Names {
    fn resolve(&self, host: &str, _port: u16) -> Resolving {
        self.asked.lock().unwrap().push(host.to_owned());
        let mut answers = self.answers.lock().unwrap();
        let answer = match answers.get_mut(host) {
            Some(q) if q.len() > 1 => q.pop_front(),
            Some(q) => q.front().cloned(),
            None => None,
        };
        Box::pin(async move {
            answer.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "NXDOMAIN"))
        })
    }
}

struct Base {
    _nats: Nats,
    _services: Vec<Running>,
    nats: String,
    db: String,
    gw: SocketAddr,
}

async fn base() -> Base {
    let nats = Nats::start();
    let db = fresh_database().await;
    let (m, _) = spawn_message_service(&nats.url(), &db).await;
    let (p, _, _) = spawn_presence(&nats.url(), |_| {}).await;
    let (g, gw) = spawn_gateway(&nats.url(), "gw-push-abuse").await;
    Base {
        nats: nats.url(),
        _nats: nats,
        _services: vec![m, p, g],
        db,
        gw,
    }
}

/// A VAPID key (PKCS#8 PEM), as an operator configures one.
fn vapid_pem() -> String {
    use p256::pkcs8::EncodePrivateKey;
    p256::SecretKey::random(&mut rand_core::OsRng)
        .to_pkcs8_pem(Default::default())
        .unwrap()
        .to_string()
}

/// A push-service configured from `env` (operator variable names), 50 ms tick, names
/// resolved by `names`.
async fn spawn_push(
    b: &Base,
    env: &[(&str, String)],
    names: Arc<Names>,
) -> (Running, push_service::Store) {
    let map: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let mut s = push_service::Settings::new(
        push_service::BusSettings::Nats(b.nats.clone().into()),
        push_service::StoreSettings::Postgres(b.db.clone()),
    );
    s.apply_common(&|k: &str| map.get(k).cloned())
        .expect("push settings");
    s.tick = Duration::from_millis(50);
    let app = push_service::App::build_with_resolver(s, names)
        .await
        .expect("build push-service");
    let store = app.store();
    (
        run_with_stop(|rx| {
            app.run(async move {
                let _ = rx.await;
            })
        }),
        store,
    )
}

/// POST /api/v1/devices/, retrying `unavailable` (503) as a client would.
async fn try_register(gw: SocketAddr, user: i64, body: &Value) -> (u16, Value) {
    for _ in 0..10 {
        let (status, v) = http(
            gw,
            "POST",
            "/api/v1/devices/",
            Some(&token(user)),
            Some(&body.to_string()),
        )
        .await;
        if status != 503 {
            return (status, v);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("push-service stayed unavailable");
}

async fn devices(gw: SocketAddr, user: i64) -> Vec<Value> {
    let (status, v) = http(gw, "GET", "/api/v1/devices/", Some(&token(user)), None).await;
    assert_eq!(status, 200, "{v}");
    v["devices"].as_array().cloned().unwrap_or_default()
}

/// A TCP server that accepts every connection, reads what it is sent and never answers.
/// Records how many are open at once and how long each lived. "Open" is the kernel's
/// word, not a task's: on every accept (and every 10 ms) each connection is read without
/// blocking, and one that reads end-of-file is closed, so a close is never counted late
/// because a task had not run yet.
#[derive(Clone, Default)]
struct Tarpit {
    conns: Arc<Mutex<Vec<(Instant, std::net::TcpStream)>>>,
    max_open: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    lifetimes: Arc<Mutex<Vec<Duration>>>,
}

impl Tarpit {
    /// Forgets closed connections; how many are open.
    fn prune(&self) -> usize {
        use std::io::Read;
        let mut conns = self.conns.lock().unwrap();
        let mut buf = [0u8; 4096];
        let mut lifetimes = self.lifetimes.lock().unwrap();
        conns.retain_mut(|(born, s)| loop {
            match s.read(&mut buf) {
                Ok(0) => {
                    lifetimes.push(born.elapsed());
                    return false;
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(_) => {
                    lifetimes.push(born.elapsed());
                    return false;
                }
            }
        });
        conns.len()
    }

    fn open(&self) -> usize {
        self.prune()
    }
}

async fn tarpit() -> (Tarpit, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let t = Tarpit::default();
    let tp = t.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let born = Instant::now();
            let stream = stream.into_std().unwrap();
            stream.set_nonblocking(true).unwrap();
            tp.accepted.fetch_add(1, Ordering::SeqCst);
            let open = tp.prune() + 1;
            tp.conns.lock().unwrap().push((born, stream));
            tp.max_open.fetch_max(open, Ordering::SeqCst);
        }
    });
    let tp = t.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            tp.prune();
        }
    });
    (t, addr)
}

/// Item 5: one user with 20 webhook devices on a tarpit, in five conversations (100 sends
/// that never get an answer). Other users' notifications still arrive promptly; each
/// tarpit connection is dropped before the lease runs out; the tarpit host never has more
/// than the per-host limit of connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tarpit_webhooks_do_not_stall_other_users_notifications() {
    let b = base().await;
    let (pit, pit_addr) = tarpit().await;
    let hook = push_fakes::webhook(WEBHOOK_SECRET).await;
    let lease = Duration::from_secs(3);
    let (_push, store) = spawn_push(
        &b,
        &[
            ("INDABA_WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
            // The fakes are on loopback over http.
            ("INDABA_OUTBOUND_ALLOW_PRIVATE", "true".into()),
            ("INDABA_PUSH_COLLAPSE_MS", "200".into()),
            ("INDABA_PUSH_SUPPRESS_ACTIVE_SECS", "0".into()),
            ("INDABA_PUSH_RETRY_BASE_MS", "200".into()),
            ("INDABA_PUSH_LEASE_SECS", lease.as_secs().to_string()),
        ],
        Names::with(&[]),
    )
    .await;
    let attacker = 50;
    for i in 0..20 {
        let (status, v) = try_register(
            b.gw,
            attacker,
            &json!({"platform": "webhook", "token": format!("http://{pit_addr}/t/{i}")}),
        )
        .await;
        assert_eq!(status, 201, "{v}");
    }
    let healthy: Vec<i64> = (60..65).collect();
    for u in &healthy {
        let (status, v) = try_register(
            b.gw,
            *u,
            &json!({"platform": "webhook", "token": format!("{}/h/{u}", hook.url())}),
        )
        .await;
        assert_eq!(status, 201, "{v}");
    }

    // Five conversations with the attacker: five batches of 20 tarpit devices each.
    let mut senders = Vec::new();
    for s in 41..46 {
        let mut c = Client::connect(b.gw, s).await;
        let sent = c.chat(attacker, "tarpit me", None).await;
        assert_eq!(sent["type"], "message_sent", "{sent}");
        senders.push(c);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pit.open() < 16 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        pit.open() >= 16,
        "the tarpit is not being called: {} open",
        pit.open()
    );

    // While the tarpit holds its connections (and through retry rounds), the healthy
    // users are notified, every one of them, promptly.
    let mut alice = Client::connect(b.gw, 1).await;
    let mut latencies = Vec::new();
    for round in 0..4 {
        let t0 = Instant::now();
        for u in &healthy {
            let sent = alice.chat(*u, &format!("round {round}"), None).await;
            assert_eq!(sent["type"], "message_sent", "{sent}");
        }
        let want = healthy.len() * (round + 1);
        let deadline = t0 + Duration::from_secs(20);
        while hook.delivered().len() < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = t0.elapsed();
        assert_eq!(
            hook.delivered().len(),
            want,
            "round {round}: healthy notifications missing after {took:?}"
        );
        latencies.push(took);
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    eprintln!(
        "healthy users' notification latency per round (message ack → all 5 delivered, collapse window 200 ms) during the tarpit: {latencies:?}; tarpit: {} connections accepted, at most {} open at once",
        pit.accepted.load(Ordering::SeqCst),
        pit.max_open.load(Ordering::SeqCst)
    );
    for (round, took) in latencies.iter().enumerate() {
        // Before: a sweep waited for its slowest batch (15 s + 15 s per tarpit device).
        assert!(
            *took < Duration::from_secs(8),
            "round {round} took {took:?}"
        );
    }
    assert!(hook.rejected().is_empty(), "{:?}", hook.rejected());
    let per_user: HashMap<i64, usize> = hook.delivered().iter().fold(HashMap::new(), |mut m, g| {
        *m.entry(g.payload["notification"]["user_id"].as_i64().unwrap())
            .or_default() += 1;
        m
    });
    for u in &healthy {
        assert_eq!(per_user.get(u), Some(&4), "{per_user:?}");
    }

    // The batch never outlives its lease: every tarpit connection was given up before it.
    let lifetimes = pit.lifetimes.lock().unwrap().clone();
    assert!(
        !lifetimes.is_empty(),
        "no tarpit connection was ever given up"
    );
    let longest = lifetimes.iter().max().copied().unwrap_or_default();
    eprintln!(
        "tarpit connections closed by push-service: {}, longest lived {longest:?} (lease {lease:?})",
        lifetimes.len()
    );
    assert!(longest < lease, "a send outlived the lease: {longest:?}");
    // One host gets at most the per-host limit of connections at once.
    assert!(
        pit.max_open.load(Ordering::SeqCst) <= push_service::providers::http::PER_HOST,
        "{} connections to one host at once",
        pit.max_open.load(Ordering::SeqCst)
    );
    // The attacker's notifications are not lost either: they wait for their retry.
    assert!(store.pending_batches().await.unwrap() > 0);
    drop(senders);
}

/// Item 5: 40 registrations for one user at once; exactly 20 succeed, the rest are
/// refused with `rate_limited`, and the user has 20 devices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_limit_holds_under_concurrent_registrations() {
    let b = base().await;
    let (_push, _) = spawn_push(
        &b,
        &[
            ("INDABA_WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
            ("INDABA_OUTBOUND_ALLOW_PRIVATE", "true".into()),
        ],
        Names::with(&[]),
    )
    .await;
    // Wait until push-service answers (a first registration), then race the rest.
    let (status, v) = try_register(
        b.gw,
        70,
        &json!({"platform": "webhook", "token": "http://127.0.0.1:9/h/first"}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let gw = b.gw;
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            tokio::spawn(async move {
                try_register(
                    gw,
                    70,
                    &json!({"platform": "webhook", "token": format!("http://127.0.0.1:9/h/{i}")}),
                )
                .await
            })
        })
        .collect();
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for t in tasks {
        let (status, v) = t.await.unwrap();
        if status != 201 {
            assert_eq!(
                (status, v["error"]["code"].as_str()),
                (429, Some("rate_limited")),
                "{v}"
            );
        }
        *statuses.entry(status).or_default() += 1;
    }
    assert_eq!(statuses.get(&201), Some(&19), "{statuses:?}");
    assert_eq!(statuses.get(&429), Some(&21), "{statuses:?}");
    assert_eq!(devices(b.gw, 70).await.len(), 20);
}

fn webpush_keys() -> (String, String) {
    let secret = p256::SecretKey::random(&mut rand_core::OsRng);
    let p256dh = B64.encode(secret.public_key().to_encoded_point(false).as_bytes());
    (p256dh, B64.encode([7u8; 16]))
}

/// Item 11: with the default (production) policy, targets on loopback, private,
/// link-local/metadata, CGNAT, unique-local addresses, names resolving there (even one
/// answer among public ones), names that do not resolve, other ports, `http://` and
/// user-info are refused at registration with `invalid_field`; a name that does not
/// resolve gets the same words as one resolving to a private address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_push_targets_are_refused_at_registration() {
    let b = base().await;
    let names = Names::with(&[
        ("public.test", &[&["1.1.1.1"]]),
        ("internal.test", &[&["10.0.0.5"]]),
        ("metadata.test", &[&["169.254.169.254"]]),
        ("mixed.test", &[&["1.1.1.1", "127.0.0.1"]]),
        ("mapped.test", &[&["::ffff:192.168.1.1"]]),
    ]);
    let (_push, _) = spawn_push(
        &b,
        &[
            ("INDABA_WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
            ("INDABA_VAPID_PRIVATE_KEY", vapid_pem()),
            ("INDABA_VAPID_SUBJECT", "mailto:ops@example.com".into()),
        ],
        names.clone(),
    )
    .await;
    let refused = [
        "https://127.0.0.1/hook",
        "https://127.1.2.3/hook",
        "https://10.1.2.3/hook",
        "https://172.16.0.1/hook",
        "https://192.168.0.10/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://100.64.0.1/hook",
        "https://0.0.0.0/hook",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://[fd00::1]/hook",
        "https://[fe80::1]/hook",
        "https://localhost/hook",
        "https://internal.test/hook",
        "https://metadata.test/latest/meta-data/",
        "https://mixed.test/hook",
        "https://mapped.test/hook",
        "https://nx.test/hook",
        "http://public.test/hook",
        "https://public.test:8443/hook",
        "https://user:pw@public.test/hook",
    ];
    let mut words = HashMap::new();
    for url in refused {
        let (status, v) =
            try_register(b.gw, 80, &json!({"platform": "webhook", "token": url})).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (400, Some("invalid_field")),
            "{url}: {v}"
        );
        words.insert(url, v["error"]["message"].as_str().unwrap_or("").to_owned());
    }
    // No DNS oracle: "resolves to a private address" and "does not exist" read alike.
    assert_eq!(
        words["https://internal.test/hook"],
        words["https://nx.test/hook"]
    );
    assert!(!words["https://internal.test/hook"].contains("10.0.0.5"));
    let (p256dh, auth) = webpush_keys();
    for endpoint in [
        "https://internal.test/push/x",
        "https://127.0.0.1/push/x",
        "http://public.test/push/x",
    ] {
        let (status, v) = try_register(
            b.gw,
            80,
            &json!({"platform": "webpush", "endpoint": endpoint, "keys": {"p256dh": p256dh, "auth": auth}}),
        )
        .await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (400, Some("invalid_field")),
            "{endpoint}: {v}"
        );
    }
    assert!(devices(b.gw, 80).await.is_empty());
    // A public target is accepted (and was resolved to be checked).
    let (status, v) = try_register(
        b.gw,
        80,
        &json!({"platform": "webhook", "token": "https://public.test/hook"}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = try_register(
        b.gw,
        80,
        &json!({"platform": "webpush", "endpoint": "https://public.test/push/x", "keys": {"p256dh": p256dh, "auth": auth}}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    assert!(names.asked("public.test") >= 2);
    assert_eq!(devices(b.gw, 80).await.len(), 2);
}

/// Item 11: a name that resolves to a public address at registration and to loopback
/// when the notification is sent (DNS rebinding) is refused at connect time: nothing
/// connects to loopback:443, the notification is dead-lettered with the reason, and the
/// device is kept (deleting it would be an oracle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebinding_push_targets_are_refused_at_connect_time() {
    let b = base().await;
    // Something listening where the rebinding name points (when the test may bind 443).
    let local = tokio::net::TcpListener::bind("127.0.0.1:443").await.ok();
    let names = Names::with(&[
        ("rebind.test", &[&["1.1.1.1"], &["127.0.0.1"]]),
        ("rebind-push.test", &[&["1.1.1.1"], &["::1", "127.0.0.1"]]),
    ]);
    let (_push, store) = spawn_push(
        &b,
        &[
            ("INDABA_WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
            ("INDABA_VAPID_PRIVATE_KEY", vapid_pem()),
            ("INDABA_VAPID_SUBJECT", "mailto:ops@example.com".into()),
            ("INDABA_PUSH_COLLAPSE_MS", "200".into()),
            ("INDABA_PUSH_SUPPRESS_ACTIVE_SECS", "0".into()),
        ],
        names.clone(),
    )
    .await;
    let victim = 81;
    let (status, v) = try_register(
        b.gw,
        victim,
        &json!({"platform": "webhook", "token": "https://rebind.test/hook"}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let (p256dh, auth) = webpush_keys();
    let (status, v) = try_register(
        b.gw,
        victim,
        &json!({"platform": "webpush", "endpoint": "https://rebind-push.test/push/x", "keys": {"p256dh": p256dh, "auth": auth}}),
    )
    .await;
    assert_eq!(status, 201, "{v}");

    let mut alice = Client::connect(b.gw, 1).await;
    let sent = alice.chat(victim, "ping the inside", None).await;
    assert_eq!(sent["type"], "message_sent", "{sent}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut dead = Vec::new();
    while Instant::now() < deadline {
        dead = store.dead_letters().await.unwrap();
        if dead.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead.len(), 2, "{dead:?}");
    for (_, reason) in &dead {
        assert!(
            reason.contains("outbound policy") && reason.contains("is not a public address"),
            "{reason}"
        );
    }
    eprintln!("connect-time refusals: {dead:?}");
    assert!(
        names.asked("rebind.test") >= 2,
        "not resolved again at connect time"
    );
    assert!(names.asked("rebind-push.test") >= 2);
    // Kept, not pruned: the user learns nothing about what answered there.
    assert_eq!(devices(b.gw, victim).await.len(), 2);
    if let Some(l) = local {
        let got = tokio::time::timeout(Duration::from_millis(300), l.accept()).await;
        assert!(got.is_err(), "a connection reached 127.0.0.1:443");
    } else {
        eprintln!("127.0.0.1:443 not bindable here: connection absence not observed directly");
    }
}

/// Item 11: a (platform, token) registered by one user cannot be registered by another
/// (403 `forbidden`, not moved); the owner's re-registration is idempotent (same id) and
/// the owner keeps getting notifications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_device_is_not_taken_over() {
    let b = base().await;
    let hook = push_fakes::webhook(WEBHOOK_SECRET).await;
    let (_push, _) = spawn_push(
        &b,
        &[
            ("INDABA_WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
            ("INDABA_OUTBOUND_ALLOW_PRIVATE", "true".into()),
            ("INDABA_PUSH_COLLAPSE_MS", "200".into()),
            ("INDABA_PUSH_SUPPRESS_ACTIVE_SECS", "0".into()),
        ],
        Names::with(&[]),
    )
    .await;
    let body = json!({"platform": "webhook", "token": format!("{}/h/owner", hook.url())});
    let (status, first) = try_register(b.gw, 90, &body).await;
    assert_eq!(status, 201, "{first}");
    let (status, v) = try_register(b.gw, 91, &body).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    assert!(devices(b.gw, 91).await.is_empty());
    let (status, again) = try_register(b.gw, 90, &body).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["id"], first["id"], "{first} vs {again}");
    let mine = devices(b.gw, 90).await;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["id"], first["id"]);

    let mut alice = Client::connect(b.gw, 1).await;
    alice.chat(90, "still yours", None).await;
    let got = hook.wait_delivered(1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload["notification"]["user_id"], 90);
}
