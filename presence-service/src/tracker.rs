//! The presence state machine, free of I/O so every rule is unit-tested.
//!
//! Per user: the set of live sockets (with the gateway holding each and whether it is
//! away). A user is `online` while any socket is not away, `away` while all are, and
//! `offline` once the last socket has been gone for the grace period, so a quick reconnect
//! (tunnel, app switch, gateway restart) does not flap. A gateway that stops sending
//! heartbeats for [`DEAD_AFTER_INTERVALS`] intervals is presumed dead and its sockets go
//! (the same rule message-service's routing table applies).
//! A freshly started tracker stays silent for a warm-up period while gateways report in,
//! so a presence-service restart never announces connected users as offline.

use std::collections::HashMap;

pub use proto::limits::DEAD_AFTER_INTERVALS;

/// A user's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// At least one socket, not away.
    Online,
    /// Sockets open, all away or idle.
    Away,
    /// No socket (past the grace period).
    Offline,
}

impl Status {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Away => "away",
            Status::Offline => "offline",
        }
    }
}

/// A published change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Whose.
    pub user_id: i64,
    /// The new status.
    pub status: Status,
    /// When the user was last connected (now, for online and away).
    pub last_seen_ms: i64,
}

#[derive(Debug, Clone)]
struct Socket {
    gateway: String,
    away: bool,
}

#[derive(Debug, Default)]
struct User {
    sockets: HashMap<String, Socket>,
    /// What watchers were last told (None: nothing yet).
    published: Option<Status>,
    /// When the last socket went away.
    empty_since_ms: Option<i64>,
    /// A socket event (not a gateway's snapshot) changed this user: a change that happens
    /// during the warm-up is news, to be announced once it ends, not state to learn.
    changed_by_event: bool,
}

#[derive(Debug)]
struct Gateway {
    last_heard_ms: i64,
    interval_ms: i64,
}

/// Timing rules.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a user with no socket still counts as present.
    pub grace_ms: i64,
    /// How long after start changes are applied silently.
    pub warmup_ms: i64,
}

/// The tracker.
#[derive(Debug)]
pub struct Tracker {
    users: HashMap<i64, User>,
    gateways: HashMap<String, Gateway>,
    /// Last time each user was connected, for users currently offline.
    last_seen: HashMap<i64, i64>,
    timing: Timing,
    started_ms: i64,
}

impl Tracker {
    /// A tracker starting at `now_ms`.
    pub fn new(timing: Timing, now_ms: i64) -> Tracker {
        Tracker {
            users: HashMap::new(),
            gateways: HashMap::new(),
            last_seen: HashMap::new(),
            timing,
            started_ms: now_ms,
        }
    }

    /// Users with at least one socket, and sockets in all (for metrics).
    pub fn counts(&self) -> (usize, usize) {
        let online = self
            .users
            .values()
            .filter(|u| !u.sockets.is_empty())
            .count();
        let sockets = self.users.values().map(|u| u.sockets.len()).sum();
        (online, sockets)
    }

    fn heard(&mut self, gateway: &str, now_ms: i64, interval_ms: Option<i64>) {
        let g = self.gateways.entry(gateway.to_owned()).or_insert(Gateway {
            last_heard_ms: now_ms,
            interval_ms: 10_000,
        });
        g.last_heard_ms = now_ms;
        if let Some(i) = interval_ms {
            g.interval_ms = i.max(100);
        }
    }

    /// A socket opened.
    pub fn up(&mut self, gateway: &str, user_id: i64, connection_id: &str, now_ms: i64) {
        self.heard(gateway, now_ms, None);
        let u = self.users.entry(user_id).or_default();
        u.sockets.insert(
            connection_id.to_owned(),
            Socket {
                gateway: gateway.to_owned(),
                away: false,
            },
        );
        u.empty_since_ms = None;
        u.changed_by_event = true;
    }

    /// A socket closed.
    pub fn down(&mut self, gateway: &str, user_id: i64, connection_id: &str, now_ms: i64) {
        self.heard(gateway, now_ms, None);
        if let Some(u) = self.users.get_mut(&user_id) {
            if u.sockets.remove(connection_id).is_some() && u.sockets.is_empty() {
                u.empty_since_ms = Some(now_ms);
            }
            u.changed_by_event = true;
        }
    }

    /// A socket went away/idle or came back.
    pub fn status(
        &mut self,
        gateway: &str,
        user_id: i64,
        connection_id: &str,
        away: bool,
        now_ms: i64,
    ) {
        self.heard(gateway, now_ms, None);
        if let Some(u) = self.users.get_mut(&user_id) {
            if let Some(s) = u.sockets.get_mut(connection_id) {
                s.away = away;
                u.changed_by_event = true;
            }
        }
    }

