//! Clients that behave as the spec's clients should under failures, and the ledger that
//! proves nothing acknowledged was lost.
//!
//! Users come in pairs: the sender sends 1:1 messages to the receiver on a fixed schedule,
//! each with a fresh `client_msg_id`. A sender keeps every message until `message_sent`
//! answers it; after a retryable `error`, a silent timeout or a lost socket it sends the
//! same frame again with the same `client_msg_id` (reconnecting first, to the next gateway
//! in its list, with jittered backoff). A receiver de-duplicates by message id and, after
//! every reconnect, does what the TypeScript SDK does: `list_conversations` (one may have
//! been created while it was away), then `sync` of each from the highest seq below which it
//! has everything.
//!
//! The ledger then answers: how many messages were sent, acknowledged, delivered; whether
//! any `client_msg_id` was stored twice (two message ids); whether any acknowledged message
//! never reached its receiver.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Error codes a client answers by sending the same frame again later.
const RETRYABLE: &[&str] = &["unavailable", "internal", "rate_limited"];
/// A send with no answer for this long is sent again (same `client_msg_id`).
const RESEND_AFTER: Duration = Duration::from_secs(6);
/// At most this many unacknowledged messages per sender (then it waits, like a real app).
const WINDOW: usize = 32;

/// What one scenario's traffic looks like.
#[derive(Clone)]
pub struct Plan {
    /// Sender/receiver pairs (users 2i+1 → 2i+2, offset by `first_user`).
    pub pairs: usize,
    /// First user id (scenarios use disjoint ids).
    pub first_user: i64,
    /// Gateways; client `k` starts on `gateways[k % len]` unless `all_on_first`.
    pub gateways: Vec<SocketAddr>,
    /// Every client starts on the first gateway (the one a scenario kills).
    pub all_on_first: bool,
    /// Messages per second per sender.
    pub rate_per_sender: f64,
}

/// Everything observed, shared by all client tasks.
#[derive(Default)]
pub struct Ledger {
    /// client_msg_id → (sender, receiver), for every message ever sent once.
    sent: HashMap<String, (i64, i64)>,
    /// client_msg_id → message ids it was acknowledged with (more than one: stored twice).
    acked: HashMap<String, BTreeSet<i64>>,
    /// receiver → message id → times received.
    received: HashMap<i64, HashMap<i64, u32>>,
    /// message id → client_msg_ids seen on receipt (more than one: a mix-up).
    received_keys: HashMap<i64, BTreeSet<String>>,
    /// client_msg_id → message ids its receiver got it under (more than one, or one the
    /// sender was not acknowledged with: the key was stored twice).
    received_ids: HashMap<String, BTreeSet<i64>>,
    /// message id → when it first reached its receiver.
    delivered_at: HashMap<i64, Instant>,
    /// message id → when it was first acknowledged.
    acked_at: HashMap<i64, Instant>,
    /// `error` frames by code.
    pub errors: BTreeMap<String, u64>,
    /// Non-retryable errors, verbatim (a scenario fails on any).
    pub fatal: Vec<String>,
    /// Sockets re-opened after a loss.
    pub reconnects: u64,
    /// Frames sent again (same `client_msg_id`).
    pub resends: u64,
    /// user → when its sockets (re)opened, for explaining a loss.
    connects: HashMap<i64, Vec<Instant>>,
    /// When the traffic started, and the scenario's own events (the fault).
    started: Option<Instant>,
    pub marks: Vec<(String, Instant)>,
}

/// The counts a scenario reports.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub sent: usize,
    pub acknowledged: usize,
    pub delivered: usize,
    /// `client_msg_id`s stored under two message ids, plus messages two keys claim.
    pub duplicates: usize,
    /// Acknowledged but never received.
    pub lost: usize,
    /// Received more than once (harmless: the client drops repeats by id).
    pub redelivered: usize,
    pub reconnects: u64,
    pub resends: u64,
    pub errors: BTreeMap<String, u64>,
    pub fatal: Vec<String>,
    /// The first few lost messages, explained (times in ms since traffic started).
    pub lost_detail: Vec<String>,
}

