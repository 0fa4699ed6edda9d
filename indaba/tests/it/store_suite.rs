//! One store test suite, run against PostgreSQL and SQLite: each case is a test per
//! backend (`store_suite::postgres::<case>`, `store_suite::sqlite::<case>`), each on a fresh
//! database, so a failure names the case and the backend and hides no other case.

use std::collections::HashSet;

use message_service::store::{NewMessage, Role, Roster, Store, StoreError, Summary, UNREAD_CAP};
use proto::pb::{ChatMessage, ConversationKind};
use proto::ErrorCode;

use crate::support::fresh_database;

fn msg(
    sender: i64,
    conversation: Option<i64>,
    receiver: Option<i64>,
    text: &str,
    key: Option<&str>,
) -> NewMessage {
    NewMessage {
        sender_id: sender,
        conversation_id: conversation,
        receiver_id: receiver,
        text: text.into(),
        client_msg_id: key.map(str::to_owned),
        origin_connection_id: String::new(),
        reply_to: None,
        mentions: Vec::new(),
        attachments: Vec::new(),
    }
}

fn code(e: StoreError) -> ErrorCode {
    match e {
        StoreError::Rejected { code, .. } => code,
        other => panic!("expected a rejection, got {other}"),
    }
}

/// What a send answered is what the store holds, byte for byte.
async fn assert_stored(store: &Store, answered: &ChatMessage) {
    let stored = store
        .get_message(answered.id)
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(&stored, answered);
}

/// A group of users 1, 2 and 3 (asked for with a repeated id); its id.
async fn group_of_three(store: &Store) -> i64 {
    store
        .create_conversation(1, &[3, 2, 3], "Trip", ConversationKind::Unspecified)
        .await
        .expect("group")
        .0
        .id
}

/// A group of users 7 and 8 (they share no direct conversation); its id.
async fn group_of_7_and_8(store: &Store, title: &str) -> i64 {
    store
        .create_conversation(7, &[8], title, ConversationKind::Group)
        .await
        .expect("group")
        .0
        .id
}

async fn last_seq(store: &Store, conversation: i64) -> i64 {
    store
        .get_conversation(conversation)
        .await
        .expect("get")
        .expect("exists")
        .last_seq
}

/// 4 tasks each sending 25 messages to a group of users 1, 2 and 3 at once; the seqs they
/// got.
async fn hundred_concurrent_sends(store: &Store, group: i64) -> HashSet<i64> {
    let mut tasks = Vec::new();
    for t in 0..4 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                let sender = [1, 2, 3][(t + i) % 3];
                seqs.push(
                    s.send_message(&msg(sender, Some(group), None, "race", None))
                        .await
                        .expect("send")
                        .message
                        .seq,
                );
            }
            seqs
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all
}

async fn conversations_are_created_once_per_pair(store: Store) {
    let (group, existing) = store
        .create_conversation(1, &[3, 2, 3], "Trip", ConversationKind::Unspecified)
        .await
        .expect("group");
    assert!(!existing);
    assert_eq!(group.kind, ConversationKind::Group as i32);
    assert_eq!(group.participant_ids, vec![1, 2, 3]);
    let (d1, e1) = store
        .create_conversation(1, &[2], "", ConversationKind::Unspecified)
        .await
        .expect("direct");
    let (d2, e2) = store
        .create_conversation(2, &[1], "", ConversationKind::Direct)
        .await
        .expect("direct again");
    assert_eq!((d1.id, e1, e2), (d2.id, false, true));
    assert_eq!(d1.kind, ConversationKind::Direct as i32);
}

async fn sending_by_receiver_finds_the_direct_conversation(store: Store) {
    let (d1, _) = store
        .create_conversation(1, &[2], "", ConversationKind::Unspecified)
        .await
        .expect("direct");
    // Sending by receiver finds the direct conversation; seq counts up from 1.
    let a = store
        .send_message(&msg(1, None, Some(2), "one", None))
        .await
        .expect("send");
    let b = store
        .send_message(&msg(2, Some(d1.id), None, "two", None))
        .await
        .expect("send");
    assert_eq!((a.message.conversation_id, a.message.seq), (d1.id, 1));
    assert_eq!((b.message.conversation_id, b.message.seq), (d1.id, 2));
    assert_eq!(a.participants, vec![1, 2]);
    // A new pair gets a new direct conversation.
    let c = store
        .send_message(&msg(5, None, Some(6), "hi", None))
        .await
        .expect("send");
    assert_ne!(c.message.conversation_id, d1.id);
    assert_eq!(c.message.seq, 1);
}

