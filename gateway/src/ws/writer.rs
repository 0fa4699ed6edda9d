//! The socket's writer: drains the bounded outbound queue and the resume channel, keeps a
//! resume and live traffic in order and free of repeats ([`Order`], pure and unit-tested),
//! pings, and says goodbye with the close code that tells the client why.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::hub::{ConnShared, Outbound, RecentIds, SyncFrame};

/// Live messages held back during a resume before the client counts as too slow.
const MAX_HELD_BACK: usize = 10_000;
/// Message ids each socket's writer remembers to drop repeats (live repeats, outbox
/// republishes, a resume overlapping live traffic).
const RECENT_IDS: usize = 1024;

/// The writing half of a client socket.
pub(super) type Sink = futures_util::stream::SplitSink<WebSocketStream<TokioIo<Upgraded>>, Message>;

/// A frame of a conversation's stream (`new_message` or a change) with what
/// de-duplication needs.
#[derive(Debug, Clone)]
struct MessageFrame {
    /// [`crate::hub::LiveMessage::key`].
    key: i64,
    conversation_id: i64,
    seq: i64,
    text: Utf8Bytes,
}

/// What the writer remembers to keep a resume and live traffic in order and free of
/// repeats. It decides what to write; it never writes.
#[derive(Debug)]
struct Order {
    /// Message ids recently written to this socket.
    sent: RecentIds,
    /// Per conversation, the highest seq a resume has covered: every message at or below
    /// it was in the store when the resume read it, so it was streamed. Never evicted
    /// (bounded by the conversations one `sync` may name).
    synced_upto: HashMap<i64, i64>,
    /// A resume is streaming: live messages wait in `held`.
    syncing: bool,
    held: Vec<MessageFrame>,
}

impl Order {
    fn new() -> Order {
        Order {
            sent: RecentIds::with_capacity(RECENT_IDS),
            synced_upto: HashMap::new(),
            syncing: false,
            held: Vec::new(),
        }
    }

    /// A resume starts: live messages are held back until it ends.
    fn begin(&mut self) {
        self.syncing = true;
    }

    /// A message of the resume: its text, unless this socket already has it.
    fn resumed(&mut self, m: MessageFrame) -> Option<Utf8Bytes> {
        let e = self.synced_upto.entry(m.conversation_id).or_insert(0);
        *e = (*e).max(m.seq);
        self.sent.insert(m.key).then_some(m.text)
    }

    /// A live message: its text to write now, or `None` when it is held back (a resume is
    /// streaming), was covered by a resume, or was already written.
    fn live(&mut self, m: MessageFrame) -> Option<Utf8Bytes> {
        if self.syncing {
            self.held.push(m);
            return None;
        }
        self.release(m)
    }

    fn release(&mut self, m: MessageFrame) -> Option<Utf8Bytes> {
        if self
            .synced_upto
            .get(&m.conversation_id)
            .is_some_and(|upto| m.seq <= *upto)
        {
            return None;
        }
        self.sent.insert(m.key).then_some(m.text)
    }

    /// More live messages were held back than a client that keeps up would need.
    fn overflowed(&self) -> bool {
        self.held.len() > MAX_HELD_BACK
    }

    /// The resume ended (after `sync_complete`): the held-back messages to write now, in
    /// arrival order, minus those the resume carried.
    fn end(&mut self) -> Vec<Utf8Bytes> {
        self.syncing = false;
        std::mem::take(&mut self.held)
            .into_iter()
            .filter_map(|m| self.release(m))
            .collect()
    }
}

/// How long one frame may take to reach the client's socket before the client counts as
/// gone (a peer that stops reading must not pin a task and its buffers forever).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client closed for being too slow has to read up to its close frame.
const SLOW_CLOSE_WAIT: Duration = Duration::from_secs(10);