impl Report {
    pub fn line(&self, scenario: &str) -> String {
        format!(
            "| {scenario} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.sent,
            self.acknowledged,
            self.delivered,
            self.duplicates,
            self.lost,
            self.redelivered,
            self.reconnects,
            self.resends,
            if self.errors.is_empty() {
                "none".to_owned()
            } else {
                self.errors
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )
    }
}

impl Ledger {
    fn report(&self) -> Report {
        let mut duplicates = self.acked.values().filter(|ids| ids.len() > 1).count();
        duplicates += self.received_keys.values().filter(|k| k.len() > 1).count();
        // A key stored twice whose first copy's ack was lost shows up only on the receiving
        // side: the sender was acknowledged with one id, the receiver got another too.
        duplicates += self
            .received_ids
            .iter()
            .filter(|(key, got)| {
                let mut all: BTreeSet<i64> = (*got).clone();
                if let Some(acked) = self.acked.get(*key) {
                    all.extend(acked);
                }
                all.len() > 1
            })
            .count();
        let mut lost = 0;
        let mut delivered = 0;
        let mut lost_detail = Vec::new();
        let t0 = self.started.unwrap_or_else(Instant::now);
        let ms = |t: &Instant| t.saturating_duration_since(t0).as_millis();
        for (key, ids) in &self.acked {
            let receiver = self.sent[key].1;
            let got = self.received.get(&receiver);
            for id in ids {
                if got.is_some_and(|g| g.contains_key(id)) {
                    delivered += 1;
                } else {
                    lost += 1;
                    if lost_detail.len() < 10 {
                        lost_detail.push(format!(
                            "{key} (message {id}) to user {receiver}: acked at {:?} ms; \
                             receiver connected at {:?} ms; it holds {} messages",
                            self.acked_at.get(id).map(ms),
                            self.connects
                                .get(&receiver)
                                .map(|v| v.iter().map(ms).collect::<Vec<_>>()),
                            got.map_or(0, HashMap::len),
                        ));
                    }
                }
            }
        }
        if !lost_detail.is_empty() {
            let marks: Vec<String> = self
                .marks
                .iter()
                .map(|(m, t)| format!("{m} at {} ms", ms(t)))
                .collect();
            lost_detail.push(format!("scenario events: {}", marks.join(", ")));
        }
        let redelivered = self
            .received
            .values()
            .flat_map(|m| m.values())
            .filter(|n| **n > 1)
            .count();
        Report {
            sent: self.sent.len(),
            acknowledged: self.acked.len(),
            delivered,
            duplicates,
            lost,
            redelivered,
            reconnects: self.reconnects,
            resends: self.resends,
            errors: self.errors.clone(),
            fatal: self.fatal.clone(),
            lost_detail,
        }
    }

    /// Acknowledged messages not yet received.
    fn outstanding(&self) -> usize {
        self.report().lost
    }

