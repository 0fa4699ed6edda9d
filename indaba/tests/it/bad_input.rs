//! Every bad client frame gets an `error` frame with a stable code, and the socket stays
//! open. Run against the single-node program (same gateway and message-service code).

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_stable_error_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_node, addr, _) = spawn_single_node(dir.path()).await;
    let mut a = Client::connect(addr, 1).await;
    let mut outsider = Client::connect(addr, 3).await;
    let sent = a.chat(2, "setup", None).await;
    let conv = sent["conversation_id"].as_i64().expect("conversation");

    let long = "x".repeat(101); // the tests configure a 100-character limit
    let cases: Vec<(String, &str, Option<&str>)> = vec![
        ("this is not json".into(), "invalid_json", None),
        ("[1,2,3]".into(), "invalid_json", None),
        (json!({"text": "no type"}).to_string(), "missing_type", None),
        (json!({"type": 42}).to_string(), "missing_type", None),
        (json!({"type": "self_destruct"}).to_string(), "unknown_type", None),
        (json!({"type": "chat_message", "receiver_id": 2}).to_string(), "invalid_field", None),
        (json!({"type": "chat_message", "receiver_id": "bob", "text": "x"}).to_string(), "invalid_field", None),
        (json!({"type": "chat_message", "receiver_id": 2, "text": ["x"], "client_msg_id": "c-1"}).to_string(), "invalid_field", Some("c-1")),
        (json!({"type": "chat_message", "text": "to nobody"}).to_string(), "invalid_field", None),
        (json!({"type": "chat_message", "receiver_id": 2, "text": "   ", "client_msg_id": "c-2"}).to_string(), "empty_text", Some("c-2")),
        (json!({"type": "chat_message", "receiver_id": 2, "text": long, "client_msg_id": "c-3"}).to_string(), "text_too_long", Some("c-3")),
        (json!({"type": "chat_message", "conversation_id": 999_999, "text": "x"}).to_string(), "conversation_not_found", None),
        (json!({"type": "chat_message", "receiver_id": 1, "text": "me"}).to_string(), "invalid_receiver", None),
        (json!({"type": "chat_message", "conversation_id": conv, "receiver_id": 5, "text": "x"}).to_string(), "invalid_receiver", None),
        (json!({"type": "chat_message", "receiver_id": 2, "text": "x", "client_msg_id": "has spaces"}).to_string(), "invalid_field", Some("has spaces")),
    ];
    for (frame, code, reference) in &cases {
        a.send_raw(frame).await;
        let err = a.recv_type("error").await;
        assert_eq!(err["code"], *code, "frame {frame} → {err}");
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{err}"
        );
        match reference {
            Some(r) => assert_eq!(err["ref"], *r, "{err}"),
            None => assert!(err.get("ref").is_none(), "{err}"),
        }
    }
    // Not a participant: user 3 writes into Alice and Bob's conversation.
    outsider
        .send(json!({"type": "chat_message", "conversation_id": conv, "text": "let me in", "client_msg_id": "o-1"}))
        .await;
    let err = outsider.recv_type("error").await;
    assert_eq!(err["code"], "forbidden");
    assert_eq!(err["ref"], "o-1");

    // Still connected and still working after all of that.
    a.ping().await;
    outsider.ping().await;
    let ok = a.chat(2, "still here", None).await;
    assert_eq!(ok["type"], "message_sent");
}
