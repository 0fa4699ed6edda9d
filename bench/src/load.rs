//! The scenarios. Open loop: every send has a scheduled time, fixed in advance from the
//! rate, and latency is measured from that time, so a slow server shows up as latency
//! instead of silently lowering the offered load. Timestamps travel in the message text.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::cpu::{self, CpuCost};
use crate::targets::Target;

type Ws = WebSocketStream<TcpStream>;
type Sink = SplitSink<Ws, Message>;
type Stream = SplitStream<Ws>;

fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn hist() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits (constant bounds: cannot fail).
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub count: u64,
}

impl Latency {
    pub(crate) fn of(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            count: h.len(),
        }
    }
}

/// tungstenite's default 128 KiB read buffer per socket, allocated (and zero-filled) up
/// front, made thousands of connections cost the generator — and the ceiling router —
/// more than the server under test; 4 KiB is plenty for these frames.
pub fn small_buffers() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096)
}

/// Opens one authenticated socket (from 127.0.0.`src` when `src` > 1) and waits for
/// `connection_established`.
async fn connect(
    addr: std::net::SocketAddr,
    token: String,
    src: u8,
) -> anyhow::Result<(Sink, Stream)> {
    let sock = TcpSocket::new_v4()?;
    if src > 1 {
        sock.bind(std::net::SocketAddr::from(([127, 0, 0, src], 0)))?;
    }
    let stream = sock.connect(addr).await?;
    stream.set_nodelay(true)?;
    // Closed with a reset, leaving no TIME_WAIT behind: tens of thousands of those from
    // earlier scenarios slowed every later connect (the kernel walks them to pick a port).
    stream.set_zero_linger()?;
    let url = format!("ws://{addr}/ws/chat/?token={token}");
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(small_buffers())).await?;
    let (sink, mut stream) = ws.split();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains("connection_established") => break,
            Ok(Some(Ok(_))) => {}
            other => anyhow::bail!("no connection_established: {other:?}"),
        }
    }
    Ok((sink, stream))
}

/// Connects `users` with bounded concurrency.
pub async fn connect_all(
    t: &Target,
    users: &[i64],
) -> anyhow::Result<(Vec<(Sink, Stream)>, Duration)> {
    // One destination port has ~28k ephemeral ports to itself, and connect() picks one
    // cheaply; an explicit bind() (the only way to use another source address) searches
    // every bound port on the machine for conflicts, which limited connects to a few
    // hundred a second once earlier scenarios' sockets sat in TIME_WAIT. So only the
    // connections past the first 25k (more than one process's descriptors allow here)
    // get 127.0.0.2 and up.
    let per_address = 25_000;
    let started = Instant::now();
    let conns: Vec<anyhow::Result<(Sink, Stream)>> =
        futures_util::stream::iter(users.iter().enumerate())
            .map(|(i, u)| {
                let src = u8::try_from(i / per_address).map_or(250, |n| n.saturating_add(1));
                // A task each, so the handshakes use every core (one task polling all
                // 256 made the generator's single thread the limit).
                let h = tokio::spawn(connect(t.addr, t.token(*u), src));
                async move { h.await.map_err(anyhow::Error::from).and_then(|r| r) }
            })
            .buffered(256)
            .collect()
            .await;
    let elapsed = started.elapsed();
    let conns: anyhow::Result<Vec<_>> = conns.into_iter().collect();
    Ok((conns?, elapsed))
}

/// `idle`: authenticated connections that just sit there.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IdleResult {
    pub connections: usize,
    pub connects_per_s: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub kib_per_connection: f64,
}

pub async fn idle(t: &Target, n: usize, base_user: i64) -> anyhow::Result<IdleResult> {
    let before = t.rss_kib();
    let users: Vec<i64> = (0..n).map(|i| base_user + i as i64).collect();
    let (conns, took) = connect_all(t, &users).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = t.rss_kib();
    let r = IdleResult {
        connections: conns.len(),
        connects_per_s: conns.len() as f64 / took.as_secs_f64(),
        rss_before_kib: before,
        rss_after_kib: after,
        kib_per_connection: after.saturating_sub(before) as f64 / conns.len().max(1) as f64,
    };
    drop(conns);
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(r)
}

