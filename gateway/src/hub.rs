//! The sockets this gateway holds, by user, and fan-out of deliveries to them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use proto::frames::{self, NewMessage, ServerFrame};
use proto::pb;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

/// A frame queued for one socket's writer.
#[derive(Debug)]
pub enum Outbound {
    /// A text frame, already serialized.
    Text(Utf8Bytes),
    /// A live `new_message`, serialized once and shared by every recipient (one pointer
    /// here keeps the queue's slots small: tokio allocates them 32 at a time per socket).
    Message(Arc<LiveMessage>),
    /// The socket's resume channel, opened by its first `sync` (most sockets never resume,
    /// and an idle channel costs ~2.5 KB); it reaches the writer in order with the frames
    /// queued before it.
    SyncStream(mpsc::Receiver<SyncFrame>),
}

/// A live event of a conversation's ordered stream — a `new_message`, or a change to a
/// message (`message_updated`, `reaction_added`, …) — on its way to sockets. The writer
/// holds these back while a resume is streaming and drops any it already sent.
#[derive(Debug)]
pub struct LiveMessage {
    /// For de-duplication against the resume stream: a message's id, or minus a change's
    /// id ([`change_key`]), so the two never collide.
    pub key: i64,
    /// Its conversation.
    pub conversation_id: i64,
    /// Its seq.
    pub seq: i64,
    /// The frame.
    pub text: Utf8Bytes,
}

/// The de-duplication key of a change (message ids are positive, so minus a change's id
/// never equals one).
pub fn change_key(change_id: i64) -> i64 {
    change_id.saturating_neg()
}

/// Frames of a resume (`sync`), on their own channel so a long resume waits for the
/// client instead of overflowing the live queue.
#[derive(Debug, Clone)]
pub enum SyncFrame {
    /// From here on, hold live messages back.
    Begin,
    /// A missed message or change.
    Message {
        /// For de-duplication ([`LiveMessage::key`]).
        key: i64,
        /// Its conversation.
        conversation_id: i64,
        /// Its seq.
        seq: i64,
        /// The frame.
        text: Utf8Bytes,
    },
    /// An error about one conversation of the resume.
    Text(Utf8Bytes),
    /// `sync_complete`; then the held-back live messages follow.
    End(Utf8Bytes),
}

/// State of one socket shared with the hub.
#[derive(Debug, Default)]
pub struct ConnShared {
    /// Rooms joined by this socket (see [`ConnShared::joined`]).
    joined: Mutex<HashSet<i64>>,
    /// The user said they are away, or the socket went idle.
    pub away: std::sync::atomic::AtomicBool,
    /// When the client last answered a ping (unix ms).
    pub last_pong_ms: std::sync::atomic::AtomicI64,
    /// Close code to use when the socket is closed by the server (0: decide by cause).
    pub close_code: std::sync::atomic::AtomicU16,
    /// Bytes queued for the client and not yet taken by the writer.
    pub queued_bytes: std::sync::atomic::AtomicUsize,
    /// Most bytes that may be queued (0: no byte limit, only the frame count).
    pub max_queued_bytes: usize,
    /// Cancelled when the client is found too slow: the writer then abandons a write stuck
    /// on the client's full socket instead of waiting out its timeout.
    pub too_slow: CancellationToken,
}

impl ConnShared {
    /// The rooms this socket has joined.
    pub fn joined(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.joined.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// State for a socket whose queue holds at most `max_queued_bytes`.
    pub fn with_byte_limit(max_queued_bytes: usize) -> ConnShared {
        ConnShared {
            max_queued_bytes,
            ..ConnShared::default()
        }
    }

    /// The writer took a frame of `len` bytes off the queue (saturating: a frame queued
    /// without [`ConnHandle::offer`] must not wrap the count around).
    pub fn dequeued(&self, len: usize) {
        let _ = self.queued_bytes.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |n| Some(n.saturating_sub(len)),
        );
    }
}

