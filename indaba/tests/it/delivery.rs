//! The core path: a message typed in one client is stored and appears in the others.

use std::net::SocketAddr;
use std::time::Duration;

use message_service::store::NewMessage;
use serde_json::json;

use crate::support::*;

const ALICE: i64 = 1;
const BOB: i64 = 2;

/// Alice has two devices (one per gateway), Bob one on gateway 2. Checks: `message_sent`
/// only after the row exists, Bob gets it once, Alice's other device gets it, the sending
/// socket does not, and a retried `client_msg_id` stores and delivers nothing new.
async fn core_scenario(gw1: SocketAddr, gw2: SocketAddr, store: &message_service::Store) {
    let mut a1 = Client::connect(gw1, ALICE).await;
    let mut a2 = Client::connect(gw2, ALICE).await;
    let mut b = Client::connect(gw2, BOB).await;

    let sent = a1.chat(BOB, "Hello!", Some("k-1")).await;
    assert_eq!(sent["type"], "message_sent", "{sent}");
    let id = sent["message_id"].as_i64().expect("integer message_id");
    // The row exists by the time the client hears "sent".
    assert!(store.get_message(id).await.expect("store").is_some());
    assert_eq!(
        store
            .count_by_client_msg_id(ALICE, "k-1")
            .await
            .expect("count"),
        1
    );
    assert_eq!(sent["seq"], 1);
    assert_eq!(sent["client_msg_id"], "k-1");
    let conversation_id = sent["conversation_id"].as_i64().expect("conversation_id");

    let got = b.recv_type("new_message").await;
    assert_eq!(got["message_id"], id);
    assert_eq!(got["conversation_id"], conversation_id);
    assert_eq!(got["sender_id"], ALICE);
    assert_eq!(got["receiver_id"], BOB);
    assert_eq!(got["text"], "Hello!");
    assert_eq!(got["seq"], 1);
    assert!(got["created_at"]
        .as_str()
        .expect("created_at")
        .ends_with('Z'));

    let other_device = a2.recv_type("new_message").await;
    assert_eq!(other_device["message_id"], id);

    // The sending socket got message_sent, not a copy of its own message.
    a1.expect_none_of("new_message", Duration::from_millis(300))
        .await;

    // A retry with the same key: same id, flagged duplicate, nothing stored or delivered.
    let again = a1.chat(BOB, "Hello!", Some("k-1")).await;
    assert_eq!(again["type"], "message_sent");
    assert_eq!(again["message_id"], id);
    assert_eq!(again["duplicate"], true);
    assert_eq!(
        store
            .count_by_client_msg_id(ALICE, "k-1")
            .await
            .expect("count"),
        1
    );
    b.expect_silence(Duration::from_millis(500)).await;

    // Bob answers in the same conversation, by conversation_id, without receiver_id.
    b.send(json!({"type": "chat_message", "conversation_id": conversation_id, "text": "Hi Alice"}))
        .await;
    let reply_sent = b.recv_type("message_sent").await;
    assert_eq!(reply_sent["seq"], 2);
    for a in [&mut a1, &mut a2] {
        let m = a.recv_type("new_message").await;
        assert_eq!(m["text"], "Hi Alice");
        assert_eq!(m["sender_id"], BOB);
    }
    b.expect_none_of("new_message", Duration::from_millis(200))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_two_gateways_two_message_services() {
    let c = TestCluster::builder()
        .message_services(2)
        .gateways(2)
        .build()
        .await;
    core_scenario(c.gw(0), c.gw(1), c.store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_without_nats_or_postgres() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_node, addr, store) = spawn_single_node(dir.path()).await;
    core_scenario(addr, addr, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_messages_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, addr, _) = spawn_single_node(dir.path()).await;
    let mut a = Client::connect(addr, ALICE).await;
    let first = a.chat(BOB, "before restart", Some("r-1")).await;
    drop(a);
    node.stop().await;

    let (_node, addr, store) = spawn_single_node(dir.path()).await;
    let id = first["message_id"].as_i64().expect("id");
    let m = store
        .get_message(id)
        .await
        .expect("store")
        .expect("message kept");
    assert_eq!(m.text, "before restart");
    let mut a = Client::connect(addr, ALICE).await;
    let second = a.chat(BOB, "after restart", None).await;
    assert_eq!(second["conversation_id"], first["conversation_id"]);
    assert_eq!(second["seq"], 2);
}

/// A message-service that commits and then dies before publishing leaves an outbox row;
/// a surviving instance republishes it once the lease runs out, and the recipient gets the
/// message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_delivers_after_a_crash_between_commit_and_publish() {
    let nats = Nats::start();
    let db = fresh_database().await;
    let (_m, store) = spawn_message_service(&nats.url(), &db).await;
    let (_g, gw) = spawn_gateway(&nats.url(), "gw-crash").await;
    let mut b = Client::connect(gw, BOB).await;

    // Exactly what a crash right after COMMIT leaves behind: the message and its outbox
    // row, and no publish.
    let sent = store
        .send_message(&NewMessage {
            sender_id: ALICE,
            conversation_id: None,
            receiver_id: Some(BOB),
            text: "from the dead".into(),
            client_msg_id: Some("crash-1".into()),
            origin_connection_id: "gw-dead/1".into(),
            reply_to: None,
            mentions: Vec::new(),
            attachments: Vec::new(),
        })
        .await
        .expect("store");
    assert_eq!(store.outbox_len().await.expect("outbox"), 1);

    let got = b.recv_type("new_message").await;
    assert_eq!(got["message_id"], sent.message.id);
    assert_eq!(got["text"], "from the dead");
    b.expect_silence(Duration::from_secs(2)).await;
    // The republished row is cleaned up.
    let deadline = tokio::time::Instant::now() + WAIT;
    while store.outbox_len().await.expect("outbox") > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "outbox row never completed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A message-service started after the clients connected learns where they are from the
/// gateways' answer to its resync request, not from the next heartbeat (10 s away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_message_service_learns_routes_from_resync() {
    let nats = Nats::start();
    let db = fresh_database().await;
    let (_g, gw) = spawn_gateway(&nats.url(), "gw-early").await;
    let mut a = Client::connect(gw, ALICE).await;
    let mut b = Client::connect(gw, BOB).await;
    let (_m, _) = spawn_message_service(&nats.url(), &db).await;
    // Let the resync round trip finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = a.chat(BOB, "are you there?", None).await;
    assert_eq!(sent["type"], "message_sent", "{sent}");
    let got = b.recv_type("new_message").await;
    assert_eq!(got["text"], "are you there?");
}

/// Without any message-service the client is told to retry, and the socket stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_message_service_means_unavailable_not_a_dropped_socket() {
    let nats = Nats::start();
    let (_g, gw) = spawn_gateway(&nats.url(), "gw-alone").await;
    let mut a = Client::connect(gw, ALICE).await;
    let r = a.chat(BOB, "anyone?", Some("u-1")).await;
    assert_eq!(r["type"], "error");
    assert_eq!(r["code"], "unavailable");
    assert_eq!(r["ref"], "u-1");
    a.ping().await;
}

/// NATS restarts under a gateway: deliveries published meanwhile are gone, so the gateway
/// closes its sockets with 1012 and the clients reconnect and resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_makes_clients_reconnect_and_resync() {
    let nats = Nats::start();
    let port = nats.port;
    let (_g, gw) = spawn_gateway(&nats.url(), "gw-blip").await;
    let mut a = Client::connect(gw, ALICE).await;
    drop(nats);
    let _nats = Nats::start_on(port);
    assert_eq!(a.expect_close().await, 1012);
}
