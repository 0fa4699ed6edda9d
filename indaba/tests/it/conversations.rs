//! Everything around the message (issue 3), over real NATS and PostgreSQL with two
//! gateways: typing, read receipts, rooms, groups, resume, history, delivered status.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// Two message-services and two gateways (`c.gw(0)`, `c.gw(1)`).
async fn cluster() -> TestCluster {
    TestCluster::builder()
        .message_services(2)
        .gateways(2)
        .build()
        .await
}

async fn create_group(addr: SocketAddr, creator: i64, others: &[i64]) -> i64 {
    let body = json!({"participant_ids": others, "title": "group"}).to_string();
    let (status, v) = http(
        addr,
        "POST",
        "/api/v1/conversations/",
        Some(&token(creator)),
        Some(&body),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    v["id"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_is_relayed_throttled_and_cleared_on_disconnect() {
    let c = cluster().await;
    let mut a = Client::connect(c.gw(0), 1).await;
    let mut b = Client::connect(c.gw(1), 2).await;
    let conv = a.chat(2, "hi", None).await["conversation_id"]
        .as_i64()
        .unwrap();
    let _ = b.recv_type("new_message").await;

    // The spec's client sends one per keystroke: five in a row become one.
    for _ in 0..5 {
        a.send(json!({"type": "typing_indicator", "conversation_id": conv, "receiver_id": 2, "is_typing": true})).await;
    }
    a.send(json!({"type": "typing_indicator", "conversation_id": conv, "receiver_id": 2, "is_typing": false})).await;
    let first = b.recv().await;
    assert_eq!(
        first,
        json!({"type": "typing_indicator", "conversation_id": conv, "user_id": 1, "is_typing": true})
    );
    let second = b.recv().await;
    assert_eq!(second["is_typing"], false, "{second}");
    // Not echoed to the typist.
    a.ping().await;
    a.expect_none_of("typing_indicator", Duration::from_millis(200))
        .await;

    // Typing, then gone: the peer is told it stopped.
    a.send(json!({"type": "typing_indicator", "conversation_id": conv, "is_typing": true}))
        .await;
    let t = b.recv_type("typing_indicator").await;
    assert_eq!(t["is_typing"], true);
    drop(a);
    let t = b.recv_type("typing_indicator").await;
    assert_eq!(t["is_typing"], false);

    // Typing into someone else's conversation is refused.
    let mut outsider = Client::connect(c.gw(0), 9).await;
    outsider
        .send(json!({"type": "typing_indicator", "conversation_id": conv, "is_typing": true}))
        .await;
    let e = outsider.recv_type("error").await;
    assert_eq!(e["code"], "forbidden");
    assert_eq!(e["conversation_id"], conv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_receipts_are_stored_relayed_and_counted() {
    let c = cluster().await;
    let mut a = Client::connect(c.gw(0), 1).await;
    let mut a2 = Client::connect(c.gw(1), 1).await;
    let mut b = Client::connect(c.gw(1), 2).await;
    let m1 = a.chat(2, "one", None).await;
    let m2 = a.chat(2, "two", None).await;
    let conv = m1["conversation_id"].as_i64().unwrap();
    let (id1, id2) = (
        m1["message_id"].as_i64().unwrap(),
        m2["message_id"].as_i64().unwrap(),
    );
    // A message between other people, which Bob may not mark.
    let mut x = Client::connect(c.gw(0), 5).await;
    let foreign = x.chat(6, "private", None).await["message_id"]
        .as_i64()
        .unwrap();

    b.send(json!({"type": "read_receipt", "message_ids": [id1, id2, 999_999, foreign]}))
        .await;
    let e = b.recv_type("error").await;
    assert_eq!(e["code"], "message_not_found");
    assert_eq!(
        e["message_ids"],
        json!([foreign, 999_999]
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<i64>>())
    );
    for sender in [&mut a, &mut a2] {
        let r = sender.recv_type("read_receipt").await;
        assert_eq!(r["message_ids"], json!([id1, id2]));
        assert_eq!(r["conversation_id"], conv);
        assert_eq!(r["reader_id"], 2);
        assert!(r["read_at"].as_str().unwrap().ends_with('Z'));
    }
    // One receipt per displayed message, as the spec's client sends them: the gateway
    // batches them; every id reaches the sender.
    let m3 = a.chat(2, "three-a", None).await["message_id"]
        .as_i64()
        .unwrap();
    let m4 = a.chat(2, "three-b", None).await["message_id"]
        .as_i64()
        .unwrap();
    b.send(json!({"type": "read_receipt", "message_ids": [m3]}))
        .await;
    b.send(json!({"type": "read_receipt", "message_ids": [m4]}))
        .await;
    let mut relayed = HashSet::new();
    while relayed.len() < 2 {
        let r = a.recv_type("read_receipt").await;
        relayed.extend(
            r["message_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap()),
        );
    }
    assert_eq!(relayed, HashSet::from([m3, m4]));

    // Reading again relays nothing new.
    b.send(json!({"type": "read_receipt", "message_ids": [id1]}))
        .await;
    b.ping().await;
    a.expect_none_of("read_receipt", Duration::from_millis(300))
        .await;

    // Unread counts follow the watermark.
    b.send(json!({"type": "list_conversations"})).await;
    let list = b.recv_type("conversations").await;
    let row = &list["conversations"][0];
    assert_eq!(
        (
            row["id"].as_i64(),
            row["last_read_seq"].as_i64(),
            row["unread_count"].as_i64()
        ),
        (Some(conv), Some(4), Some(0))
    );
    a.chat(2, "three", None).await;
    b.send(json!({"type": "list_conversations"})).await;
    let list = b.recv_type("conversations").await;
    assert_eq!(list["conversations"][0]["unread_count"], 1);
    assert_eq!(list["conversations"][0]["last_message"]["text"], "three");

    // Malformed and oversized batches.
    let big: Vec<i64> = (1..=501).collect();
    for bad in [
        json!({"type": "read_receipt", "message_ids": []}),
        json!({"type": "read_receipt", "message_ids": big}),
        json!({"type": "read_receipt", "message_ids": "1"}),
        json!({"type": "read_receipt", "message_ids": [0]}),
    ] {
        b.send(bad.clone()).await;
        let e = b.recv_type("error").await;
        assert_eq!(e["code"], "invalid_field", "{bad}");
    }
    b.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_and_group_membership_changes_apply_live() {
    let c = cluster().await;
    let group = create_group(c.gw(0), 1, &[2, 3]).await;
    let mut u1 = Client::connect(c.gw(0), 1).await;
    let mut u2 = Client::connect(c.gw(1), 2).await;
    let mut u3 = Client::connect(c.gw(1), 3).await;
    let mut u4 = Client::connect(c.gw(0), 4).await;

    u3.send(json!({"type": "join_conversation", "conversation_id": group}))
        .await;
    let j = u3.recv_type("joined_conversation").await;
    assert_eq!(j["participant_ids"], json!([1, 2, 3]));
    u4.send(json!({"type": "join_conversation", "conversation_id": group}))
        .await;
    assert_eq!(u4.recv_type("error").await["code"], "forbidden");
    u4.send(json!({"type": "join_conversation", "conversation_id": 424_242}))
        .await;
    assert_eq!(
        u4.recv_type("error").await["code"],
        "conversation_not_found"
    );

    // Typing and receipts work for every member.
    u1.send(json!({"type": "typing_indicator", "conversation_id": group, "is_typing": true}))
        .await;
    for u in [&mut u2, &mut u3] {
        assert_eq!(u.recv_type("typing_indicator").await["user_id"], 1);
    }
    u1.send(json!({"type": "chat_message", "conversation_id": group, "text": "plan?"}))
        .await;
    let id = u1.recv_type("message_sent").await["message_id"]
        .as_i64()
        .unwrap();
    for u in [&mut u2, &mut u3] {
        assert_eq!(u.recv_type("new_message").await["message_id"], id);
        u.send(json!({"type": "read_receipt", "message_ids": [id]}))
            .await;
    }
    let mut readers = HashSet::new();
    while readers.len() < 2 {
        readers.insert(
            u1.recv_type("read_receipt").await["reader_id"]
                .as_i64()
                .unwrap(),
        );
    }
    assert_eq!(readers, HashSet::from([2, 3]));

    // The owner adds 4 and removes 3: both hear it at once; 3 leaves the room it had
    // joined.
    let (s, v) = http(
        c.gw(1),
        "POST",
        &format!("/api/v1/conversations/{group}/participants/"),
        Some(&token(1)),
        Some(r#"{"add":[4],"remove":[3]}"#),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["participant_ids"], json!([1, 2, 4]));
    let ch = u4.recv_type("participants_changed").await;
    assert_eq!(
        (ch["added_user_ids"].clone(), ch["removed_user_ids"].clone()),
        (json!([4]), json!([3]))
    );
    let ch3 = u3.recv_type("participants_changed").await;
    assert_eq!(ch3["conversation_id"], group);
    let left = u3.recv_type("left_conversation").await;
    assert_eq!(left["reason"], "removed");

    u4.send(json!({"type": "chat_message", "conversation_id": group, "text": "hi all"}))
        .await;
    let sent = u4.recv_type("message_sent").await;
    for u in [&mut u1, &mut u2] {
        assert_eq!(
            u.recv_type("new_message").await["message_id"],
            sent["message_id"]
        );
    }
    u3.send(json!({"type": "chat_message", "conversation_id": group, "text": "still here?"}))
        .await;
    assert_eq!(u3.recv_type("error").await["code"], "forbidden");
    // Removed: no longer receives the group's messages.
    u3.expect_silence(Duration::from_millis(300)).await;

    // Leaving a room is acknowledged; bad membership edits answer with codes.
    u2.send(json!({"type": "leave_conversation", "conversation_id": group}))
        .await;
    assert_eq!(
        u2.recv_type("left_conversation").await["conversation_id"],
        group
    );
    let (s, v) = http(
        c.gw(0),
        "POST",
        &format!("/api/v1/conversations/{group}/participants/"),
        Some(&token(3)),
        Some(r#"{"add":[3]}"#),
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")));
    let direct = u1.chat(2, "dm", None).await["conversation_id"]
        .as_i64()
        .unwrap();
    let (s, v) = http(
        c.gw(0),
        "POST",
        &format!("/api/v1/conversations/{direct}/participants/"),
        Some(&token(1)),
        Some(r#"{"add":[3]}"#),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_field"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_status_reaches_the_sender() {
    let c = cluster().await;
    let mut a = Client::connect(c.gw(0), 1).await;
    let mut b = Client::connect(c.gw(1), 2).await;
    let sent = a.chat(2, "ping", None).await;
    let _ = b.recv_type("new_message").await;
    let d = a.recv_type("message_delivered").await;
    assert_eq!(d["message_id"], sent["message_id"]);
    assert_eq!(d["recipient_id"], 2);
    // Nobody online on the other side: no "delivered".
    let _ = a.chat(7, "anyone?", None).await;
    a.expect_none_of("message_delivered", Duration::from_millis(500))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_backwards() {
    let c = cluster().await;
    let mut a = Client::connect(c.gw(0), 1).await;
    let mut conv = 0;
    for i in 1..=12 {
        conv = a.chat(2, &format!("m{i}"), None).await["conversation_id"]
            .as_i64()
            .unwrap();
    }
    a.send(json!({"type": "history", "conversation_id": conv, "before_seq": 10, "limit": 5}))
        .await;
    let h = a.recv_type("history").await;
    let seqs: Vec<i64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![5, 6, 7, 8, 9]);
    assert_eq!(h["has_more"], true);
    a.send(json!({"type": "history", "conversation_id": conv}))
        .await;
    let h = a.recv_type("history").await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 12);
    assert_eq!(h["has_more"], false);
    let mut other = Client::connect(c.gw(1), 3).await;
    other
        .send(json!({"type": "history", "conversation_id": conv}))
        .await;
    assert_eq!(other.recv_type("error").await["code"], "forbidden");
}

/// A client disconnects, misses 100 messages across 3 conversations, reconnects to the
/// other gateway and syncs while new messages keep arriving: it gets every message exactly
/// once, each conversation in seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_another_gateway_loses_and_repeats_nothing() {
    let c = cluster().await;
    let group = create_group(c.gw(0), 1, &[2, 3]).await;
    let mut u2 = Client::connect(c.gw(1), 2).await;
    let mut u3 = Client::connect(c.gw(1), 3).await;
    let mut u1 = Client::connect(c.gw(0), 1).await;
    let c12 = u2.chat(1, "before", None).await["conversation_id"]
        .as_i64()
        .unwrap();
    let c13 = u3.chat(1, "before", None).await["conversation_id"]
        .as_i64()
        .unwrap();
    let _ = u1.recv_type("new_message").await;
    let _ = u1.recv_type("new_message").await;
    drop(u1);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 100 missed messages: 34 + 33 + 33.
    let mut missed: HashSet<i64> = HashSet::new();
    for i in 0..100 {
        let (sender, frame) = match i % 3 {
            0 => (
                &mut u2,
                json!({"type": "chat_message", "conversation_id": c12, "text": format!("missed {i}")}),
            ),
            1 => (
                &mut u3,
                json!({"type": "chat_message", "conversation_id": c13, "text": format!("missed {i}")}),
            ),
            _ => (
                &mut u2,
                json!({"type": "chat_message", "conversation_id": group, "text": format!("missed {i}")}),
            ),
        };
        sender.send(frame).await;
        missed.insert(
            sender.recv_type("message_sent").await["message_id"]
                .as_i64()
                .unwrap(),
        );
    }
    assert_eq!(missed.len(), 100);

    let mut u1 = Client::connect(c.gw(1), 1).await;
    // Live traffic during the resume, from both senders.
    let live_task = tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..20 {
            let conv = if i % 2 == 0 { c12 } else { group };
            u2.send(json!({"type": "chat_message", "conversation_id": conv, "text": format!("live {i}")})).await;
            ids.push(
                u2.recv_type("message_sent").await["message_id"]
                    .as_i64()
                    .unwrap(),
            );
        }
        ids
    });
    u1.send(json!({"type": "sync", "conversations": {c12.to_string(): 1, c13.to_string(): 1, group.to_string(): 0}})).await;

    let live: HashSet<i64> = live_task.await.unwrap().into_iter().collect();
    let expected: HashSet<i64> = missed.union(&live).copied().collect();
    let mut seen: HashMap<i64, i64> = HashMap::new();
    let mut last_seq: BTreeMap<i64, i64> = BTreeMap::new();
    let mut complete: Option<Value> = None;
    while seen.len() < expected.len() || complete.is_none() {
        let f = u1.recv().await;
        match f["type"].as_str().unwrap() {
            "new_message" => {
                let id = f["message_id"].as_i64().unwrap();
                let conv = f["conversation_id"].as_i64().unwrap();
                let seq = f["seq"].as_i64().unwrap();
                assert!(
                    seen.insert(id, seq).is_none(),
                    "message {id} delivered twice"
                );
                let prev = last_seq.insert(conv, seq).unwrap_or(0);
                assert!(seq > prev, "conversation {conv}: seq {seq} after {prev}");
            }
            "sync_complete" => complete = Some(f),
            "message_delivered" | "read_receipt" | "typing_indicator" => {}
            other => panic!("unexpected frame {other}: {f}"),
        }
    }
    let got: HashSet<i64> = seen.keys().copied().collect();
    assert_eq!(got, expected);
    let complete = complete.unwrap();
    assert!(complete.get("truncated").is_none());
    assert_eq!(complete["conversations"].as_object().unwrap().len(), 3);
    u1.expect_silence(Duration::from_millis(300)).await;

    // Bad sync requests.
    u1.send(json!({"type": "sync", "conversations": {"424242": 0}}))
        .await;
    let e = u1.recv_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["conversation_id"].as_i64()),
        (Some("conversation_not_found"), Some(424_242))
    );
    let _ = u1.recv_type("sync_complete").await;
    u1.send(json!({"type": "sync", "conversations": {c12.to_string(): -1}}))
        .await;
    assert_eq!(u1.recv_type("error").await["code"], "invalid_field");
}

/// Past the retention window a resume says so (`truncated`) instead of silently skipping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_past_retention_is_reported_as_truncated() {
    let nats = Nats::start();
    let db = fresh_database().await;
    let (_m, _) = spawn_message_service_with(&nats.url(), &db, |s| {
        s.retention = Some(Duration::from_secs(2));
    })
    .await;
    let (_g, gw) = spawn_gateway(&nats.url(), "gw-ret").await;
    let mut sender = Client::connect(gw, 2).await;
    let mut conv = 0;
    for i in 0..3 {
        conv = sender.chat(1, &format!("old {i}"), None).await["conversation_id"]
            .as_i64()
            .unwrap();
    }
    // The sweeper prunes once a second; wait until the old messages are gone.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        sender
            .send(json!({"type": "history", "conversation_id": conv}))
            .await;
        let h = sender.recv_type("history").await;
        if h["messages"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "old messages never pruned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fresh = sender.chat(1, "new", None).await;
    assert_eq!(fresh["seq"], 4);

    let mut reader = Client::connect(gw, 1).await;
    reader
        .send(json!({"type": "sync", "conversations": {conv.to_string(): 0}}))
        .await;
    let m = reader.recv_type("new_message").await;
    assert_eq!(
        (m["seq"].as_i64(), m["text"].as_str()),
        (Some(4), Some("new"))
    );
    let done = reader.recv_type("sync_complete").await;
    assert_eq!(done["truncated"], json!([conv]));
    assert_eq!(done["conversations"][conv.to_string()], 4);
}