/// `direct`: pairs of users, one-to-one messages at a fixed total rate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DirectResult {
    pub rate: u64,
    pub pairs: usize,
    pub seconds: u64,
    pub sent: u64,
    pub acked: u64,
    /// Sends answered with an `error` (e.g. `unavailable` when overloaded: the client retries).
    pub refused: u64,
    /// Neither acknowledged nor refused by the end of the run (still queued, or timed out).
    pub unanswered: u64,
    pub received: u64,
    /// Acknowledged (`message_sent`) but never delivered to the receiver: must be 0.
    pub lost: u64,
    pub duplicated: u64,
    pub end_to_end_ms: Latency,
    pub ack_ms: Latency,
    /// How late the generator itself sent (tokio's timer has 1 ms resolution): the floor
    /// under every latency above, for every target alike.
    pub send_lateness_ms: Latency,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// Receivers that stopped reading (the `slow` scenario).
    pub slow_receivers: usize,
    /// CPU time of every process of the target and of the generator from just before the
    /// first send until everything was answered and delivered (at most 7 s after the last
    /// send), per distinct delivered message.
    pub cpu: CpuCost,
}

#[derive(Default)]
struct Tally {
    e2e: Option<Histogram<u64>>,
    ack: Option<Histogram<u64>>,
    late: Option<Histogram<u64>>,
    seen: HashMap<u64, u32>,
    acked: u64,
    acked_keys: Vec<u64>,
    refused: u64,
}

impl Tally {
    fn e2e(&mut self) -> &mut Histogram<u64> {
        self.e2e.get_or_insert_with(hist)
    }
    fn ack(&mut self) -> &mut Histogram<u64> {
        self.ack.get_or_insert_with(hist)
    }
    fn late(&mut self) -> &mut Histogram<u64> {
        self.late.get_or_insert_with(hist)
    }
}

fn record(h: &mut Histogram<u64>, sched_ns: u64) {
    let us = now_ns().saturating_sub(sched_ns) / 1000;
    let _ = h.record(us.max(1));
}

