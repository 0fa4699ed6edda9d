//! One upgraded socket's life: first-message authentication when the handshake carried no
//! token, the session (through the same [`session::admit`] as every connection), then the
//! writer task and the reader loop until either side closes.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use proto::frames::{parse_client_frame, ClientFrame};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::{reader, writer};
use crate::ctx::Ctx;
use crate::metrics::HandshakeFailure;
use crate::session::{self, Admission};

/// The tungstenite configuration for client sockets. The default read buffer is 128 KiB
/// allocated up front (~138 KB per idle socket). 1 KiB holds a typical chat frame (a larger
/// one is read in several calls; the buffer grows to the frame's length), and tungstenite
/// zero-fills the buffer's free part before every read, so a small one is also cheaper to
/// read into (4 KiB was a visible `memset` in the gateway's profile).
/// Message and frame limits replace tungstenite's 64 MiB / 16 MiB defaults.
fn ws_config(max_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
}

/// Runs an upgraded socket until either side closes it. `admitted` is `None` when the
/// client authenticates with its first frame.
pub(super) async fn run(ctx: Arc<Ctx>, upgraded: Upgraded, admitted: Option<Admission>) {
    let io = TokioIo::new(upgraded);
    let mut ws = WebSocketStream::from_raw_socket(
        io,
        Role::Server,
        Some(ws_config(ctx.settings.max_frame_bytes)),
    )
    .await;
    let admission = match admitted {
        Some(a) => a,
        // Boxed: the wait's state stays out of every open socket's task.
        None => match Box::pin(first_message_auth(&ctx, &mut ws)).await {
            Ok(a) => a,
            Err(reason) => {
                tracing::info!(%reason, "first-message authentication failed");
                let frame = CloseFrame {
                    code: CloseCode::from(4001),
                    reason: Utf8Bytes::from(reason),
                };
                let _ = Box::pin(tokio::time::timeout(Duration::from_secs(2), async {
                    let _ = ws.send(Message::Close(Some(frame))).await;
                    let _ = ws.close(None).await;
                }))
                .await;
                return;
            }
        },
    };
    let (session, rx) = Box::pin(session::open(&ctx, admission, session::Kind::WebSocket)).await;
    let (sink, stream) = ws.split();
    let shared = session.handle.shared.clone();
    shared
        .last_pong_ms
        .store(proto::time::now_ms(), std::sync::atomic::Ordering::Relaxed);
    let writer = tokio::spawn(writer::write_loop(
        sink,
        rx,
        session.handle.close.clone(),
        shared,
        ctx.settings.ping_interval,
    ));
    reader::Conn::new(ctx, session).run(stream, writer).await;
}

/// Waits for `{"type":"authenticate","token":…}` as the socket's first frame, then admits
/// the user like any connection. The error is the close reason (code 4001).
async fn first_message_auth(
    ctx: &Ctx,
    ws: &mut WebSocketStream<TokioIo<Upgraded>>,
) -> Result<Admission, String> {
    let unauthorized = |reason: String| {
        ctx.metrics.handshake_failed(HandshakeFailure::Unauthorized);
        reason
    };
    let first = tokio::time::timeout(ctx.settings.auth_timeout, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return Some(t),
                // Control frames may come first; anything else is not an authentication.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => return None,
            }
        }
    })
    .await
    .map_err(|_| {
        unauthorized(
            "authentication timeout: send {\"type\":\"authenticate\",\"token\":…} first".into(),
        )
    })?
    .ok_or_else(|| unauthorized("expected an authenticate frame".into()))?;
    let token = match parse_client_frame(&first) {
        Ok(ClientFrame::Authenticate(a)) => a.token,
        _ => {
            return Err(unauthorized(
                "the first frame must be authenticate (or pass ?token=)".into(),
            ))
        }
    };
    let identity = ctx
        .verifier
        .identify(&token)
        .map_err(|e| unauthorized(e.to_string()))?;
    session::admit(ctx, &identity)
        .await
        .map_err(|r| r.message())
}
