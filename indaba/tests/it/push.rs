//! Push notifications (issue 5) over real NATS (JetStream) and PostgreSQL, against local
//! fakes that check each provider's real protocol (see `push_fakes`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

use crate::push_fakes::{self, Fake};
use crate::support::*;

const WEBHOOK_SECRET: &str = "webhook-secret-0123456789";

struct Providers {
    fcm: push_fakes::FcmFake,
    apns: push_fakes::ApnsFake,
    webpush: push_fakes::WebPushFake,
    webhook: Fake,
}

async fn providers() -> Providers {
    Providers {
        fcm: push_fakes::fcm().await,
        apns: push_fakes::apns().await,
        webpush: push_fakes::webpush().await,
        webhook: push_fakes::webhook(WEBHOOK_SECRET).await,
    }
}

/// The provider settings pointing at the fakes, as environment variables (the same names
/// an operator sets); key material goes through files like in production.
fn provider_env(p: &Providers, dir: &std::path::Path) -> Vec<(String, String)> {
    let sa = dir.join("service-account.json");
    std::fs::write(&sa, &p.fcm.service_account_json).unwrap();
    let p8 = dir.join("AuthKey.p8");
    std::fs::write(&p8, &p.apns.key_pem).unwrap();
    let vapid = p256::SecretKey::random(&mut rand_core::OsRng);
    use p256::pkcs8::EncodePrivateKey;
    let vapid_pem = vapid.to_pkcs8_pem(Default::default()).unwrap().to_string();
    [
        ("INDABA_FCM_SERVICE_ACCOUNT_FILE", sa.display().to_string()),
        ("INDABA_FCM_BASE_URL", p.fcm.fake.url()),
        ("INDABA_APNS_KEY_FILE", p8.display().to_string()),
        ("INDABA_APNS_KEY_ID", push_fakes::APNS_KEY_ID.into()),
        ("INDABA_APNS_TEAM_ID", push_fakes::APNS_TEAM.into()),
        ("INDABA_APNS_TOPIC", push_fakes::APNS_TOPIC.into()),
        ("INDABA_APNS_BASE_URL", p.apns.fake.url()),
        ("INDABA_VAPID_PRIVATE_KEY", vapid_pem),
        ("INDABA_VAPID_SUBJECT", "mailto:ops@example.com".into()),
        ("INDABA_WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
        // The fakes are on loopback over http: allowed only with the development flag.
        ("INDABA_OUTBOUND_ALLOW_PRIVATE", "true".into()),
        ("INDABA_PUSH_COLLAPSE_MS", "400".into()),
        ("INDABA_PUSH_SUPPRESS_ACTIVE_SECS", "0".into()),
        ("INDABA_PUSH_RETRY_BASE_MS", "50".into()),
        ("INDABA_PUSH_LEASE_SECS", "2".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// One message-service, presence-service and one gateway (`c.gw(0)`); push-service with
/// `.push(provider_env(..))`.
fn cluster() -> TestClusterBuilder {
    TestCluster::builder().presence(true)
}

/// Registers a device as a client would: `unavailable` (503) means retry, which a
/// push-service that has only just started can answer while the 2-core test machine is
/// busy with the other tests (seen once in a clean-clone run).
async fn register(gw: SocketAddr, user: i64, body: Value) -> Value {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (status, v) = http(
            gw,
            "POST",
            "/api/v1/devices/",
            Some(&token(user)),
            Some(&body.to_string()),
        )
        .await;
        if status == 503 && attempts < 5 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        assert_eq!(status, 201, "{body} → {v}");
        return v;
    }
}

/// Sends a message over the WebSocket and returns its ack.
async fn say(c: &mut Client, to: i64, text: &str) -> Value {
    c.chat(to, text, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_recipient_is_notified_through_every_provider_online_one_is_not() {
    let p = providers().await;
    let dir = tempfile::tempdir().unwrap();
    let c = cluster().push(provider_env(&p, dir.path())).build().await;
    let sub = p.webpush.subscribe("bob-browser");
    let apns_token = "a".repeat(64);
    register(
        c.gw(0),
        2,
        json!({"platform": "fcm", "token": "fcm-bob-phone"}),
    )
    .await;
    register(c.gw(0), 2, json!({"platform": "apns", "token": apns_token})).await;
    // A browser's PushSubscription.toJSON(), as is.
    register(
        c.gw(0),
        2,
        json!({"platform": "webpush", "endpoint": sub.endpoint, "expirationTime": null,
        "keys": {"p256dh": sub.p256dh(), "auth": sub.auth_b64()}}),
    )
    .await;
    register(
        c.gw(0),
        2,
        json!({"platform": "webhook", "token": format!("{}/hooks/bob", p.webhook.url())}),
    )
    .await;
    let (_, list) = http(c.gw(0), "GET", "/api/v1/devices/", Some(&token(2)), None).await;
    assert_eq!(list["devices"].as_array().unwrap().len(), 4, "{list}");

    // Bob is offline: one message, one notification per device, each verified by its fake.
    let mut alice = Client::connect(c.gw(0), 1).await;
    let sent = say(&mut alice, 2, "dinner at 8?").await;
    let (conv, msg) = (
        sent["conversation_id"].as_i64().unwrap(),
        sent["message_id"].as_i64().unwrap(),
    );
    let fcm = p.fcm.fake.wait_delivered(1).await;
    let apns = p.apns.fake.wait_delivered(1).await;
    let web = p.webpush.fake.wait_delivered(1).await;
    let hook = p.webhook.wait_delivered(1).await;
    for (name, f) in [
        ("fcm", &p.fcm.fake),
        ("apns", &p.apns.fake),
        ("webpush", &p.webpush.fake),
        ("webhook", &p.webhook),
    ] {
        assert!(
            f.rejected().is_empty(),
            "{name} fake rejected: {:?}",
            f.rejected()
        );
    }
    assert_eq!(fcm[0].payload["token"], "fcm-bob-phone");
    assert_eq!(fcm[0].payload["notification"]["body"], "dinner at 8?");
    assert_eq!(fcm[0].payload["data"]["conversation_id"], conv.to_string());
    assert_eq!(fcm[0].payload["data"]["message_id"], msg.to_string());
    assert_eq!(
        fcm[0].payload["android"]["collapse_key"],
        format!("conv-{conv}")
    );
    assert_eq!(apns[0].path, format!("/3/device/{apns_token}"));
    assert_eq!(apns[0].payload["aps"]["alert"]["body"], "dinner at 8?");
    assert_eq!(apns[0].payload["conversation_id"], conv);
    assert_eq!(apns[0].headers["apns-collapse-id"], format!("conv-{conv}"));
    assert_eq!(
        web[0].payload["body"], "dinner at 8?",
        "decrypted by the fake: {:?}",
        web[0].payload
    );
    assert_eq!(web[0].payload["data"]["message_id"], msg.to_string());
    assert_eq!(hook[0].payload["notification"]["message_id"], msg);
    assert_eq!(hook[0].payload["notification"]["user_id"], 2);

    // Bob comes online: nothing more is pushed while he is.
    let mut bob = Client::connect(c.gw(0), 2).await;
    // Presence sees the socket within a tick.
    tokio::time::sleep(Duration::from_millis(600)).await;
    say(&mut alice, 2, "are you there?").await;
    let _ = bob.recv_type("new_message").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(p.fcm.fake.all().len(), 1);
    assert_eq!(p.apns.fake.all().len(), 1);
    assert_eq!(p.webpush.fake.all().len(), 1);
    assert_eq!(p.webhook.all().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collapse_mute_hidden_text_pruning_and_retries() {
    let p = providers().await;
    let dir = tempfile::tempdir().unwrap();
    let c = cluster().push(provider_env(&p, dir.path())).build().await;
    let store = c.push_store();
    let hook = format!("{}/hooks/carol", p.webhook.url());
    register(c.gw(0), 3, json!({"platform": "webhook", "token": hook})).await;
    let mut alice = Client::connect(c.gw(0), 1).await;

    // Three messages inside one collapse window: one notification, count 3.
    let mut last = Value::Null;
    for i in 1..=3 {
        last = say(&mut alice, 3, &format!("line {i}")).await;
    }
    let got = p.webhook.wait_delivered(1).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        p.webhook.delivered().len(),
        1,
        "one notification per collapse window"
    );
    let n = &got[0].payload["notification"];
    assert_eq!(n["count"], 3);
    assert_eq!(n["message_id"], last["message_id"]);
    assert_eq!(n["body"], "3 new messages · line 3");
    let conv = last["conversation_id"].as_i64().unwrap();

    // Muted: nothing. Unmuted: again.
    let mute = format!("/api/v1/conversations/{conv}/mute/");
    let (status, _) = http(c.gw(0), "POST", &mute, Some(&token(3)), Some("{}")).await;
    assert_eq!(status, 204);
    // An outsider cannot mute someone else's conversation.
    let (status, _) = http(c.gw(0), "POST", &mute, Some(&token(9)), Some("{}")).await;
    assert_eq!(status, 403);
    say(&mut alice, 3, "muted one").await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(p.webhook.delivered().len(), 1);
    let (status, _) = http(c.gw(0), "DELETE", &mute, Some(&token(3)), None).await;
    assert_eq!(status, 204);

    // Hidden text: title "New message", no text anywhere in the payload.
    let (status, _) = http(
        c.gw(0),
        "PUT",
        "/api/v1/push/preferences/",
        Some(&token(3)),
        Some(r#"{"hide_text":true}"#),
    )
    .await;
    assert_eq!(status, 204);
    say(&mut alice, 3, "the secret is 42").await;
    let got = p.webhook.wait_delivered(2).await;
    let n = &got[1].payload["notification"];
    assert_eq!(n["title"], "New message");
    assert!(
        !got[1].payload.to_string().contains("secret"),
        "{}",
        got[1].payload
    );

    // 503 (Retry-After: 1) then 200: retried and delivered once.
    p.webhook
        .state
        .lock()
        .unwrap()
        .script
        .push_back((503, Some(1)));
    say(&mut alice, 3, "retry me").await;
    let got = p.webhook.wait_delivered(3).await;
    assert_eq!(got.len(), 3);
    let all = p.webhook.all();
    let ids: Vec<&str> = all
        .iter()
        .map(|g| g.headers["x-indaba-delivery-id"].as_str())
        .collect();
    assert_eq!(all.last().map(|g| g.status), Some(200));
    assert_eq!(all[all.len() - 2].status, 503);
    assert_eq!(
        ids[ids.len() - 1],
        ids[ids.len() - 2],
        "the retry is the same delivery"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(p.webhook.delivered().len(), 3, "delivered once");

    // Dead tokens are pruned: FCM 404 UNREGISTERED, APNs 410, Web Push 410, webhook 410.
    let sub = p.webpush.subscribe("dave-old-browser");
    let dead_apns = "b".repeat(64);
    register(c.gw(0), 4, json!({"platform": "fcm", "token": "fcm-dead"})).await;
    register(c.gw(0), 4, json!({"platform": "apns", "token": dead_apns})).await;
    register(c.gw(0), 4, json!({"platform": "webpush", "endpoint": sub.endpoint, "keys": {"p256dh": sub.p256dh(), "auth": sub.auth_b64()}})).await;
    p.fcm
        .fake
        .state
        .lock()
        .unwrap()
        .dead
        .push("fcm-dead".into());
    p.apns
        .fake
        .state
        .lock()
        .unwrap()
        .dead
        .push(dead_apns.clone());
    p.webpush
        .subscriptions
        .lock()
        .unwrap()
        .remove("/push/dave-old-browser");
    p.webpush
        .fake
        .state
        .lock()
        .unwrap()
        .dead
        .push("/push/dave-old-browser".into());
    say(&mut alice, 4, "anyone?").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, list) = http(c.gw(0), "GET", "/api/v1/devices/", Some(&token(4)), None).await;
        if list["devices"].as_array().is_some_and(|d| d.is_empty()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not pruned: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(p.fcm.fake.all().last().map(|g| g.status), Some(404));
    assert_eq!(p.apns.fake.all().last().map(|g| g.status), Some(410));
    // Pruned devices are not tried again.
    let before = (p.fcm.fake.all().len(), p.apns.fake.all().len());
    say(&mut alice, 4, "hello?").await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!((p.fcm.fake.all().len(), p.apns.fake.all().len()), before);
    assert!(store.dead_letters().await.unwrap().is_empty());
    for f in [&p.fcm.fake, &p.apns.fake, &p.webpush.fake, &p.webhook] {
        assert!(f.rejected().is_empty(), "{:?}", f.rejected());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_device_registrations_are_refused_with_codes() {
    let p = providers().await;
    let dir = tempfile::tempdir().unwrap();
    let c = cluster().push(provider_env(&p, dir.path())).build().await;
    for (body, code) in [
        (json!({"platform": "pager", "token": "x"}), "invalid_field"),
        (json!({"platform": "fcm"}), "invalid_field"),
        (json!({"platform": "fcm", "token": ""}), "invalid_field"),
        (
            json!({"platform": "apns", "token": "not-hex"}),
            "invalid_field",
        ),
        (
            json!({"platform": "webpush", "endpoint": "https://push.example/x", "keys": {"p256dh": "AAAA", "auth": "AAAA"}}),
            "invalid_field",
        ),
        (
            json!({"platform": "webhook", "token": "ftp://example.com/hook"}),
            "invalid_field",
        ),
        (
            json!({"platform": "fcm", "token": "t", "endpoint": "https://x"}),
            "invalid_field",
        ),
        (
            json!({"platform": "fcm", "token": "t", "colour": "red"}),
            "invalid_field",
        ),
    ] {
        let (status, v) = http(
            c.gw(0),
            "POST",
            "/api/v1/devices/",
            Some(&token(5)),
            Some(&body.to_string()),
        )
        .await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}: {v}"
        );
    }
    let (status, _) = http(
        c.gw(0),
        "DELETE",
        "/api/v1/devices/",
        Some(&token(5)),
        Some(r#"{"platform":"fcm","token":"never"}"#),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = http(
        c.gw(0),
        "POST",
        "/api/v1/devices/",
        None,
        Some(r#"{"platform":"fcm","token":"t"}"#),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_service_killed_mid_batch_delivers_each_notification_once_after_restart() {
    let c = cluster().build().await;
    let p = providers().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = provider_env(&p, dir.path());
    env.extend([
        ("NATS_URL".to_owned(), c.nats_url()),
        ("DATABASE_URL".to_owned(), c.db().to_owned()),
        ("INDABA_GRPC_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        ("INDABA_HTTP_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        ("INDABA_LOG".to_owned(), "warn".to_owned()),
    ]);
    // Slow provider: each call takes 150 ms, so the kill lands mid-batch.
    p.webhook.state.lock().unwrap().delay = Duration::from_millis(150);
    let start = |env: &[(String, String)]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_indaba"))
            .arg("push")
            .envs(env.iter().cloned())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start push-service")
    };
    let mut proc = start(&env);
    let users: Vec<i64> = (100..130).collect();
    // The process needs a moment to subscribe: the first registration waits for it.
    let deadline = tokio::time::Instant::now() + WAIT;
    for u in &users {
        let body =
            json!({"platform": "webhook", "token": format!("{}/hooks/{u}", p.webhook.url())})
                .to_string();
        loop {
            let (status, v) = http(
                c.gw(0),
                "POST",
                "/api/v1/devices/",
                Some(&token(*u)),
                Some(&body),
            )
            .await;
            if status == 201 {
                break;
            }
            assert!(
                status == 503 && tokio::time::Instant::now() < deadline,
                "{v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // One message to a group of 30 offline users: 30 pending notifications.
    let (status, g) = http(
        c.gw(0),
        "POST",
        "/api/v1/conversations/",
        Some(&token(1)),
        Some(&json!({"participant_ids": users, "title": "Crew"}).to_string()),
    )
    .await;
    assert_eq!(status, 201, "{g}");
    let mut alice = Client::connect(c.gw(0), 1).await;
    alice.send(json!({"type": "chat_message", "conversation_id": g["id"], "text": "all hands", "client_msg_id": "k1"})).await;
    let _ = alice.recv_type("message_sent").await;
    // Kill -9 once some (not all) have gone out.
    let deadline = tokio::time::Instant::now() + WAIT;
    while p.webhook.all().len() < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no notification before the kill"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proc.kill().expect("kill -9");
    let _ = proc.wait();
    let at_kill = p.webhook.all().len();
    assert!(
        at_kill < users.len(),
        "the kill came too late to be mid-batch ({at_kill})"
    );
    let mut proc = start(&env);
    let got = p.webhook.wait_delivered(users.len()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = proc.kill();
    let _ = proc.wait();
    let all = p.webhook.all();
    let per_user: HashMap<String, usize> = all.iter().fold(HashMap::new(), |mut m, g| {
        *m.entry(g.path.clone()).or_default() += 1;
        m
    });
    let delivery_ids: HashSet<&str> = all
        .iter()
        .map(|g| g.headers["x-indaba-delivery-id"].as_str())
        .collect();
    eprintln!(
        "kill test: {} users, {} requests ({} before the kill), {} distinct delivery ids, {} repeats",
        users.len(), all.len(), at_kill, delivery_ids.len(), all.len() - delivery_ids.len()
    );
    assert!(got.len() >= users.len());
    assert_eq!(per_user.len(), users.len(), "every user notified");
    assert_eq!(
        delivery_ids.len(),
        users.len(),
        "one delivery per user: repeats (sends in flight at the kill) carry the same delivery id"
    );
    // Only sends that were in flight when the process died may repeat.
    assert!(all.len() - delivery_ids.len() <= 16, "{per_user:?}");
    assert!(p.webhook.rejected().is_empty());
}

/// Single-node: no JetStream; jobs are stored by the in-process push-service in its SQLite
/// file before message-service lets go of them. A pending notification survives a restart
/// and is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_keeps_pending_notifications_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hook = push_fakes::webhook(WEBHOOK_SECRET).await;
    let options: Vec<(String, String)> = [
        ("INDABA_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("INDABA_OUTBOUND_ALLOW_PRIVATE", "true"),
        // A long collapse window: the notification is still pending when we stop.
        ("INDABA_PUSH_COLLAPSE_MS", "1500"),
        ("INDABA_PUSH_SUPPRESS_ACTIVE_SECS", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (node, addr, _) = spawn_single_node_with(dir.path(), &listen, &options).await;
    register(
        addr,
        2,
        json!({"platform": "webhook", "token": format!("{}/hooks/bob", hook.url())}),
    )
    .await;
    let mut alice = Client::connect(addr, 1).await;
    let sent = say(&mut alice, 2, "while you were out").await;
    drop(alice);
    node.stop().await;
    assert!(
        hook.all().is_empty(),
        "sent before the collapse window ended"
    );

    let (_node, _, _) = spawn_single_node_with(dir.path(), &listen, &options).await;
    let got = hook.wait_delivered(1).await;
    assert_eq!(
        got.len(),
        1,
        "pending notification delivered after the restart"
    );
    assert_eq!(
        got[0].payload["notification"]["message_id"],
        sent["message_id"]
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(hook.all().len(), 1, "exactly once");
    assert!(hook.rejected().is_empty());
}

/// Backends manage devices over gRPC too (`PushService`), with the same API keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_service_grpc_registers_devices_with_keys() {
    use proto::pb::push_service_client::PushServiceClient;
    let nats = Nats::start();
    let db = fresh_database().await;
    let mut s = push_service::Settings::new(
        push_service::BusSettings::Nats(nats.url().into()),
        push_service::StoreSettings::Postgres(db),
    );
    s.webhook = Some(WEBHOOK_SECRET.into());
    s.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
    s.grpc_keys = proto::grpc_auth::ApiKeys::parse(
        "django:django-key-0123456789:rw,stats:stats-key-0123456789:ro",
    )
    .unwrap();
    let app = push_service::App::build(s).await.unwrap();
    let addr = app.grpc_addr().unwrap();
    let _run = run_with_stop(|rx| app.run(stopped(rx)));
    let mut c = PushServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let req = |key: Option<&str>, token: &str| {
        let mut r = tonic::Request::new(proto::pb::RegisterDeviceRequest {
            user_id: 7,
            platform: proto::pb::DevicePlatform::Webhook as i32,
            token: token.into(),
            ..Default::default()
        });
        if let Some(k) = key {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {k}").parse().unwrap());
        }
        r
    };
    let d = c
        .register_device(req(
            Some("django-key-0123456789"),
            // The default policy: https on 443 to a public address (a literal one: no DNS).
            "https://1.1.1.1/hook",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        d.result,
        Some(proto::pb::register_device_response::Result::Device(_))
    ));
    let e = c
        .register_device(req(Some("stats-key-0123456789"), "https://x.example/h"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = c
        .register_device(req(None, "https://x.example/h"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = c
        .register_device(req(Some("django-key-0123456789"), "http://plain.example/h"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let mut l = tonic::Request::new(proto::pb::ListDevicesRequest { user_id: 7 });
    l.metadata_mut().insert(
        "authorization",
        "Bearer stats-key-0123456789".parse().unwrap(),
    );
    assert_eq!(
        c.list_devices(l).await.unwrap().into_inner().devices.len(),
        1
    );
}

/// Sends `frame` over the WebSocket and returns its ack.
async fn say_frame(c: &mut Client, frame: Value) -> Value {
    c.send(frame).await;
    let ack = c.recv_type("message_sent").await;
    assert!(ack["message_id"].is_i64(), "{ack}");
    ack
}

/// What `user`'s webhook (`/hooks/<user>`) received, delivered.
fn hooked(hook: &Fake, user: i64) -> Vec<Value> {
    hook.delivered()
        .into_iter()
        .filter(|g| g.path == format!("/hooks/{user}"))
        .map(|g| g.payload["notification"].clone())
        .collect()
}

/// Waits until `user`'s webhook has `n` notifications (or 15 s).
async fn wait_hooked(hook: &Fake, user: i64, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = hooked(hook, user);
        if got.len() >= n || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Mute levels: `mentions_only` (the default) lets a message mentioning the user through,
/// and every provider's payload names who mentioned them; `all` lets nothing through; a
/// bad level is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_pass_a_mentions_only_mute_and_say_who_mentioned_you() {
    let p = providers().await;
    let dir = tempfile::tempdir().unwrap();
    let c = cluster().push(provider_env(&p, dir.path())).build().await;
    let sub = p.webpush.subscribe("carol-browser");
    let apns_token = "c".repeat(64);
    register(c.gw(0), 3, json!({"platform": "fcm", "token": "fcm-carol"})).await;
    register(c.gw(0), 3, json!({"platform": "apns", "token": apns_token})).await;
    register(
        c.gw(0),
        3,
        json!({"platform": "webpush", "endpoint": sub.endpoint,
        "keys": {"p256dh": sub.p256dh(), "auth": sub.auth_b64()}}),
    )
    .await;
    register(
        c.gw(0),
        3,
        json!({"platform": "webhook", "token": format!("{}/hooks/3", p.webhook.url())}),
    )
    .await;
    let mut alice = Client::connect(c.gw(0), 1).await;
    let first = say(&mut alice, 3, "hello").await;
    let conv = first["conversation_id"].as_i64().unwrap();
    assert_eq!(wait_hooked(&p.webhook, 3, 1).await.len(), 1);
    let _ = p.fcm.fake.wait_delivered(1).await;
    let _ = p.apns.fake.wait_delivered(1).await;
    let _ = p.webpush.fake.wait_delivered(1).await;
    assert!(hooked(&p.webhook, 3)[0]["mentioned_by"].is_null());
    assert!(p.fcm.fake.delivered()[0].payload["data"]
        .get("mentioned_by")
        .is_none());

    let mute = format!("/api/v1/conversations/{conv}/mute/");
    for body in [
        r#"{"level":"loud"}"#,
        r#"{"level":"ALL"}"#,
        r#"{"level":5}"#,
    ] {
        let (status, v) = http(c.gw(0), "POST", &mute, Some(&token(3)), Some(body)).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (400, Some("invalid_field")),
            "{body}: {v}"
        );
    }
    let (status, v) = http(
        c.gw(0),
        "POST",
        &mute,
        Some(&token(3)),
        Some(r#"{"level":"mentions_only"}"#),
    )
    .await;
    assert_eq!(status, 204, "{v}");

    // mentions_only: the plain message is not notified, the mention is, saying so.
    say(&mut alice, 3, "just chatting").await;
    let mention = say_frame(
        &mut alice,
        json!({"type": "chat_message", "receiver_id": 3, "text": "@3 look", "mentions": [3]}),
    )
    .await;
    let got = wait_hooked(&p.webhook, 3, 2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let n = &got[1];
    assert_eq!(n["message_id"], mention["message_id"], "{n}");
    assert_eq!(n["count"], 1, "the plain message is not in it: {n}");
    assert_eq!(n["mentioned_by"], 1);
    assert_eq!(n["title"], "New message");
    assert_eq!(n["body"], "User 1 mentioned you: @3 look");
    let fcm = p.fcm.fake.wait_delivered(2).await;
    assert_eq!(fcm[1].payload["data"]["mentioned_by"], "1");
    assert_eq!(
        fcm[1].payload["notification"]["body"],
        "User 1 mentioned you: @3 look"
    );
    let apns = p.apns.fake.wait_delivered(2).await;
    assert_eq!(apns[1].payload["mentioned_by"], 1);
    assert_eq!(
        apns[1].payload["aps"]["alert"]["body"],
        "User 1 mentioned you: @3 look"
    );
    let web = p.webpush.fake.wait_delivered(2).await;
    assert_eq!(
        web[1].payload["data"]["mentioned_by"], "1",
        "{:?}",
        web[1].payload
    );
    assert_eq!(web[1].payload["body"], "User 1 mentioned you: @3 look");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        hooked(&p.webhook, 3).len(),
        2,
        "nothing for the plain message"
    );

    // all: neither notifies.
    let (status, _) = http(
        c.gw(0),
        "POST",
        &mute,
        Some(&token(3)),
        Some(r#"{"level":"all"}"#),
    )
    .await;
    assert_eq!(status, 204);
    say(&mut alice, 3, "still chatting").await;
    say_frame(
        &mut alice,
        json!({"type": "chat_message", "receiver_id": 3, "text": "@3 again", "mentions": [3]}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(hooked(&p.webhook, 3).len(), 2, "fully muted");
    let (status, _) = http(c.gw(0), "DELETE", &mute, Some(&token(3)), None).await;
    assert_eq!(status, 204);
    let marker = say(&mut alice, 3, "unmuted").await;
    let got = wait_hooked(&p.webhook, 3, 3).await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[2]["message_id"], marker["message_id"]);
    assert_eq!(got[2]["count"], 1, "nothing from the full mute: {}", got[2]);
    assert!(got[2]["mentioned_by"].is_null());
    for f in [&p.fcm.fake, &p.apns.fake, &p.webpush.fake, &p.webhook] {
        assert!(f.rejected().is_empty(), "{:?}", f.rejected());
    }
}

/// Inside the collapse window: a deleted message is never notified (a batch of more loses
/// it from its count and shows no text); an edited one is notified with its new text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_and_edited_messages_inside_the_collapse_window() {
    let p = providers().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = provider_env(&p, dir.path());
    // Room for the change to arrive inside the window on a busy machine (last one wins).
    env.push(("INDABA_PUSH_COLLAPSE_MS".into(), "1500".into()));
    let c = cluster().push(env).build().await;
    for u in [4, 5] {
        register(
            c.gw(0),
            u,
            json!({"platform": "webhook", "token": format!("{}/hooks/{u}", p.webhook.url())}),
        )
        .await;
    }
    let mut alice = Client::connect(c.gw(0), 1).await;
    let message = |m: &Value| format!("/api/v1/messages/{}/", m["message_id"]);

    // Deleted at once: never notified.
    let oops = say(&mut alice, 4, "oops, wrong chat").await;
    let (status, v) = http(c.gw(0), "DELETE", &message(&oops), Some(&token(1)), None).await;
    assert_eq!(status, 200, "{v}");
    // Edited at once: notified with the new text.
    let typo = say(&mut alice, 5, "helo").await;
    let (status, v) = http(
        c.gw(0),
        "PATCH",
        &message(&typo),
        Some(&token(1)),
        Some(r#"{"text":"hello, edited"}"#),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let got = wait_hooked(&p.webhook, 5, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["message_id"], typo["message_id"]);
    assert_eq!(got[0]["body"], "hello, edited", "{}", got[0]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        hooked(&p.webhook, 4).is_empty(),
        "the deleted message was notified"
    );

    // Two messages, the newer deleted: one counted, no text shown.
    say(&mut alice, 4, "first").await;
    let second = say(&mut alice, 4, "second, regretted").await;
    let (status, _) = http(c.gw(0), "DELETE", &message(&second), Some(&token(1)), None).await;
    assert_eq!(status, 200);
    let got = wait_hooked(&p.webhook, 4, 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["count"], 1, "{}", got[0]);
    assert_eq!(got[0]["body"], "");
    assert!(!got[0].to_string().contains("regretted"), "{}", got[0]);

    // Sent stays sent: a later edit does not notify again.
    let (status, _) = http(
        c.gw(0),
        "PATCH",
        &message(&typo),
        Some(&token(1)),
        Some(r#"{"text":"hello again"}"#),
    )
    .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(hooked(&p.webhook, 5).len(), 1);
    assert_eq!(c.push_store().pending_batches().await.unwrap(), 0);
    assert!(
        p.webhook.rejected().is_empty(),
        "{:?}",
        p.webhook.rejected()
    );
}
