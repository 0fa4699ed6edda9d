//! The messages published in the last few seconds, per recipient, so a socket that opens
//! while they were in flight still gets them live.
//!
//! The window this closes: a client reconnects (its gateway died, or the network blinked)
//! and resumes with `sync`; the resume reads the store, and a message committed just after
//! that read is published to the gateways the routing table knows *at that moment*. The
//! table learns about the new socket from a routing event that may still be in flight
//! (every instance applies them on its own, and 1,000 clients reconnecting at once queue
//! up), so the message goes to the dead gateway, or nowhere, and the resume never saw it:
//! lost for the live path until the next resume. The fault test of a gateway killed under
//! 1,000 clients found exactly this.
//!
//! So every instance remembers what it published for [`WINDOW`], and when a routing event
//! says a user's socket opened on a gateway, it publishes again to that gateway the user's
//! messages published since the socket opened (by the event's timestamp: this assumes the
//! hosts' clocks agree to within a few milliseconds, as NTP keeps them). Gateways drop what a socket already has (by message id, and by the seq a
//! resume covered), so the repeat costs a little bandwidth and nothing else. A routing event
//! arriving later than the window would reopen the gap; 10 s is far beyond what routing takes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::pb;

/// How long published messages are remembered.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);

/// Most messages remembered per recipient: a socket that missed more than this in the window
/// is far behind, and its resume (`sync`) reads them from the store anyway.
pub(crate) const PER_USER: usize = 256;

/// A published message as the catch-up needs it: the message and the socket it came from
/// (never echoed back there).
#[derive(Debug, Clone)]
pub(crate) struct Published {
    /// The message.
    pub(crate) message: Arc<pb::ChatMessage>,
    /// The sender's socket (`origin_connection_id`), empty when none.
    pub(crate) origin: Arc<str>,
    /// When it was first published (unix ms).
    pub(crate) published_ms: i64,
}

/// One recipient's recent messages, oldest first, with when they were published (monotonic,
/// for the window; the wall-clock time is [`Published::published_ms`]).
type Queue = VecDeque<(Instant, Published)>;

/// Recently published messages by recipient. Clones share the table.
#[derive(Clone, Default)]
pub(crate) struct Recent {
    table: Arc<Mutex<Table>>,
}

#[derive(Default)]
struct Table {
    by_user: HashMap<i64, Queue>,
    /// Message ids recorded within the window, oldest first, so a republish (the outbox
    /// sweeper) is recognised in O(1) instead of by scanning every recipient's queue (a
    /// 1,000-member room would make that a million comparisons per message).
    seen: HashSet<i64>,
    seen_order: VecDeque<(Instant, i64)>,
}

impl Recent {
    /// Remembers a message published to these recipients (once; repeats are ignored).
    pub(crate) fn record(&self, message: &pb::ChatMessage, recipients: &[i64], origin: &str) {
        let now = Instant::now();
        let wall = proto::time::now_ms();
        let mut g = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if !g.seen.insert(message.id) {
            return;
        }
        g.seen_order.push_back((now, message.id));
        let p = Published {
            message: Arc::new(message.clone()),
            origin: Arc::from(origin),
            published_ms: wall,
        };
        for &user in recipients {
            let q = g.by_user.entry(user).or_default();
            q.push_back((now, p.clone()));
            while q.len() > PER_USER
                || q.front()
                    .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
            {
                q.pop_front();
            }
        }
    }

    /// The user's messages published within the window and after `opened_ms` (when the
    /// socket opened, by the gateway's clock), oldest first. Earlier ones are not the
    /// socket's to miss: they were committed before it opened, so a resume it sends reads
    /// them, in order (a catch-up copy sent ahead of the resume would arrive out of order).
    pub(crate) fn published_after(&self, user: i64, opened_ms: i64) -> Vec<Published> {
        let now = Instant::now();
        let g = self.table.lock().unwrap_or_else(|e| e.into_inner());
        g.by_user
            .get(&user)
            .map(|q| {
                q.iter()
                    .filter(|(t, p)| now.duration_since(*t) <= WINDOW && p.published_ms > opened_ms)
                    .map(|(_, p)| p.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets everything older than the window (called every second).
    pub(crate) fn prune(&self) {
        let now = Instant::now();
        let mut g = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let g = &mut *g;
        while let Some(&(t, id)) = g.seen_order.front() {
            if now.duration_since(t) <= WINDOW {
                break;
            }
            g.seen_order.pop_front();
            g.seen.remove(&id);
        }
        g.by_user.retain(|_, q| {
            while q
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
            {
                q.pop_front();
            }
            !q.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: i64) -> pb::ChatMessage {
        pb::ChatMessage {
            id,
            ..Default::default()
        }
    }

    #[test]
    fn remembers_per_recipient_without_repeats() {
        let r = Recent::default();
        let before = proto::time::now_ms() - 1;
        r.record(&msg(1), &[10, 11], "g/1");
        r.record(&msg(2), &[11], "");
        r.record(&msg(1), &[10, 11], "g/1"); // an outbox republish
        let ids = |u| {
            r.published_after(u, before)
                .iter()
                .map(|p| p.message.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(10), vec![1]);
        assert_eq!(ids(11), vec![1, 2]);
        assert!(ids(12).is_empty());
        r.prune();
        assert_eq!(ids(11), vec![1, 2], "inside the window nothing is pruned");
        assert_eq!(&*r.published_after(11, before)[0].origin, "g/1");
        // At most PER_USER per recipient: the oldest go first.
        for id in 100..100 + PER_USER as i64 + 10 {
            r.record(&msg(id), &[12], "");
        }
        let kept = r.published_after(12, before);
        assert_eq!(kept.len(), PER_USER);
        assert_eq!(kept[0].message.id, 110);
        // A socket that opened after both was never owed them.
        assert!(r.published_after(11, proto::time::now_ms() + 1).is_empty());
    }
}