/// Runs one open-loop `direct` load. `slow` of the receivers never read.
pub async fn direct(
    t: &Target,
    pairs: usize,
    rate: u64,
    seconds: u64,
    slow: usize,
    base_user: i64,
) -> anyhow::Result<DirectResult> {
    let users: Vec<i64> = (0..pairs * 2).map(|i| base_user + i as i64).collect();
    let (conns, _) = connect_all(t, &users).await?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let per_sender = rate as f64 / pairs as f64;
    let interval = Duration::from_secs_f64(1.0 / per_sender);
    let n = (per_sender * seconds as f64).round() as u64;
    let start_ns = now_ns() + 200_000_000; // everyone starts together, 200 ms from now
    let rss_before = t.rss_kib();
    let procs = t.cpu_procs();
    let cpu_before = cpu::sample(&procs);
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    // Receivers' write halves (kept open), and the slow receivers, who never read.
    let mut sinks = Vec::new();
    let mut parked = Vec::new();
    for (i, (sink, stream)) in conns.into_iter().enumerate() {
        let pair = i / 2;
        if i % 2 == 1 {
            if pair < slow {
                parked.push((sink, stream));
                continue;
            }
            let tally = tally.clone();
            readers.push(tokio::spawn(read_loop(stream, tally)));
            sinks.push(sink);
        } else {
            let receiver = users[i + 1];
            let sender = users[i];
            readers.push(tokio::spawn(read_loop(stream, tally.clone())));
            // Senders are staggered across one interval, so the total is a steady `rate`
            // rather than bursts of `pairs` messages at once.
            let offset =
                u64::try_from(interval.as_nanos()).unwrap_or(0) * pair as u64 / pairs as u64;
            senders.push(tokio::spawn(send_loop(
                sink,
                sender,
                receiver,
                n,
                start_ns + offset,
                interval,
                tally.clone(),
            )));
        }
    }
    // The senders' sockets stay open for the acks of the last messages.
    let mut sender_sinks = Vec::new();
    for s in senders {
        if let Ok(Some(sink)) = s.await {
            sender_sinks.push(sink);
        }
    }
    let sent = n * pairs as u64;
    // Grace for the last messages: 7 s after the last send. The CPU window ends as soon as
    // every send is answered and every acknowledged message delivered (never, with slow
    // receivers: then at the end of the grace), so idle seconds do not count.
    let grace_end = Instant::now() + Duration::from_secs(7);
    let cpu_after = loop {
        let done = slow == 0 && {
            let tl = tally.lock().unwrap_or_else(|e| e.into_inner());
            tl.acked + tl.refused >= sent && tl.seen.len() as u64 >= tl.acked
        };
        if done || Instant::now() >= grace_end {
            break cpu::sample(&procs);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    tokio::time::sleep_until(grace_end.into()).await;
    let rss_after = t.rss_kib();
    for r in &readers {
        r.abort();
    }
    drop(parked);
    drop(sinks);
    drop(sender_sinks);
    let mut tl = tally.lock().unwrap_or_else(|e| e.into_inner());
    let received: u64 = tl.seen.values().map(|c| u64::from(*c)).sum();
    let duplicated = received - tl.seen.len() as u64;
    // Lost = acknowledged to the sender, never delivered to a (reading) receiver.
    let slow_senders: std::collections::HashSet<u64> = (0..slow)
        .map(|p| (users[p * 2] as u64) & 0xffff_ffff)
        .collect();
    let lost = tl
        .acked_keys
        .iter()
        .filter(|k| !slow_senders.contains(&(**k >> 32)) && !tl.seen.contains_key(k))
        .count() as u64;
    let cpu = cpu::cost(&cpu_before, &cpu_after, tl.seen.len() as u64);
    Ok(DirectResult {
        rate,
        pairs,
        seconds,
        sent,
        acked: tl.acked,
        refused: tl.refused,
        unanswered: sent.saturating_sub(tl.acked + tl.refused),
        received,
        lost,
        duplicated,
        end_to_end_ms: Latency::of(tl.e2e()),
        ack_ms: Latency::of(tl.ack()),
        send_lateness_ms: Latency::of(tl.late()),
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        slow_receivers: slow,
        cpu,
    })
}

async fn send_loop(
    mut sink: Sink,
    sender: i64,
    receiver: i64,
    n: u64,
    start_ns: u64,
    interval: Duration,
    tally: Arc<Mutex<Tally>>,
) -> Option<Sink> {
    let iv = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
    for seq in 0..n {
        let sched = start_ns + seq * iv;
        let now = now_ns();
        if sched > now {
            tokio::time::sleep(Duration::from_nanos(sched - now)).await;
        }
        record(
            tally.lock().unwrap_or_else(|e| e.into_inner()).late(),
            sched,
        );
        let frame = json!({
            "type": "chat_message",
            "receiver_id": receiver,
            "text": format!("b|{sender}|{seq}|{sched}"),
            "client_msg_id": format!("b{sender}-{seq}-{sched}"),
        });
        if sink.send(Message::text(frame.to_string())).await.is_err() {
            return None;
        }
    }
    Some(sink)
}

async fn read_loop(mut stream: Stream, tally: Arc<Mutex<Tally>>) {
    while let Some(Ok(m)) = stream.next().await {
        let Message::Text(t) = m else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&t) else {
            continue;
        };
        match v["type"].as_str() {
            Some("new_message") => {
                let text = v["text"].as_str().unwrap_or("");
                let mut p = text.split('|').skip(1);
                let (Some(sender), Some(seq), Some(sched)) = (p.next(), p.next(), p.next()) else {
                    continue;
                };
                let (Ok(sender), Ok(seq), Ok(sched)) = (
                    sender.parse::<i64>(),
                    seq.parse::<u64>(),
                    sched.parse::<u64>(),
                ) else {
                    continue;
                };
                let mut tl = tally.lock().unwrap_or_else(|e| e.into_inner());
                record(tl.e2e(), sched);
                // Key: the pair index in the high half (senders are even offsets), seq low.
                let key = ((sender as u64 & 0xffff_ffff) << 32) | (seq & 0xffff_ffff);
                *tl.seen.entry(key).or_default() += 1;
            }
            Some("message_sent") => {
                // client_msg_id = b<sender>-<seq>-<sched>
                let id = v["client_msg_id"].as_str().unwrap_or("");
                let mut parts = id.trim_start_matches('b').split('-');
                if let (Some(Ok(sender)), Some(Ok(seq)), Some(Ok(sched))) = (
                    parts.next().map(str::parse::<u64>),
                    parts.next().map(str::parse::<u64>),
                    parts.next().map(str::parse::<u64>),
                ) {
                    let mut tl = tally.lock().unwrap_or_else(|e| e.into_inner());
                    record(tl.ack(), sched);
                    tl.acked += 1;
                    tl.acked_keys
                        .push(((sender & 0xffff_ffff) << 32) | (seq & 0xffff_ffff));
                }
            }
            Some("error") if v["ref"].is_string() => {
                tally.lock().unwrap_or_else(|e| e.into_inner()).refused += 1;
            }
            _ => {}
        }
    }
}

/// `room`: one group, one sender, every member reading.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoomResult {
    pub members: usize,
    pub rate: u64,
    pub messages: u64,
    pub deliveries: u64,
    pub lost: u64,
    /// Per message: scheduled send → the last member has it.
    pub last_recipient_ms: Latency,
    /// Every delivery.
    pub any_recipient_ms: Latency,
}