impl Outbound {
    /// Bytes of the frame.
    pub fn byte_len(&self) -> usize {
        match self {
            Outbound::Text(t) => t.len(),
            Outbound::Message(m) => m.text.len(),
            Outbound::SyncStream(_) => 0,
        }
    }
}

/// One socket, as the hub sees it.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    /// `<gateway>/<n>`.
    pub connection_id: Arc<str>,
    /// The socket's bounded outbound queue.
    pub tx: mpsc::Sender<Outbound>,
    /// Cancelled to close the socket (slow consumer, shutdown).
    pub close: CancellationToken,
    /// Room membership of the socket.
    pub shared: Arc<ConnShared>,
    /// Where slow-consumer closes are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// When the socket opened (unix ms, this gateway's clock), before it was registered:
    /// repeats of messages published earlier are not its news (see
    /// [`Hub::deliver`]).
    pub opened_ms: i64,
}

impl ConnHandle {
    /// Queues a frame; a full queue marks the client a slow consumer and closes it, so it
    /// never holds up anyone else. Returns whether the frame was queued.
    pub fn offer(&self, frame: Outbound) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if self.tx.is_closed() {
            // The writer is gone (the socket is closing): not a slow consumer.
            return false;
        }
        let len = frame.byte_len();
        let limit = self.shared.max_queued_bytes;
        let before = self.shared.queued_bytes.fetch_add(len, Relaxed);
        // A frame is always accepted into an empty queue: one large answer (a history page,
        // a conversation list) must not close a client that keeps up.
        if limit > 0 && before > 0 && before.saturating_add(len) > limit {
            self.shared.dequeued(len);
            self.too_slow("bytes");
            return false;
        }
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.dequeued(len);
                self.too_slow("frames");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.shared.dequeued(len);
                false
            }
        }
    }

    /// The client does not keep up: close it with 1013 (try again later), once.
    fn too_slow(&self, limit: &'static str) {
        use std::sync::atomic::Ordering::Relaxed;
        if self
            .shared
            .close_code
            .compare_exchange(0, 1013, Relaxed, Relaxed)
            .is_ok()
        {
            tracing::warn!(connection_id = %self.connection_id, limit, "slow consumer: closing socket");
            self.metrics.slow_consumer();
        }
        self.shared.too_slow.cancel();
        self.close.cancel();
    }
}

/// Registry of local sockets. All methods are short critical sections.
#[derive(Debug, Default)]
pub struct Hub {
    by_user: Mutex<HashMap<i64, Vec<ConnHandle>>>,
    /// Watched user → the sockets watching them, and the status they were last told.
    watchers: Mutex<HashMap<i64, Watched>>,
}

#[derive(Debug, Default)]
struct Watched {
    sockets: Vec<ConnHandle>,
    last_status: Option<String>,
}

/// A bounded set of recently seen ids (FIFO eviction).
#[derive(Debug)]
pub struct RecentIds {
    set: HashSet<i64>,
    order: VecDeque<i64>,
    cap: usize,
}

