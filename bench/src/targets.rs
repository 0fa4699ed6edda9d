//! The systems under test, started by the benchmark itself on loopback: the ceiling router,
//! the Node peer (`bench/peer/node-router.js`), the single-node program, and the distributed
//! deployment (nats-server, a throwaway PostgreSQL cluster with default durability,
//! message-service, presence-service, gateway — all separate processes, release builds).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ceiling::Ceiling;
use crate::cpu::Proc;

/// The JWT secret every real target is started with.
pub const SECRET: &str = "bench-secret-0123456789abcdef";

/// Which system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// In-memory router (the ceiling).
    Ceiling,
    /// The Node peer: an in-memory router on the `ws` package, the same frames.
    Node,
    /// `indaba serve`.
    Single,
    /// Separate processes over NATS and PostgreSQL.
    Distributed,
    /// The same with one transaction per message (`INDABA_GROUP_COMMIT=false`): the
    /// "before" of the group-commit optimisation.
    DistributedPerMessage,
}

impl Kind {
    /// Column name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ceiling => "ceiling",
            Kind::Node => "node",
            Kind::Single => "single-node",
            Kind::Distributed => "distributed",
            Kind::DistributedPerMessage => "distributed, commit per message",
        }
    }
}

/// A started target.
pub struct Target {
    /// Which.
    pub kind: Kind,
    /// WebSocket/HTTP address.
    pub addr: SocketAddr,
    /// The process holding client sockets (for RSS), if not this one.
    pub gateway_pid: Option<u32>,
    /// The target's processes whose CPU time a run counts (the generator is added to them).
    pub procs: Vec<Proc>,
    ceiling: Option<Ceiling>,
    children: Vec<Child>,
    _dir: Option<TempDir>,
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(tag: &str) -> anyhow::Result<TempDir> {
    let p = std::env::temp_dir().join(format!("indaba-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p)?;
    Ok(TempDir(p))
}

/// A free loopback port.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_ready(addr: SocketAddr, path: &str, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, _)) = http(addr, "GET", path, None, "").await {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what} not ready on {addr}{path}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn wait_port(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "{what} did not open port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The environment every real target shares: no rate or connection limits in the way of a
/// load test, quiet logs.
fn common_env() -> Vec<(&'static str, String)> {
    vec![
        ("INDABA_JWT_SECRET", SECRET.into()),
        ("INDABA_CHAT_RATE_PER_10S", "100000000".into()),
        ("INDABA_MAX_CONNECTIONS_PER_USER", "1000".into()),
        // Every benchmark connection comes from loopback addresses.
        ("INDABA_CONNECT_RATE_PER_IP_10S", "0".into()),
        ("INDABA_MAX_CONNECTIONS_PER_IP", "0".into()),
        ("INDABA_REST_RATE_PER_10S", "0".into()),
        ("INDABA_LOG", "warn".into()),
        ("INDABA_PUSH_JOBS", "true".into()),
    ]
}

fn spawn(bin: &Path, args: &[&str], env: &[(&str, String)], log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log)?;
    Command::new(bin)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", bin.display()))
}

fn proc(name: &str, pid: u32) -> Proc {
    Proc {
        name: name.into(),
        pid,
        tree: true,
    }
}

/// The postmaster's pid: the first line of `postmaster.pid`.
fn postmaster_pid(dir: &Path) -> anyhow::Result<u32> {
    let f = dir.join("pg").join("postmaster.pid");
    std::fs::read_to_string(&f)?
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no pid in {}", f.display()))
}

/// Where the Node peer lives: `bench/peer` of this source tree, else of the working directory.
fn peer_dir() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("peer");
    if built.join("node-router.js").exists() {
        built
    } else {
        PathBuf::from("bench/peer")
    }
}

impl Target {
    /// Starts a target.
    pub async fn start(kind: Kind, bin_dir: &Path) -> anyhow::Result<Target> {
        match kind {
            Kind::Ceiling => {
                let c = Ceiling::start().await?;
                Ok(Target {
                    kind,
                    addr: c.addr,
                    gateway_pid: None,
                    procs: Vec::new(),
                    ceiling: Some(c),
                    children: Vec::new(),
                    _dir: None,
                })
            }
            Kind::Single => {
                let dir = temp_dir("single")?;
                let port = free_port()?;
                let mut env = common_env();
                env.push(("INDABA_DATA_DIR", dir.0.display().to_string()));
                env.push(("INDABA_LISTEN", format!("127.0.0.1:{port}")));
                let child = spawn(
                    &bin_dir.join("indaba"),
                    &["serve"],
                    &env,
                    &dir.0.join("indaba.log"),
                )?;
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                let pid = child.id();
                let t = Target {
                    kind,
                    addr,
                    gateway_pid: Some(pid),
                    procs: vec![proc("indaba", pid)],
                    ceiling: None,
                    children: vec![child],
                    _dir: Some(dir),
                };
                wait_ready(addr, "/readyz", "indaba").await?;
                Ok(t)
            }
            Kind::Node => Self::node().await,
            Kind::Distributed => Self::distributed(bin_dir, true).await,
            Kind::DistributedPerMessage => Self::distributed(bin_dir, false).await,
        }
    }