async fn a_retried_key_stores_once_and_a_reused_key_is_refused(store: Store) {
    let group = group_of_three(&store).await;
    let k1 = store
        .send_message(&msg(1, Some(group), None, "once", Some("key-1")))
        .await
        .expect("send");
    let k2 = store
        .send_message(&msg(1, Some(group), None, "once", Some("key-1")))
        .await
        .expect("retry");
    assert!(!k1.duplicate && k2.duplicate);
    assert_eq!(k1.message.id, k2.message.id);
    assert_eq!(
        store
            .count_by_client_msg_id(1, "key-1")
            .await
            .expect("count"),
        1
    );
    // Reusing a key for a different message is refused, not mistaken for a retry.
    let reuse = store
        .send_message(&msg(1, Some(group), None, "something else", Some("key-1")))
        .await
        .unwrap_err();
    assert_eq!(code(reuse), ErrorCode::InvalidField);
    // The same key from another sender is a different message.
    let other = store
        .send_message(&msg(2, Some(group), None, "mine", Some("key-1")))
        .await
        .expect("send");
    assert_ne!(other.message.id, k1.message.id);
}

async fn refusals_carry_their_codes(store: Store) {
    let group = group_of_three(&store).await;
    assert_eq!(
        code(
            store
                .send_message(&msg(9, Some(group), None, "x", None))
                .await
                .unwrap_err()
        ),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(
            store
                .send_message(&msg(1, Some(424_242), None, "x", None))
                .await
                .unwrap_err()
        ),
        ErrorCode::ConversationNotFound
    );
    assert_eq!(
        code(
            store
                .send_message(&msg(1, Some(group), Some(9), "x", None))
                .await
                .unwrap_err()
        ),
        ErrorCode::InvalidReceiver
    );
    assert_eq!(
        code(
            store
                .create_conversation(1, &[2, 3], "", ConversationKind::Direct)
                .await
                .unwrap_err()
        ),
        ErrorCode::InvalidField
    );
}

async fn concurrent_writers_get_distinct_gap_free_seqs(store: Store) {
    let group = group_of_three(&store).await;
    let before = last_seq(&store, group).await;
    let all = hundred_concurrent_sends(&store, group).await;
    let expected: HashSet<i64> = (before + 1..=before + 100).collect();
    assert_eq!(all, expected);
}

async fn concurrent_retries_of_one_key_store_one_row(store: Store) {
    let group = group_of_three(&store).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.send_message(&msg(3, Some(group), None, "dupe race", Some("same")))
                .await
                .expect("send")
                .message
                .id
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        ids.insert(t.await.expect("task"));
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(
        store
            .count_by_client_msg_id(3, "same")
            .await
            .expect("count"),
        1
    );
}

async fn outbox_rows_stay_leased_until_completed(store: Store) {
    let group = group_of_three(&store).await;
    let a = store
        .send_message(&msg(1, None, Some(2), "one", None))
        .await
        .expect("send");
    let b = store
        .send_message(&msg(2, Some(a.message.conversation_id), None, "two", None))
        .await
        .expect("send");
    hundred_concurrent_sends(&store, group).await;
    // Every transaction left a row (no service is publishing here): each of these sends
    // was its own. Fresh rows are still leased to their writer, and completing removes them.
    assert!(a.outbox_row > 0 && b.outbox_row > 0 && a.outbox_row != b.outbox_row);
    let pending = store.outbox_len().await.expect("outbox");
    assert!(pending >= 100, "{pending}");
    assert!(store
        .claim_expired_outbox(1000)
        .await
        .expect("claim")
        .is_empty());
    store
        .complete_outbox(&[a.outbox_row, b.outbox_row])
        .await
        .expect("complete");
    assert_eq!(store.outbox_len().await.expect("outbox"), pending - 2);
}

