//! The HTTP side: handshake authentication and the conversation-creation endpoint.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::*;

/// A correctly signed token that expired an hour ago (beyond the 30 s leeway).
fn expired_token() -> String {
    let exp = proto::time::now_ms() / 1000 - 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"user_id": 1, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_requires_a_valid_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_node, addr, _) = spawn_single_node(dir.path()).await;
    for (query, reason) in [
        ("", "missing token"),
        ("?token=", "missing token"),
        ("?token=not.a.jwt", "invalid token"),
    ] {
        let (status, body) = http(addr, "GET", &format!("/ws/chat/{query}"), None, None).await;
        assert_eq!(status, 401, "{query}");
        assert_eq!(body["error"]["code"], "unauthorized");
        assert!(
            body["error"]["message"]
                .as_str()
                .expect("message")
                .starts_with(reason),
            "{body}"
        );
    }
    let (status, body) = http(
        addr,
        "GET",
        &format!("/ws/chat/?token={}", expired_token()),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["message"], "token expired");
    // A valid token, but not a WebSocket request.
    let (status, _) = http(
        addr,
        "GET",
        &format!("/ws/chat/?token={}", token(1)),
        None,
        None,
    )
    .await;
    assert_eq!(status, 426);
    // The same check on a real WebSocket client: refused during the handshake.
    let err = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/chat/?token=bad"))
        .await
        .expect_err("must be refused");
    assert!(err.to_string().contains("401"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_header_works_for_the_handshake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_node, addr, _) = spawn_single_node(dir.path()).await;
    let mut req = format!("ws://{addr}/ws/chat/")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token(7)).parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    let first = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("frame")
        .expect("open")
        .expect("ok");
    let v: serde_json::Value = serde_json::from_str(first.to_text().expect("text")).expect("json");
    assert_eq!(v["type"], "connection_established");
    assert_eq!(v["user_id"], 7);
    assert!(v["server_time"].as_str().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_conversations_over_rest_and_talk_in_a_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_node, addr, _) = spawn_single_node(dir.path()).await;
    let t1 = token(1);
    let path = "/api/v1/conversations/";

    let (status, group) = http(
        addr,
        "POST",
        path,
        Some(&t1),
        Some(r#"{"participant_ids":[2,3],"title":"Trip"}"#),
    )
    .await;
    assert_eq!(status, 201, "{group}");
    assert_eq!(group["kind"], "group");
    assert_eq!(group["participant_ids"], json!([1, 2, 3]));
    assert_eq!(group["title"], "Trip");
    let gid = group["id"].as_i64().expect("id");

    // A direct conversation is unique per pair: the second request returns the first.
    let (s1, d1) = http(
        addr,
        "POST",
        path,
        Some(&t1),
        Some(r#"{"participant_ids":[2]}"#),
    )
    .await;
    let (s2, d2) = http(
        addr,
        "POST",
        path,
        Some(&token(2)),
        Some(r#"{"participant_ids":[1]}"#),
    )
    .await;
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(d1["id"], d2["id"]);
    assert_eq!(d1["kind"], "direct");

    // Bad requests.
    let cases = [
        (None, r#"{"participant_ids":[2]}"#, 401, "unauthorized"),
        (
            Some("garbage"),
            r#"{"participant_ids":[2]}"#,
            401,
            "unauthorized",
        ),
        (Some(t1.as_str()), "{nope", 400, "invalid_json"),
        (
            Some(t1.as_str()),
            r#"{"participant_ids":"2"}"#,
            400,
            "invalid_field",
        ),
        (
            Some(t1.as_str()),
            r#"{"participant_ids":[1]}"#,
            400,
            "invalid_field",
        ),
        (
            Some(t1.as_str()),
            r#"{"participant_ids":[2],"kind":"channel"}"#,
            400,
            "invalid_field",
        ),
        (
            Some(t1.as_str()),
            r#"{"participant_ids":[2,3],"kind":"direct"}"#,
            400,
            "invalid_field",
        ),
        (
            Some(t1.as_str()),
            r#"{"participant_ids":[2],"surprise":true}"#,
            400,
            "invalid_field",
        ),
    ];
    for (tok, body, status, code) in cases {
        let (s, b) = http(addr, "POST", path, tok, Some(body)).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (status, Some(code)),
            "{body} → {b}"
        );
    }
    let (s, b) = http(addr, "GET", "/api/v1/nothing-here/", None, None).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")));

    // Everyone in the group gets a group message; the sender's socket gets message_sent.
    let mut c1 = Client::connect(addr, 1).await;
    let mut c2 = Client::connect(addr, 2).await;
    let mut c3 = Client::connect(addr, 3).await;
    c1.send(json!({"type": "chat_message", "conversation_id": gid, "text": "hello group"}))
        .await;
    let sent = c1.recv_type("message_sent").await;
    for c in [&mut c2, &mut c3] {
        let m = c.recv_type("new_message").await;
        assert_eq!(m["message_id"], sent["message_id"]);
        assert_eq!(m["conversation_id"], gid);
        assert!(m.get("receiver_id").is_none());
    }
}
