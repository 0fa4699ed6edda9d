//! The sockets this gateway holds, by user, and fan-out of deliveries to them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use proto::frames::{NewMessage, ServerFrame};
use proto::pb;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

/// A frame queued for one socket's writer.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A text frame, already serialized (shared by every recipient of a fan-out).
    Text(Utf8Bytes),
}

/// One socket, as the hub sees it.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    /// `<gateway>/<n>`.
    pub connection_id: std::sync::Arc<str>,
    /// The socket's bounded outbound queue.
    pub tx: mpsc::Sender<Outbound>,
    /// Cancelled to close the socket (slow consumer, shutdown).
    pub close: CancellationToken,
}

/// How many recent message ids are remembered to drop repeated deliveries (the outbox may
/// publish a message twice after a crash).
const RECENT_IDS: usize = 100_000;

/// Registry of local sockets. All methods are short critical sections.
#[derive(Debug, Default)]
pub struct Hub {
    by_user: Mutex<HashMap<i64, Vec<ConnHandle>>>,
    recent: Mutex<Recent>,
}

#[derive(Debug, Default)]
struct Recent {
    set: HashSet<i64>,
    order: VecDeque<i64>,
}

impl Recent {
    /// Records an id; false if it was already there.
    fn insert(&mut self, id: i64) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > RECENT_IDS {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
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

    /// One entry per open socket (users with two sockets appear twice): the heartbeat.
    pub fn socket_owners(&self) -> Vec<i64> {
        let m = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        m.iter()
            .flat_map(|(u, v)| std::iter::repeat_n(*u, v.len()))
            .collect()
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

    /// Sends `new_message` to every local socket of the recipients except the sending one.
    /// Returns how many sockets got it. A socket whose queue is full is closed (slow
    /// consumer): it will resync when it reconnects, and it never holds up the others.
    pub fn deliver(&self, d: &pb::Delivery) -> usize {
        let Some(m) = &d.message else { return 0 };
        if !self
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(m.id)
        {
            return 0;
        }
        let frame = ServerFrame::NewMessage(NewMessage {
            message_id: m.id,
            conversation_id: m.conversation_id,
            sender_id: m.sender_id,
            receiver_id: m.receiver_id,
            text: m.text.clone(),
            seq: m.seq,
            created_at: proto::time::rfc3339_ms(m.created_at_ms),
            client_msg_id: (!m.client_msg_id.is_empty()).then(|| m.client_msg_id.clone()),
        });
        let text = Utf8Bytes::from(frame.to_json());
        let targets: Vec<ConnHandle> = {
            let map = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
            d.recipient_ids
                .iter()
                .filter_map(|u| map.get(u))
                .flatten()
                .filter(|c| *c.connection_id != *d.origin_connection_id)
                .cloned()
                .collect()
        };
        let mut sent = 0;
        for c in targets {
            match c.tx.try_send(Outbound::Text(text.clone())) {
                Ok(()) => sent += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(connection_id = %c.connection_id, "slow consumer: closing socket");
                    c.close.cancel();
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        sent
    }
}