async fn a_batch_commits_together_and_refuses_per_message(store: Store) {
    // Group commit: one transaction for a batch; a refused message does not sink the others;
    // seqs stay gap-free and in input order within a conversation.
    let g2 = group_of_7_and_8(&store, "batch").await;
    let before = last_seq(&store, g2).await;
    let batch = vec![
        msg(7, Some(g2), None, "b1", Some("batch-1")),
        msg(9, Some(g2), None, "not a member", None),
        msg(8, Some(g2), None, "b2", Some("batch-2")),
        msg(7, Some(999_999), None, "nowhere", None),
        msg(7, Some(g2), None, "b3", None),
    ];
    let out = store.send_many(&batch).await;
    assert_eq!(out.len(), 5);
    let seqs: Vec<i64> = [0, 2, 4]
        .iter()
        .map(|i| out[*i].as_ref().expect("stored").message.seq)
        .collect();
    assert_eq!(seqs, vec![before + 1, before + 2, before + 3]);
    // The batch's stored messages share one outbox row.
    let rows: Vec<i64> = [0, 2, 4]
        .iter()
        .map(|i| out[*i].as_ref().expect("stored").outbox_row)
        .collect();
    assert!(
        rows[0] > 0 && rows.iter().all(|r| *r == rows[0]),
        "{rows:?}"
    );
    let mut out = out;
    assert_eq!(
        code(out.remove(3).expect_err("no such conversation")),
        ErrorCode::ConversationNotFound
    );
    assert_eq!(
        code(out.remove(1).expect_err("outsider")),
        ErrorCode::Forbidden
    );
    // A batch holding a retried key cannot commit as one (unique index): it falls back to
    // one transaction per message, and the retry still answers with the original.
    let again = store
        .send_many(&[
            msg(7, Some(g2), None, "b4", Some("batch-4")),
            msg(7, Some(g2), None, "b1", Some("batch-1")),
        ])
        .await;
    let b4 = again[0].as_ref().expect("b4");
    let b1 = again[1].as_ref().expect("b1 again");
    assert!(!b4.duplicate && b1.duplicate);
    assert!(
        b4.outbox_row > 0 && b1.outbox_row == 0,
        "a duplicate has no row"
    );
    assert_eq!(b4.message.seq, before + 4);
    assert_eq!(b1.message.id, out[0].as_ref().expect("b1").message.id);
    assert_eq!(last_seq(&store, g2).await, before + 4, "no seq was burnt");
}

async fn direct_messages_and_any_text_survive_the_batch_paths(store: Store) {
    let g2 = group_of_7_and_8(&store, "batch").await;
    // Direct messages in one batch: a pair's first message (its conversation does not
    // exist yet, so PostgreSQL's batch statement hands it to the shared path), the same
    // pair again right after it, an existing pair, a receiver outside a named
    // conversation, the system sender, and a message with no target at all.
    let batch = vec![
        msg(40, None, Some(41), "first ever", Some("d-1")),
        msg(41, None, Some(40), "reply in the same batch", Some("d-2")),
        msg(7, None, Some(8), "existing pair", None),
        msg(7, Some(g2), Some(99), "receiver not a member", None),
        msg(0, Some(g2), None, "system notice", None),
        msg(7, None, None, "nowhere", None),
    ];
    // Text survives the batch paths byte for byte (SQLite's travels inside JSON).
    let tricky = msg(
        7,
        Some(g2),
        None,
        "quote \" backslash \\ tab\t newline\n emoji 🎉 RTL \u{202e} zero-width \u{200b}",
        None,
    );
    let plain = msg(8, Some(g2), None, "plain", None);
    let before = last_seq(&store, g2).await;
    for r in store.send_many(&[tricky.clone(), plain.clone()]).await {
        let s = r.expect("stored");
        assert_stored(&store, &s.message).await;
        assert!(s.message.text == tricky.text || s.message.text == plain.text);
    }
    let mut out = store.send_many(&batch).await;
    assert_eq!(out.len(), 6);
    assert_eq!(
        code(out.remove(5).expect_err("no target")),
        ErrorCode::InvalidField
    );
    assert_eq!(
        code(out.remove(3).expect_err("outsider receiver")),
        ErrorCode::InvalidReceiver
    );
    let first = out[0].as_ref().expect("first ever");
    let reply = out[1].as_ref().expect("reply");
    assert_eq!(first.message.conversation_id, reply.message.conversation_id);
    assert_eq!(
        (first.message.seq, reply.message.seq),
        (1, 2),
        "a new pair's messages are numbered in batch order"
    );
    assert_eq!(first.participants, vec![40, 41]);
    let pair = out[2].as_ref().expect("existing pair");
    assert_eq!(pair.participants, vec![7, 8]);
    let notice = out[3].as_ref().expect("system notice");
    // The next seq after the two texts: the refused receiver burnt none.
    assert_eq!(notice.message.seq, before + 3);
    assert_eq!(notice.participants, vec![7, 8]);
    // What the answers say is what is stored.
    for s in &out {
        assert_stored(&store, &s.as_ref().expect("stored").message).await;
    }
}

