//! Rate limiting: a token bucket (burst up to `capacity`, refilled continuously).

use std::time::Instant;

/// A token bucket.
#[derive(Debug, Clone)]
pub struct Bucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    /// A full bucket of `capacity` tokens refilling at `per_sec`.
    pub fn full(capacity: f64, per_sec: f64) -> Bucket {
        Bucket {
            capacity,
            per_sec,
            tokens: capacity,
            last: None,
        }
    }

    /// Takes a token if one is available at `now`.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.per_sec;
            self.tokens = (self.tokens + refill).min(self.capacity);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Connection attempts per client address: a bucket per address, forgotten when idle.
#[derive(Debug, Default)]
pub struct PerIp {
    buckets: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, Bucket>>,
}

/// Addresses remembered before idle ones are dropped (bounds memory under a spray of
/// source addresses).
const MAX_TRACKED_IPS: usize = 100_000;

impl PerIp {
    /// Whether `ip` may make another attempt (`per_10s` attempts per 10 s; 0 = no limit).
    pub fn allow(&self, ip: std::net::IpAddr, per_10s: u32, now: Instant) -> bool {
        if per_10s == 0 {
            return true;
        }
        let mut m = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_TRACKED_IPS && !m.contains_key(&ip) {
            // A full bucket is the same as a forgotten one: drop those first.
            let cap = f64::from(per_10s);
            m.retain(|_, b| b.tokens < cap - 0.5);
        }
        m.entry(ip)
            .or_insert_with(|| Bucket::full(f64::from(per_10s), f64::from(per_10s) / 10.0))
            .take(now)
    }
}

/// The client's address: the peer itself, or — when the peer is a trusted proxy — the
/// rightmost `X-Forwarded-For` entry that is not a trusted proxy (entries to its left are
/// whatever the client claimed, so they are not believed).
pub fn client_ip(
    peer: Option<std::net::IpAddr>,
    forwarded_for: Option<&str>,
    trusted: &[std::net::IpAddr],
) -> Option<std::net::IpAddr> {
    let peer = peer?;
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let Some(xff) = forwarded_for else {
        return Some(peer);
    };
    for part in xff.rsplit(',') {
        match part.trim().parse::<std::net::IpAddr>() {
            Ok(ip) if trusted.contains(&ip) => continue,
            Ok(ip) => return Some(ip),
            Err(_) => return Some(peer),
        }
    }
    Some(peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn client_ip_believes_only_trusted_proxies() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let lb = [ip("10.0.0.1")];
        // Not from the proxy: the header is ignored.
        assert_eq!(
            client_ip(Some(ip("203.0.113.9")), Some("1.2.3.4"), &lb),
            Some(ip("203.0.113.9"))
        );
        // From the proxy: the rightmost untrusted entry, not the client's own claim on the left.
        assert_eq!(
            client_ip(Some(ip("10.0.0.1")), Some("6.6.6.6, 198.51.100.7"), &lb),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            client_ip(Some(ip("10.0.0.1")), Some("198.51.100.7, 10.0.0.1"), &lb),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            client_ip(Some(ip("10.0.0.1")), Some("garbage"), &lb),
            Some(ip("10.0.0.1"))
        );
        assert_eq!(
            client_ip(Some(ip("10.0.0.1")), None, &lb),
            Some(ip("10.0.0.1"))
        );
    }

    #[test]
    fn per_ip_attempts_are_limited_per_address() {
        let t0 = Instant::now();
        let p = PerIp::default();
        let (a, b) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        assert!((0..5).all(|_| p.allow(a, 5, t0)));
        assert!(!p.allow(a, 5, t0));
        assert!(p.allow(b, 5, t0));
        assert!(p.allow(a, 5, t0 + Duration::from_secs(2)));
        assert!((0..100).all(|_| p.allow(a, 0, t0)), "0 means no limit");
    }

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut b = Bucket::full(3.0, 1.0);
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        assert!(!b.take(t0 + Duration::from_millis(500)));
        assert!(b.take(t0 + Duration::from_millis(1_100)));
        // Never more than the capacity, however long the pause.
        let later = t0 + Duration::from_secs(100);
        assert!(b.take(later) && b.take(later) && b.take(later));
        assert!(!b.take(later));
    }
}
