//! Rich messages — edits, deletions for everyone, reactions, replies and threads, mentions,
//! pins, "seen by" — against the single-node program (SQLite) and the distributed services
//! (NATS, PostgreSQL): every frame with its refusals, a client that was offline catching up
//! through `sync`, concurrent changes converging, and a deleted text gone from the table.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// A system under test: its gateway address, what keeps it running, its database.
struct Node {
    addr: SocketAddr,
    db: Db,
    _keep: Box<dyn std::any::Any + Send>,
}

enum Db {
    Postgres(String),
    Sqlite(std::path::PathBuf),
}

impl Node {
    /// The single-node program with `options` (`INDABA_*`).
    async fn single(options: &[(&str, &str)]) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts: Vec<(String, String)> = options
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let (running, addr, _) = spawn_single_node_with(dir.path(), "127.0.0.1:0", &opts).await;
        Node {
            addr,
            db: Db::Sqlite(dir.path().join(indaba::DB_FILE)),
            _keep: Box::new((running, dir)),
        }
    }

    /// NATS, PostgreSQL, a message-service and a gateway, with this edit window.
    async fn distributed(edit_window: Option<Duration>) -> Node {
        let cluster = TestCluster::builder()
            .message_service_settings(move |s| s.edit_window = edit_window)
            .build()
            .await;
        Node {
            addr: cluster.gw(0),
            db: Db::Postgres(cluster.db().to_owned()),
            _keep: Box::new(cluster),
        }
    }

    /// The stored text of a message, read from the table itself.
    async fn stored_text(&self, message_id: i64) -> String {
        let sql = "SELECT text FROM messages WHERE id = $1";
        match &self.db {
            Db::Postgres(url) => {
                let pool = sqlx::PgPool::connect(url).await.expect("pg");
                sqlx::query_scalar(sql)
                    .bind(message_id)
                    .fetch_one(&pool)
                    .await
                    .expect("row")
            }
            Db::Sqlite(path) => {
                let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
                    .await
                    .expect("sqlite");
                sqlx::query_scalar(sql)
                    .bind(message_id)
                    .fetch_one(&pool)
                    .await
                    .expect("row")
            }
        }
    }
}

async fn rest(addr: SocketAddr, method: &str, path: &str, user: i64, body: Value) -> (u16, Value) {
    let body = body.to_string();
    http(addr, method, path, Some(&token(user)), Some(&body)).await
}