async fn crossing_batches_neither_deadlock_nor_skip_or_repeat_seqs(store: Store) {
    // Batches committing at once over the same conversations (in opposite orders).
    let g2 = group_of_7_and_8(&store, "batch").await;
    let g3 = group_of_7_and_8(&store, "race").await;
    let forward: Vec<NewMessage> = (0..20)
        .map(|i| msg(7, Some(if i % 2 == 0 { g2 } else { g3 }), None, "f", None))
        .collect();
    let backward: Vec<NewMessage> = (0..20)
        .map(|i| msg(8, Some(if i % 2 == 0 { g3 } else { g2 }), None, "b", None))
        .collect();
    let (a, b) = tokio::join!(store.send_many(&forward), store.send_many(&backward));
    let mut by_conv: std::collections::HashMap<i64, Vec<i64>> = Default::default();
    for r in a.into_iter().chain(b) {
        let m = r.expect("stored").message;
        by_conv.entry(m.conversation_id).or_default().push(m.seq);
    }
    for (conv, mut seqs) in by_conv {
        seqs.sort_unstable();
        let start = seqs[0];
        assert_eq!(
            seqs,
            (start..start + 20).collect::<Vec<_>>(),
            "conversation {conv}: gap-free, no repeats"
        );
    }
}

/// Group roles as stored: the creator owns a group, a direct chat has no roles, new
/// members are members, a transfer leaves exactly one owner (the old one an admin) even
/// when many race, and a change the rules refuse leaves nothing behind.
async fn group_roles_are_stored_and_transferred(store: Store) {
    let group = group_of_three(&store).await;
    let roles = |c: &proto::pb::Conversation| (c.owner_id, c.admin_ids.clone());
    let g = store.get_conversation(group).await.unwrap().unwrap();
    assert_eq!(roles(&g), (1, vec![]));
    let (direct, _) = store
        .create_conversation(1, &[2], "", ConversationKind::Direct)
        .await
        .unwrap();
    assert_eq!(roles(&direct), (0, vec![]));

    let ok = |_: &Roster| Ok(());
    let g = store.set_role(group, 2, Role::Admin, ok).await.unwrap();
    assert_eq!(roles(&g), (1, vec![2]));
    let (g, added, _) = store
        .update_participants(group, &[4, 5], &[], 1000, ok)
        .await
        .unwrap();
    assert_eq!(
        (g.participant_ids.clone(), added),
        (vec![1, 2, 3, 4, 5], vec![4, 5])
    );
    // The rules see the roster: roles of everyone, under the lock.
    let mut seen = None;
    store
        .update_participants(group, &[], &[], 1000, |r: &Roster| {
            seen = Some(r.clone());
            Ok(())
        })
        .await
        .unwrap();
    let seen = seen.unwrap();
    assert_eq!(
        (seen.owner(), seen.admins(), seen.role(4)),
        (Some(1), vec![2], Some(Role::Member))
    );

    // A refused change writes nothing.
    let refuse = |_: &Roster| {
        Err(StoreError::Rejected {
            code: ErrorCode::Forbidden,
            message: "no".into(),
        })
    };
    let e = store
        .update_participants(group, &[6], &[1], 1000, refuse)
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::Forbidden);
    let e = store
        .set_role(group, 3, Role::Owner, refuse)
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::Forbidden);
    let g = store.get_conversation(group).await.unwrap().unwrap();
    assert_eq!((g.participant_ids.len(), roles(&g)), (5, (1, vec![2])));
    // Only participants get roles.
    let e = store.set_role(group, 9, Role::Admin, ok).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::InvalidField);

    // A transfer: the old owner becomes an admin.
    let g = store.set_role(group, 3, Role::Owner, ok).await.unwrap();
    assert_eq!(roles(&g), (3, vec![1, 2]));
    // Racing transfers: exactly one owner at the end, everyone else who was involved an
    // admin.
    let mut tasks = Vec::new();
    for u in [1, 2, 4, 5] {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.set_role(group, u, Role::Owner, |_: &Roster| Ok(())).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let g = store.get_conversation(group).await.unwrap().unwrap();
    assert!([1, 2, 4, 5].contains(&g.owner_id), "{g:?}");
    let mut all: Vec<i64> = g.admin_ids.clone();
    all.push(g.owner_id);
    all.sort_unstable();
    assert_eq!(all, vec![1, 2, 3, 4, 5]);
    // A member removed and added again is a plain member.
    store
        .update_participants(group, &[], &[2], 1000, ok)
        .await
        .unwrap();
    if g.owner_id != 2 {
        let (g, _, _) = store
            .update_participants(group, &[2], &[], 1000, ok)
            .await
            .unwrap();
        assert!(!g.admin_ids.contains(&2) && g.owner_id != 2, "{g:?}");
    }
}

