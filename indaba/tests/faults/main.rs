//! Fault tests: the local cluster of `scripts/cluster.sh` (all real processes) under
//! continuous client traffic while one part fails (or, for a deploy, drains). Each prints a row of counts (sent,
//! acknowledged, delivered, duplicates, lost) and fails on any lost acknowledged message,
//! any message stored twice, or any message never acknowledged after the fault healed.
//!
//! They take the machine for a few minutes, so they run one at a time (a lock), and the
//! test command runs them as their own step with their output shown:
//! `cargo test -p indaba --test faults -- --nocapture`.

// Tests state their expectations with unwrap/expect; a failure is the test failing.
#![allow(clippy::unwrap_used)]

mod cluster;
mod traffic;

use std::time::Duration;

use cluster::Cluster;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use traffic::{Plan, Report, Traffic};

/// One scenario at a time: each runs a whole cluster. (An async lock: each test has its own
/// runtime, and the guard lives across the whole scenario.)
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs a blocking cluster command without stalling the clients' runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

const HEADER: &str = "| scenario | sent | acknowledged | delivered | duplicates | lost | redelivered (dropped by id) | reconnects | resends | error frames |\n|---|---|---|---|---|---|---|---|---|---|";

fn print_report(scenario: &str, r: &Report, worst: Duration, extra: &str) {
    eprintln!(
        "\n{HEADER}\n{}\nworst acknowledgement → delivery: {} ms{extra}\n",
        r.line(scenario),
        worst.as_millis()
    );
}