    /// The Node peer: `node bench/peer/node-router.js` (`ws` installed there first if missing;
    /// `INDABA_NODE` names another node binary).
    async fn node() -> anyhow::Result<Target> {
        let peer = peer_dir();
        anyhow::ensure!(
            peer.join("node-router.js").exists(),
            "no {}",
            peer.join("node-router.js").display()
        );
        if !peer.join("node_modules").join("ws").exists() {
            eprintln!("   npm install in {}", peer.display());
            // The lockfile's exact versions when there is one.
            let install = if peer.join("package-lock.json").exists() {
                "ci"
            } else {
                "install"
            };
            let ok = Command::new("npm")
                .args([install, "--no-audit", "--no-fund"])
                .current_dir(&peer)
                .stdout(Stdio::null())
                .status()
                .map_err(|e| anyhow::anyhow!("cannot run npm: {e}"))?;
            anyhow::ensure!(ok.success(), "npm install failed in {}", peer.display());
        }
        let dir = temp_dir("node")?;
        let port = free_port()?;
        let node = std::env::var("INDABA_NODE").unwrap_or_else(|_| "node".into());
        let child = Command::new(&node)
            .arg(peer.join("node-router.js"))
            .args(["127.0.0.1", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.0.join("node.log"))?)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {node}: {e} (set INDABA_NODE)"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let pid = child.id();
        let t = Target {
            kind: Kind::Node,
            addr,
            gateway_pid: Some(pid),
            procs: vec![proc("node router", pid)],
            ceiling: None,
            children: vec![child],
            _dir: Some(dir),
        };
        wait_ready(addr, "/readyz", "node router").await?;
        Ok(t)
    }

    async fn distributed(bin_dir: &Path, group_commit: bool) -> anyhow::Result<Target> {
        let dir = temp_dir("dist")?;
        let mut children = Vec::new();
        // NATS with JetStream.
        let nats_port = free_port()?;
        let nats_bin = std::env::var("INDABA_NATS_SERVER").unwrap_or_else(|_| {
            let local = PathBuf::from(".tools/venv/bin/nats-server");
            if local.exists() {
                local.display().to_string()
            } else {
                "nats-server".into()
            }
        });
        let js = dir.0.join("js");
        children.push(
            Command::new(&nats_bin)
                .args(["-a", "127.0.0.1", "-p", &nats_port.to_string(), "-js", "-sd"])
                .arg(&js)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| anyhow::anyhow!("cannot start {nats_bin}: {e} (run scripts/test.sh once, or set INDABA_NATS_SERVER)"))?,
        );
        wait_port(nats_port, "nats-server")?;
        let mut procs = vec![proc("nats-server", children[0].id())];
        // PostgreSQL, default durability (fsync, synchronous_commit on): what production runs.
        let pg_port = free_port()?;
        let db = start_postgres(&dir.0, pg_port)?;
        // The postmaster (started by pg_ctl, not a child of ours) and, counted with it, every
        // backend it forks.
        procs.push(proc("postgresql", postmaster_pid(&dir.0)?));
        let nats = format!("nats://127.0.0.1:{nats_port}");
        let gw_port = free_port()?;
        let mut env = common_env();
        // Object storage for attachments: s3s-fs (installed by scripts/test.sh), so uploads
        // go where a deployment's go, not through the gateway. Without it, no attachments.
        let s3_bin =
            std::env::var("INDABA_S3_SERVER").unwrap_or_else(|_| ".tools/s3s-fs/bin/s3s-fs".into());
        if Path::new(&s3_bin).exists() {
            let s3_port = free_port()?;
            // `INDABA_BENCH_S3_DIR` puts the objects on another disk (e.g. /dev/shm), as a
            // deployment's storage is not on the database's disk.
            let root = match std::env::var_os("INDABA_BENCH_S3_DIR") {
                Some(d) => PathBuf::from(d).join(format!("indaba-bench-s3-{}", std::process::id())),
                None => dir.0.join("s3"),
            };
            std::fs::create_dir_all(root.join("bench"))?;
            children.push(
                Command::new(&s3_bin)
                    .args(["--host", "127.0.0.1", "--port", &s3_port.to_string()])
                    .args([
                        "--access-key",
                        "bench-key",
                        "--secret-key",
                        "bench-secret-0123456789",
                    ])
                    .arg(&root)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?,
            );
            wait_port(s3_port, "s3s-fs")?;
            procs.push(proc("s3s-fs", children[children.len() - 1].id()));
            env.push(("INDABA_S3_BUCKET", "bench".into()));
            env.push(("INDABA_S3_ENDPOINT", format!("http://127.0.0.1:{s3_port}")));
            env.push(("INDABA_S3_ACCESS_KEY_ID", "bench-key".into()));
            env.push((
                "INDABA_S3_SECRET_ACCESS_KEY",
                "bench-secret-0123456789".into(),
            ));
        }
        env.push(("NATS_URL", nats.clone()));
        env.push(("DATABASE_URL", db));
        env.push(("INDABA_GRPC_LISTEN", "127.0.0.1:0".into()));
        env.push(("INDABA_HTTP_LISTEN", "127.0.0.1:0".into()));
        env.push(("INDABA_DB_POOL_SIZE", "32".into()));
        env.push(("INDABA_GROUP_COMMIT", group_commit.to_string()));
        for name in ["message-service", "presence-service"] {
            let child = spawn(
                &bin_dir.join(name),
                &[],
                &env,
                &dir.0.join(format!("{name}.log")),
            )?;
            procs.push(proc(name, child.id()));
            children.push(child);
        }
        env.push(("INDABA_LISTEN", format!("127.0.0.1:{gw_port}")));
        env.push(("INDABA_GATEWAY_ID", "bench-gw".into()));
        let gw = spawn(
            &bin_dir.join("gateway"),
            &[],
            &env,
            &dir.0.join("gateway.log"),
        )?;
        let pid = gw.id();
        procs.push(proc("gateway", pid));
        children.push(gw);
        let addr = SocketAddr::from(([127, 0, 0, 1], gw_port));
        let t = Target {
            kind: if group_commit {
                Kind::Distributed
            } else {
                Kind::DistributedPerMessage
            },
            addr,
            gateway_pid: Some(pid),
            procs,
            ceiling: None,
            children,
            _dir: Some(dir),
        };
        wait_ready(addr, "/readyz", "gateway").await?;
        // message-service is up once a request round-trips.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if t.create_group(&[1, 2]).await.is_ok() {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "message-service never answered");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(t)
    }

