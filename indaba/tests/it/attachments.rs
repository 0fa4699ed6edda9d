//! Attachments, end to end, on every storage backend and both deployments: the single-node
//! program with its local directory and with a real S3-compatible server (s3s-fs, which
//! checks SigV4 signatures and expiry), and NATS + PostgreSQL + message-service + gateway
//! with each. Every step of the upload flow and every refusal the attachments issue lists,
//! over WebSocket and REST; the bytes go straight to storage with the presigned request.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// The daily upload allowance the nodes under test get (small enough to reach).
const QUOTA: u64 = 4 * 1024 * 1024;
/// How long their upload URLs live (short enough to outlive in a test).
const URL_TTL_SECS: u64 = 3;

/// A system under test and what keeps it running.
struct Node {
    addr: SocketAddr,
    /// The S3 server, when the node stores there.
    s3: Option<S3Server>,
    _keep: Box<dyn std::any::Any + Send>,
}

fn options(extra: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut o = vec![
        (
            "INDABA_UPLOAD_DAILY_QUOTA_BYTES".to_owned(),
            QUOTA.to_string(),
        ),
        (
            "INDABA_UPLOAD_URL_TTL_SECS".to_owned(),
            URL_TTL_SECS.to_string(),
        ),
    ];
    o.extend(extra);
    o
}

impl Node {
    /// The single-node program: its own directory, or S3 when `s3` is given.
    async fn single(s3: Option<S3Server>) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = options(s3.as_ref().map(S3Server::env).unwrap_or_default());
        let (running, addr, _) = spawn_single_node_with(dir.path(), "127.0.0.1:0", &opts).await;
        Node {
            addr,
            s3,
            _keep: Box::new((running, dir)),
        }
    }

    /// NATS, PostgreSQL, message-service and a gateway, with a shared directory or S3.
    async fn distributed(s3: Option<S3Server>) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = match &s3 {
            Some(s) => {
                let env = s.env();
                let get = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                storage::StorageSettings::from_source(&get, None).expect("s3 settings")
            }
            None => storage::StorageSettings::Local {
                dir: dir.path().to_owned(),
            },
        };
        let gateway_dir = match &storage {
            storage::StorageSettings::Local { dir } => Some(dir.clone()),
            _ => None,
        };
        let cluster = TestCluster::builder()
            .gateway_settings(move |g| g.storage_dir = gateway_dir.clone())
            .message_service_settings(move |m| {
                m.storage = storage.clone();
                m.uploads.daily_quota_bytes = QUOTA;
                m.uploads.url_ttl = Duration::from_secs(URL_TTL_SECS);
            })
            .build()
            .await;
        Node {
            addr: cluster.gw(0),
            s3,
            _keep: Box::new((cluster, dir)),
        }
    }
}

#[tokio::test]
async fn attachments_single_node_local_directory() {
    flow(&Node::single(None).await).await;
}

#[tokio::test]
async fn attachments_single_node_s3() {
    let mut n = Node::single(Some(S3Server::start())).await;
    flow(&n).await;
    outage(&mut n).await;
}

#[tokio::test]
async fn attachments_distributed_local_directory() {
    flow(&Node::distributed(None).await).await;
}

#[tokio::test]
async fn attachments_distributed_s3() {
    let mut n = Node::distributed(Some(S3Server::start())).await;
    flow(&n).await;
    outage(&mut n).await;
}

/// With the object storage down, an attachment is refused with `unavailable` (nothing
/// stored, the client retries) and messages without attachments go on.
async fn outage(n: &mut Node) {
    let alice = token(1);
    let conv = direct(n, &alice, 5).await;
    let up = upload(n, &alice, conv, "door.png", "image/png", &png(20, 20)).await;
    drop(n.s3.take());
    let (status, v) = send(n, &alice, conv, "the door", &[up]).await;
    assert_eq!((status, code(&v)), (503, "unavailable"), "{v}");
    let (status, v) = create(n, &alice, conv, "next.png", "image/png", 10).await;
    assert_eq!(status, 201, "presigning needs no storage round trip: {v}");
    let (status, v) = send(n, &alice, conv, "text still goes", &[]).await;
    assert_eq!(status, 201, "{v}");
    let (_, page) = http(
        n.addr,
        "GET",
        &format!("/api/v1/conversations/{conv}/messages/"),
        Some(&alice),
        None,
    )
    .await;
    let texts: Vec<&str> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(
        texts,
        ["hello", "text still goes"],
        "the refused send stored nothing"
    );
}

