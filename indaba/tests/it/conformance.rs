//! WebSocket protocol conformance over raw TCP (Autobahn-style cases): each malformed
//! frame gets the close code RFC 6455 prescribes, and the server never hangs or panics.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// A hand-rolled client: handshake, then raw frames.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn open(addr: SocketAddr) -> Raw {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /ws/chat/?token={} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            token(1)
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Raw { s, buf: Vec::new() };
        let head = raw.read_until_blank_line().await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "bad accept key: {head}"
        );
        // connection_established.
        let (opcode, payload) = raw.frame().await;
        assert_eq!(opcode, 1);
        assert!(String::from_utf8(payload)
            .unwrap()
            .contains("connection_established"));
        raw
    }

    async fn read_until_blank_line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..i + 4).collect();
                return String::from_utf8_lossy(&head).into_owned();
            }
            self.fill().await;
        }
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.s.read(&mut chunk))
            .await
            .expect("server silent")
            .unwrap();
        assert!(n > 0, "connection closed without a close frame");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Reads one server frame (unmasked): (opcode, payload).
    async fn frame(&mut self) -> (u8, Vec<u8>) {
        while self.buf.len() < 2 {
            self.fill().await;
        }
        let opcode = self.buf[0] & 0x0f;
        let (len, start) = match self.buf[1] & 0x7f {
            126 => {
                while self.buf.len() < 4 {
                    self.fill().await;
                }
                (
                    usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                    4,
                )
            }
            127 => panic!("unexpectedly large server frame"),
            n => (usize::from(n), 2),
        };
        while self.buf.len() < start + len {
            self.fill().await;
        }
        let payload = self.buf[start..start + len].to_vec();
        self.buf.drain(..start + len);
        (opcode, payload)
    }

    /// Sends a frame with the given first byte (FIN/RSV/opcode), masked or not.
    async fn send(&mut self, first: u8, payload: &[u8], masked: bool) {
        let mut f = vec![first];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(mask_bit | u8::try_from(n).unwrap()),
            n if n <= 0xffff => {
                f.push(mask_bit | 126);
                f.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
            }
            n => {
                f.push(mask_bit | 127);
                f.extend_from_slice(&u64::try_from(n).unwrap().to_be_bytes());
            }
        }
        if masked {
            let key = [0x12, 0x34, 0x56, 0x78];
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        self.s.write_all(&f).await.unwrap();
    }

    /// Reads frames until a close frame; returns its code.
    async fn close_code(&mut self) -> u16 {
        loop {
            let (opcode, payload) = self.frame().await;
            if opcode == 8 {
                assert!(payload.len() >= 2, "close frame without a code");
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_the_right_close_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, addr, _) = spawn_single_node(dir.path()).await;
    let ping = br#"{"type":"ping"}"#;

    // A well-formed masked text frame works (the harness itself is right).
    let mut ok = Raw::open(addr).await;
    ok.send(0x81, ping, true).await;
    let (opcode, payload) = ok.frame().await;
    assert_eq!(
        (opcode, String::from_utf8(payload).unwrap().as_str()),
        (1, r#"{"type":"pong"}"#)
    );

    let cases: Vec<(&str, u8, Vec<u8>, bool, u16)> = vec![
        ("unmasked client frame", 0x81, ping.to_vec(), false, 1002),
        ("reserved bit set", 0x81 | 0x40, ping.to_vec(), true, 1002),
        (
            "invalid UTF-8 text",
            0x81,
            vec![0xc3, 0x28, 0xff],
            true,
            1007,
        ),
        ("fragmented ping", 0x09, b"hi".to_vec(), true, 1002),
        ("unknown opcode", 0x83, b"x".to_vec(), true, 1002),
        (
            "reserved close code 1005",
            0x88,
            1005u16.to_be_bytes().to_vec(),
            true,
            1002,
        ),
        (
            "close code 999",
            0x88,
            999u16.to_be_bytes().to_vec(),
            true,
            1002,
        ),
        (
            "message over 64 KiB",
            0x81,
            vec![b'a'; 70 * 1024],
            true,
            1009,
        ),
    ];
    for (name, first, payload, masked, want) in cases {
        let mut c = Raw::open(addr).await;
        c.send(first, &payload, masked).await;
        let got = tokio::time::timeout(Duration::from_secs(10), c.close_code())
            .await
            .unwrap_or_else(|_| panic!("{name}: no close frame"));
        assert_eq!(got, want, "{name}");
    }
    // The server is still serving.
    let mut after = Raw::open(addr).await;
    after.send(0x81, ping, true).await;
    assert_eq!(after.frame().await.0, 1);
}