    /// A token for `user` (the ceiling and the Node peer take the bare id).
    pub fn token(&self, user: i64) -> String {
        match self.kind {
            Kind::Ceiling | Kind::Node => user.to_string(),
            _ => gateway::auth::mint_hs256(SECRET, user, Duration::from_secs(3600))
                .unwrap_or_default(),
        }
    }

    /// A group of `members` (the first creates it).
    pub async fn create_group(&self, members: &[i64]) -> anyhow::Result<i64> {
        if let Some(c) = &self.ceiling {
            return Ok(c.create_group(members));
        }
        let body = serde_json::json!({"participant_ids": &members[1..], "title": "bench", "kind": "group"}).to_string();
        let (status, v) = http(
            self.addr,
            "POST",
            "/api/v1/conversations/",
            Some(&self.token(members[0])),
            &body,
        )
        .await?;
        anyhow::ensure!(status == 201, "create group: {status} {v}");
        v["id"]
            .as_i64()
            .ok_or_else(|| anyhow::anyhow!("no id in {v}"))
    }

    /// Every process whose CPU time a run counts: the target's and the generator (this
    /// process, which is also the ceiling router).
    pub fn cpu_procs(&self) -> Vec<Proc> {
        let mut p = self.procs.clone();
        p.push(Proc {
            name: if self.kind == Kind::Ceiling {
                "generator + ceiling router".into()
            } else {
                "generator".into()
            },
            pid: std::process::id(),
            tree: false,
        });
        p
    }

    /// Resident memory of the process holding the sockets (this one for the ceiling), KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.gateway_pid.unwrap_or_else(std::process::id))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(d) = &self._dir {
            let _ = stop_postgres(&d.0);
        }
    }
}

/// VmRSS of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .map(|b| b.join(name))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// initdb refuses root: run the cluster as `postgres` then.
fn as_pg(bin: PathBuf) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn start_postgres(dir: &Path, port: u16) -> anyhow::Result<String> {
    let data = dir.join("pg");
    std::fs::create_dir_all(&data)?;
    if is_root() {
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status();
    }
    let ok = as_pg(pg_bin("initdb"))
        .args(["-D"])
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "--no-sync"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    anyhow::ensure!(ok.success(), "initdb failed");
    let opts = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=256MB",
        dir.display()
    );
    let ok = as_pg(pg_bin("pg_ctl"))
        .args(["-D"])
        .arg(&data)
        .arg("-l")
        .arg(dir.join("pg.log"))
        .args(["-o", &opts, "-w", "start"])
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(
        ok.success(),
        "pg_ctl start failed (see {})",
        dir.join("pg.log").display()
    );
    let ok = Command::new(pg_bin("psql"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-qc",
            "CREATE DATABASE indaba",
        ])
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(ok.success(), "create database failed");
    Ok(format!("postgres://postgres@127.0.0.1:{port}/indaba"))
}

fn stop_postgres(dir: &Path) -> anyhow::Result<()> {
    let data = dir.join("pg");
    if data.exists() {
        as_pg(pg_bin("pg_ctl"))
            .args(["-D"])
            .arg(&data)
            .args(["stop", "-m", "immediate"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
    }
    Ok(())
}

/// One HTTP/1.1 request; status and JSON body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // Small answers only (no chunked bodies expected here).
    let json = serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}