    /// A gateway's full socket list replaces what was known about it. `stopping` means the
    /// gateway is shutting down: forget it and its sockets now.
    pub fn heartbeat(
        &mut self,
        gateway: &str,
        sockets: &[(i64, String, bool)],
        interval_ms: i64,
        stopping: bool,
        now_ms: i64,
    ) {
        self.drop_gateway_sockets(gateway, now_ms);
        if stopping {
            self.gateways.remove(gateway);
            return;
        }
        self.heard(gateway, now_ms, Some(interval_ms));
        for (user_id, connection_id, away) in sockets {
            let u = self.users.entry(*user_id).or_default();
            u.sockets.insert(
                connection_id.clone(),
                Socket {
                    gateway: gateway.to_owned(),
                    away: *away,
                },
            );
            u.empty_since_ms = None;
        }
    }

    fn drop_gateway_sockets(&mut self, gateway: &str, now_ms: i64) {
        for u in self.users.values_mut() {
            let before = u.sockets.len();
            u.sockets.retain(|_, s| s.gateway != gateway);
            if before > 0 && u.sockets.is_empty() {
                u.empty_since_ms = Some(now_ms);
            }
        }
    }

    fn derived(&self, u: &User, now_ms: i64) -> Option<Status> {
        if u.sockets.is_empty() {
            match u.empty_since_ms {
                Some(t) if now_ms - t >= self.timing.grace_ms => Some(Status::Offline),
                // Within the grace period the last published status holds.
                _ => u.published,
            }
        } else if u.sockets.values().all(|s| s.away) {
            Some(Status::Away)
        } else {
            Some(Status::Online)
        }
    }