pub async fn room(
    t: &Target,
    members: usize,
    rate: u64,
    seconds: u64,
    base_user: i64,
) -> anyhow::Result<RoomResult> {
    let users: Vec<i64> = (0..members).map(|i| base_user + i as i64).collect();
    let group = t.create_group(&users).await?;
    let (mut conns, _) = connect_all(t, &users).await?;
    let arrivals: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let (mut sink, sender_stream) = conns.remove(0);
    let mut tasks = Vec::new();
    let mut sinks = Vec::new();
    for (s, stream) in conns {
        sinks.push(s);
        let arrivals = arrivals.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = stream;
            while let Some(Ok(Message::Text(t))) = stream.next().await {
                if !t.contains("new_message") {
                    continue;
                }
                let at = now_ns();
                let Ok(v) = serde_json::from_str::<Value>(&t) else {
                    continue;
                };
                let mut p = v["text"].as_str().unwrap_or("").split('|').skip(2);
                if let (Some(Ok(_seq)), Some(Ok(sched))) = (
                    p.next().map(str::parse::<u64>),
                    p.next().map(str::parse::<u64>),
                ) {
                    arrivals
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((sched, at));
                }
            }
        }));
    }
    let n = rate * seconds;
    let iv = 1_000_000_000 / rate;
    let start = now_ns() + 200_000_000;
    for seq in 0..n {
        let sched = start + seq * iv;
        let now = now_ns();
        if sched > now {
            tokio::time::sleep(Duration::from_nanos(sched - now)).await;
        }
        let f = json!({"type": "chat_message", "conversation_id": group, "text": format!("r|{}|{seq}|{sched}", users[0]), "client_msg_id": format!("r{seq}")});
        sink.send(Message::text(f.to_string())).await?;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for t in &tasks {
        t.abort();
    }
    drop(sender_stream);
    let arr = arrivals.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut any = hist();
    for (sched, at) in &arr {
        let l = at.saturating_sub(*sched) / 1000;
        let _ = any.record(l.max(1));
        let e = last.entry(*sched).or_default();
        *e = (*e).max(l);
    }
    let mut lh = hist();
    for l in last.values() {
        let _ = lh.record((*l).max(1));
    }
    let expected = n * (members as u64 - 1);
    Ok(RoomResult {
        members,
        rate,
        messages: n,
        deliveries: arr.len() as u64,
        lost: expected.saturating_sub(arr.len() as u64),
        last_recipient_ms: Latency::of(&lh),
        any_recipient_ms: Latency::of(&any),
    })
}

