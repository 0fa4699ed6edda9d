//! The outbound HTTP clients: HTTP/1.1 and HTTP/2 over rustls (ring) or plain TCP.
//!
//! - Two *trusted* clients for the providers whose URLs the operator configures (FCM, and
//!   APNs, which speaks only HTTP/2; over `http://` it uses prior knowledge, which is what
//!   a local fake needs).
//! - One *guarded* client for targets a user chose (webhook URLs, Web Push endpoints). Its
//!   connector applies [`crate::outbound`] at connect time: it resolves the name itself,
//!   refuses the connection if any answer is not allowed, and connects to exactly the
//!   addresses it checked, so a DNS answer that changes between registration and send
//!   (rebinding) cannot reach loopback, the private network or the metadata service.
//!   Connections through it are limited per host ([`PER_HOST`] at once, each holding its
//!   slot until it is closed), so one slow host (a tarpit) cannot take every connection.
//!
//! Every call has one overall timeout ([`CALL_TIMEOUT`]) covering connect, headers and
//! body; callers bound it further with their batch's deadline.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ConfigError;
use crate::outbound::{self, Policy, Refusal};

type Https = hyper_rustls::HttpsConnector<HttpConnector>;
type GuardedHttps = hyper_rustls::HttpsConnector<GuardedConnector>;

/// Longest a provider call may take, from connecting to the end of the body.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a TCP connect may take (per address).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a name resolution may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections to one user-chosen host (`host:port`) open at once, per instance.
pub const PER_HOST: usize = 16;
/// Largest response body read.
const MAX_BODY: usize = 64 * 1024;

/// A future the resolver returns.
pub type Resolving = Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;

/// Name resolution for the guarded client (the system resolver in production; tests
/// substitute one that answers what they need, e.g. a rebinding name).
pub trait Resolve: Send + Sync + 'static {
    /// Every address `host` resolves to.
    fn resolve(&self, host: &str, port: u16) -> Resolving;
}

/// The system resolver (`getaddrinfo` on a blocking thread).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> Resolving {
        let host = host.to_owned();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// The outbound policy with a resolver: what both registration and the guarded connector
/// check.
#[derive(Clone)]
pub struct Guard {
    /// Which targets are allowed.
    pub policy: Policy,
    resolver: Arc<dyn Resolve>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("policy", &self.policy)
            .finish()
    }
}

impl Guard {
    /// A guard with a policy and a resolver.
    pub fn new(policy: Policy, resolver: Arc<dyn Resolve>) -> Guard {
        Guard { policy, resolver }
    }

    /// Checks a URL and what its host resolves to now; the addresses to connect to.
    /// A literal address is checked without resolving.
    pub async fn addresses(&self, uri: &http::Uri) -> Result<Vec<SocketAddr>, Refusal> {
        let t = outbound::check_uri(self.policy, uri)?;
        let ips = match t.ip() {
            Some(ip) => vec![ip],
            None => tokio::time::timeout(RESOLVE_TIMEOUT, self.resolver.resolve(&t.host, t.port))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
        };
        outbound::check_resolved(self.policy, &ips)?;
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, t.port))
            .collect())
    }
}

/// Why the guarded connector did not connect.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The outbound policy refused the target (at connect time).
    #[error("refused by the outbound policy: {0}")]
    Refused(Refusal),
    /// Every checked address failed.
    #[error("connect: {0}")]
    Io(String),
}

/// Connection slots per user-chosen host (`host:port`): a connection holds one from
/// before it is opened until it is closed, so a host never has more than [`PER_HOST`]
/// connections from this instance (HTTP/1: requests) however its calls end.
#[derive(Clone, Debug, Default)]
struct HostSlots(Arc<Mutex<HashMap<String, Arc<Semaphore>>>>);

impl HostSlots {
    fn of(&self, host: &str) -> Arc<Semaphore> {
        let mut hosts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if hosts.len() > 4096 {
            // Forget idle hosts (nobody holds their semaphore).
            hosts.retain(|_, s| Arc::strong_count(s) > 1);
        }
        hosts
            .entry(host.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(PER_HOST)))
            .clone()
    }
}

/// A connector that connects only to addresses [`Guard`] allowed, at most [`PER_HOST`]
/// connections per host at once.
#[derive(Clone, Debug)]
pub struct GuardedConnector {
    guard: Guard,
    slots: HostSlots,
}