/// The claims every scenario makes.
fn assert_nothing_lost(r: &Report, cluster: &Cluster, logs_of: &[&str]) {
    let logs = || {
        logs_of
            .iter()
            .map(|n| format!("--- {n}\n{}", cluster.log_tail(n)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(r.fatal.is_empty(), "non-retryable errors: {:?}", r.fatal);
    assert_eq!(r.duplicates, 0, "messages stored twice\n{}", logs());
    assert_eq!(
        r.lost,
        0,
        "acknowledged messages never delivered:\n{}\n{}",
        r.lost_detail.join("\n"),
        logs()
    );
    assert_eq!(
        r.acknowledged,
        r.sent,
        "{} messages never acknowledged after the fault healed\n{}",
        r.sent - r.acknowledged,
        logs()
    );
    assert_eq!(r.delivered, r.acknowledged);
}

/// How a scenario takes gateway-1 away.
enum Away {
    /// `kill -9`: no close frames, no goodbye to the routing table.
    Kill,
    /// SIGTERM: readiness fails, sockets are closed with 1012 over the drain window.
    Drain,
}

/// Every client starts on gateway-1, which goes away mid-traffic: all must move to gateway-2
/// and resync, and nothing acknowledged may be lost or stored twice.
async fn gateway_goes_away(away: Away, pairs: usize, rate_per_sender: f64, scenario: &str) {
    let _one = SERIAL.lock().await;
    let cluster = blocking(|| Cluster::up(&[("INDABA_DRAIN_SECS", "3")]));
    let traffic = Traffic::start(&Plan {
        pairs,
        first_user: 1,
        gateways: cluster.gateways(),
        all_on_first: true,
        rate_per_sender,
    })
    .await;
    traffic.wait_acked(300, Duration::from_secs(60)).await;
    traffic.mark("gateway-1 goes");
    blocking(|| match away {
        Away::Kill => cluster.kill("gateway-1"),
        Away::Drain => cluster.stop("gateway-1"),
    });
    traffic.mark("gateway-1 gone");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (r, worst) = traffic.finish(Duration::from_secs(120)).await;
    let caught_up: u64 = ["message-service-1", "message-service-2"]
        .iter()
        .map(|w| cluster.metric(w, "indaba_catch_up_messages_total"))
        .sum();
    print_report(
        scenario,
        &r,
        worst,
        &format!("; catch-up copies sent to reopened sockets: {caught_up}"),
    );
    assert_eq!(cluster.dead(), vec!["gateway-1"]);
    assert_nothing_lost(
        &r,
        &cluster,
        &["gateway-1", "gateway-2", "message-service-1"],
    );
    assert!(
        r.reconnects >= 2 * pairs as u64,
        "every client was on gateway-1 and must have moved: {}",
        r.reconnects
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_gateway_killed_with_1000_clients() {
    gateway_goes_away(
        Away::Kill,
        500,
        0.4,
        "kill -9 gateway-1 holding 1,000 clients",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_gateway_drained_under_traffic() {
    // A deploy: SIGTERM, the gateway fails readiness and closes its sockets with 1012 in
    // batches over the drain window (3 s here), clients reconnect to the other one.
    gateway_goes_away(
        Away::Drain,
        200,
        1.0,
        "SIGTERM (drain) gateway-1 holding 400 clients",
    )
    .await;
}

/// 100 pairs over both gateways, 200 messages/s in all.
async fn steady_traffic(cluster: &Cluster) -> Traffic {
    Traffic::start(&Plan {
        pairs: 100,
        first_user: 1,
        gateways: cluster.gateways(),
        all_on_first: false,
        rate_per_sender: 2.0,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_nats_node_killed() {
    let _one = SERIAL.lock().await;
    let cluster = blocking(|| Cluster::up(&[]));
    let traffic = steady_traffic(&cluster).await;
    traffic.wait_acked(400, Duration::from_secs(60)).await;
    // The push queue's stream keeps a copy on every node (INDABA_JETSTREAM_REPLICAS=3, as
    // scripts/cluster.sh sets it), so losing one loses no queued job.
    let jsz = blocking(|| cluster.jetstream_report(2));
    let compact: String = jsz.split_whitespace().collect();
    assert!(
        compact.contains("\"name\":\"INDABA_PUSH\"") && compact.contains("\"num_replicas\":3"),
        "push stream not replicated 3 times:\n{jsz}"
    );
    // nats-1 is first in every service's server list, so it carries the most connections.
    traffic.mark("kill nats-1");
    blocking(|| cluster.kill("nats-1"));
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (r, worst) = traffic.finish(Duration::from_secs(90)).await;
    print_report("kill -9 nats-1 of 3", &r, worst, "");
    assert_eq!(
        cluster.dead(),
        vec!["nats-1"],
        "losing one NATS node must not take down a service\n{}",
        cluster.log_tail("gateway-1")
    );
    assert_nothing_lost(
        &r,
        &cluster,
        &["gateway-1", "message-service-1", "message-service-2"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_postgres_restarted() {
    let _one = SERIAL.lock().await;
    let cluster = blocking(|| Cluster::up(&[]));
    let traffic = steady_traffic(&cluster).await;
    traffic.wait_acked(400, Duration::from_secs(60)).await;
    // Down for longer than a send may wait (the gateway's 5 s request timeout), so
    // clients see the failure rather than a slow answer.
    traffic.mark("stop postgres");
    blocking(|| cluster.stop("postgres"));
    tokio::time::sleep(Duration::from_secs(8)).await;
    traffic.mark("start postgres");
    blocking(|| cluster.start("postgres"));
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (r, worst) = traffic.finish(Duration::from_secs(90)).await;
    print_report("PostgreSQL down 8 s, then back", &r, worst, "");
    assert!(cluster.dead().is_empty(), "{:?}", cluster.dead());
    assert_nothing_lost(&r, &cluster, &["message-service-1", "message-service-2"]);
    assert!(
        r.errors.get("unavailable").copied().unwrap_or(0) > 0,
        "sends during the restart must fail with the retryable `unavailable`: {:?}",
        r.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_message_service_dies_between_commit_and_publish() {
    let _one = SERIAL.lock().await;
    let cluster = blocking(|| Cluster::up(&[]));
    // message-service-1 again, armed to abort right after a commit, before it answers or
    // publishes.
    blocking(|| {
        cluster.kill("message-service-1");
        cluster.start_with(
            "message-service-1",
            &[("INDABA_TEST_CRASH_AFTER_COMMITS", "150")],
        );
    });
    let traffic = steady_traffic(&cluster).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while blocking(|| cluster.alive("message-service-1")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "message-service-1 did not reach its crash point"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let crashed = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    blocking(|| cluster.start("message-service-1"));
    let restarted = crashed.elapsed();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (r, worst) = traffic.finish(Duration::from_secs(90)).await;
    print_report(
        "message-service-1 aborted between commit and publish",
        &r,
        worst,
        &format!("; crashed, restarted {} ms later", restarted.as_millis()),
    );
    assert_nothing_lost(&r, &cluster, &["message-service-1", "message-service-2"]);
    assert!(cluster.dead().is_empty(), "{:?}", cluster.dead());
    // Gateways never failed, so every delivery was live: no receiver had to resync.
    assert_eq!(r.reconnects, 0, "no socket should have been lost");
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(addr: std::net::SocketAddr, user: i64) -> Ws {
    let token = traffic::token(user);
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws/chat/?token={token}"))
            .await
            .expect("connect");
    let hello = next_json(&mut ws, Duration::from_secs(10))
        .await
        .expect("hello");
    assert_eq!(hello["type"], "connection_established");
    ws
}

async fn next_json(ws: &mut Ws, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await.ok()?? {
            Ok(Message::Text(t)) => return serde_json::from_str(&t).ok(),
            Ok(Message::Close(f)) => panic!("socket closed: {f:?}"),
            Ok(_) => continue,
            Err(e) => panic!("socket error: {e}"),
        }
    }
}

/// Subscribes to `users` and returns their statuses from the snapshot answer (one per user;
/// a change frame arriving meanwhile for a user already answered does not count twice).
async fn snapshot(ws: &mut Ws, users: &[i64]) -> Vec<(i64, String)> {
    ws.send(Message::text(
        json!({"type": "presence_subscribe", "user_ids": users}).to_string(),
    ))
    .await
    .expect("send");
    let mut got = std::collections::BTreeMap::new();
    while got.len() < users.len() {
        let v = next_json(ws, Duration::from_secs(10))
            .await
            .expect("presence snapshot");
        if v["type"] == "presence" {
            let user = v["user_id"].as_i64().unwrap();
            if users.contains(&user) {
                got.entry(user)
                    .or_insert_with(|| v["status"].as_str().unwrap().to_owned());
            }
        }
    }
    got.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_presence_service_restarted() {
    let _one = SERIAL.lock().await;
    // The watcher shares no conversation with the users it watches: with the default
    // visibility (`shared`) they would all read offline whatever presence-service does.
    let cluster = blocking(|| Cluster::up(&[("INDABA_PRESENCE_VISIBILITY", "everyone")]));
    let gws = cluster.gateways();
    let users: Vec<i64> = (1..=60).collect();
    // User 61 is watched too, and goes away at the end: proof that the watcher still hears
    // real changes after the restarts (or "nobody shown offline" would prove nothing).
    let control_user = 61;
    let mut control = open(gws[1], control_user).await;
    let mut watched = users.clone();
    watched.push(control_user);
    // Idle users on both gateways; their tasks keep reading so pings get answered.
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut idle = tokio::task::JoinSet::new();
    for &u in &users {
        let mut ws = open(gws[u as usize % 2], u).await;
        let mut stop = stop_rx.clone();
        idle.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    m = ws.next() => if m.is_none() { panic!("user {u} lost its socket") },
                }
            }
        });
    }
    let mut watcher = open(gws[0], 1000).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let statuses = snapshot(&mut watcher, &watched).await;
        if statuses.iter().all(|(_, s)| s == "online") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all online: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // kill -9 (no goodbye), then a graceful restart: neither may show anyone offline.
    let mut changes = Vec::new();
    for (how, act) in [("kill -9", true), ("restart", false)] {
        blocking(|| {
            if act {
                cluster.kill("presence-service");
                cluster.start("presence-service");
            } else {
                cluster.restart("presence-service");
            }
        });
        // Watch the changes for a while after it is back.
        let until = tokio::time::Instant::now() + Duration::from_secs(8);
        while let Some(v) = next_json(&mut watcher, until - tokio::time::Instant::now()).await {
            if v["type"] == "presence" {
                changes.push((how, v));
            }
        }
    }
    let offline: Vec<_> = changes
        .iter()
        .filter(|(_, v)| v["status"] != "online")
        .collect();
    control.close(None).await.expect("close");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v = next_json(&mut watcher, deadline - tokio::time::Instant::now())
            .await
            .expect("the watcher must hear user 61 go offline");
        if v["type"] == "presence" && v["user_id"] == control_user && v["status"] == "offline" {
            break;
        }
    }
    // A fresh watcher asks the restarted service directly.
    let mut fresh = open(gws[1], 1001).await;
    let after = snapshot(&mut fresh, &users).await;
    let not_online: Vec<_> = after.iter().filter(|(_, s)| s != "online").collect();
    let _ = stop.send(true);
    while let Some(r) = idle.join_next().await {
        r.expect("an idle user lost its socket");
    }
    eprintln!(
        "\n| scenario | users watched | presence changes seen | shown offline | not online after |\n|---|---|---|---|---|\n\
         | presence-service kill -9 + restart, then SIGTERM + restart | {} | {} | {} | {} |\n",
        users.len(),
        changes.len(),
        offline.len(),
        not_online.len()
    );
    assert!(
        offline.is_empty(),
        "users shown offline: {offline:?}\n{}",
        cluster.log_tail("presence-service")
    );
    assert!(
        not_online.is_empty(),
        "not online after restart: {not_online:?}"
    );
}
