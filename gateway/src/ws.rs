//! One WebSocket connection: a reader that handles client frames in order, and a writer
//! that drains the socket's bounded outbound queue.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use prost::Message as _;
use proto::frames::{
    parse_client_frame, ChatMessage, ClientFrame, ConnectionEstablished, MessageSent, ServerFrame,
};
use proto::{pb, subjects, ErrorCode};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::hub::{ConnHandle, Outbound};
use crate::Ctx;

/// The tungstenite configuration for client sockets. The default read buffer is 128 KiB
/// allocated up front (~138 KB per idle socket); 4 KiB brings an idle socket to ~7 KB.
/// Message and frame limits replace tungstenite's 64 MiB / 16 MiB defaults.
pub fn ws_config(max_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
}

/// Runs an upgraded, authenticated socket until either side closes it.
pub async fn serve(ctx: Arc<Ctx>, upgraded: Upgraded, user_id: i64) {
    let io = TokioIo::new(upgraded);
    let ws = WebSocketStream::from_raw_socket(
        io,
        Role::Server,
        Some(ws_config(ctx.settings.max_frame_bytes)),
    )
    .await;
    let n = ctx
        .next_conn
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let connection_id: Arc<str> = Arc::from(format!("{}/{n}", ctx.settings.gateway_id));
    let (tx, rx) = mpsc::channel(ctx.settings.outbound_queue);
    let close = ctx.shutdown.child_token();

    // The first frame, queued before the socket is visible to deliveries.
    let hello = ServerFrame::ConnectionEstablished(ConnectionEstablished {
        user_id,
        connection_id: connection_id.to_string(),
        server_time: proto::time::rfc3339_ms(proto::time::now_ms()),
    });
    let _ = tx.try_send(Outbound::Text(Utf8Bytes::from(hello.to_json())));
    let handle = ConnHandle {
        connection_id: connection_id.clone(),
        tx: tx.clone(),
        close: close.clone(),
    };
    ctx.hub.add(user_id, handle);
    ctx.announce(pb::connection_event::Kind::Up, user_id, &connection_id)
        .await;
    tracing::debug!(%connection_id, user_id, "socket open");

    let (sink, mut stream) = ws.split();
    let writer = tokio::spawn(write_loop(sink, rx, close.clone()));
    let conn = Conn {
        ctx: ctx.clone(),
        user_id,
        connection_id: connection_id.clone(),
        tx,
    };
    loop {
        let next = tokio::select! {
            m = stream.next() => m,
            () = close.cancelled() => break,
        };
        match next {
            Some(Ok(Message::Text(text))) => conn.handle_text(&text).await,
            Some(Ok(Message::Binary(_))) => {
                conn.send(ServerFrame::error(
                    ErrorCode::InvalidJson,
                    "binary frames are not supported; send JSON text frames",
                    None,
                ));
            }
            Some(Ok(Message::Close(_))) | None => break,
            // Pings are answered by tungstenite itself; pongs and raw frames need nothing.
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(%connection_id, error = %e, "socket read error");
                break;
            }
        }
    }
    close.cancel();
    ctx.hub.remove(user_id, &connection_id);
    ctx.announce(pb::connection_event::Kind::Down, user_id, &connection_id)
        .await;
    let _ = writer.await;
    tracing::debug!(%connection_id, user_id, "socket closed");
}

type Sink = futures_util::stream::SplitSink<WebSocketStream<TokioIo<Upgraded>>, Message>;

async fn write_loop(mut sink: Sink, mut rx: mpsc::Receiver<Outbound>, close: CancellationToken) {
    loop {
        tokio::select! {
            biased;
            m = rx.recv() => match m {
                Some(Outbound::Text(t)) => {
                    if sink.send(Message::Text(t)).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            () = close.cancelled() => {
                // Flush what is queued (bounded), then say goodbye. 1012 tells clients the
                // server is restarting and to reconnect, 1013 that they were too slow.
                let code = if rx.len() >= rx.max_capacity() { CloseCode::Again } else { CloseCode::Restart };
                while let Ok(Outbound::Text(t)) = rx.try_recv() {
                    if sink.feed(Message::Text(t)).await.is_err() {
                        return;
                    }
                }
                let frame = CloseFrame { code, reason: Utf8Bytes::from_static("closing") };
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    let _ = sink.close().await;
                })
                .await;
                break;
            }
        }
    }
}