/// `reactions`: `members` users of one group react to one message, toggling their own
/// reaction (add, remove, add, …) at `rate` reactions per second in total; every reaction
/// event reaches every member. Latency: a reaction's scheduled send → its actor's socket
/// has the event (which the conversation's fan-out delivers to everyone at once).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReactionsResult {
    pub members: usize,
    pub rate: u64,
    pub seconds: u64,
    pub sent: u64,
    /// Actors' own events received (each reaction's answer).
    pub answered: u64,
    pub refused: u64,
    /// Reaction events received by all members together.
    pub deliveries: u64,
    pub own_event_ms: Latency,
}

pub async fn reactions(
    t: &Target,
    members: usize,
    rate: u64,
    seconds: u64,
    base_user: i64,
) -> anyhow::Result<ReactionsResult> {
    let users: Vec<i64> = (0..members).map(|i| base_user + i as i64).collect();
    let group = t.create_group(&users).await?;
    let (mut conns, _) = connect_all(t, &users).await?;
    // The message everyone reacts to.
    let (sink0, stream0) = &mut conns[0];
    let f = json!({"type": "chat_message", "conversation_id": group, "text": "react to me"});
    sink0.send(Message::text(f.to_string())).await?;
    let message_id = loop {
        let Some(Ok(Message::Text(t))) = stream0.next().await else {
            anyhow::bail!("no answer to the message");
        };
        let v: Value = serde_json::from_str(&t)?;
        if v["type"] == "message_sent" {
            break v["message_id"].as_i64().unwrap_or_default();
        }
    };
    let tally = Arc::new(Mutex::new((hist(), 0u64, 0u64, 0u64))); // latency, answered, refused, deliveries
    let per_user = rate as f64 / members as f64;
    let iv = Duration::from_secs_f64(1.0 / per_user);
    let iv_ns = u64::try_from(iv.as_nanos()).unwrap_or(u64::MAX);
    let n = (per_user * seconds as f64).round() as u64;
    let start = now_ns() + 300_000_000;
    let mut tasks = Vec::new();
    let mut senders = Vec::new();
    for (i, (mut sink, mut stream)) in conns.into_iter().enumerate() {
        let me = users[i];
        let scheduled: Arc<Mutex<std::collections::VecDeque<u64>>> = Arc::default();
        let (q, tl) = (scheduled.clone(), tally.clone());
        // Every member gets every reaction (100 frames per reaction): only the actor's own
        // are parsed, or the generator's JSON parsing would be what the run measures.
        let mine = format!("\"user_id\":{me},");
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(Message::Text(t))) = stream.next().await {
                let error = t.contains("\"type\":\"error\"");
                if !error && !t.contains("\"type\":\"reaction_") {
                    continue;
                }
                let own = error || t.contains(mine.as_str());
                let mut tl = tl.lock().unwrap_or_else(|e| e.into_inner());
                if error {
                    q.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                    tl.2 += 1;
                    continue;
                }
                tl.3 += 1;
                if own {
                    if let Some(sched) = q.lock().unwrap_or_else(|e| e.into_inner()).pop_front() {
                        record(&mut tl.0, sched);
                        tl.1 += 1;
                    }
                }
            }
        }));
        // Staggered across one interval: a steady total rate, not bursts.
        let offset = iv_ns * i as u64 / members as u64;
        senders.push(tokio::spawn(async move {
            for k in 0..n {
                let sched = start + offset + k * iv_ns;
                let now = now_ns();
                if sched > now {
                    tokio::time::sleep(Duration::from_nanos(sched - now)).await;
                }
                let ty = if k % 2 == 0 {
                    "add_reaction"
                } else {
                    "remove_reaction"
                };
                scheduled
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back(sched);
                let f = json!({"type": ty, "message_id": message_id, "emoji": "👍"});
                if sink.send(Message::text(f.to_string())).await.is_err() {
                    return sink;
                }
            }
            sink
        }));
    }
    let mut sinks = Vec::new();
    for s in senders {
        sinks.push(s.await?);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for t in &tasks {
        t.abort();
    }
    drop(sinks);
    let tl = tally.lock().unwrap_or_else(|e| e.into_inner());
    Ok(ReactionsResult {
        members,
        rate,
        seconds,
        sent: n * members as u64,
        answered: tl.1,
        refused: tl.2,
        deliveries: tl.3,
        own_event_ms: Latency::of(&tl.0),
    })
}
