//! Prometheus metrics of one gateway, served as text at `GET /metrics`.
//!
//! Names follow `indaba_<name>_<unit>[_total]`; labels are bounded enums (never a user
//! id). Each metric is declared once, with its help text and labels, in
//! [`Metrics::default`] ([`bus::metrics`]); recording is a relaxed atomic add on the hot
//! path, rendering happens per scrape.

use std::time::Duration;

use bus::metrics::{Counter, Gauge, Histogram, Registry};

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

/// The gateway's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `indaba_connections_active`.
    connections_active: Gauge,
    /// `indaba_connections_total`.
    connections_total: Counter,
    /// `indaba_connection_failures_total{reason}`, indexed by [`HandshakeFailure`].
    handshake_failures: [Counter; 7],
    /// `indaba_messages_sent_total`.
    messages_sent: Counter,
    /// `indaba_messages_delivered_total`.
    messages_delivered: Counter,
    /// `indaba_rate_limited_total`.
    rate_limited: Counter,
    /// `indaba_slow_consumer_closes_total`.
    slow_consumer_closes: Counter,
    /// `indaba_resumes_total`.
    resumes: Counter,
    /// `indaba_bus_errors_total`.
    bus_errors: Counter,
    /// `indaba_send_batches_total`.
    send_batches: Counter,
    /// `indaba_batched_sends_total`.
    batched_sends: Counter,
    /// `indaba_sends_refused_overload_total`.
    sends_refused_overload: Counter,
    /// `indaba_bus_resyncs_total`.
    bus_resyncs: Counter,
    /// `indaba_send_latency_seconds`.
    send_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut r = Registry::default();
        Metrics {
            connections_active: r.gauge("indaba_connections_active", "Open WebSocket connections."),
            connections_total: r.counter(
                "indaba_connections_total",
                "WebSocket connections accepted.",
            ),
            handshake_failures: r.counters(
                "indaba_connection_failures_total",
                "WebSocket handshakes refused, by reason.",
                "reason",
                HandshakeFailure::ALL.map(HandshakeFailure::label),
            ),
            messages_sent: r.counter(
                "indaba_messages_sent_total",
                "Chat messages stored and acknowledged (message_sent).",
            ),
            messages_delivered: r.counter(
                "indaba_messages_delivered_total",
                "Recipients (other than the sender) a new_message reached on this gateway.",
            ),
            rate_limited: r.counter(
                "indaba_rate_limited_total",
                "Frames refused by a rate limit.",
            ),
            slow_consumer_closes: r.counter(
                "indaba_slow_consumer_closes_total",
                "Sockets closed for not reading.",
            ),
            resumes: r.counter("indaba_resumes_total", "Resumes (sync) served."),
            bus_errors: r.counter(
                "indaba_bus_errors_total",
                "Failed requests to backend services over the bus.",
            ),
            send_batches: r.counter(
                "indaba_send_batches_total",
                "Requests to message-service carrying several sends.",
            ),
            batched_sends: r.counter(
                "indaba_batched_sends_total",
                "Sends that went to message-service in a batch.",
            ),
            sends_refused_overload: r.counter(
                "indaba_sends_refused_overload_total",
                "Sends refused with unavailable: they would have waited past the send queue budget.",
            ),
            bus_resyncs: r.counter(
                "indaba_bus_resyncs_total",
                "Times the bus may have dropped deliveries (reconnect or slow consumer) and every socket was asked to resync.",
            ),
            send_latency: r.histogram(
                "indaba_send_latency_seconds",
                "From a chat_message arriving to its message_sent (store commit included).",
                &LATENCY_BUCKETS,
            ),
            registry: r,
        }
    }
}

impl Metrics {
    /// The bus may have dropped deliveries; every socket is being closed with 1012.
    pub fn bus_resync(&self) {
        self.bus_resyncs.inc();
    }

    /// A socket opened.
    pub fn socket_opened(&self) {
        self.connections_active.inc();
        self.connections_total.inc();
    }

    /// A socket closed.
    pub fn socket_closed(&self) {
        self.connections_active.dec();
    }

    /// A handshake was refused.
    pub fn handshake_failed(&self, why: HandshakeFailure) {
        self.handshake_failures[why as usize].inc();
    }

    /// A chat message was stored and acknowledged, `took` after it arrived.
    pub fn message_sent(&self, took: Duration) {
        self.messages_sent.inc();
        self.send_latency.observe(took.as_secs_f64());
    }

    /// Recipients a `new_message` reached here.
    pub fn delivered(&self, n: usize) {
        self.messages_delivered
            .inc_by(u64::try_from(n).unwrap_or(0));
    }

    /// A frame was refused by a rate limit.
    pub fn rate_limited(&self) {
        self.rate_limited.inc();
    }

    /// A socket was closed for not reading.
    pub fn slow_consumer(&self) {
        self.slow_consumer_closes.inc();
    }

    /// A client resumed with `sync`.
    pub fn resumed(&self) {
        self.resumes.inc();
    }

    /// A bus request failed (timeout, no responders, disconnected).
    pub fn bus_error(&self) {
        self.bus_errors.inc();
    }

    /// A request carrying `n` sends went to message-service.
    pub fn send_batch(&self, n: usize) {
        self.send_batches.inc();
        self.batched_sends.inc_by(u64::try_from(n).unwrap_or(0));
    }

    /// A send was refused: the send queue was over its budget.
    pub fn send_refused_overload(&self) {
        self.sends_refused_overload.inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.registry.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dashboards and the integration tests read these names and labels.
    #[test]
    fn names_and_labels_are_stable() {
        let m = Metrics::default();
        m.socket_opened();
        m.handshake_failed(HandshakeFailure::Unauthorized);
        m.message_sent(Duration::from_millis(3));
        let text = m.render();
        for line in [
            "indaba_connections_active 1\n",
            "indaba_connections_total 1\n",
            "indaba_connection_failures_total{reason=\"unauthorized\"} 1\n",
            "indaba_connection_failures_total{reason=\"ip_connections\"} 0\n",
            "indaba_messages_sent_total 1\n",
            "indaba_messages_delivered_total 0\n",
            "indaba_rate_limited_total 0\n",
            "indaba_slow_consumer_closes_total 0\n",
            "indaba_resumes_total 0\n",
            "indaba_bus_errors_total 0\n",
            "indaba_bus_resyncs_total 0\n",
            "indaba_send_latency_seconds_bucket{le=\"0.002\"} 0\n",
            "indaba_send_latency_seconds_bucket{le=\"0.005\"} 1\n",
            "indaba_send_latency_seconds_bucket{le=\"+Inf\"} 1\n",
            "indaba_send_latency_seconds_count 1\n",
            "# TYPE indaba_send_latency_seconds histogram\n",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
    }
}
