//! A socket that opens gets, live, only what its user could have missed: never a message a
//! previous socket of that user already had (issue 19: after a loaded run, fresh sockets
//! that sent nothing received hundreds of the earlier run's messages — the outbox sweeper
//! and the catch-up replayed deliveries that were merely late, not lost).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::future::join_all;

use crate::support::*;

/// Sender/receiver pairs.
const PAIRS: i64 = 100;
/// Messages each sender sends.
const PER_SENDER: usize = 25;
/// Pause between one sender's messages: 100 senders × 5/s = 500 msg/s.
const GAP: Duration = Duration::from_millis(200);
/// How long the fresh sockets listen.
const LISTEN: Duration = Duration::from_secs(4);

const SENDERS: i64 = 30_000;
const RECEIVERS: i64 = 40_000;

/// 100 pairs exchange 2,500 messages at ~500/s, everyone disconnects, and 100 fresh
/// sockets of the receivers open and send nothing: for 4 s none of them may receive a
/// `new_message` (each of those messages was already written to the previous socket).
async fn no_stale_messages_after_a_loaded_run(addr: SocketAddr) {
    let receivers = join_all((0..PAIRS).map(|i| Client::connect(addr, RECEIVERS + i))).await;
    let senders = join_all((0..PAIRS).map(|i| Client::connect(addr, SENDERS + i))).await;
    let send = senders
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| async move {
            let to = RECEIVERS + i as i64;
            for n in 0..PER_SENDER {
                let sent = s.chat(to, &format!("m{n}"), None).await;
                assert_eq!(sent["type"], "message_sent", "{sent}");
                tokio::time::sleep(GAP).await;
            }
            s
        });
    let receive = receivers.into_iter().map(|mut r| async move {
        let mut got = 0;
        while got < PER_SENDER {
            let v = r.recv_type("new_message").await;
            assert_eq!(v["sender_id"], r.user_id - RECEIVERS + SENDERS, "{v}");
            got += 1;
        }
        r
    });
    let (senders, receivers) = tokio::join!(join_all(send), join_all(receive));
    // Every receiver had every message on its socket. Now they all go at once.
    drop(senders);
    drop(receivers);

    let fresh = join_all((0..PAIRS).map(|i| Client::connect(addr, RECEIVERS + i))).await;
    let stale: Vec<String> = join_all(fresh.into_iter().map(|mut c| async move {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + LISTEN;
        while let Some(v) = c
            .try_recv(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            if v["type"] == "new_message" {
                seen.push(format!("user {} got {}", c.user_id, v["message_id"]));
            }
        }
        seen
    }))
    .await
    .into_iter()
    .flatten()
    .collect();
    assert!(
        stale.is_empty(),
        "{} stale deliveries to fresh sockets, e.g. {:?}",
        stale.len(),
        &stale[..stale.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_fresh_sockets_get_no_stale_messages() {
    let c = TestCluster::builder()
        .message_services(1)
        .gateways(1)
        .max_connections_per_user(10)
        .build()
        .await;
    no_stale_messages_after_a_loaded_run(c.gw(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_fresh_sockets_get_no_stale_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_node, addr, _) = spawn_single_node_with(
        dir.path(),
        "127.0.0.1:0",
        &[("INDABA_CHAT_RATE_PER_10S".into(), "100000".into())],
    )
    .await;
    no_stale_messages_after_a_loaded_run(addr).await;
}
