//! Group control: owner, admins and members, with one rule over every door. The rule is
//! message-service's (`ops::may_update_participants`, `ops::may_set_role`); these tests
//! drive it through the WebSocket, REST and gRPC doors against the real services and check
//! that each refusal is `forbidden` (or `invalid_field`) and that `participants_changed`
//! says who made each change.

use std::net::SocketAddr;

use proto::pb;
use proto::pb::message_service_client::MessageServiceClient;
use serde_json::{json, Value};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};
use tonic_types::StatusExt;

use crate::support::*;

/// A group created over REST by `creator` with `others`; its id.
async fn create_group(addr: SocketAddr, creator: i64, others: &[i64]) -> i64 {
    let body = json!({"participant_ids": others, "title": "roles"}).to_string();
    let (status, v) = http(
        addr,
        "POST",
        "/api/v1/conversations/",
        Some(&token(creator)),
        Some(&body),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["owner_id"], creator, "the creator owns the group: {v}");
    assert_eq!(v["admin_ids"], json!([]));
    v["id"].as_i64().unwrap()
}

/// `user`'s answer to a membership or role frame: the conversation, or the error frame.
async fn answer(c: &mut Client) -> Value {
    loop {
        let v = c.recv().await;
        match v["type"].as_str() {
            Some("conversation_updated") => return v["conversation"].clone(),
            Some("error") => return v,
            _ => {}
        }
    }
}

