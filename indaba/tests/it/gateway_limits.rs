//! Limits and abuse handling at the gateway: who may connect (origin allowlist, per-user
//! connection cap across gateways, attempts per client address, first-message
//! authentication and its timeout, expiring tokens), how fast (chat, typing and read-receipt
//! rates), and peers that stall (slow handshakes, unanswered pings, clients that stop
//! reading).

use std::time::Duration;

use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_origins_must_be_on_the_allowlist() {
    let nats = Nats::start();
    let (_g, gw) = spawn_gateway_with(&nats.url(), "gw-origin", |s| {
        s.allowed_origins = vec!["https://app.example.com".into()];
    })
    .await;
    let open = |origin: Option<&'static str>| async move {
        let mut req = format!("ws://{gw}/ws/chat/?token={}", token(1))
            .into_client_request()
            .unwrap();
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        tokio_tungstenite::connect_async(req).await
    };
    let err = open(Some("https://evil.example")).await.unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    assert!(open(Some("https://app.example.com")).await.is_ok());
    assert!(open(Some("HTTPS://APP.EXAMPLE.COM/")).await.is_ok());
    // Native apps and servers send no Origin.
    assert!(open(None).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_rate_limit_answers_then_closes_sustained_abuse() {
    let nats = Nats::start();
    let db = fresh_database().await;
    let (_m, _) = spawn_message_service(&nats.url(), &db).await;
    let (_g, gw) = spawn_gateway_with(&nats.url(), "gw-rate", |s| s.chat_rate_per_10s = 5).await;
    let mut a = Client::connect(gw, 1).await;
    for i in 0..5 {
        let r = a.chat(2, &format!("m{i}"), None).await;
        assert_eq!(r["type"], "message_sent", "{r}");
    }
    let r = a.chat(2, "one too many", Some("r-6")).await;
    assert_eq!(
        (r["code"].as_str(), r["ref"].as_str()),
        (Some("rate_limited"), Some("r-6"))
    );
    // The user's other device shares the budget.
    let mut a2 = Client::connect(gw, 1).await;
    assert_eq!(
        a2.chat(2, "from the tablet", None).await["code"],
        "rate_limited"
    );
    // Keep hammering: after 20 refusals in a row the socket is closed with 1008.
    for i in 0..30 {
        a.send(json!({"type": "chat_message", "receiver_id": 2, "text": format!("spam {i}")}))
            .await;
    }
    assert_eq!(a.expect_close().await, 1008);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_pings_and_closes_peers_that_stop_answering() {
    let nats = Nats::start();
    let (_g, gw) = spawn_gateway_with(&nats.url(), "gw-ping", |s| {
        s.ping_interval = Duration::from_millis(200);
    })
    .await;
    // A client that reads (and so answers pings) stays connected.
    let mut alive = Client::connect(gw, 1).await;
    // A client that stops reading answers no ping.
    let mut silent = Client::connect(gw, 2).await;
    alive
        .expect_none_of("error", Duration::from_millis(1_500))
        .await;
    alive.ping().await;
    assert_eq!(silent.expect_close().await, 1001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_counts_sockets_on_every_gateway() {
    let c = TestCluster::builder()
        .message_services(0)
        .presence(true)
        .gateways(2)
        .max_connections_per_user(2)
        .build()
        .await;
    let (gw1, gw2, handle) = (c.gw(0), c.gw(1), c.presence());
    let _one = Client::connect(gw1, 5).await;
    let _two = Client::connect(gw2, 5).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while handle.get(5).2 < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence never counted both sockets"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A third socket, on either gateway, is refused before the upgrade.
    for gw in [gw1, gw2] {
        let err =
            tokio_tungstenite::connect_async(format!("ws://{gw}/ws/chat/?token={}", token(5)))
                .await
                .unwrap_err();
        match err {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                assert_eq!(resp.status().as_u16(), 429);
                let body: serde_json::Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
                assert_eq!(body["error"]["code"], "rate_limited");
            }
            other => panic!("expected HTTP 429, got {other}"),
        }
    }
    // Other users are unaffected.
    let _other = Client::connect(gw1, 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handshake_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let nats = Nats::start();
    let (_g, gw) = spawn_gateway_with(&nats.url(), "gw-slow", |s| {
        s.header_timeout = Duration::from_millis(500);
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(gw).await.unwrap();
    // Half a request head, then nothing (slowloris).
    s.write_all(b"GET /ws/chat/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the server kept a half-open handshake for {WAIT:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_closes_the_socket_unless_refreshed() {
    let nats = Nats::start();
    let (_g, gw) =
        spawn_gateway_with(&nats.url(), "gw-exp", |s| s.jwt_leeway = Duration::ZERO).await;
    let short = |user| gateway::auth::mint_hs256(SECRET, user, Duration::from_secs(2)).unwrap();
    let mut lapsing = Client::connect_with_token(gw, 1, &short(1)).await;
    let mut renewed = Client::connect_with_token(gw, 2, &short(2)).await;
    renewed
        .send(json!({"type": "refresh_token", "token": token(1)}))
        .await;
    assert_eq!(renewed.recv_type("error").await["code"], "forbidden");
    renewed
        .send(json!({"type": "refresh_token", "token": "garbage"}))
        .await;
    assert_eq!(renewed.recv_type("error").await["code"], "unauthorized");
    renewed
        .send(json!({"type": "refresh_token", "token": token(2)}))
        .await;
    assert!(renewed.recv_type("token_refreshed").await["valid_until"].is_string());
    assert_eq!(lapsing.expect_close().await, 4001);
    // Past its own first token's expiry too (minted up to a second later), the refreshed
    // socket still works.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    renewed.ping().await;
}

/// Typing indicators that would go out (state changes) and read-receipt frames are rate
/// limited per socket; repeats the spec's client sends per keystroke are not counted; sustained
/// abuse closes the socket with 1008.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_receipt_floods_are_limited_then_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, addr, _) = spawn_single_node(dir.path()).await;
    let mut a = Client::connect(addr, 1).await;
    let conv = a.chat(2, "hi", None).await["conversation_id"]
        .as_i64()
        .unwrap();
    // A typist: the same state 30 times in a row is fine (coalesced, not counted).
    for _ in 0..30 {
        a.send(json!({"type": "typing_indicator", "conversation_id": conv, "is_typing": true}))
            .await;
    }
    a.ping().await;
    a.expect_none_of("error", Duration::from_millis(300)).await;
    // Flipping state on every frame is abuse: refused beyond the burst.
    for i in 0..12 {
        a.send(
            json!({"type": "typing_indicator", "conversation_id": conv, "is_typing": i % 2 == 0}),
        )
        .await;
    }
    let e = a.recv_type("error").await;
    assert_eq!(e["code"], "rate_limited");
    assert_eq!(e["conversation_id"], conv);
    // Receipts: bursts of 30 frames pass, more are refused.
    let mut b = Client::connect(addr, 2).await;
    for _ in 0..40 {
        b.send(json!({"type": "read_receipt", "message_ids": [1]}))
            .await;
    }
    let e = b.recv_type("error").await;
    assert_eq!(e["code"], "rate_limited");
    // Sustained: 20 refusals in a row close the socket with 1008.
    for _ in 0..60 {
        b.send(json!({"type": "read_receipt", "message_ids": [1]}))
            .await;
    }
    assert_eq!(b.expect_close().await, 1008);
}

/// A socket may open without a token and authenticate with its first frame; a socket that
/// does not (in time, or with a bad token, or with another frame) is closed with 4001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_message_authentication_and_its_timeout() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let opts = vec![("INDABA_AUTH_TIMEOUT_SECS".to_owned(), "1".to_owned())];
    let (_node, addr, _) = spawn_single_node_with(dir.path(), "127.0.0.1:0", &opts).await;
    let open = || async move {
        let (ws, resp) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/chat/"))
            .await
            .expect("upgrade without a token");
        assert_eq!(resp.status(), 101);
        ws
    };
    let close_code = |mut ws: tokio_tungstenite::WebSocketStream<_>| async move {
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(m) = ws.next().await {
                match m {
                    Ok(Message::Close(Some(f))) => {
                        return Some((u16::from(f.code), f.reason.to_string()))
                    }
                    Ok(_) => {}
                    Err(_) => return None,
                }
            }
            None
        })
        .await
        .expect("closed in time");
        got.expect("a close frame")
    };
    // Authenticated by the first frame: a normal socket.
    let mut ws = open().await;
    ws.send(Message::text(
        json!({"type": "authenticate", "token": token(1)}).to_string(),
    ))
    .await
    .unwrap();
    let hello = loop {
        if let Some(Ok(Message::Text(t))) = ws.next().await {
            break serde_json::from_str::<serde_json::Value>(&t).unwrap();
        }
    };
    assert_eq!(hello["type"], "connection_established");
    assert_eq!(hello["user_id"], 1);
    ws.send(Message::text(
        json!({"type": "chat_message", "receiver_id": 2, "text": "hi", "client_msg_id": "fm1"})
            .to_string(),
    ))
    .await
    .unwrap();
    let sent = loop {
        if let Some(Ok(Message::Text(t))) = ws.next().await {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "message_sent" {
                break v;
            }
        }
    };
    assert_eq!(sent["client_msg_id"], "fm1");
    // Silent: closed with 4001 after the timeout.
    let (code, reason) = close_code(open().await).await;
    assert_eq!(code, 4001);
    assert!(reason.contains("timeout"), "{reason}");
    // Another frame first, or a bad token: 4001.
    let mut ws = open().await;
    ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    assert_eq!(close_code(ws).await.0, 4001);
    let mut ws = open().await;
    ws.send(Message::text(
        json!({"type": "authenticate", "token": "not.a.jwt"}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(close_code(ws).await.0, 4001);
    // A plain HTTP request without a token is still refused before any upgrade.
    let (status, _) = http(addr, "GET", "/ws/chat/", None, None).await;
    assert_eq!(status, 401);
}

/// Connection attempts are limited per client address; behind a trusted load balancer the
/// address is taken from `X-Forwarded-For` (its rightmost untrusted entry), not the peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_attempts_are_limited_per_client_address() {
    let nats = Nats::start();
    let (_g, gw) = spawn_gateway_with(&nats.url(), "gw-ip", |s| {
        s.connect_rate_per_ip_10s = 5;
    })
    .await;
    let attempt = |xff: Option<&'static str>| async move {
        let mut req = format!("ws://{gw}/ws/chat/?token={}", token(1))
            .into_client_request()
            .unwrap();
        if let Some(x) = xff {
            req.headers_mut()
                .insert("x-forwarded-for", x.parse().unwrap());
        }
        tokio_tungstenite::connect_async(req)
            .await
            .map(|(ws, _)| ws)
    };
    let mut open = Vec::new();
    for _ in 0..5 {
        open.push(attempt(None).await.expect("within the budget"));
    }
    let err = attempt(None).await.unwrap_err();
    assert!(err.to_string().contains("429"), "{err}");
    // The peer is not a trusted proxy: a forged X-Forwarded-For changes nothing.
    assert!(attempt(Some("198.51.100.1")).await.is_err());
    let (_, metrics) = http_text(gw, "/metrics").await;
    assert!(
        metrics.contains("indaba_connection_failures_total{reason=\"ip_rate\"} 2"),
        "{metrics}"
    );

    // Behind a trusted load balancer every client address has its own budget.
    let (_g2, gw2) = spawn_gateway_with(&nats.url(), "gw-ip-lb", |s| {
        s.connect_rate_per_ip_10s = 1;
        s.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let attempt2 = |xff: &'static str| async move {
        let mut req = format!("ws://{gw2}/ws/chat/?token={}", token(1))
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("x-forwarded-for", xff.parse().unwrap());
        tokio_tungstenite::connect_async(req)
            .await
            .map(|(ws, _)| ws)
    };
    let a = attempt2("198.51.100.1").await.expect("client A");
    let b = attempt2("6.6.6.6, 198.51.100.2")
        .await
        .expect("client B (left entry is the client's claim)");
    assert!(
        attempt2("198.51.100.1").await.is_err(),
        "client A over its budget"
    );
    drop((a, b, open));
}

/// A client that stops reading is closed with 1013 once its queue passes the byte limit —
/// promptly, while others in the same room keep getting every message — and learns why
/// from the close frame once it reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_with_1013() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    let nats = Nats::start();
    let db = fresh_database().await;
    let (_m, _) = spawn_message_service_with(&nats.url(), &db, |s| s.max_text_chars = 4000).await;
    let (_g, gw) = spawn_gateway_with(&nats.url(), "gw-slow-reader", |s| {
        s.max_text_chars = 4000;
        s.outbound_queue_bytes = 64 * 1024;
        s.socket_send_buffer = Some(16 * 1024);
    })
    .await;
    let senders: Vec<i64> = (60..70).collect();
    let mut members = vec![50, 51];
    members.extend(&senders);
    let body = json!({"participant_ids": &members[1..], "title": "flood"}).to_string();
    let (status, v) = http(
        gw,
        "POST",
        "/api/v1/conversations/",
        Some(&token(50)),
        Some(&body),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let group = v["id"].as_i64().unwrap();

    // The slow reader: a small receive buffer, so the kernel cannot hide megabytes for it.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(gw).await.unwrap();
    let (mut slow, _) =
        tokio_tungstenite::client_async(format!("ws://{gw}/ws/chat/?token={}", token(50)), stream)
            .await
            .unwrap();
    let hello = slow.next().await.unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains("connection_established"));
    let mut fine = Client::connect(gw, 51).await;
    // A member who reads normally, on the same gateway, the whole time.
    let fine_task = tokio::spawn(async move {
        for _ in 0..250 {
            fine.recv_type("new_message").await;
        }
        fine.ping().await;
    });

    // 10 senders × 25 messages of ~4 KB: about 1 MB for a client that reads nothing.
    let text = "x".repeat(3900);
    let mut tasks = Vec::new();
    for &u in &senders {
        let text = text.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(gw, u).await;
            for i in 0..25 {
                let f = json!({"type": "chat_message", "conversation_id": group,
                               "text": format!("{i} {text}"), "client_msg_id": format!("{u}-{i}")});
                c.send(f).await;
                c.recv_type("message_sent").await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Everyone else got all 250.
    fine_task.await.unwrap();

    // The server gave up on the slow reader (counted), without waiting for it.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, m) = http_text(gw, "/metrics").await;
        if m.lines()
            .any(|l| l == "indaba_slow_consumer_closes_total 1")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no slow-consumer close:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Reading again, it gets what was already on the wire, then the reason.
    let mut received = 0;
    let close = loop {
        match tokio::time::timeout(WAIT, slow.next())
            .await
            .expect("close frame in time")
        {
            Some(Ok(Message::Text(_))) => received += 1,
            Some(Ok(Message::Close(f))) => break f.expect("close frame with a code"),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1013, "{close:?}");
    assert!(close.reason.contains("too slow"), "{close:?}");
    assert!(
        received < 250,
        "the slow reader cannot have had everything: {received}"
    );
}