impl tonic::codegen::Service<http::Uri> for GuardedConnector {
    type Response = GuardedStream;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let guard = self.guard.clone();
        let slots = self.slots.clone();
        let connect = async move {
            let host = uri
                .authority()
                .map(|a| a.as_str().to_ascii_lowercase())
                .unwrap_or_default();
            let permit = slots
                .of(&host)
                .acquire_owned()
                .await
                .map_err(|_| ConnectError::Io("closed".into()))?;
            let addrs = guard.addresses(&uri).await.map_err(ConnectError::Refused)?;
            let mut last = String::from("no address");
            for addr in addrs {
                match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                    Ok(Ok(stream)) => {
                        let _ = stream.set_nodelay(true);
                        return Ok(GuardedStream {
                            io: TokioIo::new(stream),
                            _slot: permit,
                        });
                    }
                    Ok(Err(e)) => last = format!("{addr}: {e}"),
                    Err(_) => last = format!("{addr}: timed out"),
                }
            }
            Err(ConnectError::Io(last))
        };
        // Bounded even when the client finishes a connect nobody waits for any more.
        Box::pin(async move {
            tokio::time::timeout(CALL_TIMEOUT, connect)
                .await
                .unwrap_or_else(|_| Err(ConnectError::Io("timed out".into())))
        })
    }
}

/// A connection to a user-chosen host, holding its host slot until closed.
pub struct GuardedStream {
    io: TokioIo<TcpStream>,
    _slot: OwnedSemaphorePermit,
}

impl hyper::rt::Read for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

impl Connection for GuardedStream {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

/// A provider's answer.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: http::StatusCode,
    /// `Retry-After` (seconds form), if sent.
    pub retry_after: Option<Duration>,
    /// Body (at most 64 KiB).
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (`Null` if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The start of the body, for error messages.
    pub fn text_snippet(&self) -> String {
        String::from_utf8_lossy(&self.body[..self.body.len().min(200)]).into_owned()
    }
}

/// Why a guarded call failed.
#[derive(Debug)]
pub enum CallError {
    /// The outbound policy refused the target: never retry as is.
    Refused(String),
    /// Network failure or timeout (retryable).
    Failed(String),
}

/// The clients.
#[derive(Clone)]
pub struct Http {
    any: Client<Https, Full<Bytes>>,
    h2: Client<Https, Full<Bytes>>,
    guarded: Client<GuardedHttps, Full<Bytes>>,
    guard: Guard,
}

fn tls() -> hyper_rustls::HttpsConnectorBuilder<hyper_rustls::builderstates::WantsProtocols3> {
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
}

fn connector() -> Https {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    tls().wrap_connector(http)
}

impl Http {
    /// The clients (APNs keeps its own long-lived HTTP/2 connections); user-chosen
    /// targets go through `guard`.
    pub fn new(guard: Guard) -> Result<Http, ConfigError> {
        Ok(Http {
            any: Client::builder(TokioExecutor::new()).build(connector()),
            h2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector()),
            guarded: Client::builder(TokioExecutor::new())
                // Idle connections hold their host's slot: do not keep them long.
                .pool_idle_timeout(Duration::from_secs(30))
                .build(tls().wrap_connector(GuardedConnector {
                    guard: guard.clone(),
                    slots: HostSlots::default(),
                })),
            guard,
        })
    }

    /// The policy and resolver user-chosen targets are checked with.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// One request to an operator-configured provider. Network failures and timeouts are
    /// `Err` (retryable).
    pub async fn call(
        &self,
        req: http::Request<Full<Bytes>>,
        http2_only: bool,
    ) -> Result<Reply, String> {
        let client = if http2_only { &self.h2 } else { &self.any };
        tokio::time::timeout(CALL_TIMEOUT, read(client.request(req)))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| format!("{e:?}"))
    }

    /// One request to a user-chosen target: checked at connect time, at most [`PER_HOST`]
    /// connections per host.
    pub async fn call_guarded(&self, req: http::Request<Full<Bytes>>) -> Result<Reply, CallError> {
        match tokio::time::timeout(CALL_TIMEOUT, read(self.guarded.request(req))).await {
            Err(_) => Err(CallError::Failed("timed out".into())),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                // The connector's refusal, somewhere in the error's source chain.
                let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
                while let Some(s) = source {
                    if let Some(ConnectError::Refused(why)) = s.downcast_ref::<ConnectError>() {
                        return Err(CallError::Refused(format!(
                            "refused by the outbound policy: {why}"
                        )));
                    }
                    source = s.source();
                }
                Err(CallError::Failed(format!("{e:?}")))
            }
        }
    }
}