/// A watermark set the way a read receipt sets it (`mark_read` is internal to the crate).
async fn set_watermark(store: &Store, conversation: i64, user: i64, seq: i64) {
    let sql =
        "UPDATE participants SET last_read_seq = $1 WHERE conversation_id = $2 AND user_id = $3";
    match store {
        Store::Postgres(pool) => {
            sqlx::query(sql)
                .bind(seq)
                .bind(conversation)
                .bind(user)
                .execute(pool)
                .await
                .unwrap();
        }
        Store::Sqlite(pool) => {
            sqlx::query(sql)
                .bind(seq)
                .bind(conversation)
                .bind(user)
                .execute(pool)
                .await
                .unwrap();
        }
    }
}

/// Every page of user `user`'s conversation list, `size` at a time.
async fn all_pages(store: &Store, user: i64, size: u32) -> Vec<Summary> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let (page, next) = store
            .list_conversations(user, size, after)
            .await
            .expect("list");
        all.extend(page);
        match next {
            Some(c) => after = Some(c),
            None => return all,
        }
    }
}

/// The conversation list is one statement now; it says what the per-conversation reads
/// said: each conversation as `get_conversation` reads it (roles included), unread counts
/// that skip the user's own messages, follow the watermark and stop at `UNREAD_CAP`, the
/// newest message; pages that cover everything once; long last messages cut a page at the
/// byte budget, with a cursor to the rest.
async fn the_one_statement_conversation_list_matches_the_per_conversation_reads(store: Store) {
    let group = group_of_three(&store).await;
    let ok = |_: &Roster| Ok(());
    store.set_role(group, 2, Role::Admin, ok).await.unwrap();
    let send = |sender: i64, conv: i64, text: &str| msg(sender, Some(conv), None, text, None);
    for m in [
        send(2, group, "a"),
        send(1, group, "mine"),
        send(3, group, "b"),
        send(2, group, "c"),
        send(1, group, "mine again"),
        send(3, group, "d"),
    ] {
        store.send_message(&m).await.expect("send");
    }
    let (to_2, _) = store
        .create_conversation(1, &[2], "", ConversationKind::Direct)
        .await
        .unwrap();
    store
        .send_message(&send(1, to_2.id, "only mine"))
        .await
        .unwrap();
    let (from_4, _) = store
        .create_conversation(1, &[4], "", ConversationKind::Direct)
        .await
        .unwrap();
    // More than the cap from user 4, in batches.
    let flood: Vec<NewMessage> = (0..UNREAD_CAP + 5)
        .map(|i| send(4, from_4.id, &format!("n{i}")))
        .collect();
    for chunk in flood.chunks(200) {
        for r in store.send_many(chunk).await {
            r.expect("flood");
        }
    }
    let (quiet, _) = store
        .create_conversation(1, &[5], "Quiet", ConversationKind::Group)
        .await
        .unwrap();

    let check = |list: &[Summary], expected: &[(i64, i64, Option<&str>)]| {
        let got: Vec<(i64, i64, Option<String>)> = list
            .iter()
            .map(|s| {
                (
                    s.conversation.id,
                    s.unread_count,
                    s.last_message.as_ref().map(|m| m.text.clone()),
                )
            })
            .collect();
        let mut got = got;
        got.sort();
        let mut want: Vec<(i64, i64, Option<String>)> = expected
            .iter()
            .map(|(c, n, t)| (*c, *n, t.map(str::to_owned)))
            .collect();
        want.sort();
        assert_eq!(got, want);
    };
    let list = all_pages(&store, 1, 2).await;
    check(
        &list,
        &[
            (group, 4, Some("d")),
            (to_2.id, 0, Some("only mine")),
            (from_4.id, UNREAD_CAP, Some(&format!("n{}", UNREAD_CAP + 4))),
            (quiet.id, 0, None),
        ],
    );
    // Most recently active first; every row as the per-conversation read sees it.
    let at: Vec<i64> = list.iter().map(|s| s.conversation.id).collect();
    assert_eq!(at.last(), Some(&quiet.id), "never active: last");
    for s in &list {
        let one = store
            .get_conversation(s.conversation.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.conversation, one);
        if let Some(m) = &s.last_message {
            assert_eq!(m.seq, one.last_seq);
            assert_stored(&store, m).await;
        }
    }
    let g = list.iter().find(|s| s.conversation.id == group).unwrap();
    assert_eq!(
        (g.conversation.owner_id, g.conversation.admin_ids.clone()),
        (1, vec![2])
    );
    // One page of everything says the same.
    let (one_page, next) = store.list_conversations(1, 0, None).await.unwrap();
    assert_eq!(next, None);
    assert_eq!(one_page.len(), 4);

    // After reads: the watermark counts.
    set_watermark(&store, group, 1, 4).await;
    set_watermark(&store, from_4.id, 1, UNREAD_CAP).await;
    let list = all_pages(&store, 1, 3).await;
    check(
        &list,
        &[
            (group, 1, Some("d")),
            (to_2.id, 0, Some("only mine")),
            (from_4.id, 5, Some(&format!("n{}", UNREAD_CAP + 4))),
            (quiet.id, 0, None),
        ],
    );
    assert_eq!(
        list.iter()
            .find(|s| s.conversation.id == group)
            .unwrap()
            .last_read_seq,
        4
    );
    // Another member's view: their own messages are not unread.
    let list = all_pages(&store, 2, 10).await;
    check(
        &list,
        &[(group, 4, Some("d")), (to_2.id, 1, Some("only mine"))],
    );
    // The unread summary reads the same rows.
    let unread = store.unread_summaries(1, 500).await.unwrap();
    check(
        &unread,
        &[
            (group, 1, Some("d")),
            (to_2.id, 0, Some("only mine")),
            (from_4.id, 5, Some(&format!("n{}", UNREAD_CAP + 4))),
            (quiet.id, 0, None),
        ],
    );

    // Long last messages: a page stops at the byte budget and points at the rest.
    let long = "€".repeat(4000);
    for other in 100..130 {
        store
            .send_message(&msg(other, None, Some(9), &long, None))
            .await
            .unwrap();
    }
    let (page, next) = store.list_conversations(9, 100, None).await.unwrap();
    assert!(
        page.len() < 30,
        "{} conversations of 12 kB each",
        page.len()
    );
    assert!(page.len() >= 5, "{}", page.len());
    assert!(next.is_some(), "a cut page has a next page");
    let all = all_pages(&store, 9, 100).await;
    assert_eq!(all.len(), 30);
    let ids: HashSet<i64> = all.iter().map(|s| s.conversation.id).collect();
    assert_eq!(ids.len(), 30, "each conversation once");
    // The unread summary is not cut: it carries counts only.
    assert_eq!(store.unread_summaries(9, 500).await.unwrap().len(), 30);
}