impl RecentIds {
    /// An empty set remembering at most `cap` ids.
    pub fn with_capacity(cap: usize) -> Self {
        RecentIds {
            set: HashSet::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    /// Records an id; false if it was already there.
    pub fn insert(&mut self, id: i64) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

fn text(frame: &ServerFrame) -> Utf8Bytes {
    Utf8Bytes::from(frame.to_json())
}

impl Hub {
    /// Registers a socket.
    pub fn add(&self, user_id: i64, conn: ConnHandle) {
        let mut m = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(user_id).or_default().push(conn);
    }

    /// Forgets a socket.
    pub fn remove(&self, user_id: i64, connection_id: &str) {
        let mut m = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = m.get_mut(&user_id) {
            v.retain(|c| &*c.connection_id != connection_id);
            if v.is_empty() {
                m.remove(&user_id);
            }
        }
    }

    /// Every socket with its id and away state (the heartbeat, for presence).
    pub fn sockets(&self) -> Vec<pb::SocketInfo> {
        let m = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        m.iter()
            .flat_map(|(u, v)| {
                v.iter().map(move |c| pb::SocketInfo {
                    user_id: *u,
                    connection_id: c.connection_id.to_string(),
                    away: c.shared.away.load(std::sync::atomic::Ordering::Relaxed),
                })
            })
            .collect()
    }

    /// Starts sending `conn` the presence changes of `users`.
    pub fn watch(&self, conn: &ConnHandle, users: &[i64]) {
        let mut w = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        for u in users {
            let entry = w.entry(*u).or_default();
            if !entry
                .sockets
                .iter()
                .any(|c| c.connection_id == conn.connection_id)
            {
                entry.sockets.push(conn.clone());
            }
        }
    }

    /// Stops sending `connection_id` the presence changes of `users`.
    pub fn unwatch(&self, connection_id: &str, users: &[i64]) {
        let mut w = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        for u in users {
            if let Some(entry) = w.get_mut(u) {
                entry.sockets.retain(|c| &*c.connection_id != connection_id);
                if entry.sockets.is_empty() {
                    w.remove(u);
                }
            }
        }
    }

    /// Records a status learned by query (so a repeat from the change stream is dropped)
    /// and tells whether it is news to the watchers.
    pub fn note_presence(&self, user_id: i64, status: &str) {
        let mut w = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = w.get_mut(&user_id) {
            entry.last_status = Some(status.to_owned());
        }
    }

    /// Sends a presence change to the user's watchers on this gateway, unless it repeats
    /// the last status they got (several presence-service instances publish the same
    /// change). A user nobody watches costs nothing here. Returns sockets reached.
    pub fn presence(&self, change: &pb::PresenceChange) -> usize {
        let targets = {
            let mut w = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
            let Some(entry) = w.get_mut(&change.user_id) else {
                return 0;
            };
            if entry.last_status.as_deref() == Some(change.status.as_str()) {
                return 0;
            }
            entry.last_status = Some(change.status.clone());
            entry.sockets.clone()
        };
        let f = text(&ServerFrame::Presence(crate::views::presence(
            change.user_id,
            &change.status,
            change.last_seen_ms,
        )));
        let mut n = 0;
        for c in targets {
            n += usize::from(c.offer(Outbound::Text(f.clone())));
        }
        n
    }

    /// How many sockets a user has on this gateway.
    pub fn user_sockets(&self, user_id: i64) -> usize {
        let m = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&user_id).map_or(0, Vec::len)
    }

    /// Every socket (for shutdown).
    pub fn all(&self) -> Vec<ConnHandle> {
        let m = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        m.values().flatten().cloned().collect()
    }

    /// Number of open sockets.
    pub fn len(&self) -> usize {
        let m = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        m.values().map(Vec::len).sum()
    }

    /// Whether no socket is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sockets of `users`, except the one named `skip`, with their owners.
    fn targets(&self, users: &[i64], skip: &str) -> Vec<(i64, ConnHandle)> {
        self.targets_opened_by(users, skip, 0)
    }

    /// [`Hub::targets`], keeping only sockets opened at or before `opened_before_ms`
    /// (0: every socket).
    fn targets_opened_by(
        &self,
        users: &[i64],
        skip: &str,
        opened_before_ms: i64,
    ) -> Vec<(i64, ConnHandle)> {
        let map = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        users
            .iter()
            .filter_map(|u| map.get(u).map(|v| (*u, v)))
            .flat_map(|(u, v)| v.iter().map(move |c| (u, c)))
            .filter(|(_, c)| *c.connection_id != *skip)
            .filter(|(_, c)| opened_before_ms == 0 || c.opened_ms <= opened_before_ms)
            .map(|(u, c)| (u, c.clone()))
            .collect()
    }

    /// Hands a delivery to the local sockets of its recipients (never back to the socket
    /// it came from). For a message, returns the recipients other than the sender that
    /// now have it on at least one socket (they are owed a `message_delivered`).
    pub fn deliver(&self, d: &pb::Delivery) -> Vec<i64> {
        use pb::delivery::Event;
        let Some(event) = &d.event else {
            return Vec::new();
        };
        let origin = d.origin_connection_id.as_str();
        match event {
            Event::Message(m) => {
                // A repeat (outbox republish, catch-up) names when the first copy went
                // out: sockets opened since are not owed it (their user had it on an
                // earlier socket, or reads it with a resume), and a fresh socket must
                // never get an old message as news. Repeats that do reach a socket that
                // already has the message are dropped by its writer.
                let live = Arc::new(LiveMessage {
                    key: m.id,
                    conversation_id: m.conversation_id,
                    seq: m.seq,
                    text: text(&ServerFrame::NewMessage(NewMessage::from_pb(m))),
                });
                let mut reached: Vec<i64> = Vec::new();
                let targets = self.targets_opened_by(&d.recipient_ids, origin, d.opened_before_ms);
                for (user, c) in targets {
                    let queued = c.offer(Outbound::Message(live.clone()));
                    // Targets come grouped by user, so a repeat is always the last entry.
                    if queued && user != m.sender_id && reached.last() != Some(&user) {
                        reached.push(user);
                    }
                }
                reached
            }
            Event::Typing(t) => {
                let f = text(&ServerFrame::TypingIndicator(frames::TypingNotice {
                    conversation_id: t.conversation_id,
                    user_id: t.user_id,
                    is_typing: t.is_typing,
                }));
                self.broadcast(&d.recipient_ids, origin, &f);
                Vec::new()
            }
            Event::ReadReceipt(r) => {
                let f = text(&ServerFrame::ReadReceipt(frames::ReceiptNotice {
                    message_ids: r.message_ids.clone(),
                    conversation_id: r.conversation_id,
                    reader_id: r.reader_id,
                    read_at: proto::time::rfc3339_ms(r.read_at_ms),
                }));
                self.broadcast(&d.recipient_ids, origin, &f);
                Vec::new()
            }
            Event::Delivered(x) => {
                let f = text(&ServerFrame::MessageDelivered(frames::Delivered {
                    message_id: x.message_id,
                    conversation_id: x.conversation_id,
                    recipient_id: x.recipient_id,
                    delivered_at: proto::time::rfc3339_ms(x.at_ms),
                }));
                self.broadcast(&d.recipient_ids, origin, &f);
                Vec::new()
            }
            Event::Change(ch) => {
                let Some(frame) = ServerFrame::from_change(ch) else {
                    return Vec::new();
                };
                let live = Arc::new(LiveMessage {
                    key: change_key(ch.id),
                    conversation_id: ch.conversation_id,
                    seq: ch.seq,
                    text: text(&frame),
                });
                for (_, c) in self.targets(&d.recipient_ids, origin) {
                    c.offer(Outbound::Message(live.clone()));
                }
                Vec::new()
            }
            Event::Membership(ev) => {
                let f = text(&ServerFrame::ParticipantsChanged(
                    crate::views::participants_changed(ev),
                ));
                let left = text(&ServerFrame::LeftConversation(frames::Left {
                    conversation_id: ev.conversation_id,
                    reason: Some("removed".into()),
                }));
                for (user, c) in self.targets(&d.recipient_ids, origin) {
                    c.offer(Outbound::Text(f.clone()));
                    // A removed member's sockets leave the room at once.
                    if ev.removed_user_ids.contains(&user) {
                        let was_joined = c.shared.joined().remove(&ev.conversation_id);
                        if was_joined {
                            c.offer(Outbound::Text(left.clone()));
                        }
                    }
                }
                Vec::new()
            }
        }
    }

    fn broadcast(&self, users: &[i64], skip: &str, frame: &Utf8Bytes) {
        for (_, c) in self.targets(users, skip) {
            c.offer(Outbound::Text(frame.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    fn handle(frames: usize, bytes: usize) -> (ConnHandle, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(frames);
        let h = ConnHandle {
            connection_id: Arc::from("gw/1"),
            tx,
            close: CancellationToken::new(),
            shared: Arc::new(ConnShared::with_byte_limit(bytes)),
            metrics: Arc::default(),
            opened_ms: 0,
        };
        (h, rx)
    }

    fn frame(len: usize) -> Outbound {
        Outbound::Text(Utf8Bytes::from("x".repeat(len)))
    }

    #[test]
    fn a_full_frame_queue_closes_the_slow_client_with_1013() {
        let (h, _rx) = handle(2, 0);
        assert!(h.offer(frame(1)) && h.offer(frame(1)));
        assert!(!h.offer(frame(1)));
        assert!(h.close.is_cancelled() && h.shared.too_slow.is_cancelled());
        assert_eq!(h.shared.close_code.load(Relaxed), 1013);
    }

    #[test]
    fn the_byte_bound_counts_in_and_out() {
        let (h, mut rx) = handle(100, 10);
        assert!(h.offer(frame(6)));
        assert_eq!(h.shared.queued_bytes.load(Relaxed), 6);
        // The writer takes it: the bytes leave the count, and there is room again.
        let taken = rx.try_recv().unwrap();
        h.shared.dequeued(taken.byte_len());
        assert!(h.offer(frame(6)));
        assert!(!h.close.is_cancelled());
        // 6 + 6 > 10: over the byte bound.
        assert!(!h.offer(frame(6)));
        assert!(h.close.is_cancelled());
        assert_eq!(
            h.shared.queued_bytes.load(Relaxed),
            6,
            "a refused frame is not counted"
        );
    }

    #[test]
    fn one_large_frame_always_fits_an_empty_queue() {
        let (h, _rx) = handle(10, 10);
        assert!(h.offer(frame(1_000)));
        assert!(!h.close.is_cancelled());
    }

    #[test]
    fn a_closed_writer_is_not_a_slow_consumer() {
        let (h, rx) = handle(1, 0);
        drop(rx);
        assert!(!h.offer(frame(1)));
        assert_eq!(h.shared.close_code.load(Relaxed), 0);
        assert!(!h.shared.too_slow.is_cancelled());
    }

    /// A repeat names when its first copy went out; sockets opened since do not get it,
    /// older ones and first copies reach everyone.
    #[test]
    fn a_repeat_reaches_only_sockets_open_at_its_first_publish() {
        let hub = Hub::default();
        let (mut old, mut old_rx) = handle(8, 0);
        old.opened_ms = 1_000;
        let (mut fresh, mut fresh_rx) = handle(8, 0);
        fresh.connection_id = Arc::from("gw/2");
        fresh.opened_ms = 3_000;
        hub.add(7, old);
        hub.add(7, fresh);
        let message = |id| pb::Delivery {
            event: Some(pb::delivery::Event::Message(pb::ChatMessage {
                id,
                conversation_id: 1,
                sender_id: 8,
                seq: id,
                ..Default::default()
            })),
            recipient_ids: vec![7],
            ..Default::default()
        };
        let mut repeat = message(1);
        repeat.opened_before_ms = 2_000;
        assert_eq!(hub.deliver(&repeat), vec![7], "the old socket still counts");
        assert!(old_rx.try_recv().is_ok());
        assert!(fresh_rx.try_recv().is_err(), "news to the fresh socket");
        let mut at_open = message(2);
        at_open.opened_before_ms = 3_000;
        hub.deliver(&at_open);
        assert!(
            fresh_rx.try_recv().is_ok(),
            "opened at the publish: owed it"
        );
        hub.deliver(&message(3));
        assert!(old_rx.try_recv().is_ok() && old_rx.try_recv().is_ok());
        assert!(
            fresh_rx.try_recv().is_ok(),
            "a first copy goes to every socket"
        );
    }

    #[test]
    fn recent_ids_forget_the_oldest() {
        let mut r = RecentIds::with_capacity(2);
        assert!(r.insert(1) && r.insert(2));
        assert!(!r.insert(1));
        assert!(r.insert(3));
        // 1 was evicted by 3.
        assert!(r.insert(1));
        assert!(!r.insert(3));
    }
}
