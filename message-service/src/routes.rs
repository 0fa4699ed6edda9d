//! Which gateways hold sockets of which users.
//!
//! Deliveries go to one subject per *gateway*, not per user: a gateway then needs one NATS
//! subscription whatever its number of sockets (a per-user subscription costs ~4.9 KB of
//! client memory in async-nats; see ARCHITECTURE.md). The price is this table, kept from
//! two sources: per-socket `ConnectionEvent`s (fast) and each gateway's periodic full
//! `GatewayHeartbeat` (repairs anything lost). A gateway silent for
//! [`DEAD_AFTER_INTERVALS`] heartbeat intervals is dropped (the same count presence uses,
//! so a dead gateway's users go offline and unroutable together).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use proto::limits::DEAD_AFTER_INTERVALS;
use proto::pb::{connection_event::Kind, ConnectionEvent, GatewayHeartbeat};

#[derive(Debug)]
struct GatewayState {
    /// Open sockets per user on this gateway.
    sockets: HashMap<i64, u32>,
    last_seen: Instant,
    interval: Duration,
}

/// The routing table; clones share it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Routes {
    gateways: Arc<RwLock<HashMap<Arc<str>, GatewayState>>>,
}

impl Routes {
    /// Applies one socket event.
    pub(crate) fn apply_event(&self, ev: &ConnectionEvent) {
        let mut gws = self.gateways.write().unwrap_or_else(|e| e.into_inner());
        let gw = gws
            .entry(Arc::from(ev.gateway_id.as_str()))
            .or_insert_with(|| GatewayState {
                sockets: HashMap::new(),
                last_seen: Instant::now(),
                interval: Duration::from_secs(10),
            });
        gw.last_seen = Instant::now();
        match ev.kind() {
            Kind::Up => *gw.sockets.entry(ev.user_id).or_insert(0) += 1,
            Kind::Down => {
                if let Some(n) = gw.sockets.get_mut(&ev.user_id) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        gw.sockets.remove(&ev.user_id);
                    }
                }
            }
            Kind::Unspecified => {}
        }
    }

    /// Replaces what is known about a gateway with its heartbeat. Returns the users the
    /// table did not have on that gateway (their socket-opened event was lost or is late).
    pub(crate) fn apply_heartbeat(&self, hb: &GatewayHeartbeat) -> Vec<i64> {
        let mut gws = self.gateways.write().unwrap_or_else(|e| e.into_inner());
        if hb.stopping {
            gws.remove(hb.gateway_id.as_str());
            return Vec::new();
        }
        let mut sockets = HashMap::with_capacity(hb.sockets.len());
        for s in &hb.sockets {
            *sockets.entry(s.user_id).or_insert(0) += 1;
        }
        let known = gws.get(hb.gateway_id.as_str());
        let added: Vec<i64> = sockets
            .keys()
            .copied()
            .filter(|u| !known.is_some_and(|g| g.sockets.contains_key(u)))
            .collect();
        gws.insert(
            Arc::from(hb.gateway_id.as_str()),
            GatewayState {
                sockets,
                last_seen: Instant::now(),
                interval: Duration::from_millis(u64::from(hb.interval_ms.max(100))),
            },
        );
        added
    }

    /// Drops gateways that stopped sending heartbeats. Returns how many were dropped.
    pub(crate) fn expire(&self) -> usize {
        let mut gws = self.gateways.write().unwrap_or_else(|e| e.into_inner());
        let before = gws.len();
        gws.retain(|_, g| g.last_seen.elapsed() < g.interval * DEAD_AFTER_INTERVALS);
        before - gws.len()
    }

    /// Groups `users` by the gateways that hold their sockets. Users with no socket
    /// anywhere are left out (they catch up with `sync`, or get a push).
    pub(crate) fn by_gateway(&self, users: &[i64]) -> Vec<(Arc<str>, Vec<i64>)> {
        let gws = self.gateways.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (id, g) in gws.iter() {
            let here: Vec<i64> = users
                .iter()
                .copied()
                .filter(|u| g.sockets.contains_key(u))
                .collect();
            if !here.is_empty() {
                out.push((id.clone(), here));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: Kind, gw: &str, user: i64) -> ConnectionEvent {
        ConnectionEvent {
            kind: kind as i32,
            gateway_id: gw.into(),
            user_id: user,
            connection_id: String::new(),
            at_ms: 0,
        }
    }

    #[test]
    fn events_and_heartbeats() {
        let r = Routes::default();
        r.apply_event(&ev(Kind::Up, "g1", 1));
        r.apply_event(&ev(Kind::Up, "g1", 1));
        r.apply_event(&ev(Kind::Up, "g2", 2));
        assert_eq!(r.by_gateway(&[1]).len(), 1);
        // One of two sockets closes: still routed.
        r.apply_event(&ev(Kind::Down, "g1", 1));
        assert_eq!(r.by_gateway(&[1])[0].1, vec![1]);
        r.apply_event(&ev(Kind::Down, "g1", 1));
        assert!(r.by_gateway(&[1]).is_empty());
        // A heartbeat replaces the gateway's state wholesale, and names who is new there.
        r.apply_event(&ev(Kind::Up, "g2", 3));
        let mut added = r.apply_heartbeat(&GatewayHeartbeat {
            gateway_id: "g2".into(),
            sockets: [3, 3, 4]
                .into_iter()
                .map(|u| proto::pb::SocketInfo {
                    user_id: u,
                    ..Default::default()
                })
                .collect(),
            sent_at_ms: 0,
            interval_ms: 1000,
            stopping: false,
            part: 0,
            parts: 1,
        });
        added.sort_unstable();
        assert_eq!(
            added,
            vec![4],
            "3 was known from its event; 4 only from the heartbeat"
        );
        assert!(r.by_gateway(&[2]).is_empty());
        assert_eq!(r.by_gateway(&[2, 3, 4])[0].1, vec![3, 4]);
        r.apply_heartbeat(&GatewayHeartbeat {
            gateway_id: "g2".into(),
            stopping: true,
            ..Default::default()
        });
        assert!(r.by_gateway(&[3]).is_empty());
    }
}
