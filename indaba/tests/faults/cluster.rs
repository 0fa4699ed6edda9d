//! The local cluster of `scripts/cluster.sh` (3-node NATS with JetStream, PostgreSQL, two
//! gateways, two message-services, presence-service, push-service: all real processes),
//! driven from a test. Every process is the `indaba` binary under test, in its role.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

/// The HS256 secret the cluster's gateways verify client tokens with.
pub const SECRET: &str = "fault-test-secret-0123456789abcdef";

/// Every process of the cluster, as `scripts/cluster.sh` names them.
pub const ALL: [&str; 10] = [
    "nats-1",
    "nats-2",
    "nats-3",
    "postgres",
    "message-service-1",
    "message-service-2",
    "presence-service",
    "push-service",
    "gateway-1",
    "gateway-2",
];

/// A running local cluster; `Drop` takes it down (its processes and files).
pub struct Cluster {
    dir: tempfile::TempDir,
    base: u16,
    env: Vec<(String, String)>,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh")
}

impl Cluster {
    /// Starts every process with these extra settings (passed to all services).
    pub fn up(extra_env: &[(&str, &str)]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("indaba-faults-")
            .tempdir()
            .expect("tempdir");
        // PostgreSQL runs as its own user when we are root: it must be able to enter.
        let _ = Command::new("chmod").arg("755").arg(dir.path()).status();
        // Below the ephemeral range, so the other tests' random ports never collide.
        let base = 10_000 + (std::process::id() % 1_300) as u16 * 10;
        let mut env: Vec<(String, String)> = vec![
            ("INDABA_BIN".into(), env!("CARGO_BIN_EXE_indaba").into()),
            (
                "INDABA_CLUSTER_DIR".into(),
                dir.path().display().to_string(),
            ),
            ("INDABA_CLUSTER_PORT_BASE".into(), base.to_string()),
            ("INDABA_JWT_SECRET".into(), SECRET.into()),
            ("INDABA_LOG".into(), "info".into()),
            // Every client of these tests comes from 127.0.0.1, as if behind one proxy.
            ("INDABA_CONNECT_RATE_PER_IP_10S".into(), "0".into()),
            ("INDABA_MAX_CONNECTIONS_PER_IP".into(), "0".into()),
        ];
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let c = Cluster { dir, base, env };
        c.run(&["up"], &[]);
        c
    }

    fn run(&self, args: &[&str], extra: &[(&str, &str)]) {
        let mut cmd = Command::new("bash");
        cmd.arg(script()).args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run scripts/cluster.sh");
        assert!(
            out.status.success(),
            "cluster.sh {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kill -9` one process (names as in `scripts/cluster.sh status`).
    pub fn kill(&self, name: &str) {
        self.run(&["kill", name], &[]);
    }

    /// Starts one process again, with extra settings for it alone.
    pub fn start_with(&self, name: &str, extra: &[(&str, &str)]) {
        self.run(&["start", name], extra);
    }

    /// Starts one process again.
    pub fn start(&self, name: &str) {
        self.start_with(name, &[]);
    }

    /// SIGTERM (a gateway drains first) and wait for the exit.
    pub fn stop(&self, name: &str) {
        self.run(&["stop", name], &[]);
    }

    /// SIGTERM, wait, start.
    pub fn restart(&self, name: &str) {
        self.run(&["restart", name], &[]);
    }

    /// Whether a process is alive (its pid file names a running process).
    pub fn alive(&self, name: &str) -> bool {
        let pid = std::fs::read_to_string(self.dir.path().join("run").join(format!("{name}.pid")))
            .unwrap_or_default();
        let pid = pid.trim();
        !pid.is_empty() && std::path::Path::new(&format!("/proc/{pid}")).exists() && {
            // A zombie (exited, not yet reaped by its session) is not alive.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            !stat.contains(") Z ")
        }
    }

    /// The processes that are not running (a fault must not take down anything else).
    pub fn dead(&self) -> Vec<&'static str> {
        ALL.iter().copied().filter(|n| !self.alive(n)).collect()
    }

    /// The two gateways' addresses, gateway-1 first.
    pub fn gateways(&self) -> Vec<SocketAddr> {
        (1..=2)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], self.base + 8000 + i)))
            .collect()
    }

    /// A counter from a worker's `/metrics` (message-service-1/-2), 0 when absent.
    pub fn metric(&self, worker: &str, name: &str) -> u64 {
        let offset = match worker {
            "message-service-1" => 1,
            "message-service-2" => 2,
            "presence-service" => 3,
            "push-service" => 4,
            other => panic!("no metrics port for {other}"),
        };
        self.http_get(self.base + 9050 + offset, "/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// A NATS node's JetStream report (`/jsz` on its monitoring port, streams and config).
    pub fn jetstream_report(&self, node: usize) -> String {
        self.http_get(
            self.base + 8221 + node as u16,
            "/jsz?streams=true&config=true",
        )
    }

    /// The response (head and body) of a plain HTTP GET on loopback; empty on failure.
    fn http_get(&self, port: u16, path: &str) -> String {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
        let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body
    }

    /// The last lines of a process's log (for failure messages).
    pub fn log_tail(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("logs").join(format!("{name}.log")))
                .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut cmd = Command::new("bash");
        cmd.arg(script()).arg("down");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let _ = cmd.output();
    }
}
