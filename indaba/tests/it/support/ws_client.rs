//! A WebSocket client speaking the spec's chat protocol.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::services::token;
use super::WAIT;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A WebSocket client speaking the spec's protocol.
pub struct Client {
    ws: Ws,
    pub user_id: i64,
    pub connection_id: String,
    /// Frames read while looking for another type, kept for later `recv_type` calls.
    pub pending: std::collections::VecDeque<Value>,
}

impl Client {
    /// Connects with `?token=` exactly like the spec's clients, and reads
    /// `connection_established`.
    pub async fn connect(addr: SocketAddr, user_id: i64) -> Client {
        Client::connect_with_token(addr, user_id, &token(user_id)).await
    }

    /// Connects with a given token (which must name `user_id`).
    pub async fn connect_with_token(addr: SocketAddr, user_id: i64, token: &str) -> Client {
        let url = format!("ws://{addr}/ws/chat/?token={token}");
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        let mut c = Client {
            ws,
            user_id,
            connection_id: String::new(),
            pending: Default::default(),
        };
        let hello = c.recv().await;
        assert_eq!(hello["type"], "connection_established", "{hello}");
        assert_eq!(hello["user_id"], user_id);
        c.connection_id = hello["connection_id"]
            .as_str()
            .expect("connection_id")
            .to_owned();
        c
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("ws send");
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .expect("ws send");
    }

    /// Next JSON frame, failing the test after [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        match self.try_recv(WAIT).await {
            Some(v) => v,
            None => panic!("user {}: no frame within {WAIT:?}", self.user_id),
        }
    }

    /// Next JSON frame within `d`, or `None`.
    pub async fn try_recv(&mut self, d: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match m.expect("ws read") {
                Message::Text(t) => {
                    return Some(serde_json::from_str(&t).expect("server sent JSON"))
                }
                Message::Close(f) => panic!("user {}: socket closed: {f:?}", self.user_id),
                _ => continue,
            }
        }
    }

    /// The first frame of type `ty`, earlier skipped ones first; frames of other types
    /// are kept for later calls.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        if let Some(i) = self.pending.iter().position(|v| v["type"] == ty) {
            return self.pending.remove(i).unwrap();
        }
        loop {
            let v = self.recv().await;
            if v["type"] == ty {
                return v;
            }
            self.pending.push_back(v);
        }
    }

    /// Reads until the server closes the socket; returns the close code.
    pub async fn expect_close(&mut self) -> u16 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("user {}: socket not closed within {WAIT:?}", self.user_id),
                Ok(None) => panic!("user {}: socket ended without a close frame", self.user_id),
                Ok(Some(Err(e))) => panic!("user {}: socket error {e}", self.user_id),
                Ok(Some(Ok(Message::Close(f)))) => {
                    return f.map(|f| u16::from(f.code)).unwrap_or(0)
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Asserts no new frame arrives for `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Some(v) = self.try_recv(d).await {
            panic!("user {}: unexpected frame {v}", self.user_id);
        }
    }

    /// Asserts no frame of type `ty` is pending or arrives within `d` (others are kept).
    pub async fn expect_none_of(&mut self, ty: &str, d: Duration) {
        if let Some(v) = self.pending.iter().find(|v| v["type"] == ty) {
            panic!("user {}: unexpected frame {v}", self.user_id);
        }
        let deadline = tokio::time::Instant::now() + d;
        while let Some(v) = self.try_recv(deadline - tokio::time::Instant::now()).await {
            assert!(
                v["type"] != ty,
                "user {}: unexpected frame {v}",
                self.user_id
            );
            self.pending.push_back(v);
        }
    }

    /// Sends a chat message and returns the server's answer (`message_sent` or `error`).
    pub async fn chat(&mut self, receiver: i64, text: &str, client_msg_id: Option<&str>) -> Value {
        let mut f = json!({"type": "chat_message", "receiver_id": receiver, "text": text});
        if let Some(k) = client_msg_id {
            f["client_msg_id"] = json!(k);
        }
        self.send(f).await;
        loop {
            let v = self.recv().await;
            if v["type"] == "message_sent" || v["type"] == "error" {
                return v;
            }
            self.pending.push_back(v);
        }
    }

    /// Round-trips a ping: proves the socket is still open and everything before it was
    /// handled.
    pub async fn ping(&mut self) {
        self.send(json!({"type": "ping"})).await;
        let _ = self.recv_type("pong").await;
    }
}