    /// Longest time from first acknowledgement to first receipt, over messages both
    /// acknowledged and received.
    pub fn worst_ack_to_delivery(&self) -> Duration {
        self.acked_at
            .iter()
            .filter_map(|(id, a)| {
                self.delivered_at
                    .get(id)
                    .map(|d| d.saturating_duration_since(*a))
            })
            .max()
            .unwrap_or_default()
    }
}

/// Traffic in progress.
pub struct Traffic {
    pub ledger: Arc<Mutex<Ledger>>,
    /// Senders stop starting new messages once this is true.
    generating: Arc<std::sync::atomic::AtomicBool>,
    stop: tokio::sync::watch::Sender<bool>,
    senders: tokio::task::JoinSet<()>,
    receivers: tokio::task::JoinSet<()>,
}

/// A token for `user`, valid for an hour, signed with the cluster's secret.
pub fn token(user: i64) -> String {
    gateway::auth::mint_hs256(super::cluster::SECRET, user, Duration::from_secs(3600))
        .expect("mint token")
}

/// Opens a socket as `user`, trying the gateways in turn from `start`; returns it and the
/// index of the gateway that took it.
async fn connect(user: i64, gateways: &[SocketAddr], start: usize) -> (Ws, usize) {
    let mut attempt = 0usize;
    loop {
        let i = (start + attempt) % gateways.len();
        let url = format!("ws://{}/ws/chat/?token={}", gateways[i], token(user));
        let res = tokio::time::timeout(Duration::from_secs(5), async {
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.ok()?;
            // The first frame is `connection_established`; anything else is a failure.
            loop {
                match ws.next().await? {
                    Ok(Message::Text(t)) => {
                        let v: Value = serde_json::from_str(&t).ok()?;
                        return (v["type"] == "connection_established").then_some(ws);
                    }
                    Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                    _ => return None,
                }
            }
        })
        .await;
        if let Ok(Some(ws)) = res {
            return (ws, i);
        }
        attempt += 1;
        // Jittered backoff, capped at one second: 1,000 clients must not reconnect in step.
        let cap = 50u64 * (1 << attempt.min(4));
        let ms = cap.min(1000) / 2 + rand::random::<u64>() % (cap.min(1000) / 2 + 1);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

fn chat_frame(receiver: i64, key: &str, n: u64) -> String {
    json!({
        "type": "chat_message",
        "receiver_id": receiver,
        "text": format!("fault test message {n}"),
        "client_msg_id": key,
    })
    .to_string()
}

struct Pending {
    receiver: i64,
    n: u64,
    /// When it was last sent; `None`: waiting to be sent (again).
    sent_at: Option<Instant>,
}

/// What every sender shares.
#[derive(Clone)]
struct Common {
    gateways: Vec<SocketAddr>,
    ledger: Arc<Mutex<Ledger>>,
    generating: Arc<std::sync::atomic::AtomicBool>,
    stop: tokio::sync::watch::Receiver<bool>,
}

async fn sender(user: i64, receiver: i64, mut gw: usize, every: Duration, common: Common) {
    let Common {
        gateways,
        ledger,
        generating,
        mut stop,
    } = common;
    let mut pending: BTreeMap<String, Pending> = BTreeMap::new();
    let mut n = 0u64;
    // Spread the senders' schedules over one period.
    let mut next = Instant::now() + every.mul_f64(rand::random::<f64>());
    let mut first = true;
    'connection: loop {
        let (mut ws, i) = connect(user, &gateways, gw).await;
        gw = i;
        if !first {
            ledger.lock().unwrap().reconnects += 1;
        }
        first = false;
        // Everything unanswered goes again on the new socket.
        for p in pending.values_mut() {
            p.sent_at = None;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            let generate = generating.load(std::sync::atomic::Ordering::SeqCst);
            if !generate && pending.is_empty() {
                let _ = ws.close(None).await;
                return;
            }
            // Send whatever is due: new messages on schedule, and repeats.
            if generate && Instant::now() >= next && pending.len() < WINDOW {
                n += 1;
                let key = format!("u{user}-m{n}");
                ledger
                    .lock()
                    .unwrap()
                    .sent
                    .insert(key.clone(), (user, receiver));
                pending.insert(
                    key,
                    Pending {
                        receiver,
                        n,
                        sent_at: None,
                    },
                );
                next += every;
            }
            let now = Instant::now();
            for (key, p) in pending.iter_mut() {
                let due = match p.sent_at {
                    None => true,
                    Some(t) => now.duration_since(t) >= RESEND_AFTER,
                };
                if due {
                    if p.sent_at.is_some() {
                        ledger.lock().unwrap().resends += 1;
                    }
                    p.sent_at = Some(now);
                    if ws
                        .send(Message::text(chat_frame(p.receiver, key, p.n)))
                        .await
                        .is_err()
                    {
                        continue 'connection;
                    }
                }
            }
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
                m = ws.next() => {
                    let text = match m {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => continue 'connection,
                        Some(Ok(_)) => continue,
                    };
                    let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
                    match v["type"].as_str() {
                        Some("message_sent") => {
                            let Some(key) = v["client_msg_id"].as_str() else { continue };
                            // Late answers to earlier copies count too: each must name
                            // the same message id, or the key was stored twice.
                            pending.remove(key);
                            let mut l = ledger.lock().unwrap();
                            let id = v["message_id"].as_i64().unwrap_or(-1);
                            l.acked.entry(key.to_owned()).or_default().insert(id);
                            l.acked_at.entry(id).or_insert_with(Instant::now);
                        }
                        Some("error") => {
                            let code = v["code"].as_str().unwrap_or("?").to_owned();
                            let key = v["ref"].as_str().map(str::to_owned);
                            let mut l = ledger.lock().unwrap();
                            *l.errors.entry(code.clone()).or_default() += 1;
                            if !RETRYABLE.contains(&code.as_str()) {
                                l.fatal.push(v.to_string());
                            }
                            drop(l);
                            if let Some(p) = key.and_then(|k| pending.get_mut(&k)) {
                                // Retry soon, not at once: the service said it is struggling.
                                p.sent_at = Some(Instant::now() - RESEND_AFTER
                                    + Duration::from_millis(300 + rand::random::<u64>() % 700));
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// Seq bookkeeping of one conversation: what a client needs to resume.
#[derive(Default)]
struct Seqs {
    /// Everything up to and including this seq has arrived.
    contiguous: i64,
    /// Seqs above `contiguous` that arrived.
    above: BTreeSet<i64>,
}

impl Seqs {
    fn add(&mut self, seq: i64) {
        if seq > self.contiguous {
            self.above.insert(seq);
        }
        while self.above.remove(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
    }
}

async fn receiver(
    user: i64,
    gateways: Vec<SocketAddr>,
    mut gw: usize,
    ledger: Arc<Mutex<Ledger>>,
    connected: Arc<std::sync::atomic::AtomicUsize>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut seqs: HashMap<i64, Seqs> = HashMap::new();
    let mut first = true;
    loop {
        let (mut ws, i) = connect(user, &gateways, gw).await;
        gw = i;
        {
            let mut l = ledger.lock().unwrap();
            l.connects.entry(user).or_default().push(Instant::now());
            if !first {
                l.reconnects += 1;
            }
        }
        if first {
            connected.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        } else {
            // Resume as the SDK does: list the conversations (one may have been created
            // while we were away), then sync each from what we hold without gaps.
            let f = json!({"type": "list_conversations"});
            if ws.send(Message::text(f.to_string())).await.is_err() {
                continue;
            }
        }
        first = false;
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    let _ = ws.close(None).await;
                    return;
                }
                m = ws.next() => {
                    let text = match m {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                        Some(Ok(_)) => continue,
                    };
                    let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
                    // A resume refused for load is retried, as the SDK does: without the
                    // list, a conversation created while we were away is never synced.
                    if v["type"] == "error"
                        && v["conversation_id"].is_null()
                        && v["ref"].is_null()
                        && RETRYABLE.contains(&v["code"].as_str().unwrap_or(""))
                    {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        let f = json!({"type": "list_conversations"});
                        if ws.send(Message::text(f.to_string())).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    // Likewise one conversation's resume.
                    if v["type"] == "error"
                        && RETRYABLE.contains(&v["code"].as_str().unwrap_or(""))
                    {
                        if let Some(id) = v["conversation_id"].as_i64() {
                            tokio::time::sleep(Duration::from_millis(250)).await;
                            let have = seqs.get(&id).map_or(0, |s| s.contiguous);
                            let f = json!({"type": "sync", "conversations": {id.to_string(): have}});
                            if ws.send(Message::text(f.to_string())).await.is_err() {
                                break;
                            }
                            continue;
                        }
                    }
                    if v["type"] == "conversations" {
                        let mut since = serde_json::Map::new();
                        for c in v["conversations"].as_array().into_iter().flatten() {
                            let Some(id) = c["id"].as_i64() else { continue };
                            let have = seqs.get(&id).map_or(0, |s| s.contiguous);
                            since.insert(id.to_string(), json!(have));
                        }
                        if !since.is_empty() {
                            let f = json!({"type": "sync", "conversations": since});
                            if ws.send(Message::text(f.to_string())).await.is_err() {
                                break;
                            }
                        }
                        continue;
                    }
                    if v["type"] != "new_message" {
                        continue;
                    }
                    let (Some(id), Some(conv), Some(seq)) = (
                        v["message_id"].as_i64(),
                        v["conversation_id"].as_i64(),
                        v["seq"].as_i64(),
                    ) else {
                        continue;
                    };
                    seqs.entry(conv).or_default().add(seq);
                    let mut l = ledger.lock().unwrap();
                    *l.received.entry(user).or_default().entry(id).or_default() += 1;
                    l.delivered_at.entry(id).or_insert_with(Instant::now);
                    if let Some(k) = v["client_msg_id"].as_str() {
                        l.received_keys.entry(id).or_default().insert(k.to_owned());
                        l.received_ids.entry(k.to_owned()).or_default().insert(id);
                    }
                }
            }
        }
    }
}

impl Traffic {
    /// Connects every client and starts sending.
    pub async fn start(plan: &Plan) -> Traffic {
        let ledger = Arc::new(Mutex::new(Ledger {
            started: Some(Instant::now()),
            ..Ledger::default()
        }));
        let generating = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut senders = tokio::task::JoinSet::new();
        let mut receivers = tokio::task::JoinSet::new();
        let every = Duration::from_secs_f64(1.0 / plan.rate_per_sender);
        let gw = |k: usize| {
            if plan.all_on_first {
                0
            } else {
                k % plan.gateways.len()
            }
        };
        // Receivers first: a message sent before its receiver is online would reach it
        // only through push, which these tests do not count as delivery.
        let connected = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for i in 0..plan.pairs {
            let s = plan.first_user + 2 * i as i64;
            receivers.spawn(receiver(
                s + 1,
                plan.gateways.clone(),
                gw(2 * i + 1),
                ledger.clone(),
                connected.clone(),
                stop_rx.clone(),
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while connected.load(std::sync::atomic::Ordering::SeqCst) < plan.pairs {
            assert!(
                Instant::now() < deadline,
                "receivers did not connect within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for i in 0..plan.pairs {
            let s = plan.first_user + 2 * i as i64;
            let r = s + 1;
            senders.spawn(sender(
                s,
                r,
                gw(2 * i),
                every,
                Common {
                    gateways: plan.gateways.clone(),
                    ledger: ledger.clone(),
                    generating: generating.clone(),
                    stop: stop_rx.clone(),
                },
            ));
        }
        Traffic {
            ledger,
            generating,
            stop,
            senders,
            receivers,
        }
    }

    /// Notes a scenario event (the fault) on the ledger's clock.
    pub fn mark(&self, what: &str) {
        self.ledger
            .lock()
            .unwrap()
            .marks
            .push((what.to_owned(), Instant::now()));
    }

    /// Waits until every sender has had `n` messages acknowledged in all (traffic is
    /// flowing, so a fault after this lands mid-traffic), or panics after `within`.
    pub async fn wait_acked(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let acked = self.ledger.lock().unwrap().acked.len();
            if acked >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {acked} of {n} messages acknowledged within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops new messages, waits for every sent one to be acknowledged (senders keep
    /// retrying) and then delivered, up to `within`; stops all clients; returns the counts.
    pub async fn finish(mut self, within: Duration) -> (Report, Duration) {
        self.generating
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let deadline = Instant::now() + within;
        while !self.senders.is_empty() && Instant::now() < deadline {
            let _ = tokio::time::timeout_at(deadline, self.senders.join_next()).await;
        }
        while self.ledger.lock().unwrap().outstanding() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.stop.send(true);
        self.senders.abort_all();
        while self.receivers.join_next().await.is_some() {}
        let l = self.ledger.lock().unwrap();
        (l.report(), l.worst_ack_to_delivery())
    }
}
