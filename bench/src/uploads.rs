//! The `uploads` scenario's background load: clients that each, in a loop, ask for a
//! presigned upload, send a 1 MiB photo with it, and send a message carrying it — what 50
//! people sharing photos do while everyone else chats. The chat scenario beside it measures
//! whether the bytes slow chat (they go to object storage, not through the gateway, in the
//! distributed deployment; the single-node program's gateway serves its own directory).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::load::Latency;
use crate::targets::{http, Target};

/// What the uploaders did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct UploadsResult {
    pub clients: usize,
    pub photo_bytes: usize,
    pub content_type: &'static str,
    /// Each client's upload rate (0: unlimited).
    pub kbps_per_client: u64,
    /// Photos uploaded and sent as messages.
    pub completed: u64,
    pub failed: u64,
    pub seconds: f64,
    pub per_second: f64,
    pub mib_per_second: f64,
    /// From asking for the upload to the message's 201 (upload, check, strip, thumbnail).
    pub photo_message_ms: Latency,
    /// The first failure seen, if any.
    pub first_error: Option<String>,
}

/// What the uploaders send: a photo (checked, stripped, thumbnailed) or a document of the
/// same size (only its first bytes are read): the second shows what the bytes cost, the
/// first what processing costs on top.
#[derive(Debug, Clone)]
pub struct Upload {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    pub filename: &'static str,
}

impl Upload {
    pub fn of_kind(kind: &str, size: usize) -> anyhow::Result<Upload> {
        Ok(match kind {
            "photo" => Upload {
                bytes: photo(size),
                content_type: "image/jpeg",
                filename: "room.jpg",
            },
            "pdf" => {
                let mut bytes = b"%PDF-1.4\n".to_vec();
                let mut x = 0x9e37_79b9_7f4a_7c15u64;
                while bytes.len() < size {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    bytes.push(x as u8);
                }
                Upload {
                    bytes,
                    content_type: "application/pdf",
                    filename: "contract.pdf",
                }
            }
            other => anyhow::bail!("unknown upload kind {other:?} (photo or pdf)"),
        })
    }
}

/// A JPEG of about `target` bytes: camera-like noise, so it compresses like a photo.
pub fn photo(target: usize) -> Vec<u8> {
    let (w, h) = (1600u32, 1200u32);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let n = (seed & 0x3f) as u8;
        image::Rgb([
            ((x / 7) as u8).wrapping_add(n),
            ((y / 5) as u8).wrapping_add(n / 2),
            120u8.wrapping_add(n),
        ])
    });
    let mut best = Vec::new();
    for q in [95u8, 90, 85, 80, 70, 60, 50] {
        let mut out = Vec::new();
        if image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, q)
            .encode_image(&img)
            .is_ok()
        {
            best = out;
            if best.len() <= target {
                break;
            }
        }
    }
    best
}