struct Conn {
    ctx: Arc<Ctx>,
    user_id: i64,
    connection_id: Arc<str>,
    tx: mpsc::Sender<Outbound>,
}

impl Conn {
    /// Queues a frame for this socket. A full queue means the client is not reading: the
    /// hub's slow-consumer rule applies.
    fn send(&self, frame: ServerFrame) {
        if self
            .tx
            .try_send(Outbound::Text(Utf8Bytes::from(frame.to_json())))
            .is_err()
        {
            tracing::warn!(connection_id = %self.connection_id, "outbound queue full; dropping reply");
        }
    }

    async fn handle_text(&self, text: &str) {
        match parse_client_frame(text) {
            Err(e) => self.send(e.into_frame()),
            Ok(ClientFrame::Ping) => self.send(ServerFrame::Pong),
            Ok(ClientFrame::ChatMessage(m)) => self.chat_message(m).await,
            Ok(
                ClientFrame::TypingIndicator(_)
                | ClientFrame::ReadReceipt(_)
                | ClientFrame::JoinConversation(_)
                | ClientFrame::LeaveConversation(_),
            ) => self.send(ServerFrame::error(
                ErrorCode::Unsupported,
                "this frame type is recognised but not served by this server version yet",
                None,
            )),
        }
    }

    async fn chat_message(&self, m: ChatMessage) {
        let reference = m.client_msg_id.as_ref().map(|c| c.0.clone());
        // Fail fast on what the gateway can judge alone; message-service checks again.
        if let Err(e) = proto::limits::validate_text(&m.text, self.ctx.settings.max_text_chars) {
            return self.send(ServerFrame::error(e.code, e.message, reference));
        }
        if m.conversation_id.is_none() && m.receiver_id.is_none() {
            return self.send(ServerFrame::error(
                ErrorCode::InvalidField,
                "conversation_id or receiver_id is required",
                reference,
            ));
        }
        if m.receiver_id.map(|r| r.0) == Some(self.user_id) {
            return self.send(ServerFrame::error(
                ErrorCode::InvalidReceiver,
                "receiver_id must not be yourself",
                reference,
            ));
        }
        let req = pb::SendMessageRequest {
            sender_id: self.user_id,
            conversation_id: m.conversation_id.map(|c| c.0),
            receiver_id: m.receiver_id.map(|r| r.0),
            text: m.text,
            client_msg_id: reference.clone().unwrap_or_default(),
            origin_connection_id: self.connection_id.to_string(),
        };
        match send_message(&self.ctx, req).await {
            Ok((msg, duplicate)) => self.send(ServerFrame::MessageSent(MessageSent {
                message_id: msg.id,
                conversation_id: msg.conversation_id,
                seq: msg.seq,
                client_msg_id: reference,
                created_at: proto::time::rfc3339_ms(msg.created_at_ms),
                duplicate,
            })),
            Err((code, message)) => self.send(ServerFrame::error(code, message, reference)),
        }
    }
}

/// Asks message-service to store a message. Shared by the WebSocket and REST paths.
pub async fn send_message(
    ctx: &Ctx,
    req: pb::SendMessageRequest,
) -> Result<(pb::ChatMessage, bool), (ErrorCode, String)> {
    let reply = ctx
        .bus
        .request(
            subjects::MSG_SEND,
            Bytes::from(req.encode_to_vec()),
            ctx.settings.request_timeout,
        )
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "message-service request failed");
            (
                ErrorCode::Unavailable,
                "message service unavailable; retry with the same client_msg_id".to_owned(),
            )
        })?;
    let resp = pb::SendMessageResponse::decode(reply.payload).map_err(|_| {
        (
            ErrorCode::Internal,
            "bad reply from message service".to_owned(),
        )
    })?;
    match resp.result {
        Some(pb::send_message_response::Result::Message(m)) => Ok((m, resp.duplicate)),
        Some(pb::send_message_response::Result::Error(e)) => {
            Err((ErrorCode::parse(&e.code), e.message))
        }
        None => Err((
            ErrorCode::Internal,
            "empty reply from message service".to_owned(),
        )),
    }
}
