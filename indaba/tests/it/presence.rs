//! presence-service with real NATS: transitions, grace, gateway crashes, restarts, several
//! instances, and fan-out only to watchers.
//!
//! The watchers here share no conversation with the users they watch (most clusters run no
//! message-service), so the gateways show everyone's presence
//! (`INDABA_PRESENCE_VISIBILITY=everyone`); the default, strangers see nothing, is checked in
//! `attacks::strangers_cannot_see_presence`.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// Gateways of these tests show everyone's presence (see the module docs).
fn everyone(s: &mut gateway::Settings) {
    s.presence_visibility = gateway::settings::PresenceVisibility::Everyone;
}

async fn subscribe(w: &mut Client, users: &[i64]) -> Vec<serde_json::Value> {
    w.send(json!({"type": "presence_subscribe", "user_ids": users}))
        .await;
    let mut got = Vec::new();
    for _ in users {
        got.push(w.recv_type("presence").await);
    }
    got
}

async fn next_presence(w: &mut Client, user: i64) -> String {
    let p = w.recv_type("presence").await;
    assert_eq!(p["user_id"], user, "{p}");
    p["status"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_online_away_offline() {
    let c = TestCluster::builder()
        .gateway_settings(everyone)
        .message_services(0)
        .presence(true)
        .gateways(2)
        .build()
        .await;
    let (gw1, gw2) = (c.gw(0), c.gw(1));
    let mut w = Client::connect(gw1, 20).await;
    let initial = subscribe(&mut w, &[21]).await;
    assert_eq!(initial[0]["status"], "offline");
    assert!(initial[0]["last_seen"].is_null());

    let mut d1 = Client::connect(gw1, 21).await;
    assert_eq!(next_presence(&mut w, 21).await, "online");
    let mut d2 = Client::connect(gw2, 21).await;
    d1.send(json!({"type": "set_status", "status": "away"}))
        .await;
    d1.ping().await;
    // One device still active: still online, nothing sent.
    w.expect_none_of("presence", Duration::from_millis(300))
        .await;
    d2.send(json!({"type": "set_status", "status": "away"}))
        .await;
    assert_eq!(next_presence(&mut w, 21).await, "away");
    d2.send(json!({"type": "set_status", "status": "online"}))
        .await;
    assert_eq!(next_presence(&mut w, 21).await, "online");
    drop(d1);
    drop(d2);
    let p = w.recv_type("presence").await;
    assert_eq!(p["status"], "offline");
    assert!(p["last_seen"].as_str().unwrap().ends_with('Z'));
    w.expect_none_of("presence", Duration::from_millis(300))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_within_grace_does_not_flap() {
    let nats = Nats::start();
    let (_p, _, _) = spawn_presence(&nats.url(), |s| s.grace = Duration::from_secs(1)).await;
    let (_g1, gw1) = spawn_gateway_with(&nats.url(), "pf-1", everyone).await;
    let (_g2, gw2) = spawn_gateway_with(&nats.url(), "pf-2", everyone).await;
    let mut w = Client::connect(gw1, 30).await;
    let u = Client::connect(gw1, 31).await;
    assert_eq!(subscribe(&mut w, &[31]).await[0]["status"], "online");
    drop(u);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _u = Client::connect(gw2, 31).await; // back, on another gateway
                                             // Longer than the grace period: no offline, no repeated online.
    w.expect_none_of("presence", Duration::from_millis(1_500))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_gateway_users_go_offline_within_the_ttl() {
    let nats = Nats::start();
    let (_p, handle, _) = spawn_presence(&nats.url(), |_| {}).await;
    let (_g, gw) = spawn_gateway_with(&nats.url(), "pk-ok", everyone).await;
    let mut doomed = GatewayProcess::start(&nats.url(), "pk-doomed", 300);
    let mut w = Client::connect(gw, 40).await;
    let _u = Client::connect(doomed.addr, 41).await;
    let _v = Client::connect(doomed.addr, 42).await;
    let _v2 = Client::connect(gw, 42).await; // 42 also has a device elsewhere
    let got = subscribe(&mut w, &[41, 42]).await;
    assert!(got.iter().all(|p| p["status"] == "online"), "{got:?}");

    doomed.kill9();
    // Heartbeats stop: after 3 intervals (~0.9 s) plus grace (0.3 s) 41 is offline.
    // The watch is registered before the current status is asked for, so a change that
    // was in flight during `subscribe` can repeat a status already sent (presence is a
    // state: a repeat is harmless, a missed change would not be). Skip such repeats.
    let p = loop {
        let p = w.recv_type("presence").await;
        if p["status"] != "online" {
            break p;
        }
        assert!(
            [41, 42].contains(&p["user_id"].as_i64().unwrap_or(0)),
            "{p}"
        );
    };
    assert_eq!(
        (p["user_id"].as_i64(), p["status"].as_str()),
        (Some(41), Some("offline"))
    );
    // 42 still has a socket on the healthy gateway.
    w.expect_none_of("presence", Duration::from_millis(500))
        .await;
    assert_eq!(handle.get(42).0, presence_service::Status::Online);
    assert_eq!(handle.get(42).2, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_presence_service_announces_no_one_offline() {
    let nats = Nats::start();
    let (p1, _, _) = spawn_presence(&nats.url(), |_| {}).await;
    let (_g, gw) = spawn_gateway_with(&nats.url(), "pr-1", everyone).await;
    let mut w = Client::connect(gw, 50).await;
    let _u = Client::connect(gw, 51).await;
    assert_eq!(subscribe(&mut w, &[51]).await[0]["status"], "online");
    p1.stop().await;
    // The new instance warms up as in production; the gateways answer its resync at once.
    let (_p2, h2, _) = spawn_presence(&nats.url(), |s| s.warmup = Duration::from_secs(1)).await;
    w.expect_none_of("presence", Duration::from_millis(2_000))
        .await;
    assert_eq!(h2.get(51).0, presence_service::Status::Online);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_agree_and_watchers_hear_each_change_once() {
    let nats = Nats::start();
    let (_p1, h1, _) = spawn_presence(&nats.url(), |_| {}).await;
    let (_p2, h2, _) = spawn_presence(&nats.url(), |_| {}).await;
    let (_g1, gw1) = spawn_gateway_with(&nats.url(), "pa-1", everyone).await;
    let (_g2, gw2) = spawn_gateway_with(&nats.url(), "pa-2", everyone).await;
    let mut w = Client::connect(gw2, 60).await;
    subscribe(&mut w, &[61, 62, 63]).await;
    // Let the instances hear each other (they announce every second), so one publishes.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let _a = Client::connect(gw1, 61).await;
    let mut b = Client::connect(gw2, 62).await;
    let c = Client::connect(gw1, 63).await;
    let mut seen = Vec::new();
    // Changes closer together than a tick may collapse into one: wait for each step.
    while seen.len() < 3 {
        let p = w.recv_type("presence").await;
        seen.push((
            p["user_id"].as_i64().unwrap(),
            p["status"].as_str().unwrap().to_owned(),
        ));
    }
    b.send(json!({"type": "set_status", "status": "away"}))
        .await;
    b.ping().await;
    drop(c);
    while seen.len() < 5 {
        let p = w.recv_type("presence").await;
        seen.push((
            p["user_id"].as_i64().unwrap(),
            p["status"].as_str().unwrap().to_owned(),
        ));
    }
    w.expect_none_of("presence", Duration::from_millis(500))
        .await;
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec![
            (61, "online".to_owned()),
            (62, "away".to_owned()),
            (62, "online".to_owned()),
            (63, "offline".to_owned()),
            (63, "online".to_owned()),
        ],
        "{seen:?}"
    );
    for u in [61, 62, 63, 64] {
        let (a, b) = (h1.get(u), h2.get(u));
        assert_eq!((a.0, a.2), (b.0, b.2), "user {u}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwatched_users_cause_no_client_traffic_and_rooms_bring_statuses() {
    let c = TestCluster::builder()
        .gateway_settings(everyone)
        .presence(true)
        .build()
        .await;
    let gw = c.gw(0);
    let mut bystander = Client::connect(gw, 70).await;
    let mut peer = Client::connect(gw, 71).await;
    let lonely = Client::connect(gw, 79).await;
    drop(lonely);
    bystander
        .expect_none_of("presence", Duration::from_millis(800))
        .await;
    peer.expect_none_of("presence", Duration::from_millis(10))
        .await;

    // Joining a room brings the members' current statuses, then their changes.
    let conv = peer.chat(70, "hi", None).await["conversation_id"]
        .as_i64()
        .unwrap();
    bystander
        .send(json!({"type": "join_conversation", "conversation_id": conv}))
        .await;
    let _ = bystander.recv_type("joined_conversation").await;
    let p = bystander.recv_type("presence").await;
    assert_eq!(
        (p["user_id"].as_i64(), p["status"].as_str()),
        (Some(71), Some("online"))
    );
    drop(peer);
    assert_eq!(next_presence(&mut bystander, 71).await, "offline");
}

/// last_seen outlives every presence-service instance: it is kept in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_seen_survives_a_presence_restart() {
    let nats = Nats::start();
    let db = fresh_database().await;
    let url = db.clone();
    let (p1, _, _) = spawn_presence(&nats.url(), move |s| {
        s.store = presence_service::StoreSettings::Postgres(url)
    })
    .await;
    let (_g, gw) = spawn_gateway_with(&nats.url(), "pl-1", everyone).await;
    let mut w = Client::connect(gw, 80).await;
    let u = Client::connect(gw, 81).await;
    subscribe(&mut w, &[81]).await;
    drop(u);
    let off = w.recv_type("presence").await;
    assert_eq!(off["status"], "offline");
    let last_seen = off["last_seen"].as_str().unwrap().to_owned();
    // Give the writer a moment, then replace the instance entirely.
    tokio::time::sleep(Duration::from_millis(300)).await;
    p1.stop().await;
    let url = db.clone();
    let (_p2, _, _) = spawn_presence(&nats.url(), move |s| {
        s.store = presence_service::StoreSettings::Postgres(url)
    })
    .await;
    let mut w2 = Client::connect(gw, 82).await;
    let p = subscribe(&mut w2, &[81]).await.remove(0);
    assert_eq!(p["status"], "offline");
    assert_eq!(p["last_seen"], last_seen);
}

/// Other backends ask over gRPC (`indaba.chat.v1.PresenceService/GetPresence`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_get_presence_with_api_key() {
    use proto::pb::presence_service_client::PresenceServiceClient;
    let nats = Nats::start();
    let (_p, _, grpc) = spawn_presence(&nats.url(), |s| {
        s.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
        s.grpc_keys = proto::grpc_auth::ApiKeys::parse("backend:backend-key-0123456789").unwrap();
    })
    .await;
    let (_g, gw) = spawn_gateway_with(&nats.url(), "pg-grpc", everyone).await;
    let _a = Client::connect(gw, 91).await;
    let _a2 = Client::connect(gw, 91).await;
    let mut client = PresenceServiceClient::connect(format!("http://{}", grpc.unwrap()))
        .await
        .unwrap();
    let ask = |ids: Vec<i64>, key: Option<&str>| {
        let mut r = tonic::Request::new(proto::pb::GetPresenceRequest { user_ids: ids });
        if let Some(k) = key {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {k}").parse().unwrap());
        }
        r
    };
    // The sockets reach presence within a tick or two.
    let deadline = tokio::time::Instant::now() + WAIT;
    let users = loop {
        let resp = client
            .get_presence(ask(vec![91, 92], Some("backend-key-0123456789")))
            .await
            .unwrap();
        let users = resp.into_inner().users;
        if users[0].connections == 2 || tokio::time::Instant::now() > deadline {
            break users;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (
            users[0].user_id,
            users[0].status.as_str(),
            users[0].connections
        ),
        (91, "online", 2)
    );
    assert_eq!(
        (
            users[1].user_id,
            users[1].status.as_str(),
            users[1].connections
        ),
        (92, "offline", 0)
    );
    let e = client.get_presence(ask(vec![91], None)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = client
        .get_presence(ask(vec![91], Some("wrong")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = client
        .get_presence(ask((1..=501).collect(), Some("backend-key-0123456789")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = client
        .get_presence(ask(vec![0], Some("backend-key-0123456789")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}