/// Runs `clients` uploaders until `stop` is set.
pub async fn run(
    t: Arc<Target>,
    clients: usize,
    base_user: i64,
    photo: Arc<Upload>,
    kbps: u64,
    stop: Arc<AtomicBool>,
) -> UploadsResult {
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds"),
    ));
    let failures = Arc::new(Mutex::new((0u64, None::<String>)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (t, photo, stop, hist, failures) = (
            t.clone(),
            photo.clone(),
            stop.clone(),
            hist.clone(),
            failures.clone(),
        );
        let user = base_user + i as i64;
        tasks.push(tokio::spawn(async move {
            let token = t.token(user);
            let body =
                json!({"receiver_id": user + clients as i64, "text": "photos follow"}).to_string();
            // The first message makes the conversation; refused as overloaded (it lands
            // beside the chat load), it is retried, as a client would.
            let mut conv = 0;
            for _ in 0..50 {
                match http(t.addr, "POST", "/api/v1/messages/", Some(&token), &body).await {
                    Ok((201, v)) => {
                        conv = v["conversation_id"].as_i64().unwrap_or(0);
                        break;
                    }
                    Ok((503, _)) => tokio::time::sleep(Duration::from_millis(300)).await,
                    other => {
                        fail(&failures, format!("first message: {other:?}"));
                        return;
                    }
                }
            }
            if conv == 0 {
                fail(&failures, "first message: refused 50 times".into());
                return;
            }
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                match one(t.addr, &token, conv, &photo, kbps).await {
                    Ok(()) => {
                        let us = u64::try_from(t0.elapsed().as_micros())
                            .unwrap_or(u64::MAX)
                            .max(1);
                        let _ = hist.lock().expect("lock").record(us);
                    }
                    Err(e) => {
                        fail(&failures, e.to_string());
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let h = hist.lock().expect("lock");
    let completed = h.len();
    let (failed, first_error) = failures.lock().expect("lock").clone();
    UploadsResult {
        clients,
        photo_bytes: photo.bytes.len(),
        content_type: photo.content_type,
        kbps_per_client: kbps,
        completed,
        failed,
        seconds,
        per_second: completed as f64 / seconds,
        mib_per_second: completed as f64 * photo.bytes.len() as f64 / seconds / 1_048_576.0,
        photo_message_ms: Latency::of(&h),
        first_error,
    }
}

fn fail(f: &Mutex<(u64, Option<String>)>, e: String) {
    let mut g = f.lock().expect("lock");
    g.0 += 1;
    g.1.get_or_insert(e);
}

/// One photo: slot, bytes, message.
async fn one(
    gateway: SocketAddr,
    token: &str,
    conv: i64,
    upload: &Upload,
    kbps: u64,
) -> anyhow::Result<()> {
    let photo = &upload.bytes[..];
    let body = json!({"conversation_id": conv, "filename": upload.filename, "content_type": upload.content_type, "size": photo.len()}).to_string();
    let (status, slot) = http(gateway, "POST", "/api/v1/uploads/", Some(token), &body).await?;
    anyhow::ensure!(status == 201, "upload slot: {status} {slot}");
    let url = slot["url"].as_str().unwrap_or("");
    let (host, path) = match url.strip_prefix("http://") {
        Some(rest) => {
            let i = rest.find('/').unwrap_or(rest.len());
            (rest[..i].to_owned(), rest[i..].to_owned())
        }
        None => (gateway.to_string(), url.to_owned()),
    };
    let mut head = format!("PUT {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(h) = slot["headers"].as_object() {
        for (k, v) in h {
            head.push_str(&format!("{k}: {}\r\n", v.as_str().unwrap_or("")));
        }
    }
    if slot["headers"].get("Content-Length").is_none() {
        head.push_str(&format!("Content-Length: {}\r\n", photo.len()));
    }
    head.push_str("\r\n");
    let mut s = tokio::net::TcpStream::connect(&host).await?;
    s.write_all(head.as_bytes()).await?;
    // At a phone's uplink rate when one is given, else as fast as loopback takes it.
    match kbps {
        0 => s.write_all(photo).await?,
        _ => {
            let started = Instant::now();
            for (i, chunk) in photo.chunks(16 * 1024).enumerate() {
                s.write_all(chunk).await?;
                let sent_bits = ((i + 1) * 16 * 1024 * 8) as f64;
                let due = Duration::from_secs_f64(sent_bits / (kbps as f64 * 1000.0));
                tokio::time::sleep_until((started + due).into()).await;
            }
        }
    }
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await??;
    let answer = String::from_utf8_lossy(&buf[..buf.len().min(200)]).into_owned();
    anyhow::ensure!(answer.starts_with("HTTP/1.1 200"), "PUT: {answer}");
    let id = slot["upload_id"].as_i64().unwrap_or(0);
    let body = json!({"text": "", "attachments": [id]}).to_string();
    let (status, v) = http(
        gateway,
        "POST",
        &format!("/api/v1/conversations/{conv}/messages/"),
        Some(token),
        &body,
    )
    .await?;
    anyhow::ensure!(status == 201, "send: {status} {v}");
    Ok(())
}
