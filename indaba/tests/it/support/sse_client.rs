//! A minimal Server-Sent Events client over raw TCP.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub data: Value,
}

/// A minimal `text/event-stream` reader over raw TCP (chunked transfer encoding).
pub struct SseClient {
    stream: TcpStream,
    raw: Vec<u8>,
    /// De-chunked body not yet split into events.
    body: String,
    head_done: bool,
    pub status: u16,
}

impl SseClient {
    /// Opens `GET path` with the given headers and reads the response head.
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseClient {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.expect("write");
        let mut c = SseClient {
            stream,
            raw: Vec::new(),
            body: String::new(),
            head_done: false,
            status: 0,
        };
        while !c.head_done {
            c.fill().await;
        }
        c
    }

    async fn fill(&mut self) {
        let mut buf = [0u8; 8192];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut buf))
            .await
            .expect("sse read timeout")
            .expect("sse read");
        assert!(n > 0, "event stream closed");
        self.raw.extend_from_slice(&buf[..n]);
        if !self.head_done {
            let Some(pos) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            let head = String::from_utf8_lossy(&self.raw[..pos]).to_string();
            self.status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .expect("status line");
            self.raw.drain(..pos + 4);
            self.head_done = true;
        }
        // Move complete chunks from `raw` to `body`.
        while let Some(pos) = self.raw.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&self.raw[..pos]).trim(), 16)
                .expect("chunk size");
            if self.raw.len() < pos + 2 + size + 2 {
                break;
            }
            let chunk = self.raw[pos + 2..pos + 2 + size].to_vec();
            self.body.push_str(&String::from_utf8_lossy(&chunk));
            self.raw.drain(..pos + 2 + size + 2);
        }
    }

    /// The next event with data (comments and keep-alives are skipped).
    pub async fn next(&mut self) -> SseEvent {
        loop {
            while let Some(pos) = self.body.find("\n\n") {
                let block: String = self.body[..pos].to_owned();
                self.body.drain(..pos + 2);
                let mut id = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !data.is_empty() {
                    return SseEvent {
                        id,
                        data: serde_json::from_str(&data).expect("event data is JSON"),
                    };
                }
            }
            self.fill().await;
        }
    }

    /// The next event of a type, skipping others.
    pub async fn next_type(&mut self, ty: &str) -> SseEvent {
        loop {
            let e = self.next().await;
            if e.data["type"] == ty {
                return e;
            }
        }
    }
}
