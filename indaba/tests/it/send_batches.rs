//! Sends batched across the bus, in a rolling upgrade: a gateway that batches beside one
//! that does not, a message-service that answers batches beside one that does not (what the
//! release before batches runs), and a batching gateway with only the old message-service.
//! Every send is stored once and delivered once, in each sender's order.

use std::collections::HashMap;
use std::net::SocketAddr;

use futures_util::future::join_all;

use crate::support::*;

const SENDERS: i64 = 40;
const PER_SENDER: usize = 15;

/// `SENDERS` clients on `from` each send `PER_SENDER` messages back to back (each waits for
/// its `message_sent`), to receivers on `to`; returns after every receiver got all of its
/// messages once, in order.
async fn burst(from: SocketAddr, to: SocketAddr, first_user: i64) {
    let receivers: Vec<Client> =
        join_all((0..SENDERS).map(|i| Client::connect(to, first_user + 1000 + i))).await;
    let senders: Vec<Client> =
        join_all((0..SENDERS).map(|i| Client::connect(from, first_user + i))).await;
    let send = senders.into_iter().map(|mut s| async move {
        let to = s.user_id + 1000;
        for n in 0..PER_SENDER {
            let v = s
                .chat(to, &format!("{n}"), Some(&format!("{}-{n}", s.user_id)))
                .await;
            assert_eq!(v["type"], "message_sent", "{v}");
        }
    });
    let receive = receivers.into_iter().map(|mut r| async move {
        let mut texts = Vec::new();
        let mut seen = HashMap::new();
        while texts.len() < PER_SENDER {
            let v = r.recv_type("new_message").await;
            let id = v["message_id"].as_i64().expect("id");
            assert!(seen.insert(id, ()).is_none(), "message {id} twice");
            texts.push(v["text"].as_str().expect("text").to_owned());
        }
        let expected: Vec<String> = (0..PER_SENDER).map(|n| n.to_string()).collect();
        assert_eq!(texts, expected, "user {}: in the sender's order", r.user_id);
        r.expect_none_of("new_message", std::time::Duration::from_millis(300))
            .await;
    });
    tokio::join!(join_all(send), join_all(receive));
}

/// The gateway's count of requests that carried several sends.
async fn batches(gw: SocketAddr) -> u64 {
    let (_, metrics) = http_text(gw, "/metrics").await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("indaba_send_batches_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("indaba_send_batches_total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_and_new_gateways_and_message_services_side_by_side() {
    let nats = Nats::start();
    let db = fresh_database().await;
    let (_new_ms, _) = spawn_message_service(&nats.url(), &db).await;
    let (_old_ms, _) =
        spawn_message_service_with(&nats.url(), &db, |s| s.send_batches = false).await;
    let (_new_gw, new_gw) = spawn_gateway(&nats.url(), "gw-new").await;
    let (_old_gw, old_gw) =
        spawn_gateway_with(&nats.url(), "gw-old", |s| s.send_batches = false).await;

    burst(new_gw, old_gw, 60_000).await;
    burst(old_gw, new_gw, 70_000).await;
    assert!(
        batches(new_gw).await > 0,
        "{SENDERS} senders back to back never formed a batch"
    );
    assert_eq!(batches(old_gw).await, 0, "the old gateway sends one by one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batching_gateway_with_only_old_message_services_sends_one_by_one() {
    let nats = Nats::start();
    let db = fresh_database().await;
    let (_old_ms, _) =
        spawn_message_service_with(&nats.url(), &db, |s| s.send_batches = false).await;
    let (_gw, gw) = spawn_gateway(&nats.url(), "gw-new").await;
    // No instance answers batches: "no responders", and the sends go one by one.
    burst(gw, gw, 80_000).await;
}
