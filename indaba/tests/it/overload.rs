//! Past capacity, sends are refused at once with `unavailable` and a retry hint instead of
//! queueing for seconds, and nothing is lost: a client that retries with the same
//! `client_msg_id` after the hint gets every message stored exactly once.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::*;
use futures_util::future::join_all;

const CLIENTS: i64 = 100;
const PER_CLIENT: usize = 10;

/// message-service's group-commit queue over its budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_past_capacity_are_refused_with_a_hint_and_retries_lose_nothing() {
    // A 1 ms budget: any send that would queue behind a batch for longer is refused, so a
    // burst of concurrent sends is certainly over it (a commit takes milliseconds).
    let c = TestCluster::builder()
        .message_services(1)
        .gateways(1)
        .gateway_settings(|s| s.send_queue_budget = None)
        .message_service_settings(|s| s.send_queue_budget = Some(Duration::from_millis(1)))
        .build()
        .await;
    refused_and_retried(&c).await;
}

/// The gateway's send queue over its budget (message-service falls behind; the sends wait
/// on the gateway, where message-service cannot see them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_queued_on_the_gateway_past_its_budget_are_refused_too() {
    let c = TestCluster::builder()
        .message_services(1)
        .gateways(1)
        .gateway_settings(|s| s.send_queue_budget = Some(Duration::from_millis(1)))
        .message_service_settings(|s| s.send_queue_budget = None)
        .build()
        .await;
    refused_and_retried(&c).await;
}

/// `CLIENTS` senders send `PER_CLIENT` messages each at once, retrying refused ones after
/// the hint with the same key: some are refused, each is stored and delivered exactly once.
async fn refused_and_retried(c: &TestCluster) {
    let addr = c.gw(0);
    let receiver = 50_000;
    let mut inbox = Client::connect(addr, receiver).await;
    let senders = join_all((0..CLIENTS).map(|i| Client::connect(addr, 51_000 + i))).await;
    let runs = senders.into_iter().map(|mut s| async move {
        let (mut ids, mut refused) = (Vec::new(), 0usize);
        for n in 0..PER_CLIENT {
            let key = format!("{}-{n}", s.user_id);
            loop {
                let v = s.chat(receiver, &format!("m{n}"), Some(&key)).await;
                if v["type"] == "message_sent" {
                    ids.push(v["message_id"].as_i64().expect("id"));
                    break;
                }
                assert_eq!(v["code"], "unavailable", "{v}");
                let after = v["retry_after_ms"].as_u64().expect("a retry hint");
                assert!(after > 0, "{v}");
                refused += 1;
                tokio::time::sleep(Duration::from_millis(after)).await;
            }
        }
        (ids, refused)
    });
    let results = join_all(runs).await;
    let refused: usize = results.iter().map(|(_, r)| r).sum();
    let ids: Vec<i64> = results.into_iter().flat_map(|(ids, _)| ids).collect();
    assert!(refused > 0, "the burst never went over a 1 ms budget");
    let unique: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(
        unique.len(),
        CLIENTS as usize * PER_CLIENT,
        "one message per key"
    );

    // Each stored once, none lost: the receiver gets exactly the acknowledged ones.
    let mut got = HashSet::new();
    while got.len() < unique.len() {
        let v = inbox.recv_type("new_message").await;
        let id = v["message_id"].as_i64().expect("id");
        assert!(got.insert(id), "message {id} delivered twice");
        assert!(unique.contains(&id), "message {id} was refused, yet stored");
    }
    inbox
        .expect_none_of("new_message", Duration::from_millis(500))
        .await;
    for id in &unique {
        assert!(c.store().get_message(*id).await.expect("store").is_some());
    }
}
