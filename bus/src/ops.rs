//! The operations port of the worker services: `GET /livez`, `GET /readyz` and
//! `GET /metrics` (Prometheus text, from a [`crate::metrics::Registry`]) on
//! `INDABA_HTTP_LISTEN`.
//!
//! Deliberately tiny (one request per connection, GET only, 8 KiB head, 5 s to send it):
//! it serves probes and scrapers inside the cluster, never clients, so it needs none of
//! the gateway's HTTP stack.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a service exposes on its operations port.
pub trait Probe: Send + Sync + 'static {
    /// `Ok` when the service can do its work (bus and database reachable).
    fn ready(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
    /// Prometheus text exposition.
    fn metrics(&self) -> String;
}

const MAX_HEAD: usize = 8 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves until the listener fails or the task is aborted.
pub async fn serve(listener: TcpListener, probe: Arc<dyn Probe>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "ops accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let probe = probe.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &*probe).await {
                tracing::debug!(error = %e, "ops request failed");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, probe: &dyn Probe) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 || head.len() + n > MAX_HEAD {
                return Err(std::io::Error::other("bad request head"));
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(HEAD_TIMEOUT, read)
        .await
        .map_err(|_| std::io::Error::other("request head timeout"))??;
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/livez") => (
            "200 OK",
            "application/json",
            r#"{"status":"ok"}"#.to_owned(),
        ),
        ("GET", "/readyz") => match probe.ready().await {
            Ok(()) => (
                "200 OK",
                "application/json",
                r#"{"status":"ready"}"#.to_owned(),
            ),
            Err(why) => (
                "503 Service Unavailable",
                "application/json",
                serde_like_error("unavailable", &why),
            ),
        },
        ("GET", "/metrics") => ("200 OK", crate::metrics::CONTENT_TYPE, probe.metrics()),
        (_, "/livez" | "/readyz" | "/metrics") => (
            "405 Method Not Allowed",
            "application/json",
            serde_like_error("method_not_allowed", "GET only"),
        ),
        _ => (
            "404 Not Found",
            "application/json",
            serde_like_error("not_found", "no such route"),
        ),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}

/// `{"error":{"code":…,"message":…}}` without a JSON dependency (the message is escaped).
fn serde_like_error(code: &str, message: &str) -> String {
    let escaped: String = message
        .chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            c if c.is_control() => vec![' '],
            c => vec![c],
        })
        .collect();
    format!(r#"{{"error":{{"code":"{code}","message":"{escaped}"}}}}"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(bool);
    impl Probe for Fixed {
        fn ready(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
            let ok = self.0;
            Box::pin(async move {
                if ok {
                    Ok(())
                } else {
                    Err("database \"down\"".into())
                }
            })
        }
        fn metrics(&self) -> String {
            let mut r = crate::metrics::Registry::default();
            r.counter("indaba_x_total", "x").inc_by(3);
            r.render()
        }
    }

    async fn get(addr: std::net::SocketAddr, req: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    #[allow(clippy::unwrap_used)]
    async fn probes_and_metrics() {
        for (ready, want) in [(true, "200 OK"), (false, "503")] {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let t = tokio::spawn(serve(l, Arc::new(Fixed(ready))));
            let r = get(addr, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await;
            assert!(r.starts_with(&format!("HTTP/1.1 {want}")), "{r}");
            if !ready {
                assert!(r.contains(r#"database \"down\""#), "{r}");
            }
            let r = get(addr, "GET /livez HTTP/1.1\r\n\r\n").await;
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
            let r = get(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
            assert!(r.contains("indaba_x_total 3"), "{r}");
            let r = get(addr, "POST /metrics HTTP/1.1\r\n\r\n").await;
            assert!(r.starts_with("HTTP/1.1 405"), "{r}");
            let r = get(addr, "GET /nope HTTP/1.1\r\n\r\n").await;
            assert!(r.starts_with("HTTP/1.1 404"), "{r}");
            t.abort();
        }
    }
}
