//! Rate limiting: a token bucket (burst up to `capacity`, refilled continuously), budgets
//! of buckets per user and per client address, and the client address itself.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

    /// [`Bucket::take`], or how long until a token will be there.
    pub fn take_or_wait(&mut self, now: Instant) -> Result<(), Duration> {
        if self.take(now) {
            return Ok(());
        }
        if self.per_sec <= 0.0 {
            return Err(Duration::MAX);
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec))
    }

    fn is_full(&self) -> bool {
        self.tokens >= self.capacity - 0.5
    }
}

/// A refusal by a [`UserBudget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget {
    /// When the next attempt can succeed.
    pub retry_after: Duration,
    /// The burst the budget allows (`q` of the `RateLimit-Policy` header).
    pub quota: u32,
    /// Seconds in which a spent budget refills completely (`w`).
    pub window_secs: u64,
}

/// Users remembered before those with a full bucket are dropped (bounds memory under
/// REST-only traffic, which has no connection close to forget a user at).
const MAX_TRACKED_USERS: usize = 100_000;

/// One budget per user on this gateway (burst `quota`, refilled over `window`), shared by
/// every door that spends it.
#[derive(Debug)]
pub struct UserBudget {
    quota: u32,
    window: Duration,
    buckets: Mutex<HashMap<i64, Bucket>>,
}

impl UserBudget {
    /// `quota` operations per `window` (bursts of `quota`); a zero quota means no limit.
    pub fn new(quota: u32, window: Duration) -> UserBudget {
        UserBudget {
            quota,
            window,
            buckets: Mutex::default(),
        }
    }

    /// Spends one operation of `user_id`'s budget.
    pub fn spend(&self, user_id: i64, now: Instant) -> Result<(), OverBudget> {
        if self.quota == 0 {
            return Ok(());
        }
        let cap = f64::from(self.quota);
        let per_sec = cap / self.window.as_secs_f64().max(0.001);
        let mut m = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_TRACKED_USERS && !m.contains_key(&user_id) {
            m.retain(|_, b| !b.is_full());
        }
        m.entry(user_id)
            .or_insert_with(|| Bucket::full(cap, per_sec))
            .take_or_wait(now)
            .map_err(|retry_after| OverBudget {
                retry_after,
                quota: self.quota,
                window_secs: self.window.as_secs().max(1),
            })
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

/// Open connections per client address (sockets, streams and plain HTTP alike).
#[derive(Debug, Default)]
pub struct OpenPerIp {
    counts: Mutex<HashMap<std::net::IpAddr, u32>>,
}

/// One open connection's place in [`OpenPerIp`], given back when dropped.
#[derive(Debug)]
pub struct OpenSlot {
    of: std::sync::Arc<OpenPerIp>,
    ip: std::net::IpAddr,
}

impl OpenPerIp {
    /// A place for one more connection from `ip`, unless it already has `max` (0: no limit).
    pub fn open(self: &std::sync::Arc<Self>, ip: std::net::IpAddr, max: u32) -> Option<OpenSlot> {
        let mut m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(OpenSlot {
            of: self.clone(),
            ip,
        })
    }

    /// Connections open from `ip`.
    #[cfg(test)]
    pub fn count(&self, ip: std::net::IpAddr) -> u32 {
        let m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        let mut m = self.of.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// An IP network (`10.0.0.0/8`, `fd00::/8`) or a single address (`10.0.0.10`): how load
/// balancers are named in `INDABA_TRUSTED_PROXIES` (a Kubernetes ingress has no fixed pod
/// address, but its pod network is known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<IpNet, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = addr.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix must be 0 to {max}"))?,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl IpNet {
    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The client's address: the peer itself, or — when the peer is a trusted proxy — the
/// rightmost `X-Forwarded-For` entry that is not a trusted proxy (entries to its left are
/// whatever the client claimed, so they are not believed).
pub fn client_ip(
    peer: Option<std::net::IpAddr>,
    forwarded_for: Option<&str>,
    trusted: &[IpNet],
) -> Option<std::net::IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let Some(xff) = forwarded_for else {
        return Some(peer);
    };
    for part in xff.rsplit(',') {
        match part.trim().parse::<std::net::IpAddr>() {
            Ok(ip) if is_trusted(ip) => continue,
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
        let lb = ["10.0.0.1".parse::<IpNet>().unwrap()];
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
    fn trusted_proxies_may_be_networks() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let net: IpNet = "10.244.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.244.3.7")));
        assert!(!net.contains(ip("10.245.0.1")));
        assert!(net.contains(ip("::ffff:10.244.0.9")), "IPv4-mapped");
        let v6: IpNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!("0.0.0.0/0"
            .parse::<IpNet>()
            .unwrap()
            .contains(ip("203.0.113.1")));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nope".parse::<IpNet>().is_err());
        assert_eq!(
            client_ip(Some(ip("10.244.1.1")), Some("198.51.100.7"), &[net]),
            Some(ip("198.51.100.7"))
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
    fn user_budgets_are_per_user_and_say_when_to_retry() {
        let t0 = Instant::now();
        let b = UserBudget::new(2, Duration::from_secs(10));
        assert!(b.spend(1, t0).is_ok() && b.spend(1, t0).is_ok());
        let over = b.spend(1, t0).unwrap_err();
        // One token refills in window / quota = 5 s.
        assert!(over.retry_after > Duration::from_millis(4_900));
        assert!(over.retry_after <= Duration::from_secs(5));
        assert_eq!((over.quota, over.window_secs), (2, 10));
        assert!(b.spend(2, t0).is_ok(), "another user has their own budget");
        assert!(b.spend(1, t0 + Duration::from_secs(5)).is_ok());
        let unlimited = UserBudget::new(0, Duration::from_secs(10));
        assert!((0..1000).all(|_| unlimited.spend(1, t0).is_ok()));
    }

    #[test]
    fn open_connections_per_address_are_given_back() {
        let p = std::sync::Arc::new(OpenPerIp::default());
        let a: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let one = p.open(a, 2).unwrap();
        let two = p.open(a, 2).unwrap();
        assert!(p.open(a, 2).is_none());
        assert!(p.open("192.0.2.2".parse().unwrap(), 2).is_some());
        drop(one);
        assert_eq!(p.count(a), 1);
        let _three = p.open(a, 2).unwrap();
        drop(two);
        assert!(p.open(a, 0).is_some(), "0 means no limit");
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