async fn create_group(addr: SocketAddr, creator: i64, others: &[i64]) -> i64 {
    let (status, v) = rest(
        addr,
        "POST",
        "/api/v1/conversations/",
        creator,
        json!({"participant_ids": others, "title": "rich"}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    v["id"].as_i64().unwrap()
}

/// Sends `frame` (a `chat_message`) and returns `message_sent` or the error.
async fn send(c: &mut Client, frame: Value) -> Value {
    c.send(frame).await;
    loop {
        let v = c.recv().await;
        if v["type"] == "message_sent" || v["type"] == "error" {
            return v;
        }
        c.pending.push_back(v);
    }
}

/// Sends a change frame and returns its answer: the event of type `ty` about the frame's
/// message made by this client's user (events of others are kept), or an error.
async fn change(c: &mut Client, frame: Value, ty: &str) -> Value {
    c.send(frame.clone()).await;
    loop {
        let v = c.recv().await;
        let actor = if v["type"] == "message_deleted" {
            &v["deleted_by"]
        } else {
            &v["user_id"]
        };
        if v["type"] == "error"
            || (v["type"] == ty && v["message_id"] == frame["message_id"] && *actor == c.user_id)
        {
            return v;
        }
        c.pending.push_back(v);
    }
}

/// [`change`], which must succeed.
async fn changed(c: &mut Client, frame: Value, ty: &str) {
    let v = change(c, frame, ty).await;
    assert_eq!(v["type"], ty, "{v}");
}

/// The refusal code of a change frame (and it names the message).
async fn refused(c: &mut Client, frame: Value) -> String {
    let e = change(c, frame.clone(), "never").await;
    assert_eq!(e["type"], "error", "{frame}: {e}");
    if let Some(id) = frame.get("message_id") {
        assert_eq!(e["message_ids"], json!([id]), "{e}");
    }
    e["code"].as_str().unwrap().to_owned()
}

/// The newest page of a conversation as `user` sees it (REST).
async fn page(addr: SocketAddr, user: i64, conversation: i64) -> Vec<Value> {
    let (status, v) = http(
        addr,
        "GET",
        &format!("/api/v1/conversations/{conversation}/messages/?limit=200"),
        Some(&token(user)),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v["messages"].as_array().unwrap().clone()
}

fn by_id(messages: &[Value], id: i64) -> Value {
    messages
        .iter()
        .find(|m| m["message_id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("message {id} missing from {messages:?}"))
}

/// Every frame of the issue, and each refusal it lists, over the WebSocket (REST for the
/// reads it names).
async fn every_frame_and_refusal(node: &Node) {
    let addr = node.addr;
    let mut c1 = Client::connect(addr, 1).await;
    let mut c2 = Client::connect(addr, 2).await;
    let mut c9 = Client::connect(addr, 9).await;
    let group = create_group(addr, 1, &[2, 3]).await;

    // A direct message, edited by its sender: both hear `message_updated`.
    let sent = c1.chat(2, "first", None).await;
    let m1 = sent["message_id"].as_i64().unwrap();
    let direct = sent["conversation_id"].as_i64().unwrap();
    let _ = c2.recv_type("new_message").await;
    let up = change(
        &mut c1,
        json!({"type": "edit_message", "message_id": m1, "text": "first, edited"}),
        "message_updated",
    )
    .await;
    assert_eq!(up["text"], "first, edited", "{up}");
    assert!(up["seq"].as_i64().unwrap() > sent["seq"].as_i64().unwrap());
    let seen = c2.recv_type("message_updated").await;
    assert_eq!(seen, up);
    // Someone else's message, an empty text, an unknown id: refused.
    let edit =
        |id: i64, text: &str| json!({"type": "edit_message", "message_id": id, "text": text});
    assert_eq!(refused(&mut c2, edit(m1, "mine now")).await, "forbidden");
    assert_eq!(refused(&mut c1, edit(m1, " ")).await, "empty_text");
    assert_eq!(
        refused(&mut c1, edit(999_999, "x")).await,
        "message_not_found"
    );

    // Reactions: counts are absolute; one of each per user; outsiders see nothing.
    let react = |id: i64, e: &str| json!({"type": "add_reaction", "message_id": id, "emoji": e});
    let r = change(&mut c2, react(m1, "👍"), "reaction_added").await;
    assert_eq!(
        (r["count"].as_i64(), r["user_id"].as_i64()),
        (Some(1), Some(2))
    );
    let r = change(&mut c1, react(m1, "👍"), "reaction_added").await;
    assert_eq!(r["count"], 2, "{r}");
    let again = change(&mut c1, react(m1, "👍"), "reaction_added").await;
    assert_eq!(again["count"], 2, "a repeat changes nothing: {again}");
    let r = change(
        &mut c2,
        json!({"type": "remove_reaction", "message_id": m1, "emoji": "👍"}),
        "reaction_removed",
    )
    .await;
    assert_eq!(r["count"], 1, "{r}");
    assert_eq!(refused(&mut c2, react(m1, "hello")).await, "invalid_field");
    assert_eq!(refused(&mut c2, react(m1, "👍👍")).await, "invalid_field");
    assert_eq!(
        refused(&mut c9, react(m1, "👍")).await,
        "message_not_found",
        "reacting in a conversation you are not in"
    );
    let shown = by_id(&page(addr, 1, direct).await, m1);
    assert_eq!(shown["reactions"], json!({"👍": {"count": 1, "me": true}}));
    assert_eq!(shown["text"], "first, edited");
    assert!(shown["edited_at"].is_string(), "{shown}");
    let shown = by_id(&page(addr, 2, direct).await, m1);
    assert_eq!(shown["reactions"], json!({"👍": {"count": 1, "me": false}}));

    // At most 20 distinct reactions on a message.
    let many = c1.chat(2, "react to me", None).await["message_id"]
        .as_i64()
        .unwrap();
    for i in 0..20 {
        let code = format!(":e{i}:");
        let r = change(&mut c1, react(many, &code), "reaction_added").await;
        assert_eq!(r["type"], "reaction_added", "{r}");
    }
    assert_eq!(
        refused(&mut c2, react(many, ":one_too_many:")).await,
        "too_many_reactions"
    );
    let r = change(&mut c2, react(many, ":e3:"), "reaction_added").await;
    assert_eq!(r["count"], 2, "an existing emoji still counts: {r}");

    // Replies: the root counts them; another conversation's message is no target.
    let g1 = send(
        &mut c1,
        json!({"type": "chat_message", "conversation_id": group, "text": "group hello"}),
    )
    .await;
    let g1 = g1["message_id"].as_i64().unwrap();
    let reply = send(
        &mut c2,
        json!({"type": "chat_message", "conversation_id": direct, "text": "re", "reply_to": m1}),
    )
    .await;
    assert_eq!(reply["type"], "message_sent", "{reply}");
    let got = c1.recv_type("new_message").await;
    assert_eq!(
        (got["reply_to"].as_i64(), got["text"].as_str()),
        (Some(m1), Some("re"))
    );
    let nested = send(
        &mut c1,
        json!({"type": "chat_message", "conversation_id": direct, "text": "re re",
               "reply_to": reply["message_id"]}),
    )
    .await;
    let bad = send(
        &mut c2,
        json!({"type": "chat_message", "conversation_id": direct, "text": "x", "reply_to": g1}),
    )
    .await;
    assert_eq!(
        bad["code"], "invalid_reply",
        "replying to another conversation: {bad}"
    );
    c1.send(json!({"type": "thread", "message_id": m1})).await;
    let t = c1.recv_type("thread").await;
    let ids: Vec<i64> = t["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![
            m1,
            reply["message_id"].as_i64().unwrap(),
            nested["message_id"].as_i64().unwrap()
        ],
        "root first, replies oldest first; a reply to a reply joins the root's thread"
    );
    assert_eq!(t["has_more"], false);
    assert_eq!(t["messages"][2]["reply_to"], m1);
    assert_eq!(by_id(&page(addr, 1, direct).await, m1)["reply_count"], 2);
    let (status, t) = http(
        addr,
        "GET",
        &format!("/api/v1/messages/{m1}/thread/"),
        Some(&token(2)),
        None,
    )
    .await;
    assert_eq!(
        (status, t["messages"].as_array().map(Vec::len)),
        (200, Some(3))
    );

    // Mentions: members only; the mentioned get an unread mention count.
    let mention = send(
        &mut c1,
        json!({"type": "chat_message", "conversation_id": group, "text": "@2", "mentions": [2]}),
    )
    .await;
    assert_eq!(mention["type"], "message_sent", "{mention}");
    let bad = send(
        &mut c1,
        json!({"type": "chat_message", "conversation_id": group, "text": "@9", "mentions": [9]}),
    )
    .await;
    assert_eq!(
        bad["code"], "invalid_mention",
        "mentioning a non-member: {bad}"
    );
    let (_, list) = http(addr, "GET", "/api/v1/conversations/", Some(&token(2)), None).await;
    let row = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == group)
        .cloned()
        .unwrap();
    assert_eq!(
        (
            row["unread_mentions"].as_i64(),
            row["unread_count"].as_i64()
        ),
        (Some(1), Some(2))
    );

    // Pins: either member of a direct chat; owner or admins in a group.
    let pin = |id: i64| json!({"type": "pin_message", "message_id": id});
    let p = change(&mut c2, pin(m1), "message_pinned").await;
    assert_eq!(
        (p["message_id"].as_i64(), p["user_id"].as_i64()),
        (Some(m1), Some(2))
    );
    let _ = c1.recv_type("message_pinned").await;
    assert_eq!(
        refused(&mut c2, pin(g1)).await,
        "forbidden",
        "a plain member pins in a group"
    );
    let p = change(&mut c1, pin(g1), "message_pinned").await;
    assert_eq!(p["type"], "message_pinned", "{p}");
    c2.send(json!({"type": "list_pins", "conversation_id": group}))
        .await;
    let pins = c2.recv_type("pins").await;
    assert_eq!(pins["messages"][0]["message_id"], g1, "{pins}");
    assert!(pins["messages"][0]["pinned_at"].is_string());
    let (status, pins) = http(
        addr,
        "GET",
        &format!("/api/v1/conversations/{direct}/pins/"),
        Some(&token(1)),
        None,
    )
    .await;
    assert_eq!(
        (status, pins["messages"][0]["message_id"].as_i64()),
        (200, Some(m1))
    );
    let u = change(
        &mut c1,
        json!({"type": "unpin_message", "message_id": m1}),
        "message_unpinned",
    )
    .await;
    assert_eq!(u["type"], "message_unpinned", "{u}");

    // Deleting: a plain member may not delete another's message in a group; the owner may;
    // a tombstone keeps id, seq, sender and time, and takes no more changes.
    let g2 = send(
        &mut c2,
        json!({"type": "chat_message", "conversation_id": group, "text": "delete me"}),
    )
    .await;
    let g2 = g2["message_id"].as_i64().unwrap();
    let del = |id: i64| json!({"type": "delete_message", "message_id": id});
    assert_eq!(
        refused(&mut c2, del(g1)).await,
        "forbidden",
        "a plain member deletes in a group"
    );
    let d = change(&mut c1, del(g2), "message_deleted").await;
    assert_eq!(
        (d["deleted_by"].as_i64(), d["message_id"].as_i64()),
        (Some(1), Some(g2))
    );
    let d2 = c2.recv_type("message_deleted").await;
    assert_eq!(d2, d);
    assert_eq!(refused(&mut c2, edit(g2, "back")).await, "message_deleted");
    assert_eq!(refused(&mut c1, react(g2, "👍")).await, "message_deleted");
    let tomb = by_id(&page(addr, 3, group).await, g2);
    assert_eq!(
        (
            tomb["deleted"].as_bool(),
            tomb["text"].as_str(),
            tomb["sender_id"].as_i64()
        ),
        (Some(true), Some(""), Some(2)),
        "{tomb}"
    );
    assert_eq!(
        node.stored_text(g2).await,
        "",
        "the text is gone from the table"
    );
    // The sender deletes their own direct message over REST.
    let (status, d) = rest(
        addr,
        "DELETE",
        &format!("/api/v1/messages/{m1}/"),
        1,
        json!({}),
    )
    .await;
    assert_eq!(
        (status, d["type"].as_str()),
        (200, Some("message_deleted")),
        "{d}"
    );
    assert_eq!(node.stored_text(m1).await, "");
    assert_eq!(
        by_id(&page(addr, 2, direct).await, m1)["reactions"],
        json!({}),
        "a deletion takes the reactions too"
    );

    // "Seen by": members only, the sender not listed.
    let seen_msg = c1.chat(2, "read me", None).await["message_id"]
        .as_i64()
        .unwrap();
    c2.send(json!({"type": "read_receipt", "message_ids": [seen_msg]}))
        .await;
    let _ = c1.recv_type("read_receipt").await;
    c1.send(json!({"type": "message_reads", "message_id": seen_msg}))
        .await;
    let reads = c1.recv_type("message_reads").await;
    assert_eq!(reads["reads"][0]["user_id"], 2, "{reads}");
    assert_eq!(reads["reads"].as_array().unwrap().len(), 1);
    let (status, _) = http(
        addr,
        "GET",
        &format!("/api/v1/messages/{seen_msg}/reads/"),
        Some(&token(9)),
        None,
    )
    .await;
    assert_eq!(status, 404, "outsiders cannot see who read it");

    // REST edit and reactions answer with the event.
    let rm = c1.chat(2, "rest", None).await["message_id"]
        .as_i64()
        .unwrap();
    let (status, e) = rest(
        addr,
        "PATCH",
        &format!("/api/v1/messages/{rm}/"),
        1,
        json!({"text": "rest, edited"}),
    )
    .await;
    assert_eq!(
        (status, e["type"].as_str()),
        (200, Some("message_updated")),
        "{e}"
    );
    let (status, e) = rest(
        addr,
        "POST",
        &format!("/api/v1/messages/{rm}/reactions/"),
        2,
        json!({"emoji": "🎉"}),
    )
    .await;
    assert_eq!((status, e["count"].as_i64()), (200, Some(1)), "{e}");
    let (status, e) = rest(
        addr,
        "PATCH",
        &format!("/api/v1/messages/{rm}/"),
        2,
        json!({"text": "not yours"}),
    )
    .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_frame_and_refusal_single_node() {
    every_frame_and_refusal(&Node::single(&[("INDABA_CHAT_RATE_PER_10S", "100000")]).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_frame_and_refusal_distributed() {
    every_frame_and_refusal(&Node::distributed(Some(Duration::from_secs(900))).await).await;
}

/// Editing after `INDABA_EDIT_WINDOW_SECS` is refused.
async fn edit_window(node: &Node) {
    let mut c1 = Client::connect(node.addr, 1).await;
    let m = c1.chat(2, "quick", None).await["message_id"]
        .as_i64()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let code = refused(
        &mut c1,
        json!({"type": "edit_message", "message_id": m, "text": "too late"}),
    )
    .await;
    assert_eq!(code, "edit_window_expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_after_the_window_is_refused_single_node() {
    edit_window(&Node::single(&[("INDABA_EDIT_WINDOW_SECS", "1")]).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_after_the_window_is_refused_distributed() {
    edit_window(&Node::distributed(Some(Duration::from_secs(1))).await).await;
}

/// A conversation as a client holds it, built only from the frames it received.
#[derive(Debug, Default)]
struct View {
    messages: BTreeMap<i64, Value>,
    cursor: i64,
    seen: HashSet<(String, i64)>,
}

impl View {
    /// Applies one frame; panics on a repeat (same message, or same change seq).
    fn apply(&mut self, me: i64, f: &Value) {
        let ty = f["type"].as_str().unwrap_or_default().to_owned();
        let id = f["message_id"].as_i64().unwrap_or_default();
        let seq = f["seq"].as_i64().unwrap_or_default();
        let key = if ty == "new_message" { id } else { seq };
        assert!(self.seen.insert((ty.clone(), key)), "repeated: {f}");
        self.cursor = self.cursor.max(seq);
        if ty == "new_message" {
            self.messages.insert(id, f.clone());
            return;
        }
        let Some(m) = self.messages.get_mut(&id) else {
            return;
        };
        match ty.as_str() {
            "message_updated" => {
                m["text"] = f["text"].clone();
                m["edited_at"] = f["edited_at"].clone();
            }
            "message_deleted" => {
                m["deleted"] = json!(true);
                m["text"] = json!("");
                m["reactions"] = json!({});
                m["pinned_at"] = Value::Null;
            }
            "reaction_added" | "reaction_removed" => {
                let emoji = f["emoji"].as_str().unwrap().to_owned();
                let count = f["count"].as_i64().unwrap();
                let mut mine = m["reactions"][&emoji]["me"].as_bool().unwrap_or(false);
                if f["user_id"] == me {
                    mine = ty == "reaction_added";
                }
                let reactions = m["reactions"].as_object_mut().unwrap();
                if count == 0 {
                    reactions.remove(&emoji);
                } else {
                    reactions.insert(emoji, json!({"count": count, "me": mine}));
                }
            }
            "message_pinned" => m["pinned_at"] = f["at"].clone(),
            "message_unpinned" => m["pinned_at"] = Value::Null,
            _ => {}
        }
    }

    /// What a comparison looks at, per message: text, tombstone, reactions, pin.
    fn summary(&self) -> BTreeMap<i64, (String, bool, Value, bool)> {
        summarize(self.messages.values())
    }
}

fn summarize<'a>(
    messages: impl Iterator<Item = &'a Value>,
) -> BTreeMap<i64, (String, bool, Value, bool)> {
    messages
        .map(|m| {
            (
                m["message_id"].as_i64().unwrap(),
                (
                    m["text"].as_str().unwrap().to_owned(),
                    m["deleted"].as_bool().unwrap(),
                    m["reactions"].clone(),
                    m["pinned_at"].is_string(),
                ),
            )
        })
        .collect()
}

/// B goes offline; A sends three messages, edits one, deletes one, reacts to one and pins
/// one (new and older messages alike); B syncs from its cursor and ends with A's view,
/// with nothing repeated.
async fn offline_then_sync(node: &Node) {
    let addr = node.addr;
    let mut a = Client::connect(addr, 1).await;
    let mut b = Client::connect(addr, 2).await;
    let mut view = View::default();
    let old = a.chat(2, "before", None).await;
    let conv = old["conversation_id"].as_i64().unwrap();
    let old_id = old["message_id"].as_i64().unwrap();
    let f = b.recv_type("new_message").await;
    view.apply(2, &f);
    // B reacts before leaving: its own `me` must survive the catch-up.
    let r = change(
        &mut b,
        json!({"type": "add_reaction", "message_id": old_id, "emoji": "❤️"}),
        "reaction_added",
    )
    .await;
    view.apply(2, &r);
    drop(b);

    let mut ids = Vec::new();
    for text in ["one", "two", "three"] {
        ids.push(a.chat(2, text, None).await["message_id"].as_i64().unwrap());
    }
    for (f, ty) in [
        (
            json!({"type": "edit_message", "message_id": old_id, "text": "before, edited"}),
            "message_updated",
        ),
        (
            json!({"type": "edit_message", "message_id": ids[0], "text": "one, edited"}),
            "message_updated",
        ),
        (
            json!({"type": "delete_message", "message_id": ids[1]}),
            "message_deleted",
        ),
        (
            json!({"type": "add_reaction", "message_id": old_id, "emoji": "👍"}),
            "reaction_added",
        ),
        (
            json!({"type": "add_reaction", "message_id": ids[2], "emoji": "👍"}),
            "reaction_added",
        ),
        (
            json!({"type": "pin_message", "message_id": old_id}),
            "message_pinned",
        ),
        (
            json!({"type": "pin_message", "message_id": ids[0]}),
            "message_pinned",
        ),
    ] {
        changed(&mut a, f, ty).await;
    }

    let mut b = Client::connect(addr, 2).await;
    b.send(json!({"type": "sync", "conversations": {conv.to_string(): view.cursor}}))
        .await;
    loop {
        let f = b.recv().await;
        match f["type"].as_str() {
            Some("sync_complete") => {
                let covered = f["conversations"][conv.to_string()].as_i64().unwrap();
                assert!(covered >= view.cursor, "{f}");
                break;
            }
            Some("connection_established" | "presence") => {}
            _ => view.apply(2, &f),
        }
    }
    let store_view = page(addr, 2, conv).await;
    assert_eq!(
        view.summary(),
        summarize(store_view.iter()),
        "B's view is the store's"
    );
    let last = store_view.last().unwrap();
    assert!(view.cursor >= last["seq"].as_i64().unwrap());
    // And A's (who saw it all happen) agrees on everything but `me`.
    let a_view = page(addr, 1, conv).await;
    let strip = |m: BTreeMap<i64, (String, bool, Value, bool)>| {
        m.into_iter()
            .map(|(k, (t, d, r, p))| {
                let counts: BTreeMap<String, i64> = r
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(e, v)| (e.clone(), v["count"].as_i64().unwrap()))
                    .collect();
                (k, (t, d, counts, p))
            })
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(strip(view.summary()), strip(summarize(a_view.iter())));
    let old_now = &view.messages[&old_id];
    assert_eq!(old_now["text"], "before, edited");
    assert_eq!(
        old_now["reactions"],
        json!({"❤️": {"count": 1, "me": true}, "👍": {"count": 1, "me": false}})
    );
    assert!(view.messages[&ids[1]]["deleted"].as_bool().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_client_syncs_every_change_single_node() {
    offline_then_sync(&Node::single(&[("INDABA_CHAT_RATE_PER_10S", "100000")]).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_client_syncs_every_change_distributed() {
    offline_then_sync(&Node::distributed(None).await).await;
}

/// Two users reacting and one editing the same message at once, 200 times each: every
/// client that watched ends with the store's state.
async fn concurrent_changes_converge(node: &Node) {
    const ROUNDS: usize = 200;
    let addr = node.addr;
    let group = create_group(addr, 1, &[2, 3, 4]).await;
    let mut c1 = Client::connect(addr, 1).await;
    let mut watchers = Vec::new();
    for u in [2, 3, 4] {
        watchers.push((u, Client::connect(addr, u).await, View::default()));
    }
    let sent = send(
        &mut c1,
        json!({"type": "chat_message", "conversation_id": group, "text": "v0"}),
    )
    .await;
    let m = sent["message_id"].as_i64().unwrap();
    let start_seq = sent["seq"].as_i64().unwrap();
    for (u, c, v) in &mut watchers {
        let f = c.recv_type("new_message").await;
        v.apply(*u, &f);
    }
    let editor = tokio::spawn(async move {
        for i in 1..=ROUNDS {
            c1.send(json!({"type": "edit_message", "message_id": m, "text": format!("v{i}")}))
                .await;
        }
        c1
    });
    let mut reactors = Vec::new();
    for (u, emoji) in [(2, "👍"), (3, "🎉")] {
        reactors.push(tokio::spawn(async move {
            for i in 0..ROUNDS {
                let (method, ty) = if i % 2 == 0 {
                    ("POST", "add")
                } else {
                    ("DELETE", "remove")
                };
                let (status, v) = rest(
                    addr,
                    method,
                    &format!("/api/v1/messages/{m}/reactions/"),
                    u,
                    json!({"emoji": emoji}),
                )
                .await;
                assert_eq!(status, 200, "{ty} {v}");
            }
            // Each ends with one more add than removes: a last add.
            let (status, _) = rest(
                addr,
                "POST",
                &format!("/api/v1/messages/{m}/reactions/"),
                u,
                json!({"emoji": emoji}),
            )
            .await;
            assert_eq!(status, 200);
        }));
    }
    let _c1 = editor.await.unwrap();
    for r in reactors {
        r.await.unwrap();
    }
    // Every change took one seq: the conversation's last seq tells when a watcher has all.
    let (_, conv) = http(
        addr,
        "GET",
        &format!("/api/v1/conversations/{group}/"),
        Some(&token(1)),
        None,
    )
    .await;
    let last_seq = conv["last_seq"].as_i64().unwrap();
    assert_eq!(
        last_seq - start_seq,
        i64::try_from(ROUNDS * 3 + 2).unwrap(),
        "every edit and reaction change numbered once"
    );
    let store = page(addr, 4, group).await;
    let store_msg = by_id(&store, m);
    assert_eq!(store_msg["text"], format!("v{ROUNDS}"));
    for (u, mut c, mut v) in watchers {
        while v.cursor < last_seq {
            let f = c.recv().await;
            if f["message_id"] == m {
                v.apply(u, &f);
            }
        }
        let mine = &v.messages[&m];
        assert_eq!(mine["text"], store_msg["text"], "user {u}");
        let counts = |r: &Value| -> BTreeMap<String, i64> {
            r.as_object()
                .unwrap()
                .iter()
                .map(|(e, x)| (e.clone(), x["count"].as_i64().unwrap()))
                .collect()
        };
        assert_eq!(
            counts(&mine["reactions"]),
            counts(&store_msg["reactions"]),
            "user {u}"
        );
    }
    assert_eq!(
        store_msg["reactions"],
        json!({"👍": {"count": 1, "me": false}, "🎉": {"count": 1, "me": false}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reactions_and_edits_converge_single_node() {
    concurrent_changes_converge(
        &Node::single(&[
            ("INDABA_CHAT_RATE_PER_10S", "100000"),
            ("INDABA_EDIT_WINDOW_SECS", "0"),
        ])
        .await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reactions_and_edits_converge_distributed() {
    concurrent_changes_converge(&Node::distributed(None).await).await;
}

/// The event stream carries changes live (without an event id of their own) and, after a
/// reconnect with `Last-Event-ID`, replays the changes made meanwhile to the messages the
/// client had, before the messages it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_carries_and_replays_changes() {
    let node = Node::distributed(None).await;
    let addr = node.addr;
    let mut a = Client::connect(addr, 1).await;
    let path = format!("/api/v1/events/?token={}", token(2));
    let mut sse = SseClient::open(addr, &path, &[]).await;
    assert_eq!(sse.next().await.data["type"], "connection_established");
    let m = a.chat(2, "watch me", None).await["message_id"]
        .as_i64()
        .unwrap();
    let ev = sse.next_type("new_message").await;
    let cursor = ev.id.clone().unwrap();
    changed(
        &mut a,
        json!({"type": "add_reaction", "message_id": m, "emoji": "👀"}),
        "reaction_added",
    )
    .await;
    let live = sse.next_type("reaction_added").await;
    assert_eq!(
        (live.data["count"].as_i64(), live.id.as_deref()),
        (Some(1), None)
    );
    drop(sse);

    changed(
        &mut a,
        json!({"type": "edit_message", "message_id": m, "text": "watch me, edited"}),
        "message_updated",
    )
    .await;
    let later = a.chat(2, "missed", None).await["message_id"]
        .as_i64()
        .unwrap();
    let mut sse = SseClient::open(addr, &path, &[("Last-Event-ID", cursor.as_str())]).await;
    assert_eq!(sse.next().await.data["type"], "connection_established");
    let mut got = Vec::new();
    while got.len() < 3 {
        let e = sse.next().await;
        got.push((e.data["type"].as_str().unwrap().to_owned(), e.data.clone()));
    }
    let types: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        vec!["reaction_added", "message_updated", "new_message"],
        "changes to what the client had, then what it missed: {got:?}"
    );
    assert_eq!(got[1].1["text"], "watch me, edited");
    assert_eq!(got[2].1["message_id"], later);
}

/// The gRPC door runs the same rules: a backend edits, pins and deletes as the system (a
/// moderation tool), users are judged as on the socket, and members hear every change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_changes_follow_the_same_rules_and_reach_members() {
    use proto::pb;
    use proto::pb::message_service_client::MessageServiceClient;
    use tonic::Code;
    const KEY: &str = "moderation-0123456789abcdef";
    let nats = Nats::start();
    let db = fresh_database().await;
    let (_ms, grpc) = spawn_message_service_grpc(&nats.url(), &db, &format!("mod:{KEY}:rw")).await;
    let (_gw, gw) = spawn_gateway(&nats.url(), "gw-rich-grpc").await;
    let mut c = MessageServiceClient::connect(format!("http://{grpc}"))
        .await
        .expect("grpc connect");
    fn req<T>(m: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(m);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
        r
    }
    let mut a = Client::connect(gw, 1).await;
    let mut b = Client::connect(gw, 2).await;
    let m = a.chat(2, "spam spam", None).await["message_id"]
        .as_i64()
        .unwrap();
    let _ = b.recv_type("new_message").await;

    // A user who is not the sender may not edit over gRPC either.
    let e = c
        .edit_message(req(pb::EditMessageRequest {
            actor_id: 2,
            message_id: m,
            text: "hijacked".into(),
            as_system: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // A reaction by no one (user 0) is refused; by a user it counts.
    let e = c
        .add_reaction(req(pb::AddReactionRequest {
            user_id: 0,
            message_id: m,
            emoji: "👎".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let r = c
        .add_reaction(req(pb::AddReactionRequest {
            user_id: 2,
            message_id: m,
            emoji: "👎".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let Some(pb::add_reaction_response::Result::Change(ch)) = r.result else {
        panic!("{r:?}")
    };
    assert_eq!(ch.count, 1);
    // The system pins and then deletes (moderation): both members hear each.
    c.pin_message(req(pb::PinMessageRequest {
        actor_id: 0,
        message_id: m,
        pinned: true,
        as_system: true,
    }))
    .await
    .unwrap();
    let d = c
        .delete_message(req(pb::DeleteMessageRequest {
            actor_id: 0,
            message_id: m,
            as_system: true,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        d.result,
        Some(pb::delete_message_response::Result::Change(_))
    ));
    for c in [&mut a, &mut b] {
        assert_eq!(c.recv_type("message_pinned").await["user_id"], 0);
        let del = c.recv_type("message_deleted").await;
        assert_eq!(
            (del["message_id"].as_i64(), del["deleted_by"].as_i64()),
            (Some(m), Some(0))
        );
    }
    let page = c
        .list_messages(req(pb::ListMessagesRequest {
            user_id: 1,
            conversation_id: 0,
            ..Default::default()
        }))
        .await;
    assert!(page.is_err(), "conversation 0 is no conversation");
    let t = c
        .get_thread(req(pb::GetThreadRequest {
            user_id: 1,
            message_id: m,
            after_seq: 0,
            limit: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(
        t.messages[0].deleted && t.messages[0].text.is_empty(),
        "{t:?}"
    );
    assert!(t.messages[0].reactions.is_empty() && t.messages[0].pinned_at_ms == 0);
    // An outsider's thread read looks like a missing message.
    let e = c
        .get_thread(req(pb::GetThreadRequest {
            user_id: 9,
            message_id: m,
            after_seq: 0,
            limit: 0,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}