/// Sends, then reads the status, `Retry-After` and (at most 64 KiB of) the body.
async fn read<E>(
    sent: impl Future<Output = Result<http::Response<hyper::body::Incoming>, E>>,
) -> Result<Reply, E> {
    let resp = sent.await?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok(Reply {
        status,
        retry_after,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<IpAddr>);
    impl Resolve for Fixed {
        fn resolve(&self, _: &str, _: u16) -> Resolving {
            let v = self.0.clone();
            Box::pin(async move { Ok(v) })
        }
    }

    fn guard(allow_private: bool, answer: &[&str]) -> Guard {
        Guard::new(
            Policy { allow_private },
            Arc::new(Fixed(
                answer
                    .iter()
                    .map(|a| a.parse().unwrap_or_else(|_| panic!()))
                    .collect(),
            )),
        )
    }

    fn uri(s: &str) -> http::Uri {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    #[tokio::test]
    async fn guard_checks_what_the_name_resolves_to() {
        let g = guard(false, &["1.1.1.1"]);
        assert_eq!(
            g.addresses(&uri("https://hooks.example.com/x")).await,
            Ok(vec!["1.1.1.1:443".parse().unwrap_or_else(|_| panic!())])
        );
        let g = guard(false, &["1.1.1.1", "127.0.0.1"]);
        assert!(matches!(
            g.addresses(&uri("https://rebind.example.com/x")).await,
            Err(Refusal::Address(_))
        ));
        let g = guard(false, &[]);
        assert_eq!(
            g.addresses(&uri("https://nx.example.com/x")).await,
            Err(Refusal::Unresolved)
        );
        let g = guard(true, &["127.0.0.1"]);
        assert!(g.addresses(&uri("http://fake.test:8080/x")).await.is_ok());
    }

    #[tokio::test]
    async fn guarded_client_never_connects_to_a_refused_address() {
        // Something listens on loopback; a name resolving there must not reach it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|_| panic!());
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let http = Http::new(guard(false, &["127.0.0.1"])).unwrap_or_else(|_| panic!());
        let req = http::Request::post(format!("https://rebind.example.com:{port}/x"))
            .body(Full::new(Bytes::new()))
            .unwrap_or_else(|_| panic!());
        // Port refused first (not 443) …
        assert!(matches!(
            http.call_guarded(req).await,
            Err(CallError::Refused(_))
        ));
        // … and on 443 the address is.
        let req = http::Request::post("https://rebind.example.com/x")
            .body(Full::new(Bytes::new()))
            .unwrap_or_else(|_| panic!());
        match http.call_guarded(req).await {
            Err(CallError::Refused(why)) => assert!(why.contains("127.0.0.1"), "{why}"),
            other => panic!("{other:?}"),
        }
        let accepted = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
        assert!(
            accepted.is_err(),
            "a connection reached the loopback listener"
        );
    }

    /// 60 calls to a host that never answers, each given up after a while: the host
    /// never has more than PER_HOST connections open at once (a connection keeps its slot
    /// until it is closed, not just until its call is abandoned).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn per_host_limit_bounds_open_connections() {
        use std::io::Read;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let max = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let m = max.clone();
        tokio::spawn(async move {
            // The server asks the kernel, at each accept, which earlier connections are still
            // open (a non-blocking read: 0 bytes is the client's close, WouldBlock is open).
            // A reader task would learn of a close only when next scheduled, possibly after
            // the replacement connection was accepted, and count both.
            let mut open: Vec<std::net::TcpStream> = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                open.retain_mut(|s| {
                    let mut b = [0u8; 4096];
                    loop {
                        match s.read(&mut b) {
                            Ok(0) => return false,
                            Ok(_) => continue,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                            Err(_) => return false,
                        }
                    }
                });
                open.push(s.into_std().unwrap());
                m.fetch_max(open.len(), std::sync::atomic::Ordering::SeqCst);
            }
        });
        let http = Http::new(guard(true, &[])).unwrap();
        let tasks: Vec<_> = (0..60u64)
            .map(|i| {
                let http = http.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(10 * i)).await;
                    let req = http::Request::post(format!("http://{addr}/t/{i}"))
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    let give_up = Duration::from_millis(150 + 10 * (i % 7));
                    let _ = tokio::time::timeout(give_up, http.call_guarded(req)).await;
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let max = max.load(std::sync::atomic::Ordering::SeqCst);
        assert!(max >= PER_HOST / 2, "the test did not load the host: {max}");
        assert!(max <= PER_HOST, "{max} connections to one host at once");
    }
}
