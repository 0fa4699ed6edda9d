//! Attacks by an ordinary logged-in user, or by anyone who can reach the gateway's port,
//! performed against the real server: each is refused, and where the point is that others
//! keep working, a second client's sends are measured while the attack runs (latency is
//! printed, never asserted).
//!
//! The event-stream connection cap and the address budget under any path spelling are in
//! `connection_limits`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// One raw HTTP/1.1 exchange on its own connection: status, lower-cased headers, body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, rest.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A SimpleJWT refresh token: same key, same `user_id`, days of validity.
fn refresh_token(user: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"user_id": user, "token_type": "refresh", "jti": "x", "exp": now + 7 * 86_400}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// p50/p99 of a second user's sends while an attack runs (printed, not asserted).
struct Bystander {
    client: Client,
    receiver: i64,
    latencies: Vec<Duration>,
}

impl Bystander {
    async fn new(gw: SocketAddr, user: i64, receiver: i64) -> Bystander {
        Bystander {
            client: Client::connect(gw, user).await,
            receiver,
            latencies: Vec::new(),
        }
    }

    async fn send(&mut self) {
        let started = Instant::now();
        let ack = self.client.chat(self.receiver, "still here", None).await;
        assert_eq!(ack["type"], "message_sent", "bystander refused: {ack}");
        self.latencies.push(started.elapsed());
    }