async fn send_frame(sink: &mut Sink, m: Message) -> Result<(), ()> {
    match tokio::time::timeout(WRITE_TIMEOUT, sink.send(m)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// [`send_frame`], abandoned as soon as the client is found too slow (a write blocked on
/// its full socket would otherwise hold the close for up to [`WRITE_TIMEOUT`]). What was
/// handed to the sink stays in its buffer, ahead of the close frame.
async fn send_unless_too_slow(
    sink: &mut Sink,
    m: Message,
    too_slow: &CancellationToken,
) -> Result<(), ()> {
    tokio::select! {
        r = send_frame(sink, m) => r,
        () = too_slow.cancelled() => Ok(()),
    }
}

/// Cancels the socket's token when the writer ends for any reason, so the reader stops
/// too and the socket leaves the hub instead of lingering half-alive.
struct CancelOnDrop(CancellationToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The next resume frame; pending until the socket's first `sync` opened the channel.
async fn next_sync(rx: &mut Option<mpsc::Receiver<SyncFrame>>) -> Option<SyncFrame> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs until the socket closes: takes frames off the queue and the resume channel in
/// order, pings every `ping_interval`, then says goodbye.
pub(super) async fn write_loop(
    mut sink: Sink,
    mut rx: mpsc::Receiver<Outbound>,
    close: CancellationToken,
    shared: Arc<ConnShared>,
    ping_interval: Duration,
) {
    let _guard = CancelOnDrop(close.clone());
    let mut ping = tokio::time::interval(ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.reset(); // first ping one interval from now, not before connection_established
    let missed_after = i64::try_from(ping_interval.as_millis() * 2).unwrap_or(i64::MAX);
    let mut sync_rx: Option<mpsc::Receiver<SyncFrame>> = None;
    let mut order = Order::new();
    let too_slow = shared.too_slow.clone();
    loop {
        let res: Result<(), ()> = tokio::select! {
            biased;
            () = close.cancelled() => break,
            _ = ping.tick() => {
                let last = shared.last_pong_ms.load(std::sync::atomic::Ordering::Relaxed);
                if proto::time::now_ms() - last > missed_after {
                    // Two pings unanswered: the peer is gone or wedged.
                    shared.close_code.store(u16::from(CloseCode::Away), std::sync::atomic::Ordering::Relaxed);
                    break;
                }
                send_unless_too_slow(&mut sink, Message::Ping(Default::default()), &too_slow).await
            }
            Some(f) = next_sync(&mut sync_rx) => match f {
                SyncFrame::Begin => {
                    order.begin();
                    Ok(())
                }
                SyncFrame::Message { key, conversation_id, seq, text } => {
                    match order.resumed(MessageFrame { key, conversation_id, seq, text }) {
                        Some(t) => send_unless_too_slow(&mut sink, Message::Text(t), &too_slow).await,
                        None => Ok(()),
                    }
                }
                SyncFrame::Text(t) => send_unless_too_slow(&mut sink, Message::Text(t), &too_slow).await,
                SyncFrame::End(t) => {
                    let mut r = send_unless_too_slow(&mut sink, Message::Text(t), &too_slow).await;
                    for t in order.end() {
                        if r.is_ok() {
                            r = send_unless_too_slow(&mut sink, Message::Text(t), &too_slow).await;
                        }
                    }
                    r
                }
            },
            m = rx.recv() => match m {
                Some(o) if shared.too_slow.is_cancelled() => {
                    shared.dequeued(o.byte_len());
                    Ok(())
                }
                Some(Outbound::SyncStream(r)) => {
                    sync_rx = Some(r);
                    Ok(())
                }
                Some(Outbound::Text(t)) => {
                    shared.dequeued(t.len());
                    send_unless_too_slow(&mut sink, Message::Text(t), &too_slow).await
                }
                Some(Outbound::Message(live)) => {
                    shared.dequeued(live.text.len());
                    let m = MessageFrame {
                        key: live.key,
                        conversation_id: live.conversation_id,
                        seq: live.seq,
                        text: live.text.clone(),
                    };
                    match order.live(m) {
                        Some(t) => send_unless_too_slow(&mut sink, Message::Text(t), &too_slow).await,
                        None => {
                            if order.overflowed() {
                                close.cancel();
                            }
                            Ok(())
                        }
                    }
                }
                None => break,
            },
        };
        if res.is_err() {
            return;
        }
    }
    // Closing: flush what is queued (bounded), then say goodbye. 1012 tells clients the
    // server is restarting and to reconnect; 1013 that they were too slow.
    let chosen = shared.close_code.load(std::sync::atomic::Ordering::Relaxed);
    let code = if chosen != 0 {
        CloseCode::from(chosen)
    } else if rx.len() >= rx.max_capacity() || order.overflowed() {
        CloseCode::Again
    } else {
        CloseCode::Restart
    };
    // Boxed: the closing waits would otherwise enlarge every open socket's writer task.
    Box::pin(say_goodbye(sink, rx, code)).await;
}

/// The writer's last words: the close frame, after what is queued unless `code` says the
/// client was too slow for that.
async fn say_goodbye(mut sink: Sink, mut rx: mpsc::Receiver<Outbound>, code: CloseCode) {
    if code == CloseCode::Again {
        // Too slow: what is queued would only keep it behind. Drop it and say why; give
        // the client a while to read up to the close frame.
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static("too slow: outbound queue full; reconnect and sync"),
        };
        let _ = tokio::time::timeout(SLOW_CLOSE_WAIT, async {
            let _ = sink.send(Message::Close(Some(frame))).await;
            let _ = sink.close().await;
        })
        .await;
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(f) = rx.try_recv() {
            let t = match f {
                Outbound::Text(t) => t,
                Outbound::Message(m) => m.text.clone(),
                Outbound::SyncStream(_) => continue,
            };
            if sink.feed(Message::Text(t)).await.is_err() {
                return;
            }
        }
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static("closing"),
        };
        let _ = sink.send(Message::Close(Some(frame))).await;
        let _ = sink.close().await;
    })
    .await;
    // A peer that stopped answering pings may still be reading slowly: keep the socket
    // open a little, so its late writes (queued pongs) do not meet a reset before it reads
    // the close frame and learns why (1001).
    if code == CloseCode::Away {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(message_id: i64, conversation_id: i64, seq: i64) -> MessageFrame {
        MessageFrame {
            key: message_id,
            conversation_id,
            seq,
            text: Utf8Bytes::from(format!("m{message_id}")),
        }
    }

    fn texts(v: Vec<Utf8Bytes>) -> Vec<String> {
        v.into_iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn a_live_repeat_is_written_once() {
        let mut o = Order::new();
        assert!(o.live(m(1, 10, 1)).is_some());
        assert!(o.live(m(1, 10, 1)).is_none());
        assert!(o.live(m(2, 10, 2)).is_some());
    }

    #[test]
    fn live_messages_wait_for_the_resume_and_skip_what_it_carried() {
        let mut o = Order::new();
        o.begin();
        // Live traffic during the resume is held, not written.
        assert!(o.live(m(5, 10, 5)).is_none());
        assert!(o.live(m(6, 10, 6)).is_none());
        assert!(o.live(m(9, 20, 1)).is_none());
        // The resume read seqs up to 5 of conversation 10 from the store.
        assert!(o.resumed(m(4, 10, 4)).is_some());
        assert!(o.resumed(m(5, 10, 5)).is_some());
        // After sync_complete: what the resume did not carry, in arrival order.
        assert_eq!(texts(o.end()), ["m6", "m9"]);
        assert!(o.live(m(7, 10, 7)).is_some());
    }

    #[test]
    fn a_late_live_copy_of_a_resumed_message_is_dropped() {
        let mut o = Order::new();
        o.begin();
        assert!(o.resumed(m(3, 10, 3)).is_some());
        assert!(o.end().is_empty());
        // Republished by the outbox sweeper after the resume carried it.
        assert!(o.live(m(3, 10, 3)).is_none());
        // Below the resume's high-water mark, even with an id this socket never saw.
        assert!(o.live(m(2, 10, 2)).is_none());
    }

    #[test]
    fn a_resume_repeating_live_traffic_is_not_written_twice() {
        let mut o = Order::new();
        assert!(o.live(m(8, 10, 8)).is_some());
        o.begin();
        assert!(o.resumed(m(8, 10, 8)).is_none());
        assert!(o.end().is_empty());
    }

    #[test]
    fn holding_back_too_much_counts_as_too_slow() {
        let mut o = Order::new();
        o.begin();
        for i in 0..=i64::try_from(MAX_HELD_BACK).unwrap() {
            assert!(o.live(m(i + 1, 10, i + 1)).is_none());
        }
        assert!(o.overflowed());
    }
}
