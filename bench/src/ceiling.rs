//! The ceiling: a minimal in-memory router speaking the same JSON frames, with none of the
//! product's work (no auth, no storage, no bus). Every figure of the real targets is also
//! printed as a ratio to this one, run in the same process, on the same machine, at the
//! same time of day.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

type Peers = Arc<Mutex<HashMap<i64, Vec<mpsc::Sender<Message>>>>>;

/// A running ceiling router.
pub struct Ceiling {
    /// Where it listens.
    pub addr: SocketAddr,
    groups: Arc<Mutex<HashMap<i64, Vec<i64>>>>,
    next_group: AtomicI64,
}

impl Ceiling {
    /// Starts the router on a free loopback port.
    pub async fn start() -> anyhow::Result<Ceiling> {
        // The same deep accept queue as the gateway's (tokio's default is 128 here).
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let listener = sock.listen(4096)?;
        let addr = listener.local_addr()?;
        let peers: Peers = Arc::default();
        let groups: Arc<Mutex<HashMap<i64, Vec<i64>>>> = Arc::default();
        let ids = Arc::new(AtomicI64::new(1));
        let g = groups.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (peers, groups, ids) = (peers.clone(), g.clone(), ids.clone());
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let mut user = 0i64;
                    // The callback's error type is tungstenite's (large) HTTP response.
                    #[allow(clippy::result_large_err)]
                    let ws = tokio_tungstenite::accept_hdr_async_with_config(
                        stream,
                        |req: &Request, resp: Response| {
                            user = req
                                .uri()
                                .query()
                                .and_then(|q| q.strip_prefix("token="))
                                .and_then(|t| t.parse().ok())
                                .unwrap_or(0);
                            Ok(resp)
                        },
                        Some(crate::load::small_buffers()),
                    )
                    .await;
                    let Ok(ws) = ws else { return };
                    serve(ws, user, peers, groups, ids).await;
                });
            }
        });
        Ok(Ceiling {
            addr,
            groups,
            next_group: AtomicI64::new(1_000_000),
        })
    }

    /// A group conversation (the router's equivalent of `POST /api/v1/conversations/`).
    pub fn create_group(&self, members: &[i64]) -> i64 {
        let id = self.next_group.fetch_add(1, Ordering::Relaxed);
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, members.to_vec());
        id
    }
}

async fn serve(
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    user: i64,
    peers: Peers,
    groups: Arc<Mutex<HashMap<i64, Vec<i64>>>>,
    ids: Arc<AtomicI64>,
) {
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(1024);
    peers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(user)
        .or_default()
        .push(tx.clone());
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
    });
    let _ = tx
        .send(Message::text(
            json!({"type": "connection_established", "user_id": user}).to_string(),
        ))
        .await;
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(t) = msg else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&t) else {
            continue;
        };
        if v["type"] != "chat_message" {
            continue;
        }
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let recipients: Vec<i64> = match v["conversation_id"].as_i64() {
            Some(c) => groups
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&c)
                .cloned()
                .unwrap_or_default(),
            None => v["receiver_id"].as_i64().into_iter().collect(),
        };
        let _ = tx
            .send(Message::text(
                json!({"type": "message_sent", "message_id": id, "client_msg_id": v["client_msg_id"]}).to_string(),
            ))
            .await;
        let frame = Message::text(
            json!({"type": "new_message", "message_id": id, "sender_id": user, "text": v["text"]})
                .to_string(),
        );
        let targets: Vec<mpsc::Sender<Message>> = {
            let p = peers.lock().unwrap_or_else(|e| e.into_inner());
            recipients
                .iter()
                .filter(|r| **r != user)
                .filter_map(|r| p.get(r))
                .flatten()
                .cloned()
                .collect()
        };
        for t in targets {
            // Like the product: a full queue drops the slow reader, never blocks others.
            let _ = t.try_send(frame.clone());
        }
    }
    writer.abort();
}