    fn report(mut self, attack: &str) {
        self.latencies.sort();
        let at = |q: f64| {
            let i = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
            self.latencies[i]
        };
        println!(
            "{attack}: bystander sent {} messages during the attack, p50 {:?}, p99 {:?}",
            self.latencies.len(),
            at(0.5),
            at(0.99)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_are_not_access_tokens() {
    let nats = Nats::start();
    let (_g, gw) = spawn_gateway(&nats.url(), "gw-refresh").await;
    let refresh = refresh_token(5);
    // A socket with it is refused before the upgrade…
    let err = tokio_tungstenite::connect_async(format!("ws://{gw}/ws/chat/?token={refresh}"))
        .await
        .expect_err("refresh token opened a socket");
    assert!(err.to_string().contains("401"), "{err}");
    // …and so are the REST API and the event stream.
    let (status, _, body) = request(gw, "GET", "/api/v1/conversations/", &refresh, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("refresh token"), "{body}");
    let (status, _, _) = request(gw, "GET", "/api/v1/events/", &refresh, None).await;
    assert_eq!(status, 401);
    // First-message authentication too (closed with 4001).
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{gw}/ws/chat/"))
        .await
        .unwrap();
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        json!({"type": "authenticate", "token": refresh})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let close = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f))) => return f,
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(close.map(|f| u16::from(f.code)), Some(4001));
    // The access token of the same user still works.
    let _ok = Client::connect(gw, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_read_loop_is_budgeted_while_others_keep_sending() {
    let cluster = TestCluster::builder()
        .gateway_settings(|s| s.rest_rate_per_10s = 20)
        .build()
        .await;
    let gw = cluster.gw(0);
    let mut bystander = Bystander::new(gw, 2, 3).await;
    let attacker = token(1);
    let started = Instant::now();
    let mut refused = None;
    let mut served = 0;
    for _ in 0..60 {
        let (status, headers, body) =
            request(gw, "GET", "/api/v1/messages/unread/", &attacker, None).await;
        match status {
            200 => served += 1,
            429 => {
                refused = Some((headers, body));
                break;
            }
            other => panic!("unexpected {other}: {body}"),
        }
        bystander.send().await;
    }
    let (headers, body) = refused.expect("the read loop was never refused");
    // The burst, plus what the budget refilled (2 a second) while the loop ran.
    let refilled = (started.elapsed().as_secs_f64() * 2.0).ceil() as usize;
    assert!(
        (20..=20 + refilled).contains(&served),
        "served {served} (burst 20, refilled up to {refilled})"
    );
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    let retry: u64 = header(&headers, "retry-after").unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry), "retry-after {retry}");
    assert_eq!(
        header(&headers, "ratelimit-policy"),
        Some("\"rest\";q=20;w=10")
    );
    assert!(header(&headers, "ratelimit")
        .unwrap()
        .starts_with("\"rest\";r=0;t="));
    // The event stream spends the same budget.
    let (status, _, _) = request(gw, "GET", "/api/v1/events/", &attacker, None).await;
    assert_eq!(status, 429);
    // Another user's REST calls have their own budget.
    let (status, _, _) = request(gw, "GET", "/api/v1/messages/unread/", &token(4), None).await;
    assert_eq!(status, 200);
    for _ in 0..20 {
        bystander.send().await;
    }
    bystander.report("REST read loop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_creation_is_rate_limited() {
    let cluster = TestCluster::builder()
        .gateway_settings(|s| s.conversation_create_rate_per_min = 3)
        .build()
        .await;
    let gw = cluster.gw(0);
    let t = token(1);
    for other in 2..5 {
        let body = json!({"participant_ids": [other, other + 100], "title": "g"}).to_string();
        let (status, _, b) = request(gw, "POST", "/api/v1/conversations/", &t, Some(&body)).await;
        assert_eq!(status, 201, "{b}");
    }
    let body = json!({"participant_ids": [9, 10], "title": "g"}).to_string();
    let (status, headers, b) = request(gw, "POST", "/api/v1/conversations/", &t, Some(&body)).await;
    assert_eq!(status, 429, "{b}");
    assert_eq!(
        header(&headers, "ratelimit-policy"),
        Some("\"conversations\";q=3;w=60")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_typing_and_receipts_spend_the_same_budget_as_the_socket() {
    let cluster = TestCluster::builder().build().await;
    let gw = cluster.gw(0);
    let mut a = Client::connect(gw, 1).await;
    let ack = a.chat(2, "hi", None).await;
    let conv = ack["conversation_id"].as_i64().unwrap();
    // Six state changes on the socket spend the burst of the typing budget…
    for i in 0..6 {
        a.send(
            json!({"type": "typing_indicator", "conversation_id": conv, "is_typing": i % 2 == 0}),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // …so the same user's REST typing is refused: one budget per user, both doors.
    let (status, headers, body) = request(
        gw,
        "POST",
        &format!("/api/v1/conversations/{conv}/typing/"),
        &token(1),
        Some(r#"{"is_typing": true}"#),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        header(&headers, "ratelimit-policy"),
        Some("\"typing\";q=6;w=3")
    );
    // Read receipts: a burst of socket frames spends the receipt budget (30, refilled at
    // 10/s), and the same user's REST submissions right after are refused.
    let mid = ack["message_id"].as_i64().unwrap();
    let mut b = Client::connect(gw, 2).await;
    for _ in 0..40 {
        b.send(json!({"type": "read_receipt", "message_ids": [mid]}))
            .await;
    }
    let err = b.recv_type("error").await;
    assert_eq!(err["code"], "rate_limited", "{err}");
    assert!(err["retry_after_ms"].as_u64().is_some(), "{err}");
    let receipt = json!({"message_ids": [mid]}).to_string();
    let mut refused = false;
    for _ in 0..3 {
        let (status, headers, body) = request(
            gw,
            "POST",
            "/api/v1/messages/read/",
            &token(2),
            Some(&receipt),
        )
        .await;
        if status == 429 {
            assert_eq!(
                header(&headers, "ratelimit-policy"),
                Some("\"receipts\";q=30;w=3")
            );
            refused = true;
            break;
        }
        assert_eq!(status, 200, "{body}");
    }
    assert!(
        refused,
        "REST receipts were not refused after the socket spent the budget"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_idle_connections_and_connection_hoarding_are_cut() {
    let nats = Nats::start();
    let (_g, gw) = spawn_gateway_with(&nats.url(), "gw-slow", |s| {
        s.body_timeout = Duration::from_secs(1);
        s.header_timeout = Duration::from_secs(1);
        s.max_connections_per_ip = 4;
    })
    .await;
    // A body that never finishes arriving: 408, not a task held forever.
    let mut slow = TcpStream::connect(gw).await.unwrap();
    slow.write_all(
        format!(
            "POST /api/v1/messages/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"text\":",
            token(1)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf))
        .await
        .expect("answered within the body timeout")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    drop(slow);

    // An idle keep-alive connection is closed once the header timeout passes.
    let mut idle = TcpStream::connect(gw).await.unwrap();
    idle.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let eof = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(eof.is_ok(), "idle keep-alive connection was never closed");
    println!(
        "idle keep-alive connection closed after {:?}",
        started.elapsed()
    );

    // Open connections per address: the fifth is refused at once while four are open.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut hoard = Vec::new();
    for _ in 0..4 {
        hoard.push(TcpStream::connect(gw).await.unwrap());
    }
    let mut fifth = TcpStream::connect(gw).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(2), fifth.read(&mut buf))
        .await
        .expect("refused at once")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    // The hoarded connections are idle: the header timeout frees their places.
    drop(hoard);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = http_text(gw, "/livez").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_that_stops_reading_is_cut_and_others_keep_receiving() {
    let cluster = TestCluster::builder()
        .gateway_settings(|s| {
            s.outbound_queue_bytes = 65_536;
            s.socket_send_buffer = Some(4096);
        })
        .build()
        .await;
    let gw = cluster.gw(0);
    // The attacker's stream: a tiny receive window, and it never reads.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut stalled = sock.connect(gw).await.unwrap();
    stalled
        .write_all(
            format!(
                "GET /api/v1/events/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
                token(7)
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut watcher = Client::connect(gw, 8).await;
    let mut sender = Client::connect(gw, 9).await;
    let (_, metrics) = http_text(gw, "/metrics").await;
    let active = |m: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with("indaba_connections_active "))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    assert_eq!(active(&metrics), 3.0);
    // Flood the stalled stream's user while another user keeps receiving.
    let text = "x".repeat(100);
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    for i in 0..600 {
        let ack = sender.chat(7, &text, None).await;
        assert_eq!(ack["type"], "message_sent");
        if i % 20 == 0 {
            let t = Instant::now();
            sender.chat(8, "to the watcher", None).await;
            let _ = watcher.recv_type("new_message").await;
            worst = worst.max(t.elapsed());
        }
    }
    println!(
        "flood of 600 to a stalled stream took {:?}; a reading user's worst delivery {worst:?}",
        started.elapsed()
    );
    // The stalled stream's connection is cut from outside (nothing polls it) and leaves.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = http_text(gw, "/metrics").await;
        if active(&metrics) == 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled stream was never cut"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "stalled stream cut {:?} after the flood began",
        started.elapsed()
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_grpc_api_does_not_start_beyond_loopback() {
    let nats = Nats::start();
    let db = fresh_database().await;
    let mut s = message_service_settings(&nats.url(), &db);
    s.grpc_listen = Some("0.0.0.0:0".parse().unwrap());
    s.grpc_keys = Default::default();
    let err = message_service::App::build(s)
        .await
        .expect_err("an open gRPC API started on 0.0.0.0");
    assert!(err.to_string().contains("INDABA_GRPC_INSECURE"), "{err}");
    // The same for presence-service and push-service.
    let mut p =
        presence_service::Settings::new(presence_service::BusSettings::Nats(nats.url().into()));
    p.grpc_listen = Some("0.0.0.0:0".parse().unwrap());
    assert!(presence_service::App::build(p).await.is_err());
    let mut push = push_service::Settings::new(
        push_service::BusSettings::Nats(nats.url().into()),
        push_service::StoreSettings::Postgres(db.clone()),
    );
    push.grpc_listen = Some("0.0.0.0:0".parse().unwrap());
    assert!(push_service::App::build(push).await.is_err());
    // Loopback, or a key, is fine.
    let mut s = message_service_settings(&nats.url(), &db);
    s.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
    let _app = message_service::App::build(s).await.expect("loopback");
}

/// Waits for the next `presence` frame about `user`.
async fn presence_of(c: &mut Client, user: i64) -> serde_json::Value {
    loop {
        let f = c.recv_type("presence").await;
        if f["user_id"] == user {
            return f;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_see_presence() {
    let cluster = TestCluster::builder().presence(true).build().await;
    let gw = cluster.gw(0);
    let mut target = Client::connect(gw, 1).await;
    let mut friend = Client::connect(gw, 3).await;
    // The friend shares a conversation with the target; the stranger shares none.
    assert_eq!(friend.chat(1, "hi", None).await["type"], "message_sent");
    let _ = target.recv_type("new_message").await;
    let mut stranger = Client::connect(gw, 2).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, _, body) =
            request(gw, "GET", "/api/v1/presence/?user_ids=1", &token(3), None).await;
        if body.contains("online") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the friend never saw the target online"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // REST: the stranger reads offline with no last_seen — exactly what a real offline
    // user with no last_seen looks like (user 999 has never connected).
    let (status, _, body) = request(
        gw,
        "GET",
        "/api/v1/presence/?user_ids=1,999",
        &token(2),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (mut hidden, mut absent) = (v["presence"][0].clone(), v["presence"][1].clone());
    assert_eq!(hidden["status"], "offline", "{body}");
    assert!(
        hidden.get("last_seen").is_none_or(|l| l.is_null()),
        "{body}"
    );
    hidden["user_id"] = json!(0);
    absent["user_id"] = json!(0);
    assert_eq!(
        hidden, absent,
        "a hidden user reads exactly like one never seen"
    );
    // WebSocket: the same, and no change is ever forwarded to the stranger.
    stranger
        .send(json!({"type": "presence_subscribe", "user_ids": [1]}))
        .await;
    assert_eq!(presence_of(&mut stranger, 1).await["status"], "offline");
    friend
        .send(json!({"type": "presence_subscribe", "user_ids": [1]}))
        .await;
    assert_eq!(presence_of(&mut friend, 1).await["status"], "online");
    target
        .send(json!({"type": "set_status", "status": "away"}))
        .await;
    assert_eq!(presence_of(&mut friend, 1).await["status"], "away");
    stranger
        .expect_none_of("presence", Duration::from_millis(800))
        .await;
}

/// A plain member tries to take a group over: remove the owner and the others, make
/// themselves owner or admin, add an accomplice, over every door. Each step is refused
/// with `forbidden`, and the group is exactly as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_member_cannot_take_over_a_group() {
    let cluster = TestCluster::builder().build().await;
    let gw = cluster.gw(0);
    let (status, _, body) = request(
        gw,
        "POST",
        "/api/v1/conversations/",
        &token(1),
        Some(r#"{"participant_ids":[2,3],"title":"club"}"#),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let before: serde_json::Value = serde_json::from_str(&body).unwrap();
    let group = before["id"].as_i64().unwrap();
    let mut attacker = Client::connect(gw, 3).await;
    let mut owner = Client::connect(gw, 1).await;

    let members = format!("/api/v1/conversations/{group}/participants/");
    for (method, path, body) in [
        ("POST", members.clone(), r#"{"remove":[1,2]}"#.to_owned()),
        (
            "POST",
            members.clone(),
            r#"{"remove":[1],"add":[66]}"#.to_owned(),
        ),
        ("POST", members.clone(), r#"{"add":[66]}"#.to_owned()),
        (
            "PUT",
            format!("{members}3/"),
            r#"{"role":"owner"}"#.to_owned(),
        ),
        (
            "PUT",
            format!("{members}3/"),
            r#"{"role":"admin"}"#.to_owned(),
        ),
        (
            "PUT",
            format!("{members}1/"),
            r#"{"role":"member"}"#.to_owned(),
        ),
    ] {
        let (status, _, answer) = request(gw, method, &path, &token(3), Some(&body)).await;
        assert_eq!(status, 403, "{method} {path} {body}: {answer}");
        assert!(answer.contains("forbidden"), "{answer}");
    }
    for frame in [
        json!({"type": "update_participants", "conversation_id": group, "remove": [1, 2]}),
        json!({"type": "update_participants", "conversation_id": group, "add": [66]}),
        json!({"type": "set_role", "conversation_id": group, "user_id": 3, "role": "owner"}),
    ] {
        attacker.send(frame.clone()).await;
        assert_eq!(
            attacker.recv_type("error").await["code"],
            "forbidden",
            "{frame}"
        );
    }
    // Nothing changed, and nobody was told anything did.
    let (_, _, now) = request(
        gw,
        "GET",
        &format!("/api/v1/conversations/{group}/"),
        &token(1),
        None,
    )
    .await;
    let now: serde_json::Value = serde_json::from_str(&now).unwrap();
    assert_eq!(now, before, "the group is as the owner made it");
    owner
        .expect_none_of("participants_changed", Duration::from_millis(300))
        .await;
}

/// An HTTP/1.1 connection kept alive across GETs, as a flooding client holds one.
struct KeepAlive {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    async fn connect(addr: SocketAddr) -> KeepAlive {
        KeepAlive {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    /// One GET on this connection: the status and the body (`Content-Length` framed).
    async fn get(&mut self, path: &str, token: &str) -> (u16, String) {
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
        self.stream.write_all(req.as_bytes()).await.unwrap();
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            self.fill().await;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .expect("a content-length answer");
        while self.buf.len() < head_end + 4 + len {
            self.fill().await;
        }
        let body =
            String::from_utf8_lossy(&self.buf[head_end + 4..head_end + 4 + len]).into_owned();
        self.buf.drain(..head_end + 4 + len);
        (status, body)
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(n > 0, "connection closed");
        self.buf.extend_from_slice(&chunk[..n]);
    }
}

/// Item 2 of the issue: one user loops over keep-alive connections reading their unread
/// summary and a full conversation page (300 conversations: 1,201 statements each before
/// the list became one statement), with no REST budget in the way. Each kind of read has
/// its own bound in message-service, so the flood waits for its slots (and past 2 s gets
/// `unavailable` with a retry hint), and another user's sends keep every slot they need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_conversation_reads_leaves_others_sends_their_slots() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    let cluster = TestCluster::builder()
        .gateway_settings(|s| s.rest_rate_per_10s = 0)
        .build()
        .await;
    let gw = cluster.gw(0);
    let seeds: Vec<message_service::store::NewMessage> = (0..300)
        .map(|i| message_service::store::NewMessage {
            sender_id: 10_000 + i,
            conversation_id: None,
            receiver_id: Some(1),
            text: "hello".into(),
            client_msg_id: None,
            origin_connection_id: String::new(),
            reply_to: None,
            mentions: Vec::new(),
            attachments: Vec::new(),
        })
        .collect();
    for chunk in seeds.chunks(100) {
        for r in cluster.store().send_many(chunk).await {
            r.expect("seed");
        }
    }
    let attacker = token(1);
    let (status, body) = KeepAlive::connect(gw)
        .await
        .get("/api/v1/messages/unread/", &attacker)
        .await;
    assert_eq!(status, 200, "{body}");
    let unread: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(unread["total_unread"], 300, "{unread}");

    let mut bystander = Bystander::new(gw, 2, 3).await;
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut flood = Vec::new();
    for i in 0..24 {
        let (stop, served, refused, attacker) = (
            stop.clone(),
            served.clone(),
            refused.clone(),
            attacker.clone(),
        );
        flood.push(tokio::spawn(async move {
            let mut conn = KeepAlive::connect(gw).await;
            let mut n = i;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let path = if n % 2 == 0 {
                    "/api/v1/messages/unread/"
                } else {
                    "/api/v1/conversations/?page_size=500"
                };
                let (status, body) = conn.get(path, &attacker).await;
                match status {
                    200 => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    503 => {
                        assert!(body.contains("unavailable"), "{body}");
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("unexpected {other}: {body}"),
                }
            }
        }));
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        // Asserts every send is acknowledged: no `unavailable` for the bystander.
        bystander.send().await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in flood {
        t.await.expect("flood task");
    }
    let (served, refused) = (
        served.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    println!("read flood: {served} pages served, {refused} refused as unavailable in 5 s");
    assert!(
        served > 0,
        "the attacker's reads are served up to the bound"
    );
    // 24 loops at once pass the per-kind bound (a quarter of the pool): the reads over it
    // wait for a slot (up to 2 s) rather than take the connections sends need — whether
    // any is refused depends on the machine's speed, so it is reported, not asserted (the
    // bound itself is unit-tested in message-service's admission).
    bystander.report("conversation read flood");
    // Once the flood stops, the same user reads again.
    let (status, _) = KeepAlive::connect(gw)
        .await
        .get("/api/v1/messages/unread/", &attacker)
        .await;
    assert_eq!(status, 200);
}

/// Item 3 of the issue: 300 messages of 4,000 three-byte characters (12 kB each; one
/// replay page of 100 was 1.2 MB, over NATS's 1 MiB, and the stream failed with "resume
/// failed"). Every page that crosses the bus is cut at the byte budget with `has_more`, so
/// the event stream's replay from `Last-Event-ID: 0` pages through all of them, and a
/// history page asked for 200 comes back shorter, saying there is more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_messages_replay_and_page_under_the_bus_limit() {
    let cluster = TestCluster::builder()
        .gateway_settings(|s| s.max_text_chars = 4000)
        .message_service_settings(|s| s.max_text_chars = 4000)
        .build()
        .await;
    let gw = cluster.gw(0);
    let long = "€".repeat(4000);
    let mut sender = Client::connect(gw, 21).await;
    let mut sent = Vec::new();
    let mut conversation = 0;
    for _ in 0..300 {
        let ack = sender.chat(22, &long, None).await;
        assert_eq!(ack["type"], "message_sent", "{ack}");
        sent.push(ack["message_id"].as_i64().unwrap());
        conversation = ack["conversation_id"].as_i64().unwrap();
    }

    let started = Instant::now();
    let mut sse = SseClient::open(
        gw,
        &format!("/api/v1/events/?token={}", token(22)),
        &[("Last-Event-ID", "0")],
    )
    .await;
    assert_eq!(sse.status, 200);
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let e = sse.next().await;
        match e.data["type"].as_str() {
            Some("new_message") => {
                assert_eq!(
                    e.data["text"].as_str().map(|t| t.chars().count()),
                    Some(4000)
                );
                got.push(e.data["message_id"].as_i64().unwrap());
            }
            Some("error") => panic!("replay failed: {}", e.data),
            _ => {}
        }
    }
    got.dedup();
    assert_eq!(got, sent, "every message once, in order");
    println!(
        "replayed 300 messages of 12 kB from Last-Event-ID 0 in {:?}",
        started.elapsed()
    );

    // History: 200 asked for, fewer fit the budget; paging on reaches the first message.
    let mut before = 0;
    let mut pages = 0;
    let mut seen = 0;
    loop {
        let path = if before == 0 {
            format!("/api/v1/conversations/{conversation}/messages/?limit=200")
        } else {
            format!("/api/v1/conversations/{conversation}/messages/?limit=200&before_seq={before}")
        };
        let (status, page) = http(gw, "GET", &path, Some(&token(22)), None).await;
        assert_eq!(status, 200, "{page}");
        let messages = page["messages"].as_array().unwrap();
        pages += 1;
        seen += messages.len();
        if pages == 1 {
            assert!(
                messages.len() < 200,
                "{} messages in one page",
                messages.len()
            );
            assert_eq!(page["has_more"], true);
        }
        if page["has_more"] != true {
            break;
        }
        before = messages[0]["seq"].as_i64().unwrap();
    }
    assert_eq!(seen, 300);
    println!("history of 300 long messages: {pages} pages of at most 128 kB");
}

/// Item 7: deliveries published faster than a gateway drains them overflow its NATS
/// client's subscription buffer, and the client drops them (a slow-consumer event). The
/// gateway must not go on as if nothing happened: every socket is closed with 1012 so its
/// client reconnects and syncs, and the event is counted. The buffer is made tiny here to
/// provoke the event on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_slow_consumer_makes_the_gateway_resync_its_sockets() {
    use prost::Message as _;
    let nats = Nats::start();
    let (_g, gw) = spawn_gateway_with(&nats.url(), "gw-slow-bus", |s| {
        if let gateway::BusSettings::Nats(n) = &mut s.bus {
            n.subscription_capacity = 4;
        }
    })
    .await;
    let mut c = Client::connect(gw, 5).await;
    // As a message-service would, but far faster: deliveries for a user not on this
    // gateway (so only the bus buffer fills, not the socket's queue).
    let flood = bus::Bus::connect_nats(&nats.url().into(), "flood")
        .await
        .unwrap();
    let payload = bytes::Bytes::from(
        proto::pb::Delivery {
            event: Some(proto::pb::delivery::Event::Message(
                proto::pb::ChatMessage {
                    id: 1,
                    conversation_id: 1,
                    sender_id: 2,
                    text: "x".repeat(500),
                    seq: 1,
                    ..Default::default()
                },
            )),
            recipient_ids: vec![999],
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let subject = proto::subjects::gateway_delivery("gw-slow-bus");
    for _ in 0..20_000 {
        flood.publish(&subject, payload.clone()).await.unwrap();
    }
    flood.flush().await.unwrap();
    assert_eq!(c.expect_close().await, 1012, "sockets are asked to resync");
    let (_, metrics) = http_text(gw, "/metrics").await;
    let resyncs: f64 = metrics
        .lines()
        .find(|l| l.starts_with("indaba_bus_resyncs_total "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(resyncs >= 1.0, "{metrics}");
    // The client comes back and works.
    let _again = Client::connect(gw, 5).await;
}
