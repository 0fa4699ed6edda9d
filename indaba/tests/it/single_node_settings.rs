//! The single-node program honours message-service's own variables (it used to hard-code
//! them): a group larger than `INDABA_MAX_GROUP_SIZE` is refused there exactly as a
//! distributed message-service refuses it.

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_honours_max_group_size() {
    let dir = tempfile::tempdir().unwrap();
    let opts = vec![("INDABA_MAX_GROUP_SIZE".to_owned(), "3".to_owned())];
    let (_node, addr, _) = spawn_single_node_with(dir.path(), "127.0.0.1:0", &opts).await;
    let create = |others: Vec<i64>| async move {
        let body = json!({"participant_ids": others, "title": "g", "kind": "group"}).to_string();
        http(
            addr,
            "POST",
            "/api/v1/conversations/",
            Some(&token(1)),
            Some(&body),
        )
        .await
    };
    // Three members with the creator: at the limit.
    let (status, v) = create(vec![2, 3]).await;
    assert_eq!(status, 201, "{v}");
    // Four: over it (the default would allow 1000).
    let (status, v) = create(vec![2, 3, 4]).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "too_many_participants", "{v}");
}