async fn postgres() -> Store {
    let url = fresh_database().await;
    Store::connect_postgres(&url, 8).await.expect("connect")
}

/// A store in a fresh SQLite file; the directory lives as long as the returned guard.
async fn sqlite() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_sqlite(&dir.path().join("t.db"), 4)
        .await
        .expect("open");
    (store, dir)
}

/// One `#[tokio::test]` per case per backend: `postgres::<case>` and `sqlite::<case>`.
macro_rules! store_cases {
    ($($case:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::postgres().await).await;
                }
            )*
        }

        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (store, _dir) = super::sqlite().await;
                    super::$case(store).await;
                }
            )*
        }
    };
}

store_cases!(
    conversations_are_created_once_per_pair,
    sending_by_receiver_finds_the_direct_conversation,
    a_retried_key_stores_once_and_a_reused_key_is_refused,
    refusals_carry_their_codes,
    concurrent_writers_get_distinct_gap_free_seqs,
    concurrent_retries_of_one_key_store_one_row,
    outbox_rows_stay_leased_until_completed,
    a_batch_commits_together_and_refuses_per_message,
    direct_messages_and_any_text_survive_the_batch_paths,
    crossing_batches_neither_deadlock_nor_skip_or_repeat_seqs,
    group_roles_are_stored_and_transferred,
    the_one_statement_conversation_list_matches_the_per_conversation_reads,
);