    /// Expires dead gateways and returns the changes to publish.
    pub fn tick(&mut self, now_ms: i64) -> Vec<Change> {
        let dead: Vec<String> = self
            .gateways
            .iter()
            .filter(|(_, g)| {
                now_ms - g.last_heard_ms > g.interval_ms * i64::from(DEAD_AFTER_INTERVALS)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for g in dead {
            tracing::warn!(gateway = %g, "gateway presumed dead; dropping its sockets");
            self.drop_gateway_sockets(&g, now_ms);
            self.gateways.remove(&g);
        }
        let warming = now_ms - self.started_ms < self.timing.warmup_ms;
        let mut changes = Vec::new();
        let mut gone = Vec::new();
        let ids: Vec<i64> = self.users.keys().copied().collect();
        for id in ids {
            let Some(u) = self.users.get(&id) else {
                continue;
            };
            let derived = self.derived(u, now_ms);
            let published = u.published;
            let empty_since = u.empty_since_ms;
            if derived != published {
                if let Some(status) = derived {
                    let last_seen = if status == Status::Offline {
                        empty_since.unwrap_or(now_ms)
                    } else {
                        now_ms
                    };
                    // While warming up, learn silently what the gateways' snapshots say
                    // (a restart must not announce connected users as news); a change a
                    // socket event made is held back and announced when the warm-up ends.
                    if !warming {
                        changes.push(Change {
                            user_id: id,
                            status,
                            last_seen_ms: last_seen,
                        });
                    }
                    if let Some(u) = self.users.get_mut(&id) {
                        if !warming || !u.changed_by_event {
                            u.published = Some(status);
                        }
                    }
                }
            }
            if derived == Some(Status::Offline) {
                gone.push((id, empty_since.unwrap_or(now_ms)));
            }
        }
        for (id, at) in gone {
            self.users.remove(&id);
            self.last_seen.insert(id, at);
        }
        changes
    }

    /// Current status, last seen time and socket count of a user.
    pub fn get(&self, user_id: i64, now_ms: i64) -> (Status, i64, u32) {
        match self.users.get(&user_id) {
            Some(u) => {
                let status = self.derived(u, now_ms).unwrap_or(Status::Offline);
                let last_seen = if u.sockets.is_empty() {
                    u.empty_since_ms.unwrap_or(now_ms)
                } else {
                    now_ms
                };
                (
                    status,
                    last_seen,
                    u32::try_from(u.sockets.len()).unwrap_or(u32::MAX),
                )
            }
            None => (
                Status::Offline,
                self.last_seen.get(&user_id).copied().unwrap_or(0),
                0,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        grace_ms: 5_000,
        warmup_ms: 1_000,
    };

    fn warm() -> Tracker {
        let mut t = Tracker::new(T, 0);
        assert!(t.tick(1_000).is_empty());
        t
    }

    fn statuses(c: &[Change]) -> Vec<(i64, &'static str)> {
        c.iter().map(|c| (c.user_id, c.status.as_str())).collect()
    }

    #[test]
    fn two_devices_online_away_offline() {
        let mut t = warm();
        t.up("g1", 7, "g1/1", 1_000);
        assert_eq!(statuses(&t.tick(1_001)), vec![(7, "online")]);
        t.up("g2", 7, "g2/1", 1_100);
        assert!(t.tick(1_101).is_empty());
        t.status("g1", 7, "g1/1", true, 1_200);
        assert!(t.tick(1_201).is_empty(), "one device still active");
        t.status("g2", 7, "g2/1", true, 1_300);
        assert_eq!(statuses(&t.tick(1_301)), vec![(7, "away")]);
        t.status("g2", 7, "g2/1", false, 1_400);
        assert_eq!(statuses(&t.tick(1_401)), vec![(7, "online")]);
        t.down("g1", 7, "g1/1", 2_000);
        t.down("g2", 7, "g2/1", 2_500);
        assert!(t.tick(7_499).is_empty(), "grace period");
        let c = t.tick(7_500);
        assert_eq!(statuses(&c), vec![(7, "offline")]);
        assert_eq!(c[0].last_seen_ms, 2_500);
        assert_eq!(t.get(7, 8_000), (Status::Offline, 2_500, 0));
    }

    #[test]
    fn reconnect_within_grace_does_not_flap() {
        let mut t = warm();
        t.up("g1", 1, "g1/1", 1_000);
        t.tick(1_000);
        t.down("g1", 1, "g1/1", 2_000);
        t.tick(3_000);
        t.up("g2", 1, "g2/9", 4_000);
        assert!(t.tick(10_000).is_empty());
        assert_eq!(t.get(1, 10_000).0, Status::Online);
    }

    #[test]
    fn dead_gateway_sockets_expire_but_other_devices_keep_user_online() {
        let mut t = warm();
        t.heartbeat(
            "g1",
            &[(1, "g1/1".into(), false), (2, "g1/2".into(), false)],
            1_000,
            false,
            1_000,
        );
        t.up("g2", 2, "g2/1", 1_000);
        t.tick(1_000);
        // g1 falls silent; g2 keeps beating.
        for now in (2_000..=4_000).step_by(1_000) {
            t.heartbeat("g2", &[(2, "g2/1".into(), false)], 1_000, false, now);
            assert!(t.tick(now).is_empty());
        }
        t.heartbeat("g2", &[(2, "g2/1".into(), false)], 1_000, false, 4_001);
        t.tick(4_001); // g1 dead: user 1 has no socket, grace starts
        let c = t.tick(9_001);
        assert_eq!(statuses(&c), vec![(1, "offline")]);
        assert_eq!(t.get(2, 9_001).0, Status::Online);
    }

    #[test]
    fn restart_learns_silently_then_reports() {
        let mut t = Tracker::new(T, 0);
        t.heartbeat("g1", &[(1, "g1/1".into(), false)], 10_000, false, 100);
        assert!(t.tick(500).is_empty(), "no announcements while warming up");
        assert_eq!(t.get(1, 500).0, Status::Online);
        t.down("g1", 1, "g1/1", 2_000);
        assert_eq!(statuses(&t.tick(7_000)), vec![(1, "offline")]);
    }

    #[test]
    fn a_socket_opened_during_warmup_is_announced_when_it_ends() {
        // The single-node program starts its presence-service with its gateway: a user
        // connecting in the first seconds must not stay "offline" for the watchers.
        let mut t = Tracker::new(T, 0);
        t.heartbeat("g1", &[(1, "g1/1".into(), false)], 10_000, false, 100);
        t.up("g1", 2, "g1/2", 200);
        assert!(t.tick(500).is_empty(), "silent while warming up");
        assert_eq!(t.get(2, 500).0, Status::Online, "but answers queries");
        assert_eq!(
            statuses(&t.tick(1_000)),
            vec![(2, "online")],
            "the event's change is announced; the snapshot's user 1 is not"
        );
        assert!(t.tick(1_500).is_empty());
    }

    #[test]
    fn stopping_gateway_is_forgotten_at_once() {
        let mut t = warm();
        t.up("g1", 1, "g1/1", 1_000);
        t.tick(1_000);
        t.heartbeat("g1", &[], 1_000, true, 2_000);
        assert_eq!(statuses(&t.tick(7_000)), vec![(1, "offline")]);
    }
}
