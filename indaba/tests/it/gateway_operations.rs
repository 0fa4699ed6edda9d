//! What an operator relies on at the gateway: a drain for deploys, the Prometheus metrics,
//! and logs that never hold a token.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// SIGTERM: readiness fails and new sockets are refused at once, open sockets are closed
/// with 1012 in batches over the drain window, then the gateway exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_fails_readiness_and_closes_sockets_with_1012() {
    let nats = Nats::start();
    let (g, gw) = spawn_gateway_with(&nats.url(), "gw-drain", |s| {
        s.drain_window = Duration::from_secs(1);
    })
    .await;
    let (status, _) = http(gw, "GET", "/readyz", None, None).await;
    assert_eq!(status, 200);
    let mut clients = Vec::new();
    for u in 1..=20 {
        clients.push(Client::connect(gw, u).await);
    }
    let stopping = tokio::spawn(g.stop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = http(gw, "GET", "/readyz", None, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("unavailable"))
    );
    let err = tokio_tungstenite::connect_async(format!("ws://{gw}/ws/chat/?token={}", token(99)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    for c in &mut clients {
        assert_eq!(c.expect_close().await, 1012);
    }
    stopping.await.unwrap();
}

/// `GET /metrics` exposes the spec's monitoring list with bounded labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_connections_messages_and_failures() {
    let nats = Nats::start();
    let db = fresh_database().await;
    let (_m, _) = spawn_message_service(&nats.url(), &db).await;
    let (_g, gw) = spawn_gateway_with(&nats.url(), "gw-metrics", |s| s.chat_rate_per_10s = 2).await;
    let mut a = Client::connect(gw, 1).await;
    let mut b = Client::connect(gw, 2).await;
    a.chat(2, "one", None).await;
    a.chat(2, "two", None).await;
    assert_eq!(a.chat(2, "three", None).await["code"], "rate_limited");
    let _ = b.recv_type("new_message").await;
    let _ = http(gw, "GET", "/ws/chat/?token=nope", None, None).await;
    let (status, text) = http_text(gw, "/metrics").await;
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
    };
    assert_eq!(value("indaba_connections_active"), 2.0);
    assert_eq!(value("indaba_messages_sent_total"), 2.0);
    assert_eq!(value("indaba_rate_limited_total"), 1.0);
    assert_eq!(
        value(r#"indaba_connection_failures_total{reason="unauthorized"}"#),
        1.0
    );
    assert_eq!(value("indaba_send_latency_seconds_count"), 2.0);
    assert_eq!(
        value(r#"indaba_send_latency_seconds_bucket{le="+Inf"}"#),
        2.0
    );
    assert!(value("indaba_messages_delivered_total") >= 1.0);
    assert!(!text.contains("user"), "no per-user labels");
}

/// Tokens never reach the logs, whatever happens to them (valid, invalid, expired,
/// refreshed), even at the most verbose level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_appear_in_logs() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("stderr.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_indaba"))
        .arg("serve")
        .env("INDABA_DATA_DIR", dir.path())
        .env("INDABA_LISTEN", format!("127.0.0.1:{port}"))
        .env("INDABA_JWT_SECRET", SECRET)
        .env("INDABA_LOG", "trace")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_port(port, "indaba");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let good = token(1);
    let other = token(2);
    let expired = {
        let exp = proto::time::now_ms() / 1000 - 3600;
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"user_id": 1, "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let forged = format!("{}x", &good[..good.len() - 1]);
    let mut c = Client::connect_with_token(addr, 1, &good).await;
    c.chat(2, "hello", Some("t1")).await;
    c.send(json!({"type": "refresh_token", "token": other}))
        .await;
    c.send(json!({"type": "refresh_token", "token": forged}))
        .await;
    c.ping().await;
    for t in [&expired, &forged] {
        let (status, _) = http(addr, "GET", &format!("/ws/chat/?token={t}"), None, None).await;
        assert_eq!(status, 401);
        let (status, _) = http(addr, "GET", "/api/v1/conversations/", Some(t), None).await;
        assert_eq!(status, 401);
    }
    let (status, _) = http(addr, "GET", "/api/v1/conversations/", Some(&good), None).await;
    assert_eq!(status, 200);
    drop(c);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().count() > 10,
        "trace logging produced too little to mean anything:\n{text}"
    );
    for (name, t) in [
        ("good", &good),
        ("other", &other),
        ("expired", &expired),
        ("forged", &forged),
    ] {
        // The signature part is what an attacker needs; any of it in the logs is a leak.
        let signature = t.rsplit('.').next().unwrap();
        assert!(
            !text.contains(signature),
            "the {name} token's signature is in the logs"
        );
    }
    assert!(!text.contains(SECRET), "the secret is in the logs");
}
