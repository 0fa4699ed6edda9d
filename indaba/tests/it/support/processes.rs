//! The processes a test runs: nats-server and PostgreSQL on free ports, service tasks
//! that stop on request (or abort on drop), and `indaba <role>` as an OS process.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use super::{SECRET, WAIT};

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

    /// Starts nats-server (JetStream, a free port) with `conf` added to its configuration
    /// file (e.g. an `authorization` block); the server logs to [`Nats::log`].
    pub fn start_with_config(conf: &str) -> Nats {
        let bin = std::env::var("INDABA_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let path = dir.path().join("nats.conf");
        let store = dir.path().join("jetstream");
        let log = dir.path().join("nats.log");
        std::fs::write(
            &path,
            format!(
                "listen: 127.0.0.1:{port}\nlog_file: {log:?}\njetstream {{ store_dir: {store:?} }}\n{conf}"
            ),
        )
        .expect("write nats.conf");
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        wait_for_port(port, "nats-server");
        Nats {
            child,
            port,
            _dir: dir,
        }
    }

    /// The server's log, when started with [`Nats::start_with_config`].
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("nats.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// A real S3-compatible server (s3s-fs, installed by `scripts/test.sh`; it checks SigV4
/// signatures and presigned URLs' expiry) on a free port, serving a bucket in a temporary
/// directory.
pub struct S3Server {
    child: Child,
    pub port: u16,
    /// The directory the server keeps objects in (`<root>/<bucket>/<key>`).
    pub root: tempfile::TempDir,
}

impl S3Server {
    pub const BUCKET: &'static str = "indaba-test";
    pub const ACCESS_KEY: &'static str = "test-access-key";
    pub const SECRET_KEY: &'static str = "test-secret-key-0123456789";

    pub fn start() -> S3Server {
        let bin = std::env::var("INDABA_S3_SERVER").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../.tools/s3s-fs/bin/s3s-fs").into()
        });
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join(Self::BUCKET)).expect("bucket");
        let port = free_port();
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--access-key",
                Self::ACCESS_KEY,
                "--secret-key",
                Self::SECRET_KEY,
            ])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {bin} (set INDABA_S3_SERVER or run scripts/test.sh): {e}")
            });
        wait_for_port(port, "s3s-fs");
        S3Server { child, port, root }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `INDABA_S3_*` settings that point at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("INDABA_S3_BUCKET", Self::BUCKET.to_owned()),
            ("INDABA_S3_ENDPOINT", self.endpoint()),
            ("INDABA_S3_REGION", "us-east-1".to_owned()),
            ("INDABA_S3_ACCESS_KEY_ID", Self::ACCESS_KEY.to_owned()),
            ("INDABA_S3_SECRET_ACCESS_KEY", Self::SECRET_KEY.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// Resolves when [`Running::stop`] asks the service to stop: the shutdown future a
/// service's `run` takes.
pub async fn stopped(rx: tokio::sync::oneshot::Receiver<()>) {
    let _ = rx.await;
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
