//! Every kind of connection — WebSocket or event stream — obeys the same admission rules
//! (the gateway's `session` module): the per-user connection cap across gateways and the
//! per-address attempt budget, whatever the path spelling.

use std::time::Duration;

use crate::support::*;

/// Waits until presence-service counts `n` connections of `user`.
async fn until_counted(handle: &presence_service::Handle, user: i64, n: u32) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while handle.get(user).2 < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence never counted {n} connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The refusal a socket gets at the cap (HTTP 429 `rate_limited` before the upgrade).
async fn socket_refusal(gw: std::net::SocketAddr, user: i64) -> (u16, serde_json::Value) {
    let err = tokio_tungstenite::connect_async(format!("ws://{gw}/ws/chat/?token={}", token(user)))
        .await
        .expect_err("a socket over the cap must be refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => (
            resp.status().as_u16(),
            serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap(),
        ),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_over_the_connection_cap_is_refused_like_a_socket() {
    let nats = Nats::start();
    let (_p, handle, _) = spawn_presence(&nats.url(), |_| {}).await;
    let (_g, gw) = spawn_gateway_with(&nats.url(), "gw-sse-cap", |s| {
        s.max_connections_per_user = 2
    })
    .await;
    let _socket = Client::connect(gw, 5).await;
    let auth = format!("Bearer {}", token(5));
    let mut stream = SseClient::open(gw, "/api/v1/events/", &[("Authorization", &auth)]).await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.next().await.data["type"], "connection_established");
    // The stream counts: presence sees two connections of user 5.
    until_counted(&handle, 5, 2).await;

    // A third connection of either kind gets the same refusal.
    let (status, body) = socket_refusal(gw, 5).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "rate_limited");
    let (sse_status, sse_body) = http_full(
        gw,
        "GET",
        "/api/v1/events/",
        &[("Authorization", &auth), ("Accept", "text/event-stream")],
        None,
    )
    .await;
    assert_eq!(sse_status, status, "{sse_body}");
    let sse_body: serde_json::Value = serde_json::from_str(&sse_body).unwrap();
    assert_eq!(sse_body, body, "the same code and message for both doors");

    // Closing the stream frees its place.
    drop(stream);
    until_counted(&handle, 5, 1).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let again = SseClient::open(gw, "/api/v1/events/", &[("Authorization", &auth)]).await;
        if again.status == 200 {
            break;
        }
        assert_eq!(again.status, 429);
        assert!(tokio::time::Instant::now() < deadline, "cap never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_budget_counts_event_streams_under_any_path_spelling() {
    let nats = Nats::start();
    let (_g, gw) = spawn_gateway_with(&nats.url(), "gw-sse-ip", |s| {
        s.connect_rate_per_ip_10s = 3;
    })
    .await;
    let auth = format!("Bearer {}", token(1));
    let mut open = Vec::new();
    for path in ["/api/v1/events/", "/api/v1//events/", "/api/v1/events//"] {
        let s = SseClient::open(gw, path, &[("Authorization", &auth)]).await;
        assert_eq!(s.status, 200, "{path} within the budget");
        open.push(s);
    }
    // The budget is spent whichever way the path is written, and sockets share it.
    for path in ["/api/v1//events/", "/api/v1/events"] {
        let s = SseClient::open(gw, path, &[("Authorization", &auth)]).await;
        assert_eq!(s.status, 429, "{path} over the budget");
    }
    let (status, body) = socket_refusal(gw, 1).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
}
