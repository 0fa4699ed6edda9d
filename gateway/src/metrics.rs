//! Prometheus metrics of one gateway, served as text at `GET /metrics`.
//!
//! Names follow `indaba_<name>_<unit>[_total]`; labels are bounded enums (never a user
//! id). Plain atomics: recording is a relaxed add on the hot path, rendering happens per
//! scrape.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Why a WebSocket handshake was refused (the `reason` label).
#[derive(Debug, Clone, Copy)]
pub enum HandshakeFailure {
    /// Missing, invalid or expired token.
    Unauthorized,
    /// Origin not on the allowlist.
    Origin,
    /// User at the connection cap.
    ConnectionCap,
    /// Gateway draining.
    Draining,
    /// Not a valid WebSocket upgrade.
    BadUpgrade,
    /// Too many connection attempts from one client address.
    IpRate,
    /// Too many open connections from one client address.
    IpConnections,
}

impl HandshakeFailure {
    const ALL: [HandshakeFailure; 7] = [
        HandshakeFailure::Unauthorized,
        HandshakeFailure::Origin,
        HandshakeFailure::ConnectionCap,
        HandshakeFailure::Draining,
        HandshakeFailure::BadUpgrade,
        HandshakeFailure::IpRate,
        HandshakeFailure::IpConnections,
    ];

    fn label(self) -> &'static str {
        match self {
            HandshakeFailure::Unauthorized => "unauthorized",
            HandshakeFailure::Origin => "origin",
            HandshakeFailure::ConnectionCap => "connection_cap",
            HandshakeFailure::Draining => "draining",
            HandshakeFailure::BadUpgrade => "bad_upgrade",
            HandshakeFailure::IpRate => "ip_rate",
            HandshakeFailure::IpConnections => "ip_connections",
        }
    }
}

/// Upper bounds (seconds) of the send-latency histogram buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The gateway's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    connections_active: AtomicI64,
    connections_total: AtomicU64,
    handshake_failures: [AtomicU64; 7],
    messages_sent: AtomicU64,
    messages_delivered: AtomicU64,
    rate_limited: AtomicU64,
    slow_consumer_closes: AtomicU64,
    resumes: AtomicU64,
    bus_errors: AtomicU64,
    latency_buckets: [AtomicU64; 12],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Metrics {
    /// A socket opened.
    pub fn socket_opened(&self) {
        self.connections_active.fetch_add(1, Relaxed);
        self.connections_total.fetch_add(1, Relaxed);
    }

    /// A socket closed.
    pub fn socket_closed(&self) {
        self.connections_active.fetch_sub(1, Relaxed);
    }

    /// A handshake was refused.
    pub fn handshake_failed(&self, why: HandshakeFailure) {
        self.handshake_failures[why as usize].fetch_add(1, Relaxed);
    }

    /// A chat message was stored and acknowledged, `took` after it arrived.
    pub fn message_sent(&self, took: Duration) {
        self.messages_sent.fetch_add(1, Relaxed);
        let secs = took.as_secs_f64();
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.latency_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us
            .fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Recipients a `new_message` reached here.
    pub fn delivered(&self, n: usize) {
        self.messages_delivered
            .fetch_add(u64::try_from(n).unwrap_or(0), Relaxed);
    }

    /// A frame was refused by a rate limit.
    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Relaxed);
    }

    /// A socket was closed for not reading.
    pub fn slow_consumer(&self) {
        self.slow_consumer_closes.fetch_add(1, Relaxed);
    }

    /// A client resumed with `sync`.
    pub fn resumed(&self) {
        self.resumes.fetch_add(1, Relaxed);
    }

    /// A bus request failed (timeout, no responders, disconnected).
    pub fn bus_error(&self) {
        self.bus_errors.fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let mut line = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let v = |a: &AtomicU64| vec![(String::new(), a.load(Relaxed).to_string())];
        line(
            "indaba_connections_active",
            "gauge",
            "Open WebSocket connections.",
            &[(
                String::new(),
                self.connections_active.load(Relaxed).to_string(),
            )],
        );
        line(
            "indaba_connections_total",
            "counter",
            "WebSocket connections accepted.",
            &v(&self.connections_total),
        );
        let failures: Vec<(String, String)> = HandshakeFailure::ALL
            .iter()
            .map(|f| {
                (
                    format!("{{reason=\"{}\"}}", f.label()),
                    self.handshake_failures[*f as usize]
                        .load(Relaxed)
                        .to_string(),
                )
            })
            .collect();
        line(
            "indaba_connection_failures_total",
            "counter",
            "WebSocket handshakes refused, by reason.",
            &failures,
        );
        line(
            "indaba_messages_sent_total",
            "counter",
            "Chat messages stored and acknowledged (message_sent).",
            &v(&self.messages_sent),
        );
        line(
            "indaba_messages_delivered_total",
            "counter",
            "Recipients (other than the sender) a new_message reached on this gateway.",
            &v(&self.messages_delivered),
        );
        line(
            "indaba_rate_limited_total",
            "counter",
            "Frames refused by a rate limit.",
            &v(&self.rate_limited),
        );
        line(
            "indaba_slow_consumer_closes_total",
            "counter",
            "Sockets closed for not reading.",
            &v(&self.slow_consumer_closes),
        );
        line(
            "indaba_resumes_total",
            "counter",
            "Resumes (sync) served.",
            &v(&self.resumes),
        );
        line(
            "indaba_bus_errors_total",
            "counter",
            "Failed requests to backend services over the bus.",
            &v(&self.bus_errors),
        );
        let mut hist: Vec<(String, String)> = LATENCY_BUCKETS
            .iter()
            .zip(&self.latency_buckets)
            .map(|(le, n)| {
                (
                    format!("_bucket{{le=\"{le}\"}}"),
                    n.load(Relaxed).to_string(),
                )
            })
            .collect();
        let count = self.latency_count.load(Relaxed).to_string();
        hist.push(("_bucket{le=\"+Inf\"}".into(), count.clone()));
        #[allow(clippy::cast_precision_loss)]
        let sum = self.latency_sum_us.load(Relaxed) as f64 / 1e6;
        hist.push(("_sum".into(), sum.to_string()));
        hist.push(("_count".into(), count));
        line(
            "indaba_send_latency_seconds",
            "histogram",
            "From a chat_message arriving to its message_sent (store commit included).",
            &hist,
        );
        out
    }
}
