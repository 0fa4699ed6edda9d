//! NATS with the shipped authorization (`bus::permissions`, the list `deploy/nats/auth.conf`
//! and the Helm values are rendered from): every service connects as its own user and the
//! whole path works; a gateway's credentials are refused on message-service's subjects, and
//! no credentials (or wrong ones) get no connection at all.

use std::time::Duration;

use bus::config::{NatsAuth, NatsSettings};
use bus::permissions::{self, GATEWAY, MESSAGE_SERVICE, PRESENCE_SERVICE, PUSH_SERVICE};
use bus::Bus;
use bytes::Bytes;
use futures_util::StreamExt;
use proto::subjects;

use crate::support::*;

fn password(user: &str) -> String {
    format!("test-password-of-{user}")
}

/// nats-server with the shipped users and permissions, passwords from [`password`].
fn nats_with_auth() -> Nats {
    Nats::start_with_config(&permissions::server_conf_with(|r| {
        format!("\"{}\"", password(r.user))
    }))
}

/// How the service `user` connects: its user, its password, its own reply prefix.
fn as_user(nats: &Nats, user: &str) -> NatsSettings {
    let role = permissions::role(user).expect("a shipped role");
    NatsSettings {
        auth: NatsAuth::UserPassword {
            user: user.into(),
            password: password(user),
        },
        inbox_prefix: Some(role.inbox_prefix()),
        ..NatsSettings::new(nats.url())
    }
}

async fn connect_as(nats: &Nats, user: &str) -> Bus {
    Bus::connect_nats(&as_user(nats, user), "nats-auth-test")
        .await
        .expect("connect")
}

/// Lets the server apply subscriptions just sent: `flush` only writes them out, and another
/// connection's message may be routed before the server reads them.
async fn settle(bus: &Bus) {
    bus.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
}

async fn next(sub: &mut bus::Subscriber, within: Duration) -> Option<bus::Message> {
    tokio::time::timeout(within, sub.next())
        .await
        .ok()
        .flatten()
}