/// An HTTP answer with its raw body.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request to `url` (absolute `http://host:port/…`, or a path on the gateway).
async fn raw(
    gateway: SocketAddr,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Raw {
    let (host, path) = match url.strip_prefix("http://") {
        Some(rest) => {
            let i = rest.find('/').unwrap_or(rest.len());
            (rest[..i].to_owned(), rest[i..].to_owned())
        }
        None => (gateway.to_string(), url.to_owned()),
    };
    let mut s = tokio::net::TcpStream::connect(&host)
        .await
        .expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    let mut has_length = false;
    for (k, v) in headers {
        has_length |= k.eq_ignore_ascii_case("content-length");
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_length && method != "GET" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write body");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("http timeout")
        .expect("read");
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("head");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = buf[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Raw {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[i + 2 + n + 2..];
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `POST /api/v1/uploads/` as `token`.
async fn create(
    n: &Node,
    token: &str,
    conv: i64,
    name: &str,
    ty: &str,
    size: usize,
) -> (u16, Value) {
    let body = json!({"conversation_id": conv, "filename": name, "content_type": ty, "size": size});
    http(
        n.addr,
        "POST",
        "/api/v1/uploads/",
        Some(token),
        Some(&body.to_string()),
    )
    .await
}

/// Sends the bytes with the presigned request of a `create` answer.
async fn put(n: &Node, slot: &Value, bytes: &[u8]) -> Raw {
    assert_eq!(slot["method"], "PUT", "{slot}");
    let headers: Vec<(String, String)> = slot["headers"]
        .as_object()
        .expect("headers")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("header").to_owned()))
        // What is really sent: a body of another length says so (the signature then fails).
        .filter(|(k, _)| !k.eq_ignore_ascii_case("content-length"))
        .collect();
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    raw(n.addr, "PUT", slot["url"].as_str().expect("url"), &h, bytes).await
}

/// Creates an upload and sends its bytes; the upload id.
async fn upload(n: &Node, token: &str, conv: i64, name: &str, ty: &str, bytes: &[u8]) -> i64 {
    let (status, slot) = create(n, token, conv, name, ty, bytes.len()).await;
    assert_eq!(status, 201, "{slot}");
    let r = put(n, &slot, bytes).await;
    assert!(
        r.status == 200,
        "PUT answered {}: {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    slot["upload_id"].as_i64().expect("upload_id")
}

/// Sends over REST; the status and answer.
async fn send(n: &Node, token: &str, conv: i64, text: &str, attachments: &[i64]) -> (u16, Value) {
    let body = json!({"text": text, "attachments": attachments});
    http(
        n.addr,
        "POST",
        &format!("/api/v1/conversations/{conv}/messages/"),
        Some(token),
        Some(&body.to_string()),
    )
    .await
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// The redirect of a download route, checked; its target.
async fn redirect(n: &Node, token: &str, path: &str) -> String {
    let auth = format!("Bearer {token}");
    let r = raw(n.addr, "GET", path, &[("Authorization", &auth)], b"").await;
    assert_eq!(
        r.status,
        302,
        "{path}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    r.header("location").expect("location").to_owned()
}

/// A direct conversation of user 1 with `other`, made by a first message.
async fn direct(n: &Node, token: &str, other: i64) -> i64 {
    let body = json!({"receiver_id": other, "text": "hello"}).to_string();
    let (status, v) = http(
        n.addr,
        "POST",
        "/api/v1/messages/",
        Some(token),
        Some(&body),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    v["conversation_id"].as_i64().expect("conversation_id")
}

/// A JPEG photo with an EXIF block holding a GPS position (and a marker to look for).
fn photo_with_gps(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, 128])
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85)
        .encode_image(&img)
        .expect("encode");
    // TIFF, big-endian: IFD0 with one entry, GPSInfo (0x8825) → a GPS IFD with
    // GPSLatitudeRef (0x0001) = "N" and a maker note carrying the marker.
    let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
    tiff.extend_from_slice(&1u16.to_be_bytes());
    tiff.extend_from_slice(&[0x88, 0x25, 0, 4, 0, 0, 0, 1, 0, 0, 0, 26]);
    tiff.extend_from_slice(&0u32.to_be_bytes());
    tiff.extend_from_slice(&1u16.to_be_bytes());
    tiff.extend_from_slice(&[0, 1, 0, 2, 0, 0, 0, 2, b'N', 0, 0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes());
    tiff.extend_from_slice(b"GPS-SECRET -33.92,18.42");
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut seg = vec![0xFF, 0xE1];
    seg.extend_from_slice(&u16::try_from(app1.len() + 2).expect("len").to_be_bytes());
    seg.extend_from_slice(&app1);
    jpeg.splice(2..2, seg);
    jpeg
}

/// A small PNG.
fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_pixel(w, h, image::Rgba([200, 30, 30, 255]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    out.into_inner()
}

/// A PNG header claiming 100,000 × 100,000 pixels: a decompression bomb's shape.
fn png_bomb() -> Vec<u8> {
    let mut real = png(1, 1);
    // IHDR's width and height sit at bytes 16..24; its CRC at 29..33.
    real[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    real[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&real[12..29]);
    real[29..33].copy_from_slice(&crc.to_be_bytes());
    real
}

/// `ms` of silence: 8 kHz, 16-bit mono PCM in a WAV container.
fn wav_of_ms(ms: u32) -> Vec<u8> {
    let samples = 8 * ms;
    let mut wav = b"RIFF".to_vec();
    wav.extend_from_slice(&(36 + samples * 2).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&8000u32.to_le_bytes());
    wav.extend_from_slice(&16000u32.to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(samples * 2).to_le_bytes());
    wav.resize(wav.len() + samples as usize * 2, 0);
    wav
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for b in data {
        c ^= u32::from(*b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

async fn flow(n: &Node) {
    let (alice, bob, carol, dave) = (token(1), token(2), token(3), token(4));
    let conv = direct(n, &alice, 2).await;
    let conv_carol = direct(n, &alice, 3).await;
    let mut bob_ws = Client::connect(n.addr, 2).await;
    let mut alice_ws = Client::connect(n.addr, 1).await;

    // The presigned request goes to the storage itself: S3, or this gateway's blob route.
    let (_, slot) = create(n, &alice, conv, "probe.png", "image/png", 10).await;
    let url = slot["url"].as_str().expect("url");
    match &n.s3 {
        Some(s3) => assert!(url.starts_with(&s3.endpoint()), "{url}"),
        None => assert!(url.starts_with("/api/v1/blobs/"), "{url}"),
    }
    assert!(slot["expires_at"].is_string(), "{slot}");
    // A tampered signature is refused by whoever holds the bytes.
    let mut forged = slot.clone();
    let mut bad = url.to_owned();
    let last = bad.pop().expect("url");
    bad.push(if last == '0' { '1' } else { '0' });
    forged["url"] = json!(bad);
    let r = put(n, &forged, b"0123456789").await;
    assert_eq!(r.status, 403, "a forged signature answered {}", r.status);

    // A photo with its location in EXIF, sent over the socket with no text.
    let photo = photo_with_gps(800, 600);
    let up = upload(
        n,
        &alice,
        conv,
        "../../Key box\u{202E}.jpg",
        "image/jpeg",
        &photo,
    )
    .await;
    alice_ws
        .send(json!({"type": "chat_message", "conversation_id": conv, "receiver_id": 2, "attachments": [up], "client_msg_id": "photo-1"}))
        .await;
    let sent = alice_ws.recv_type("message_sent").await;
    let got = bob_ws.recv_type("new_message").await;
    assert_eq!(got["message_id"], sent["message_id"]);
    assert_eq!(got["text"], "");
    let a = &got["attachments"][0];
    assert_eq!(a["id"], up);
    // Sanitised: no path, no bidirectional override.
    assert_eq!(a["filename"], "Key box.jpg");
    assert_eq!(a["content_type"], "image/jpeg");
    assert_eq!(
        (a["width"].as_i64(), a["height"].as_i64()),
        (Some(800), Some(600))
    );
    assert_eq!(a["url"], format!("/api/v1/attachments/{up}/"));
    assert_eq!(
        a["thumbnail"],
        format!("/api/v1/attachments/{up}/thumbnail/")
    );
    let stored_size = a["size"].as_i64().expect("size");
    assert!(
        stored_size < i64::try_from(photo.len()).expect("len"),
        "metadata stripped"
    );

    // Bob fetches it through a redirect; what is stored has no location in it.
    let location = redirect(n, &bob, &format!("/api/v1/attachments/{up}/")).await;
    let file = raw(n.addr, "GET", &location, &[], b"").await;
    assert_eq!(file.status, 200, "{}", String::from_utf8_lossy(&file.body));
    assert_eq!(file.header("content-type"), Some("image/jpeg"));
    let disposition = file.header("content-disposition").expect("disposition");
    assert!(disposition.contains("Key box.jpg"), "{disposition}");
    assert!(!contains(&file.body, b"GPS-SECRET"), "GPS EXIF survived");
    assert!(!contains(&file.body, b"Exif\0\0"), "EXIF survived");
    assert_eq!(file.body.len() as i64, stored_size);
    let decoded = image::load_from_memory(&file.body).expect("still a JPEG");
    assert_eq!((decoded.width(), decoded.height()), (800, 600));
    let thumb_at = redirect(n, &bob, &format!("/api/v1/attachments/{up}/thumbnail/")).await;
    let thumb = raw(n.addr, "GET", &thumb_at, &[], b"").await;
    assert_eq!(thumb.status, 200);
    let t = image::load_from_memory(&thumb.body).expect("thumbnail");
    assert_eq!((t.width(), t.height()), (320, 240));

    // Not a member: as if it did not exist.
    let (status, v) = http(
        n.addr,
        "GET",
        &format!("/api/v1/attachments/{up}/"),
        Some(&carol),
        None,
    )
    .await;
    assert_eq!((status, code(&v)), (404, "not_found"), "{v}");
    // The history shows it too.
    let (_, page) = http(
        n.addr,
        "GET",
        &format!("/api/v1/conversations/{conv}/messages/"),
        Some(&bob),
        None,
    )
    .await;
    let shown = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m["message_id"] == sent["message_id"])
        .expect("in history")
        .clone();
    assert_eq!(shown["attachments"][0]["id"], up);

    // Over REST, with text: a PDF, and a text file that is served as a download.
    let pdf = upload(
        n,
        &alice,
        conv,
        "contract.pdf",
        "application/pdf",
        b"%PDF-1.4\n% test\n",
    )
    .await;
    let txt = upload(
        n,
        &alice,
        conv,
        "notes.txt",
        "text/plain",
        b"<script>alert(1)</script>",
    )
    .await;
    let (status, m) = send(n, &alice, conv, "the documents", &[pdf, txt]).await;
    assert_eq!(status, 201, "{m}");
    let (_, full) = http(
        n.addr,
        "GET",
        &format!("/api/v1/messages/{}/", m["message_id"]),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(full["attachments"][0]["content_type"], "application/pdf");
    assert_eq!(
        full["attachments"][1]["content_type"],
        "application/octet-stream"
    );
    assert!(full["attachments"][1].get("thumbnail").is_none());
    let txt_at = redirect(n, &bob, &format!("/api/v1/attachments/{txt}/")).await;
    let served = raw(n.addr, "GET", &txt_at, &[], b"").await;
    assert_eq!(
        served.header("content-type"),
        Some("application/octet-stream")
    );
    assert!(served
        .header("content-disposition")
        .unwrap_or("")
        .starts_with("attachment"));
    let (status, _) = http(
        n.addr,
        "GET",
        &format!("/api/v1/attachments/{pdf}/thumbnail/"),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(status, 404, "no thumbnail for a PDF");

    // A voice note: its length read from the file, its waveform as the client drew it.
    let wav = wav_of_ms(1500);
    let body = json!({"conversation_id": conv, "filename": "voice.wav", "content_type": "audio/wav", "size": wav.len(), "waveform": [0, 40, 200, 255, 90]});
    let (status, slot) = http(
        n.addr,
        "POST",
        "/api/v1/uploads/",
        Some(&alice),
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(status, 201, "{slot}");
    assert_eq!(put(n, &slot, &wav).await.status, 200);
    let voice = slot["upload_id"].as_i64().expect("id");
    alice_ws
        .send(json!({"type": "chat_message", "conversation_id": conv, "attachments": [voice], "client_msg_id": "voice-1"}))
        .await;
    alice_ws.recv_type("message_sent").await;
    let got = loop {
        // Bob's socket also has the messages sent over REST meanwhile.
        let m = bob_ws.recv_type("new_message").await;
        if m["client_msg_id"] == "voice-1" {
            break m;
        }
    };
    let a = &got["attachments"][0];
    assert_eq!(
        (a["content_type"].as_str(), a["duration_ms"].as_i64()),
        (Some("audio/wav"), Some(1500)),
        "{a}"
    );
    assert_eq!(a["waveform"], json!([0, 40, 200, 255, 90]));
    let too_long: Vec<u8> = vec![7; 101];
    let body = json!({"conversation_id": conv, "filename": "v.wav", "content_type": "audio/wav", "size": 10, "waveform": too_long});
    let (status, v) = http(
        n.addr,
        "POST",
        "/api/v1/uploads/",
        Some(&alice),
        Some(&body.to_string()),
    )
    .await;
    assert_eq!((status, code(&v)), (400, "invalid_field"), "{v}");

    // Refusals. Each leaves nothing stored: the spare upload stays usable throughout.
    let spare = upload(n, &alice, conv, "spare.png", "image/png", &png(40, 30)).await;
    let (status, v) = send(n, &alice, conv, "again", &[up]).await;
    assert_eq!(
        (status, code(&v)),
        (400, "invalid_attachment"),
        "already used: {v}"
    );
    let (status, v) = send(n, &alice, conv, "x", &[99_999_999]).await;
    assert_eq!(
        (status, code(&v)),
        (400, "invalid_attachment"),
        "unknown: {v}"
    );
    let (status, v) = send(n, &bob, conv, "mine now", &[spare]).await;
    assert_eq!(
        (status, code(&v)),
        (400, "invalid_attachment"),
        "another user's: {v}"
    );
    let (status, v) = send(n, &alice, conv_carol, "elsewhere", &[spare]).await;
    assert_eq!(
        (status, code(&v)),
        (400, "invalid_attachment"),
        "another conversation's: {v}"
    );
    let ids: Vec<i64> = (0..11).map(|i| spare + 1000 + i).collect();
    let (status, v) = send(n, &alice, conv, "many", &ids).await;
    assert_eq!((status, code(&v)), (400, "invalid_field"), "eleven: {v}");
    // Over the socket the same rules give the same code.
    alice_ws
        .send(json!({"type": "chat_message", "conversation_id": conv, "attachments": [up], "client_msg_id": "again-ws"}))
        .await;
    let e = alice_ws.recv_type("error").await;
    assert_eq!(e["code"], "invalid_attachment", "{e}");

    let fake = upload(
        n,
        &alice,
        conv,
        "cat.png",
        "image/png",
        b"%PDF-1.4 not a picture",
    )
    .await;
    let (status, v) = send(n, &alice, conv, "", &[fake]).await;
    assert_eq!((status, code(&v)), (400, "type_mismatch"), "{v}");
    let bomb = upload(n, &alice, conv, "bomb.png", "image/png", &png_bomb()).await;
    let (status, v) = send(n, &alice, conv, "", &[bomb]).await;
    assert_eq!((status, code(&v)), (413, "image_too_large"), "{v}");

    let (status, v) = create(
        n,
        &alice,
        conv,
        "big.mov",
        "video/quicktime",
        26 * 1024 * 1024,
    )
    .await;
    assert_eq!((status, code(&v)), (413, "payload_too_large"), "{v}");
    let (status, v) = create(n, &alice, conv, "setup.exe", "application/x-msdownload", 10).await;
    assert_eq!((status, code(&v)), (415, "unsupported_media_type"), "{v}");
    let (status, v) = create(n, &carol, conv, "x.png", "image/png", 10).await;
    assert_eq!(
        (status, code(&v)),
        (404, "conversation_not_found"),
        "a non-member: {v}"
    );

    // The signed request pins the length: a shorter body is refused by the storage, and
    // the upload is not attachable.
    let (_, slot) = create(n, &alice, conv, "short.png", "image/png", 100).await;
    let r = put(n, &slot, &png(2, 2)[..60]).await;
    assert!(
        r.status >= 400,
        "a body shorter than signed was stored ({})",
        r.status
    );
    let (status, v) = send(
        n,
        &alice,
        conv,
        "",
        &[slot["upload_id"].as_i64().expect("id")],
    )
    .await;
    assert_eq!((status, code(&v)), (400, "invalid_attachment"), "{v}");

    // An upload URL used after it expired.
    let (_, late) = create(n, &alice, conv, "late.png", "image/png", 77).await;
    tokio::time::sleep(Duration::from_secs(URL_TTL_SECS + 2)).await;
    let r = put(n, &late, &[0u8; 77]).await;
    assert!(
        matches!(r.status, 403 | 410),
        "an expired URL answered {}",
        r.status
    );
    let (status, v) = send(
        n,
        &alice,
        conv,
        "",
        &[late["upload_id"].as_i64().expect("id")],
    )
    .await;
    assert_eq!((status, code(&v)), (410, "upload_expired"), "{v}");

    // The spare, refused five times, is still good.
    let (status, v) = send(n, &alice, conv, "", &[spare]).await;
    assert_eq!(status, 201, "{v}");

    // The daily allowance.
    let conv_dave = direct(n, &dave, 1).await;
    let half = usize::try_from(QUOTA / 2 + 1).expect("size");
    let (status, v) = create(n, &dave, conv_dave, "a.mp4", "video/mp4", half).await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = create(n, &dave, conv_dave, "b.mp4", "video/mp4", half).await;
    assert_eq!((status, code(&v)), (429, "quota_exceeded"), "{v}");

    // Deleting the message: the attachment is gone for readers at once, and its object
    // from storage at the next sweep (every 10 s).
    let photo_message = sent["message_id"].as_i64().expect("id");
    let (status, v) = http(
        n.addr,
        "DELETE",
        &format!("/api/v1/messages/{photo_message}/"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, _) = http(
        n.addr,
        "GET",
        &format!("/api/v1/attachments/{up}/"),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        // The address Bob was given minutes ago is still signed: only the object's
        // absence makes it fail.
        let r = raw(n.addr, "GET", &location, &[], b"").await;
        if r.status == 404 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deleted photo is still served ({})",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The gRPC door runs the same operations: a backend creates the upload, the bytes go to S3,
/// the send attaches them, members get an address and anyone else `NOT_FOUND`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_over_grpc() {
    use proto::pb;
    use tonic::metadata::MetadataValue;
    const KEY: &str = "backend-0123456789abcdef";
    fn with_key<T>(msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        let v: MetadataValue<_> = format!("Bearer {KEY}").parse().expect("metadata");
        r.metadata_mut().insert("authorization", v);
        r
    }
    let nats = Nats::start();
    let db = fresh_database().await;
    let s3 = S3Server::start();
    let env = s3.env();
    let get = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut settings = message_service_settings(&nats.url(), &db);
    settings.storage = storage::StorageSettings::from_source(&get, None).expect("s3");
    settings.grpc_listen = Some("127.0.0.1:0".parse().expect("addr"));
    settings.grpc_keys =
        proto::grpc_auth::ApiKeys::parse(&format!("django:{KEY}:rw")).expect("keys");
    let app = message_service::App::build(settings).await.expect("build");
    let grpc = app.grpc_addr().expect("grpc");
    let _ms = run_with_stop(|rx| app.run(stopped(rx)));
    let mut c = pb::message_service_client::MessageServiceClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect");

    let conv = c
        .create_conversation(with_key(pb::CreateConversationRequest {
            creator_id: 10,
            participant_ids: vec![20],
            ..Default::default()
        }))
        .await
        .expect("create")
        .into_inner();
    let Some(pb::create_conversation_response::Result::Conversation(conv)) = conv.result else {
        panic!("no conversation");
    };
    let bytes = png(64, 32);
    let slot = c
        .create_upload(with_key(pb::CreateUploadRequest {
            user_id: 10,
            conversation_id: conv.id,
            filename: "floor plan.png".into(),
            content_type: "image/png".into(),
            size: i64::try_from(bytes.len()).expect("len"),
            ..Default::default()
        }))
        .await
        .expect("upload")
        .into_inner();
    assert!(slot.url.starts_with(&s3.endpoint()), "{}", slot.url);
    let headers: Vec<(&str, &str)> = slot
        .headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("content-length"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let gw: SocketAddr = "127.0.0.1:1".parse().expect("unused");
    assert_eq!(
        raw(gw, "PUT", &slot.url, &headers, &bytes).await.status,
        200
    );
    let sent = c
        .send_message(with_key(pb::SendMessageRequest {
            sender_id: 10,
            conversation_id: Some(conv.id),
            attachments: vec![slot.upload_id],
            ..Default::default()
        }))
        .await
        .expect("send")
        .into_inner();
    let Some(pb::send_message_response::Result::Message(m)) = sent.result else {
        panic!("not sent: {sent:?}");
    };
    let a = &m.attachments[0];
    assert_eq!(
        (
            a.id,
            a.filename.as_str(),
            a.width,
            a.height,
            a.has_thumbnail
        ),
        (slot.upload_id, "floor plan.png", 64, 32, true)
    );

    let url = c
        .get_attachment_url(with_key(pb::GetAttachmentUrlRequest {
            user_id: 20,
            attachment_id: a.id,
            thumbnail: false,
        }))
        .await
        .expect("url")
        .into_inner()
        .url;
    let got = raw(gw, "GET", &url, &[], b"").await;
    assert_eq!(got.status, 200);
    assert_eq!(image::load_from_memory(&got.body).expect("png").width(), 64);

    let stranger = c
        .get_attachment_url(with_key(pb::GetAttachmentUrlRequest {
            user_id: 99,
            attachment_id: a.id,
            thumbnail: false,
        }))
        .await
        .expect_err("not a member");
    assert_eq!(stranger.code(), tonic::Code::NotFound);
    let refused = c
        .create_upload(with_key(pb::CreateUploadRequest {
            user_id: 10,
            conversation_id: conv.id,
            filename: "run.exe".into(),
            content_type: "application/x-msdownload".into(),
            size: 10,
            ..Default::default()
        }))
        .await
        .expect_err("a disallowed type");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("not an allowed type"),
        "{}",
        refused.message()
    );
}

/// The lifecycle: an upload never attached is removed a day later, and a message removed by
/// retention takes its objects with it (both by the sweep, within seconds of coming due).
#[tokio::test]
async fn stale_uploads_and_retention_remove_the_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let local = dir.path().to_owned();
    let gateway_dir = local.clone();
    let cluster = TestCluster::builder()
        .gateway_settings(move |g| g.storage_dir = Some(gateway_dir.clone()))
        .message_service_settings(move |m| {
            m.storage = storage::StorageSettings::Local { dir: local.clone() };
            m.retention = Some(Duration::from_secs(86_400));
        })
        .build()
        .await;
    let n = Node {
        addr: cluster.gw(0),
        s3: None,
        _keep: Box::new(()),
    };
    let alice = token(1);
    let conv = direct(&n, &alice, 2).await;
    let kept = upload(&n, &alice, conv, "door.png", "image/png", &png(30, 20)).await;
    let (status, m) = send(&n, &alice, conv, "the door", &[kept]).await;
    assert_eq!(status, 201, "{m}");
    let never = upload(&n, &alice, conv, "draft.png", "image/png", &png(10, 10)).await;
    let location = redirect(&n, &token(2), &format!("/api/v1/attachments/{kept}/")).await;
    assert_eq!(raw(n.addr, "GET", &location, &[], b"").await.status, 200);
    let files = || walk(&dir.path().join("objects"));
    assert_eq!(
        files(),
        3,
        "the attachment, its thumbnail and the draft's upload"
    );

    // A day passes for the draft, two for the message.
    let pool = sqlx::PgPool::connect(cluster.db()).await.expect("pg");
    sqlx::query("UPDATE uploads SET created_at_ms = created_at_ms - 90000000 WHERE id = $1")
        .bind(never)
        .execute(&pool)
        .await
        .expect("age the draft");
    sqlx::query("UPDATE messages SET created_at_ms = created_at_ms - 172800000 WHERE id = $1")
        .bind(m["message_id"].as_i64().expect("id"))
        .execute(&pool)
        .await
        .expect("age the message");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM uploads")
            .fetch_one(&pool)
            .await
            .expect("count");
        if rows == 0 && files() == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{rows} upload rows and {} files left",
            files()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(raw(n.addr, "GET", &location, &[], b"").await.status, 404);
    drop(cluster);
}

/// Files under `dir`, recursively.
fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type().map(|t| t.is_dir()) {
                    Ok(true) => walk(&e.path()),
                    _ => 1,
                })
                .sum()
        })
        .unwrap_or(0)
}
