//! Test harness: real nats-server and PostgreSQL processes on random ports, the real
//! services built with their own `App::build`, and small WebSocket/HTTP clients.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;
use tokio_tungstenite::tungstenite::Message;

pub const SECRET: &str = "integration-test-secret-0123456789";
pub const WAIT: Duration = Duration::from_secs(10);

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A nats-server child process with JetStream, killed on drop.
pub struct Nats {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Nats {
    pub fn start() -> Nats {
        Nats::start_on(free_port())
    }

    /// Starts nats-server on a given port (to restart one where clients expect it).
    pub fn start_on(port: u16) -> Nats {
        let bin = std::env::var("INDABA_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {bin} (set INDABA_NATS_SERVER or run scripts/test.sh): {e}")
            });
        wait_for_port(port, "nats-server");
        Nats {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One throwaway PostgreSQL cluster per test process. A shell watchdog stops it when the
/// test process exits, so nothing outlives the run even if a test panics.
struct PgCluster {
    port: u16,
    _dir: tempfile::TempDir,
}

static PG: OnceCell<PgCluster> = OnceCell::const_new();
static DB_COUNTER: AtomicU32 = AtomicU32::new(0);

fn pg_bin(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("INDABA_PG_BIN") {
        return PathBuf::from(dir).join(name);
    }
    // Debian keeps the server binaries out of PATH.
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        if let Some(bin) = versions.pop() {
            if bin.join(name).exists() {
                return bin.join(name);
            }
        }
    }
    PathBuf::from(name)
}

/// initdb refuses to run as root: then the cluster runs as `INDABA_PG_RUN_AS`
/// (default `postgres`).
fn pg_user() -> Option<String> {
    if let Ok(u) = std::env::var("INDABA_PG_RUN_AS") {
        return Some(u).filter(|u| !u.is_empty());
    }
    let uid = Command::new("id").arg("-u").output().ok()?;
    (String::from_utf8_lossy(&uid.stdout).trim() == "0").then(|| "postgres".to_owned())
}

fn as_pg_user(user: &Option<String>, bin: PathBuf) -> Command {
    match user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--"]).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

async fn start_pg() -> PgCluster {
    tokio::task::spawn_blocking(|| {
        let user = pg_user();
        let dir = tempfile::tempdir().expect("tempdir");
        if let Some(u) = &user {
            let ok = Command::new("chown").arg(u).arg(dir.path()).status().expect("chown");
            assert!(ok.success(), "chown {u} failed");
        }
        let data = dir.path().join("data");
        let ok = as_pg_user(&user, pg_bin("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .expect("run initdb (install PostgreSQL server binaries)");
        assert!(ok.success(), "initdb failed");
        let port = free_port();
        let opts = format!(
            "-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=300",
            sock = dir.path().display()
        );
        let ok = as_pg_user(&user, pg_bin("pg_ctl"))
            .args(["-D"])
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("pg.log"))
            .args(["-o", &opts, "-w", "start"])
            .stdout(Stdio::null())
            .status()
            .expect("run pg_ctl");
        assert!(ok.success(), "pg_ctl start failed; see {}", dir.path().join("pg.log").display());
        // The watchdog stops the cluster and removes its files once this process is gone,
        // even if a test panicked.
        let stop = format!(
            "{run}{pg_ctl} -D {data} stop -m immediate",
            run = user.as_ref().map(|u| format!("runuser -u {u} -- ")).unwrap_or_default(),
            pg_ctl = pg_bin("pg_ctl").display(),
            data = data.display(),
        );
        let script = format!(
            "while kill -0 {parent} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
            parent = std::process::id(),
            dir = dir.path().display(),
        );
        // Deliberately never waited for: the watchdog must outlive this process.
        #[allow(clippy::zombie_processes)]
        let _watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn postgres watchdog");
        wait_for_port(port, "postgres");
        PgCluster { port, _dir: dir }
    })
    .await
    .expect("start postgres")
}

/// A fresh, empty database on the shared throwaway cluster.
pub async fn fresh_database() -> String {
    let pg = PG.get_or_init(start_pg).await;
    let n = DB_COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("it_{}_{n}", std::process::id());
    let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match sqlx::PgPool::connect(&admin).await {
            Ok(pool) => {
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&pool)
                    .await
                    .expect("create database");
                pool.close().await;
                break;
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "postgres not accepting connections: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    format!("postgres://postgres@127.0.0.1:{}/{name}", pg.port)
}

/// A running service task; aborting on drop stands in for `kill -9`.
pub struct Running {
    pub handle: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Running {
    /// Graceful stop (SIGTERM equivalent): waits for the service to finish.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(WAIT, &mut self.handle).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

pub fn run_with_stop<F>(f: impl FnOnce(tokio::sync::oneshot::Receiver<()>) -> F) -> Running
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let fut = f(rx);
    let handle = tokio::spawn(async move {
        if let Err(e) = fut.await {
            eprintln!("service exited with error: {e:#}");
        }
    });
    Running {
        handle,
        stop: Some(tx),
    }
}

pub async fn spawn_message_service(
    nats_url: &str,
    database_url: &str,
) -> (Running, message_service::Store) {
    spawn_message_service_with(nats_url, database_url, |_| {}).await
}

pub async fn spawn_message_service_with(
    nats_url: &str,
    database_url: &str,
    tweak: impl FnOnce(&mut message_service::Settings),
) -> (Running, message_service::Store) {
    let mut settings = message_service::Settings {
        store: message_service::StoreSettings::Postgres(database_url.into()),
        bus: message_service::BusSettings::Nats(nats_url.into()),
        pool_size: 8,
        max_text_chars: 100,
        max_group_size: 1000,
        max_in_flight: 256,
        retention: None,
        grpc_listen: None,
        grpc_keys: Default::default(),
        http_listen: None,
        push_jobs: true,
        group_commit: true,
        crash_after_commits: None,
        jetstream_replicas: 1,
    };
    tweak(&mut settings);
    let app = message_service::App::build(settings)
        .await
        .expect("build message-service");
    let store = app.store();
    let running = run_with_stop(|rx| {
        app.run(async move {
            let _ = rx.await;
        })
    });
    (running, store)
}

/// A message-service serving gRPC on a free port, guarded by `keys`. Returns the gRPC
/// address; [`spawn_message_service_ops`] also the operations port.
pub async fn spawn_message_service_grpc(
    nats_url: &str,
    database_url: &str,
    keys: &str,
) -> (Running, SocketAddr) {
    let (r, grpc, _) = spawn_message_service_ops(nats_url, database_url, keys).await;
    (r, grpc)
}

/// A message-service with gRPC and its operations port on free ports.
pub async fn spawn_message_service_ops(
    nats_url: &str,
    database_url: &str,
    keys: &str,
) -> (Running, SocketAddr, SocketAddr) {
    let settings = message_service::Settings {
        store: message_service::StoreSettings::Postgres(database_url.into()),
        bus: message_service::BusSettings::Nats(nats_url.into()),
        pool_size: 8,
        max_text_chars: 100,
        max_group_size: 1000,
        max_in_flight: 256,
        retention: None,
        grpc_listen: Some("127.0.0.1:0".parse().expect("addr")),
        grpc_keys: proto::grpc_auth::ApiKeys::parse(keys).expect("keys"),
        http_listen: Some("127.0.0.1:0".parse().expect("addr")),
        push_jobs: true,
        group_commit: true,
        crash_after_commits: None,
        jetstream_replicas: 1,
    };
    let app = message_service::App::build(settings)
        .await
        .expect("build message-service");
    let addr = app.grpc_addr().expect("grpc addr");
    let ops = app.http_addr().expect("ops addr");
    let running = run_with_stop(|rx| {
        app.run(async move {
            let _ = rx.await;
        })
    });
    (running, addr, ops)
}

pub async fn spawn_gateway(nats_url: &str, id: &str) -> (Running, SocketAddr) {
    spawn_gateway_with(nats_url, id, |_| {}).await
}

pub async fn spawn_gateway_with(
    nats_url: &str,
    id: &str,
    tweak: impl FnOnce(&mut gateway::Settings),
) -> (Running, SocketAddr) {
    let mut s = gateway::Settings::new(
        gateway::auth::KeySource::Hs256Secret(SECRET.into()),
        gateway::BusSettings::Nats(nats_url.into()),
    );
    s.listen = "127.0.0.1:0".parse().expect("addr");
    s.gateway_id = id.into();
    s.max_text_chars = 100;
    // Tests send bursts far above a human rate; the rate-limit tests set their own.
    s.chat_rate_per_10s = 100_000;
    s.connect_rate_per_ip_10s = 0;
    tweak(&mut s);
    let app = gateway::App::build(s).await.expect("build gateway");
    let addr = app.local_addr().expect("addr");
    let running = run_with_stop(|rx| {
        app.run(async move {
            let _ = rx.await;
        })
    });
    (running, addr)
}

/// A presence-service with test timings: 300 ms grace, no warm-up (unless tweaked).
pub async fn spawn_presence(
    nats_url: &str,
    tweak: impl FnOnce(&mut presence_service::Settings),
) -> (Running, presence_service::Handle, Option<SocketAddr>) {
    let mut s =
        presence_service::Settings::new(presence_service::BusSettings::Nats(nats_url.into()));
    s.grace = Duration::from_millis(300);
    s.warmup = Duration::ZERO;
    s.tick = Duration::from_millis(50);
    tweak(&mut s);
    let app = presence_service::App::build(s)
        .await
        .expect("build presence");
    let handle = app.handle();
    let grpc = app.grpc_addr();
    let running = run_with_stop(|rx| {
        app.run(async move {
            let _ = rx.await;
        })
    });
    (running, handle, grpc)
}

/// `indaba <role>` in its own OS process (so a test can `kill -9` it), its stderr (the JSON
/// log) kept in a file.
pub struct RoleProcess {
    child: Child,
    log: tempfile::NamedTempFile,
}

impl RoleProcess {
    pub fn start(role: &str, env: &[(&str, String)]) -> RoleProcess {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_indaba"))
            .arg(role)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("log file"))
            .spawn()
            .expect("spawn indaba");
        RoleProcess { child, log }
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// SIGKILL: no goodbye heartbeat, no close frames.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RoleProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A gateway in its own OS process (`indaba gateway`).
pub struct GatewayProcess {
    process: RoleProcess,
    pub addr: SocketAddr,
}

impl GatewayProcess {
    pub fn start(nats_url: &str, id: &str, heartbeat_ms: u64) -> GatewayProcess {
        let port = free_port();
        let process = RoleProcess::start(
            "gateway",
            &[
                ("NATS_URL", nats_url.to_owned()),
                ("INDABA_JWT_SECRET", SECRET.to_owned()),
                ("INDABA_LISTEN", format!("127.0.0.1:{port}")),
                ("INDABA_GATEWAY_ID", id.to_owned()),
                ("INDABA_GATEWAY_HEARTBEAT_MS", heartbeat_ms.to_string()),
                ("INDABA_LOG", "warn".to_owned()),
            ],
        );
        wait_for_port(port, "gateway process");
        GatewayProcess {
            process,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// SIGKILL: no goodbye heartbeat, no close frames.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }
}

pub async fn spawn_single_node(
    dir: &std::path::Path,
) -> (Running, SocketAddr, message_service::Store) {
    spawn_single_node_with(dir, "127.0.0.1:0", &[]).await
}

/// A single node on a given address with `INDABA_*` options (as the environment gives them).
pub async fn spawn_single_node_with(
    dir: &std::path::Path,
    listen: &str,
    options: &[(String, String)],
) -> (Running, SocketAddr, message_service::Store) {
    let node = indaba::SingleNode::build(indaba::Settings {
        data_dir: dir.to_path_buf(),
        listen: listen.parse().expect("addr"),
        jwt_secret: Some(SECRET.into()),
        max_text_chars: 100,
        retention: None,
        grpc_listen: None,
        grpc_keys: Default::default(),
        options: indaba::Options(options.iter().cloned().collect()),
    })
    .await
    .expect("build single node");
    let addr = node.local_addr().expect("addr");
    let store = node.store();
    let running = run_with_stop(|rx| {
        node.run(async move {
            let _ = rx.await;
        })
    });
    (running, addr, store)
}

pub fn token(user: i64) -> String {
    gateway::auth::mint_hs256(SECRET, user, Duration::from_secs(3600)).expect("mint")
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A WebSocket client speaking the spec's protocol.
pub struct Client {
    ws: Ws,
    pub user_id: i64,
    pub connection_id: String,
    /// Frames read while looking for another type, kept for later `recv_type` calls.
    pending: std::collections::VecDeque<Value>,
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

/// GET a plain-text resource (e.g. `/metrics`).
pub async fn http_text(addr: SocketAddr, path: &str) -> (u16, String) {
    http_raw(addr, "GET", path, None, None).await
}

/// A minimal HTTP/1.1 client (one request per connection) returning status and JSON body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let (status, text) = http_raw(addr, method, path, bearer, body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// One request on its own connection; returns the status and the (de-chunked) body.
async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    http_full(addr, method, path, &headers, body).await
}

/// One request with any headers; returns the status and the (de-chunked) body.
pub async fn http_full(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    if method != "GET" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("http timeout")
        .expect("read");
    let text = String::from_utf8_lossy(&buf);
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (status, body)
}

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

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