/// Waits until the server has logged `needle` (permission violations are logged by it).
async fn server_logged(nats: &Nats, needle: &str) -> bool {
    for _ in 0..50 {
        if nats.log().contains(needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn every_service_works_as_its_own_nats_user() {
    let nats = nats_with_auth();
    let db = fresh_database().await;
    let (_ms, store) = spawn_message_service_with(&nats.url(), &db, |s| {
        s.bus = message_service::BusSettings::Nats(as_user(&nats, MESSAGE_SERVICE));
    })
    .await;
    let (_presence, _, _) = spawn_presence(&nats.url(), |s| {
        s.bus = presence_service::BusSettings::Nats(as_user(&nats, PRESENCE_SERVICE));
    })
    .await;
    let mut push = push_service::Settings::new(
        push_service::BusSettings::Nats(as_user(&nats, PUSH_SERVICE)),
        push_service::StoreSettings::Postgres(db.clone()),
    );
    push.tick = Duration::from_millis(50);
    let push = push_service::App::build(push)
        .await
        .expect("push-service builds (JetStream consumer allowed)");
    let _push = run_with_stop(|rx| push.run(stopped(rx)));
    let (_gw1, gw1) = spawn_gateway_with(&nats.url(), "gw-auth-1", |s| {
        s.bus = gateway::BusSettings::Nats(as_user(&nats, GATEWAY));
    })
    .await;
    let (_gw2, gw2) = spawn_gateway_with(&nats.url(), "gw-auth-2", |s| {
        s.bus = gateway::BusSettings::Nats(as_user(&nats, GATEWAY));
    })
    .await;

    let mut alice = Client::connect(gw1, 1).await;
    let mut bob = Client::connect(gw2, 2).await;
    // Send (gateway → message-service request), delivery (message-service → gateway 2),
    // delivery ack (gateway 2 → message-service → gateway 1), push job (JetStream).
    let sent = alice
        .chat(2, "over an authorized bus", Some("auth-1"))
        .await;
    assert_eq!(sent["type"], "message_sent", "{sent}");
    let id = sent["message_id"].as_i64().unwrap();
    let got = bob.recv_type("new_message").await;
    assert_eq!(got["message_id"], id);
    assert_eq!(alice.recv_type("message_delivered").await["message_id"], id);
    assert!(store.get_message(id).await.unwrap().is_some());
    // Presence (gateway → presence-service request) and push (gateway → push-service).
    let (status, body) = http(
        gw1,
        "GET",
        "/api/v1/presence/?user_ids=2",
        Some(&token(1)),
        None,
    )
    .await;
    assert_eq!(status, 200, "presence: {body}");
    let (status, body) = http(gw1, "GET", "/api/v1/devices/", Some(&token(1)), None).await;
    assert_eq!(status, 200, "devices: {body}");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = nats.log();
    assert!(
        !log.contains("Violation"),
        "a service used a subject its NATS user may not:\n{log}"
    );
}

#[tokio::test]
async fn gateway_credentials_are_refused_on_message_service_subjects() {
    let nats = nats_with_auth();
    let gateway = connect_as(&nats, GATEWAY).await;
    let message_service = connect_as(&nats, MESSAGE_SERVICE).await;
    let delivery = subjects::gateway_delivery("gw-victim");

    // A gateway may read its deliveries (the probe is a real gateway's subscription) ...
    let mut victim = gateway.subscribe(&delivery).await.unwrap();
    settle(&gateway).await;
    // ... but not write them: a forged delivery from a gateway's credentials never arrives,
    gateway
        .publish(&delivery, Bytes::from_static(b"forged"))
        .await
        .unwrap();
    gateway.flush().await.unwrap();
    assert!(
        next(&mut victim, Duration::from_millis(500))
            .await
            .is_none(),
        "a gateway published a delivery"
    );
    assert!(
        server_logged(&nats, &delivery).await,
        "the server logs the refused publish:\n{}",
        nats.log()
    );
    // while message-service's does.
    message_service
        .publish(&delivery, Bytes::from_static(b"real"))
        .await
        .unwrap();
    let real = next(&mut victim, Duration::from_secs(5))
        .await
        .expect("real delivery");
    assert_eq!(&real.payload[..], b"real");

    // A gateway may request a send but not serve sends: its queue subscription in
    // message-service's group is refused, so the request finds no responder ...
    let _thief = gateway
        .queue_subscribe(subjects::MSG_SEND, subjects::MESSAGE_SERVICE_QUEUE)
        .await
        .unwrap();
    settle(&gateway).await;
    assert!(
        server_logged(&nats, subjects::MSG_SEND).await,
        "the server logs the refused subscription:\n{}",
        nats.log()
    );
    let stolen = gateway
        .request(
            subjects::MSG_SEND,
            Bytes::from_static(b"send"),
            Duration::from_secs(1),
        )
        .await;
    assert!(
        matches!(stolen, Err(bus::BusError::NoResponders(_))),
        "a gateway received a send: {stolen:?}"
    );
    // ... while message-service's subscription gets it, and answers on the reply subject.
    let mut served = message_service
        .queue_subscribe(subjects::MSG_SEND, subjects::MESSAGE_SERVICE_QUEUE)
        .await
        .unwrap();
    settle(&message_service).await;
    let answer = tokio::spawn(async move {
        let m = next(&mut served, Duration::from_secs(5))
            .await
            .expect("a send");
        message_service
            .respond(&m, Bytes::from_static(b"ok"))
            .await
            .unwrap();
        message_service
    });
    let reply = gateway
        .request(
            subjects::MSG_SEND,
            Bytes::from_static(b"send"),
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "message-service answers a gateway's request: {e}\n{}",
                nats.log()
            )
        });
    assert_eq!(&reply.payload[..], b"ok");
    let message_service = answer.await.unwrap();

    // Nor may a gateway read the routing streams (another gateway's events) or another
    // service's replies, or enqueue push jobs.
    let mut routing = gateway.subscribe(subjects::ROUTING_ALL).await.unwrap();
    settle(&gateway).await;
    let other_gateway = connect_as(&nats, GATEWAY).await;
    other_gateway
        .publish(subjects::CONN_EVENTS, Bytes::from_static(b"event"))
        .await
        .unwrap();
    other_gateway.flush().await.unwrap();
    assert!(
        next(&mut routing, Duration::from_millis(500))
            .await
            .is_none(),
        "a gateway read the routing streams"
    );
    let replies = format!(
        "{}.>",
        permissions::role(MESSAGE_SERVICE).unwrap().inbox_prefix()
    );
    let _replies = gateway.subscribe(&replies).await.unwrap();
    gateway.flush().await.unwrap();
    assert!(server_logged(&nats, &replies).await, "{}", nats.log());
    drop(message_service);
    gateway
        .publish(subjects::PUSH_JOBS, Bytes::from_static(b"job"))
        .await
        .unwrap();
    gateway.flush().await.unwrap();
    assert!(
        server_logged(&nats, subjects::PUSH_JOBS).await,
        "{}",
        nats.log()
    );
}

#[tokio::test]
async fn no_or_wrong_credentials_get_no_connection() {
    let nats = nats_with_auth();
    let anonymous = Bus::connect_nats(&NatsSettings::new(nats.url()), "anonymous").await;
    assert!(anonymous.is_err(), "connected without credentials");
    let mut wrong = as_user(&nats, GATEWAY);
    wrong.auth = NatsAuth::UserPassword {
        user: GATEWAY.into(),
        password: password(MESSAGE_SERVICE),
    };
    let Err(err) = Bus::connect_nats(&wrong, "wrong").await else {
        panic!("connected with another user's password");
    };
    assert!(err.to_string().to_lowercase().contains("author"), "{err}");
}
