//! The REST fallback and the event stream (issue 6), over real NATS and PostgreSQL with two
//! gateways, and the OpenAPI document kept true against the router.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// One message-service, presence-service and two gateways (`c.gw(0)`, `c.gw(1)`).
async fn cluster() -> TestCluster {
    TestCluster::builder()
        .presence(true)
        .gateways(2)
        .build()
        .await
}

async fn post(addr: SocketAddr, path: &str, user: i64, body: Value) -> (u16, Value) {
    http(
        addr,
        "POST",
        path,
        Some(&token(user)),
        Some(&body.to_string()),
    )
    .await
}

async fn get(addr: SocketAddr, path: &str, user: i64) -> (u16, Value) {
    http(addr, "GET", path, Some(&token(user)), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_send_is_stored_delivered_live_and_idempotent() {
    let c = cluster().await;
    let mut alice_ws = Client::connect(c.gw(0), 1).await;
    let mut bob_ws = Client::connect(c.gw(1), 2).await;

    // Direct message over REST, received live on the WebSocket of another gateway.
    let (status, sent) = post(
        c.gw(0),
        "/api/v1/messages/",
        1,
        json!({"receiver_id": 2, "text": "over rest", "client_msg_id": "r-1"}),
    )
    .await;
    assert_eq!(status, 201, "{sent}");
    let conv = sent["conversation_id"].as_i64().unwrap();
    let got = bob_ws.recv_type("new_message").await;
    assert_eq!(got["message_id"], sent["message_id"]);
    assert_eq!(got["text"], "over rest");
    // The sender's own socket hears it as its other device.
    let mine = alice_ws.recv_type("new_message").await;
    assert_eq!(mine["message_id"], sent["message_id"]);

    // A retry with the same key, this time as the Idempotency-Key header: the original.
    let body = json!({"receiver_id": 2, "text": "over rest"}).to_string();
    let auth = format!("Bearer {}", token(1));
    let (status, text) = http_full(
        c.gw(1),
        "POST",
        "/api/v1/messages/",
        &[("Authorization", &auth), ("Idempotency-Key", "r-1")],
        Some(&body),
    )
    .await;
    let again: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["message_id"], sent["message_id"]);
    assert_eq!(again["duplicate"], true);
    bob_ws
        .expect_none_of("new_message", Duration::from_millis(500))
        .await;

    // Into the conversation by id.
    let (status, second) = post(
        c.gw(1),
        &format!("/api/v1/conversations/{conv}/messages/"),
        1,
        json!({"text": "second"}),
    )
    .await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(second["seq"], 2);
    assert_eq!(bob_ws.recv_type("new_message").await["seq"], 2);

    // History pages, oldest first.
    let (status, page) = get(
        c.gw(0),
        &format!("/api/v1/conversations/{conv}/messages/?after_seq=0&limit=1"),
        2,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["messages"][0]["text"], "over rest");
    assert_eq!(page["has_more"], true);
    let (_, newest) = get(
        c.gw(0),
        &format!("/api/v1/conversations/{conv}/messages/"),
        2,
    )
    .await;
    let seqs: Vec<i64> = newest["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2]);
    let (_, one) = get(
        c.gw(0),
        &format!("/api/v1/messages/{}/", second["message_id"]),
        2,
    )
    .await;
    assert_eq!(one["text"], "second");

    // Unread, then read: the sender's socket gets the receipt.
    let (_, unread) = get(c.gw(0), "/api/v1/messages/unread/", 2).await;
    assert_eq!(unread["total_unread"], 2, "{unread}");
    assert_eq!(unread["conversations"][0]["conversation_id"], conv);
    let ids = json!([sent["message_id"], second["message_id"], 999_999]);
    let (status, read) = post(
        c.gw(0),
        "/api/v1/messages/read/",
        2,
        json!({"message_ids": ids}),
    )
    .await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["rejected"], json!([999_999]));
    let receipt = alice_ws.recv_type("read_receipt").await;
    assert_eq!(receipt["reader_id"], 2);
    let (_, unread) = get(c.gw(0), "/api/v1/messages/unread/", 2).await;
    assert_eq!(unread["total_unread"], 0, "{unread}");

    // Typing over REST reaches the WebSocket.
    let (status, _) = post(
        c.gw(0),
        &format!("/api/v1/conversations/{conv}/typing/"),
        1,
        json!({"is_typing": true}),
    )
    .await;
    assert_eq!(status, 204);
    let t = bob_ws.recv_type("typing_indicator").await;
    assert_eq!(
        (t["user_id"].as_i64(), t["is_typing"].as_bool()),
        (Some(1), Some(true))
    );

    // Presence: Bob has a socket; user 77 never connected.
    let (status, p) = get(c.gw(0), "/api/v1/presence/?user_ids=2,77", 1).await;
    assert_eq!(status, 200, "{p}");
    let statuses: Vec<(i64, String)> = p["presence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["user_id"].as_i64().unwrap(),
                u["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(statuses.contains(&(2, "online".into())), "{p}");
    assert!(statuses.contains(&(77, "offline".into())), "{p}");

    // An outsider sees nothing.
    let (status, e) = get(
        c.gw(0),
        &format!("/api/v1/conversations/{conv}/messages/"),
        3,
    )
    .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, e) = get(
        c.gw(0),
        &format!("/api/v1/messages/{}/", sent["message_id"]),
        3,
    )
    .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (404, Some("message_not_found"))
    );
    let (status, _) = get(c.gw(0), &format!("/api/v1/conversations/{conv}/"), 3).await;
    assert_eq!(status, 403);
    let (status, e) = post(
        c.gw(0),
        &format!("/api/v1/conversations/{conv}/messages/"),
        3,
        json!({"text": "let me in"}),
    )
    .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_list_pages_with_opaque_tokens() {
    let c = cluster().await;
    for other in 2..=6 {
        let (status, _) = post(
            c.gw(0),
            "/api/v1/messages/",
            1,
            json!({"receiver_id": other, "text": "hi"}),
        )
        .await;
        assert_eq!(status, 201);
    }
    let mut seen = Vec::new();
    let mut path = "/api/v1/conversations/?page_size=2".to_owned();
    for _ in 0..10 {
        let (status, page) = get(c.gw(1), &path, 1).await;
        assert_eq!(status, 200, "{page}");
        let rows = page["conversations"].as_array().unwrap();
        assert!(rows.len() <= 2);
        seen.extend(rows.iter().map(|r| r["id"].as_i64().unwrap()));
        match page["next_page_token"].as_str() {
            Some(t) => path = format!("/api/v1/conversations/?page_size=2&page_token={t}"),
            None => break,
        }
    }
    let distinct: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!((seen.len(), distinct.len()), (5, 5), "{seen:?}");
    let (status, e) = get(c.gw(1), "/api/v1/conversations/?page_token=garbage", 1).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("invalid_field"))
    );
    let (status, _) = get(c.gw(1), "/api/v1/conversations/?page_size=0", 1).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_rejects_bad_requests_with_stable_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_node, addr, _) = spawn_single_node(dir.path()).await;
    let conv = {
        let (_, v) = post(
            addr,
            "/api/v1/messages/",
            1,
            json!({"receiver_id": 2, "text": "x"}),
        )
        .await;
        v["conversation_id"].as_i64().unwrap()
    };
    let msgs = format!("/api/v1/conversations/{conv}/messages/");
    // No token, a bad token: 401 on every endpoint.
    for (method, path) in [
        ("GET", "/api/v1/conversations/"),
        ("POST", "/api/v1/conversations/"),
        ("GET", msgs.as_str()),
        ("POST", msgs.as_str()),
        ("POST", "/api/v1/messages/"),
        ("GET", "/api/v1/messages/unread/"),
        ("POST", "/api/v1/messages/read/"),
        ("GET", "/api/v1/presence/?user_ids=1"),
        ("GET", "/api/v1/events/"),
    ] {
        for bearer in [None, Some("not.a.jwt")] {
            let (status, v) = http(addr, method, path, bearer, Some("{}")).await;
            assert_eq!(status, 401, "{method} {path}: {v}");
            assert_eq!(v["error"]["code"], "unauthorized");
        }
    }
    let cases: Vec<(&str, String, Value, u16, &str)> = vec![
        (
            "POST",
            msgs.clone(),
            json!("{not json"),
            400,
            "invalid_json",
        ),
        (
            "POST",
            msgs.clone(),
            json!({"text": "x", "colour": "red"}),
            400,
            "invalid_field",
        ),
        (
            "POST",
            msgs.clone(),
            json!({"text": "   "}),
            400,
            "empty_text",
        ),
        (
            "POST",
            msgs.clone(),
            json!({"text": "x".repeat(101)}),
            400,
            "text_too_long",
        ),
        (
            "POST",
            msgs.clone(),
            json!({"text": "x", "client_msg_id": "has space"}),
            400,
            "invalid_field",
        ),
        (
            "POST",
            "/api/v1/messages/".into(),
            json!({"text": "x"}),
            400,
            "invalid_field",
        ),
        (
            "POST",
            "/api/v1/messages/".into(),
            json!({"text": "x", "receiver_id": 1}),
            400,
            "invalid_receiver",
        ),
        (
            "POST",
            "/api/v1/conversations/999/messages/".into(),
            json!({"text": "x"}),
            404,
            "conversation_not_found",
        ),
        (
            "POST",
            "/api/v1/messages/read/".into(),
            json!({"message_ids": []}),
            400,
            "invalid_field",
        ),
        (
            "GET",
            "/api/v1/presence/?user_ids=a,b".into(),
            Value::Null,
            400,
            "invalid_field",
        ),
        (
            "GET",
            "/api/v1/presence/".into(),
            Value::Null,
            400,
            "invalid_field",
        ),
        (
            "GET",
            format!("{msgs}?after_seq=1&before_seq=3"),
            Value::Null,
            400,
            "invalid_field",
        ),
        (
            "GET",
            format!("{msgs}?limit=1000"),
            Value::Null,
            400,
            "invalid_field",
        ),
        (
            "GET",
            format!("{msgs}?after_seq=x"),
            Value::Null,
            400,
            "invalid_field",
        ),
        (
            "GET",
            "/api/v1/nothing/".into(),
            Value::Null,
            404,
            "not_found",
        ),
        (
            "GET",
            "/api/v1/conversations/abc/messages/".into(),
            Value::Null,
            404,
            "not_found",
        ),
        (
            "DELETE",
            "/api/v1/messages/".into(),
            Value::Null,
            405,
            "method_not_allowed",
        ),
        (
            "GET",
            "/api/v1/dev/token/?user_id=1".into(),
            Value::Null,
            404,
            "not_found",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let body = match &body {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            v => v.to_string(),
        };
        let b = (method != "GET").then_some(body.as_str());
        let (got, v) = http(addr, method, &path, Some(&token(1)), b).await;
        assert_eq!(
            (got, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{method} {path} {body}: {v}"
        );
    }
    // A body over 64 KiB is refused without being read to the end.
    let big = format!("{{\"text\":\"{}\"}}", "x".repeat(70 * 1024));
    let (status, v) = http(addr, "POST", &msgs, Some(&token(1)), Some(&big)).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_receives_websocket_messages_and_resumes_without_loss() {
    let c = cluster().await;
    let mut alice = Client::connect(c.gw(0), 1).await;
    let bob_token = token(2);
    let path = format!("/api/v1/events/?token={bob_token}");
    let mut sse = SseClient::open(c.gw(1), &path, &[]).await;
    assert_eq!(sse.status, 200);
    let hello = sse.next().await;
    assert_eq!(hello.data["type"], "connection_established");
    assert_eq!(hello.data["user_id"], 2);

    // A message sent over the WebSocket arrives on the stream with its id as event id.
    let sent = alice.chat(2, "one", Some("s-1")).await;
    let ev = sse.next_type("new_message").await;
    assert_eq!(ev.data["message_id"], sent["message_id"]);
    assert_eq!(
        ev.id.as_deref(),
        Some(sent["message_id"].to_string().as_str())
    );
    let conv = sent["conversation_id"].as_i64().unwrap();
    // Typing and receipts come through the stream too.
    alice
        .send(json!({"type": "typing_indicator", "conversation_id": conv, "is_typing": true}))
        .await;
    assert_eq!(sse.next_type("typing_indicator").await.data["user_id"], 1);
    let cursor = ev.id.clone().unwrap();
    drop(sse);

    // While Bob's stream is down, three more messages, in two conversations.
    let mut missed = Vec::new();
    for i in 2..=4 {
        let m = alice
            .chat(2, &format!("missed {i}"), Some(&format!("s-{i}")))
            .await;
        missed.push(m["message_id"].as_i64().unwrap());
    }
    let (status, g) = post(
        c.gw(0),
        "/api/v1/conversations/",
        1,
        json!({"participant_ids": [2, 3]}),
    )
    .await;
    assert_eq!(status, 201, "{g}");
    let group = g["id"].as_i64().unwrap();
    alice
        .send(json!({"type": "chat_message", "conversation_id": group, "text": "in the group", "client_msg_id": "s-5"}))
        .await;
    missed.push(
        alice.recv_type("message_sent").await["message_id"]
            .as_i64()
            .unwrap(),
    );

    // Reconnect like EventSource does, with Last-Event-ID, on the other gateway.
    let mut sse = SseClient::open(c.gw(0), &path, &[("Last-Event-ID", &cursor)]).await;
    assert_eq!(sse.status, 200);
    let mut got = Vec::new();
    while got.len() < missed.len() {
        let e = sse.next_type("new_message").await;
        let id = e.data["message_id"].as_i64().unwrap();
        assert_ne!(
            id.to_string(),
            cursor,
            "the cursor's own message is not replayed"
        );
        assert_eq!(e.id, Some(id.to_string()));
        got.push(id);
    }
    assert_eq!(
        got, missed,
        "missed messages replayed once each, in id order"
    );
    // Then live again, and nothing repeated.
    let live = alice.chat(2, "live", Some("s-6")).await;
    let e = sse.next_type("new_message").await;
    assert_eq!(e.data["message_id"], live["message_id"]);

    // A bad cursor is a clear error, not a silent fresh stream.
    let (status, text) = http_full(
        c.gw(0),
        "GET",
        &path,
        &[("Last-Event-ID", "not-a-number")],
        None,
    )
    .await;
    assert_eq!(status, 400, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_router() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_node, addr, _) = spawn_single_node(dir.path()).await;
    let (status, served) = http(addr, "GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(status, 200);
    let file: Value = serde_json::from_str(gateway::rest::OPENAPI_JSON).unwrap();
    assert_eq!(served, file);
    assert!(served["openapi"].as_str().unwrap().starts_with("3."));
    // Every documented operation exists: unauthenticated it is refused with 401 (or
    // answered, for the public ones), never 404/405.
    let paths = served["paths"].as_object().unwrap();
    assert!(paths.len() >= 12);
    for (path, ops) in paths {
        let concrete = path.replace("{id}", "1");
        for (method, op) in ops.as_object().unwrap() {
            let method = method.to_ascii_uppercase();
            let public = op.get("security").is_some_and(|s| s == &json!([]));
            let (status, v) = http(addr, &method, &concrete, None, Some("{}")).await;
            if public {
                assert!(
                    status == 200 || status == 400 || status == 404,
                    "{method} {path}: {status} {v}"
                );
            } else {
                assert_eq!(status, 401, "{method} {path}: {v}");
            }
            // Every documented operation lists the statuses it can answer with.
            assert!(
                op["responses"].get("401").is_some() || public,
                "{method} {path}"
            );
        }
    }
    // And nothing undocumented answers under /api/v1/.
    for path in [
        "/api/v1/users/",
        "/api/v1/conversations/1/members/",
        "/api/v1/messages/1/edit/",
    ] {
        let (status, _) = http(addr, "GET", path, Some(&token(1)), None).await;
        assert_eq!(status, 404, "{path}");
    }
}

/// schemathesis (installed into `.tools/venv` by `scripts/test.sh`).
fn schemathesis() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("INDABA_SCHEMATHESIS") {
        return p.into();
    }
    let st = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/st");
    assert!(
        st.exists(),
        "schemathesis missing: run scripts/test.sh (it installs it) or set INDABA_SCHEMATHESIS"
    );
    st
}

/// Property-based run of the whole REST API against its OpenAPI document: every generated
/// request, valid or not, must get a documented status, a documented content type and a
/// body matching the schema, and never a 5xx. (Valid-by-schema requests may still be refused
/// by business rules — a forged page token, a conversation you are not in — so the
/// "positive data acceptance" check is off.) The event stream never ends, so it is left to
/// `event_stream_receives_websocket_messages_and_resumes_without_loss`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_errors_or_schema_violations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_node, addr, _) = spawn_single_node(dir.path()).await;
    // Some data to find: a conversation of user 1.
    let (status, _) = post(
        addr,
        "/api/v1/messages/",
        1,
        json!({"receiver_id": 2, "text": "seed"}),
    )
    .await;
    assert_eq!(status, 201);
    let out = tokio::process::Command::new(schemathesis())
        .arg("run")
        .arg(format!("http://{addr}/api/v1/openapi.json"))
        .args(["--url", &format!("http://{addr}")])
        .args(["-H", &format!("Authorization: Bearer {}", token(1))])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--exclude-path", "/api/v1/events/"])
        .args(["--max-examples", "40", "--seed", "20261125", "--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(dir.path())
        .output()
        .await
        .expect("run schemathesis");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("Tested: 33"), "{report}");
}