/// The next `participants_changed` of a client.
async fn changed(c: &mut Client) -> Value {
    c.recv_type("participants_changed").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_follow_the_group_rules() {
    let cluster = TestCluster::builder().build().await;
    let gw = cluster.gw(0);
    let group = create_group(gw, 1, &[2, 3]).await;
    let mut owner = Client::connect(gw, 1).await;
    let mut u2 = Client::connect(gw, 2).await;
    let mut u3 = Client::connect(gw, 3).await;
    let mut u4 = Client::connect(gw, 4).await;

    // A plain member adds, removes the owner, removes a member, appoints themselves: no.
    for frame in [
        json!({"type": "update_participants", "conversation_id": group, "add": [4]}),
        json!({"type": "update_participants", "conversation_id": group, "remove": [1]}),
        json!({"type": "update_participants", "conversation_id": group, "remove": [3]}),
        json!({"type": "set_role", "conversation_id": group, "user_id": 2, "role": "admin"}),
        json!({"type": "set_role", "conversation_id": group, "user_id": 2, "role": "owner"}),
    ] {
        u2.send(frame.clone()).await;
        let e = answer(&mut u2).await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("forbidden")),
            "{frame}"
        );
        assert_eq!(e["conversation_id"], group);
    }

    // The owner appoints 2 an admin; the members hear who did it.
    owner
        .send(
            json!({"type": "set_role", "conversation_id": group, "user_id": "2", "role": "admin"}),
        )
        .await;
    let c = answer(&mut owner).await;
    assert_eq!(
        (c["owner_id"].clone(), c["admin_ids"].clone()),
        (json!(1), json!([2]))
    );
    let ch = changed(&mut u3).await;
    assert_eq!(
        ch,
        json!({"type": "participants_changed", "conversation_id": group, "added_user_ids": [],
               "removed_user_ids": [], "actor_id": 1, "owner_id": 1, "admin_ids": [2]})
    );

    // The admin adds 4: 4 hears it, naming the admin.
    u2.send(json!({"type": "update_participants", "conversation_id": group, "add": [4]}))
        .await;
    assert_eq!(
        answer(&mut u2).await["participant_ids"],
        json!([1, 2, 3, 4])
    );
    let ch = changed(&mut u4).await;
    assert_eq!(
        (ch["actor_id"].clone(), ch["added_user_ids"].clone()),
        (json!(2), json!([4]))
    );
    assert_eq!(changed(&mut u3).await["actor_id"], 2);

    // An admin removes neither the owner nor another admin.
    owner
        .send(json!({"type": "set_role", "conversation_id": group, "user_id": 3, "role": "admin"}))
        .await;
    assert_eq!(answer(&mut owner).await["admin_ids"], json!([2, 3]));
    assert_eq!(changed(&mut u4).await["admin_ids"], json!([2, 3]));
    for remove in [1, 3] {
        u2.send(
            json!({"type": "update_participants", "conversation_id": group, "remove": [remove]}),
        )
        .await;
        assert_eq!(
            answer(&mut u2).await["code"],
            "forbidden",
            "remove {remove}"
        );
    }

    // The owner cannot leave before transferring ownership.
    owner
        .send(json!({"type": "leave_group", "conversation_id": group}))
        .await;
    let e = answer(&mut owner).await;
    assert_eq!(e["code"], "forbidden");
    assert!(e["message"].as_str().unwrap().contains("transfer"), "{e}");

    // Transfer: 2 owns the group, 1 is an admin.
    owner
        .send(json!({"type": "set_role", "conversation_id": group, "user_id": 2, "role": "owner"}))
        .await;
    let c = answer(&mut owner).await;
    assert_eq!(
        (c["owner_id"].clone(), c["admin_ids"].clone()),
        (json!(2), json!([1, 3]))
    );
    let ch = changed(&mut u4).await;
    assert_eq!(
        (
            ch["actor_id"].clone(),
            ch["owner_id"].clone(),
            ch["admin_ids"].clone()
        ),
        (json!(1), json!(2), json!([1, 3]))
    );
    // The old owner no longer sets roles.
    owner
        .send(json!({"type": "set_role", "conversation_id": group, "user_id": 4, "role": "admin"}))
        .await;
    assert_eq!(answer(&mut owner).await["code"], "forbidden");

    // A member leaves; the others hear that 4 left by themselves.
    u4.send(json!({"type": "leave_group", "conversation_id": group}))
        .await;
    assert_eq!(answer(&mut u4).await["participant_ids"], json!([1, 2, 3]));
    // 3 heard every change in order: its appointment, the transfer, the leave.
    let ch = changed(&mut u3).await;
    assert_eq!(
        (ch["actor_id"].clone(), ch["admin_ids"].clone()),
        (json!(1), json!([2, 3]))
    );
    let ch = changed(&mut u3).await;
    assert_eq!(
        (ch["actor_id"].clone(), ch["owner_id"].clone()),
        (json!(1), json!(2))
    );
    let ch = changed(&mut u3).await;
    assert_eq!(
        (ch["actor_id"].clone(), ch["removed_user_ids"].clone()),
        (json!(4), json!([4]))
    );
    // Gone: 4 may not change the group any more.
    u4.send(json!({"type": "update_participants", "conversation_id": group, "add": [5]}))
        .await;
    assert_eq!(answer(&mut u4).await["code"], "forbidden");
    // A bad role is a bad frame.
    u2.send(json!({"type": "set_role", "conversation_id": group, "user_id": 3, "role": "king"}))
        .await;
    assert_eq!(answer(&mut u2).await["code"], "invalid_field");
}