/// A rolling upgrade on PostgreSQL: rows of the per-message outbox, left before the
/// migration or written after it by an instance of the previous release, are republished;
/// one still leased to its (live) writer is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_message_outbox_rows_survive_the_upgrade_postgres() {
    let url = fresh_database().await;
    let pool = crate::support::postgres_before(&url, "0006").await;
    for sql in [
        "INSERT INTO conversations (kind, title, direct_key, created_by, created_at_ms, last_seq)
         VALUES (1, '', '1:2', 1, 0, 1)",
        "INSERT INTO participants (conversation_id, user_id, joined_at_ms)
         SELECT id, u, 0 FROM conversations, (VALUES (1), (2)) AS v(u)",
        "INSERT INTO messages (conversation_id, seq, sender_id, receiver_id, text, created_at_ms)
         SELECT id, 1, 1, 2, 'before', 0 FROM conversations",
        "INSERT INTO outbox (message_id, origin_connection_id, lease_until_ms)
         SELECT id, 'old-conn', 0 FROM messages",
    ] {
        sqlx::query(sql).execute(&pool).await.expect("old rows");
    }
    let store = Store::connect_postgres(&url, 2).await.expect("migrate");
    let republished = |claimed: &[message_service::store::ClaimedRow]| -> Vec<(String, String)> {
        claimed
            .iter()
            .flat_map(|r| &r.deliveries)
            .map(|d| (d.message.text.clone(), d.origin_connection_id.clone()))
            .collect()
    };
    let claimed = store.claim_expired_outbox(100).await.expect("claim");
    assert_eq!(
        republished(&claimed),
        [("before".into(), "old-conn".into())]
    );
    let rows: Vec<i64> = claimed.iter().map(|r| r.row).collect();
    store.complete_outbox(&rows).await.expect("complete");

    // An instance of the previous release, still running, writes per-message rows.
    let mut sent = Vec::new();
    for text in ["orphaned", "in flight"] {
        let s = store
            .send_message(&msg(1, None, Some(2), text, None))
            .await
            .expect("send");
        store
            .complete_outbox(&[s.outbox_row])
            .await
            .expect("complete");
        sent.push(s.message.id);
    }
    let far = proto::time::now_ms() + 60_000;
    for (id, origin, lease) in [(sent[0], "old-2", 0), (sent[1], "old-3", far)] {
        sqlx::query("INSERT INTO outbox (message_id, origin_connection_id, lease_until_ms) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(origin)
            .bind(lease)
            .execute(&pool)
            .await
            .expect("old instance's row");
    }
    let claimed = store.claim_expired_outbox(100).await.expect("claim");
    assert_eq!(republished(&claimed), [("orphaned".into(), "old-2".into())]);
    let legacy: Vec<i64> = sqlx::query_scalar("SELECT message_id FROM outbox")
        .fetch_all(&pool)
        .await
        .expect("legacy rows");
    assert_eq!(legacy, [sent[1]], "the leased row stays with its writer");
    assert!(store
        .claim_expired_outbox(100)
        .await
        .expect("claim")
        .is_empty());
}