/// A REST call as `user`: status and body.
async fn rest(addr: SocketAddr, method: &str, path: &str, user: i64, body: &str) -> (u16, Value) {
    http(addr, method, path, Some(&token(user)), Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_routes_follow_the_group_rules() {
    let cluster = TestCluster::builder().build().await;
    let gw = cluster.gw(0);
    let group = create_group(gw, 1, &[2, 3]).await;
    let members = format!("/api/v1/conversations/{group}/participants/");
    let role = |u: i64| format!("/api/v1/conversations/{group}/participants/{u}/");
    let leave = format!("/api/v1/conversations/{group}/leave/");
    let mut u3 = Client::connect(gw, 3).await;

    // A plain member: no adding, no removing others, no roles.
    for (method, path, body) in [
        ("POST", members.clone(), r#"{"add":[4]}"#),
        ("POST", members.clone(), r#"{"remove":[1]}"#),
        ("POST", members.clone(), r#"{"remove":[3]}"#),
        ("PUT", role(2), r#"{"role":"admin"}"#),
    ] {
        let (s, v) = rest(gw, method, &path, 2, body).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{path} {body}"
        );
    }

    // The owner appoints 2; the admin adds 4 but cannot remove the owner.
    let (s, v) = rest(gw, "PUT", &role(2), 1, r#"{"role":"admin"}"#).await;
    assert_eq!((s, v["admin_ids"].clone()), (200, json!([2])), "{v}");
    assert_eq!(changed(&mut u3).await["actor_id"], 1);
    let (s, v) = rest(gw, "POST", &members, 2, r#"{"add":[4]}"#).await;
    assert_eq!(
        (s, v["participant_ids"].clone()),
        (200, json!([1, 2, 3, 4])),
        "{v}"
    );
    let ch = changed(&mut u3).await;
    assert_eq!(
        (ch["actor_id"].clone(), ch["added_user_ids"].clone()),
        (json!(2), json!([4]))
    );
    let (s, v) = rest(gw, "POST", &members, 2, r#"{"remove":[1]}"#).await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")));

    // The owner may not leave yet; after a transfer to 3 they may.
    let (s, v) = rest(gw, "POST", &leave, 1, "").await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")));
    let (s, v) = rest(gw, "PUT", &role(3), 1, r#"{"role":"owner"}"#).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["owner_id"].clone(), v["admin_ids"].clone()),
        (json!(3), json!([1, 2]))
    );
    assert_eq!(changed(&mut u3).await["owner_id"], 3);
    let (s, v) = rest(gw, "POST", &leave, 1, "").await;
    assert_eq!(
        (s, v["participant_ids"].clone()),
        (200, json!([2, 3, 4])),
        "{v}"
    );
    let ch = changed(&mut u3).await;
    assert_eq!(
        (
            ch["actor_id"].clone(),
            ch["removed_user_ids"].clone(),
            ch["admin_ids"].clone()
        ),
        (json!(1), json!([1]), json!([2]))
    );

    // The new owner demotes 2; reading the group shows the roles.
    let (s, v) = rest(gw, "PUT", &role(2), 3, r#"{"role":"member"}"#).await;
    assert_eq!((s, v["admin_ids"].clone()), (200, json!([])), "{v}");
    let (s, v) = rest(gw, "GET", &format!("/api/v1/conversations/{group}/"), 4, "").await;
    assert_eq!((s, v["owner_id"].clone()), (200, json!(3)), "{v}");
    // The conversation list shows them too.
    let (s, v) = rest(gw, "GET", "/api/v1/conversations/", 4, "").await;
    assert_eq!(s, 200, "{v}");
    let row = &v["conversations"][0];
    assert_eq!(
        (
            row["id"].as_i64(),
            row["owner_id"].clone(),
            row["admin_ids"].clone()
        ),
        (Some(group), json!(3), json!([]))
    );

    // Bad requests: a stranger as target, an unknown role, the owner demoting themselves,
    // roles in a direct conversation.
    for (path, user, body) in [
        (role(9), 3, r#"{"role":"admin"}"#),
        (role(2), 3, r#"{"role":"boss"}"#),
        (role(3), 3, r#"{"role":"member"}"#),
    ] {
        let (s, v) = rest(gw, "PUT", &path, user, body).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("invalid_field")),
            "{path} {body}"
        );
    }
    let (s, v) = rest(
        gw,
        "POST",
        "/api/v1/messages/",
        1,
        r#"{"receiver_id":2,"text":"dm"}"#,
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let direct = v["conversation_id"].as_i64().unwrap();
    let (s, v) = rest(
        gw,
        "GET",
        &format!("/api/v1/conversations/{direct}/"),
        1,
        "",
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        v.get("owner_id").is_none(),
        "direct chats have no owner: {v}"
    );
    let (s, v) = rest(
        gw,
        "PUT",
        &format!("/api/v1/conversations/{direct}/participants/2/"),
        1,
        r#"{"role":"admin"}"#,
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_field"))
    );
    let (s, _) = rest(
        gw,
        "POST",
        &format!("/api/v1/conversations/{direct}/leave/"),
        1,
        "",
    )
    .await;
    assert_eq!(s, 400);
}

const RW_KEY: &str = "roles-rw-0123456789abcdef";
const RO_KEY: &str = "roles-ro-0123456789abcdef";

fn with_key<T>(msg: T, key: &str) -> Request<T> {
    let mut r = Request::new(msg);
    let v: MetadataValue<_> = format!("Bearer {key}").parse().expect("metadata");
    r.metadata_mut().insert("authorization", v);
    r
}

/// The status's stable code (`ErrorInfo.reason`).
fn reason(s: &tonic::Status) -> String {
    s.get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

fn conversation(r: pb::SetParticipantRoleResponse) -> pb::Conversation {
    match r.result {
        Some(pb::set_participant_role_response::Result::Conversation(c)) => c,
        other => panic!("{other:?}"),
    }
}

fn members(r: pb::UpdateParticipantsResponse) -> pb::Conversation {
    match r.result {
        Some(pb::update_participants_response::Result::Conversation(c)) => c,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_follows_the_group_rules_and_the_system_may_do_anything() {
    let port = free_port();
    let cluster = TestCluster::builder()
        .message_service_settings(move |s| {
            s.grpc_listen = Some(SocketAddr::from(([127, 0, 0, 1], port)));
            s.grpc_keys =
                proto::grpc_auth::ApiKeys::parse(&format!("rw:{RW_KEY}:rw,ro:{RO_KEY}:ro"))
                    .expect("keys");
        })
        .build()
        .await;
    let mut c = MessageServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("grpc connect");
    let mut u40 = Client::connect(cluster.gw(0), 40).await;
    let created = c
        .create_conversation(with_key(
            pb::CreateConversationRequest {
                creator_id: 10,
                participant_ids: vec![20, 30],
                title: "Booking".into(),
                kind: pb::ConversationKind::Group as i32,
            },
            RW_KEY,
        ))
        .await
        .expect("create")
        .into_inner();
    let Some(pb::create_conversation_response::Result::Conversation(conv)) = created.result else {
        panic!("no conversation");
    };
    assert_eq!((conv.owner_id, conv.admin_ids.clone()), (10, vec![]));
    let update = |actor: i64, add: Vec<i64>, remove: Vec<i64>, as_system: bool| {
        with_key(
            pb::UpdateParticipantsRequest {
                actor_id: actor,
                conversation_id: conv.id,
                add_user_ids: add,
                remove_user_ids: remove,
                as_system,
            },
            RW_KEY,
        )
    };
    let set = |actor: i64, user: i64, role: pb::ParticipantRole, as_system: bool| {
        pb::SetParticipantRoleRequest {
            actor_id: actor,
            conversation_id: conv.id,
            user_id: user,
            role: role as i32,
            as_system,
        }
    };

    // A plain member: no adding, no removing the owner, no appointing.
    for req in [
        update(20, vec![40], vec![], false),
        update(20, vec![], vec![10], false),
    ] {
        let e = c.update_participants(req).await.expect_err("member");
        assert_eq!(
            (e.code(), reason(&e).as_str()),
            (Code::PermissionDenied, "forbidden")
        );
    }
    let e = c
        .set_participant_role(with_key(
            set(20, 20, pb::ParticipantRole::Admin, false),
            RW_KEY,
        ))
        .await
        .expect_err("member");
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::PermissionDenied, "forbidden")
    );
    // A read-only key writes nothing.
    let e = c
        .set_participant_role(with_key(
            set(10, 20, pb::ParticipantRole::Admin, false),
            RO_KEY,
        ))
        .await
        .expect_err("read-only");
    assert_eq!(e.code(), Code::PermissionDenied);

    // The owner appoints 20; the admin adds 40, who hears who did it.
    let g = conversation(
        c.set_participant_role(with_key(
            set(10, 20, pb::ParticipantRole::Admin, false),
            RW_KEY,
        ))
        .await
        .expect("appoint")
        .into_inner(),
    );
    assert_eq!(g.admin_ids, vec![20]);
    let g = members(
        c.update_participants(update(20, vec![40], vec![], false))
            .await
            .expect("admin adds")
            .into_inner(),
    );
    assert_eq!(g.participant_ids, vec![10, 20, 30, 40]);
    let ch = changed(&mut u40).await;
    assert_eq!(
        (ch["actor_id"].clone(), ch["added_user_ids"].clone()),
        (json!(20), json!([40]))
    );

    // Transfer to 30: the old owner becomes an admin.
    let g = conversation(
        c.set_participant_role(with_key(
            set(10, 30, pb::ParticipantRole::Owner, false),
            RW_KEY,
        ))
        .await
        .expect("transfer")
        .into_inner(),
    );
    assert_eq!((g.owner_id, g.admin_ids.clone()), (30, vec![10, 20]));
    assert_eq!(changed(&mut u40).await["owner_id"], 30);

    // The system may remove even the owner, and give the group a new one; its changes
    // name no actor.
    let g = members(
        c.update_participants(update(0, vec![], vec![30], true))
            .await
            .expect("system removes the owner")
            .into_inner(),
    );
    assert_eq!(
        (g.participant_ids.clone(), g.owner_id),
        (vec![10, 20, 40], 0)
    );
    let ch = changed(&mut u40).await;
    assert!(
        ch.get("actor_id").is_none() && ch.get("owner_id").is_none(),
        "{ch}"
    );
    let g = conversation(
        c.set_participant_role(with_key(
            set(0, 40, pb::ParticipantRole::Owner, true),
            RW_KEY,
        ))
        .await
        .expect("system appoints an owner")
        .into_inner(),
    );
    assert_eq!((g.owner_id, g.admin_ids.clone()), (40, vec![10, 20]));

    // The system is actor 0 and only with as_system; a user is never 0.
    for req in [
        update(5, vec![50], vec![], true),
        update(0, vec![50], vec![], false),
    ] {
        let e = c.update_participants(req).await.expect_err("bad actor");
        assert_eq!(
            (e.code(), reason(&e).as_str()),
            (Code::InvalidArgument, "invalid_field")
        );
    }
    // A member leaves over gRPC (removes themselves); the owner may not.
    let g = members(
        c.update_participants(update(10, vec![], vec![10], false))
            .await
            .expect("leave")
            .into_inner(),
    );
    assert_eq!(g.participant_ids, vec![20, 40]);
    let e = c
        .update_participants(update(40, vec![], vec![40], false))
        .await
        .expect_err("owner leaves");
    assert_eq!(e.code(), Code::PermissionDenied);
}

/// Data written before roles existed: group 1 made by 1 (members 1, 2, 3), group 2 made by
/// 5 who has left (members 6, 7), the direct conversation of 1 and 2.
const LEGACY_ROWS: [&str; 2] = [
    "INSERT INTO conversations (id, kind, title, direct_key, created_by, created_at_ms)
     VALUES (1, 2, 'kept', NULL, 1, 0), (2, 2, 'taken', NULL, 5, 0), (3, 1, '', '1:2', 1, 0)",
    "INSERT INTO participants (conversation_id, user_id, joined_at_ms)
     VALUES (1, 1, 0), (1, 2, 0), (1, 3, 0), (2, 6, 0), (2, 7, 0), (3, 1, 0), (3, 2, 0)",
];

/// After the roles migration: a group's creator owns it, a group whose creator had left
/// has no owner, a direct conversation has no roles, nobody is an admin.
async fn assert_legacy_roles(store: &message_service::Store) {
    let roles = |c: pb::Conversation| (c.participant_ids, c.owner_id, c.admin_ids);
    let get = |id| async move { store.get_conversation(id).await.unwrap().unwrap() };
    assert_eq!(roles(get(1).await), (vec![1, 2, 3], 1, vec![]));
    assert_eq!(roles(get(2).await), (vec![6, 7], 0, vec![]));
    assert_eq!(roles(get(3).await), (vec![1, 2], 0, vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_groups_are_owned_by_their_creator_after_migrating_postgres() {
    let url = fresh_database().await;
    let pool = postgres_before(&url, "0004").await;
    for sql in LEGACY_ROWS {
        sqlx::query(sql).execute(&pool).await.expect("legacy rows");
    }
    pool.close().await;
    let store = message_service::Store::connect_postgres(&url, 2)
        .await
        .expect("migrate to roles");
    assert_legacy_roles(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_groups_are_owned_by_their_creator_after_migrating_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("old.db");
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&file)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.expect("open");
    migrate_before(&pool, "sqlite", "0004").await;
    for sql in LEGACY_ROWS {
        sqlx::query(sql).execute(&pool).await.expect("legacy rows");
    }
    pool.close().await;
    let store = message_service::Store::open_sqlite(&file, 2)
        .await
        .expect("migrate to roles");
    assert_legacy_roles(&store).await;
}
