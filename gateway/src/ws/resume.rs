//! A `sync` (resume): everything after the client's last seq, per conversation in seq
//! order — new messages as they are now, and the changes (edits, deletions, reactions,
//! pins) to messages the client already had — then `sync_complete`. It streams on the socket's own bounded resume channel, so a
//! long resume waits for a slow reader instead of overflowing the live queue; the writer
//! holds live messages back meanwhile and sends them afterwards, minus any the resume
//! already carried (see `writer`).

use std::collections::BTreeMap;

use proto::frames::{self, NewMessage, ServerFrame};
use proto::ErrorCode;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::backend::{self, BackendError, Window};
use crate::ctx::Ctx;
use crate::hub::{change_key, SyncFrame};

/// Most conversations one `sync` may name.
const MAX_SYNC_CONVERSATIONS: usize = 1000;
/// Page size used while streaming a resume (the largest message page).
const SYNC_PAGE: u32 = proto::limits::MESSAGE_PAGE.max;

/// Refuses a `sync` that cannot be served at all.
pub(super) fn check(s: &frames::Sync) -> Result<(), BackendError> {
    if s.conversations.len() > MAX_SYNC_CONVERSATIONS {
        return Err(BackendError::refused(
            ErrorCode::InvalidField,
            format!("sync names at most {MAX_SYNC_CONVERSATIONS} conversations"),
        ));
    }
    if s.conversations.values().any(|seq| *seq < 0) {
        return Err(BackendError::refused(
            ErrorCode::InvalidField,
            "last seq must not be negative",
        ));
    }
    Ok(())
}

/// Streams the resume to `tx`; returns early when the writer is gone.
pub(super) async fn stream(ctx: &Ctx, user_id: i64, s: frames::Sync, tx: &mpsc::Sender<SyncFrame>) {
    if tx.send(SyncFrame::Begin).await.is_err() {
        return;
    }
    let mut done = BTreeMap::new();
    let mut truncated = Vec::new();
    for (conv, last_seq) in s.conversations {
        let mut after = last_seq;
        loop {
            let page = match backend::messages(
                ctx,
                user_id,
                conv.0,
                Window::After(after),
                SYNC_PAGE,
            )
            .await
            {
                Ok(p) => p,
                Err(e) => {
                    error(tx, &e, conv.0).await;
                    break;
                }
            };
            if after == last_seq && page.first_retained_seq > last_seq.saturating_add(1) {
                truncated.push(conv.0);
            }
            // Messages and changes share the seq: merge the page's two lists in order. A
            // change to a message after the client's cursor is left out: the message
            // itself is streamed as it is now.
            let mut items: Vec<(i64, i64, Utf8Bytes)> = page
                .messages
                .iter()
                .map(|m| {
                    let f = ServerFrame::NewMessage(NewMessage::from_pb(m));
                    (m.seq, m.id, Utf8Bytes::from(f.to_json()))
                })
                .chain(
                    page.changes
                        .iter()
                        .filter(|c| c.message_seq <= last_seq)
                        .filter_map(|c| {
                            let f = ServerFrame::from_change(c)?;
                            Some((c.seq, change_key(c.id), Utf8Bytes::from(f.to_json())))
                        }),
                )
                .collect();
            items.sort_unstable_by_key(|(seq, _, _)| *seq);
            for (seq, key, text) in items {
                let frame = SyncFrame::Message {
                    key,
                    conversation_id: conv.0,
                    seq,
                    text,
                };
                if tx.send(frame).await.is_err() {
                    return;
                }
            }
            // The page covers up to its end, whatever it carried (a change left out, or
            // none at all).
            // (A message-service that predates `end_seq` answers 0: its last message.)
            let end = if page.end_seq > 0 {
                page.end_seq
            } else {
                page.messages.last().map_or(after, |m| m.seq)
            };
            let progressed = end > after;
            after = after.max(end);
            if !page.has_more || !progressed {
                // The highest seq actually streamed: a message committed after the page was
                // read is live traffic, not covered by this resume.
                done.insert(conv.0.to_string(), after);
                break;
            }
        }
    }
    let end = ServerFrame::SyncComplete(frames::SyncComplete {
        conversations: done,
        truncated,
    });
    let _ = tx
        .send(SyncFrame::End(Utf8Bytes::from(end.to_json())))
        .await;
}

/// An error about one conversation of the resume, in order with its frames.
async fn error(tx: &mpsc::Sender<SyncFrame>, e: &BackendError, conversation_id: i64) {
    let f = ServerFrame::Error(
        frames::ErrorFrame::new(e.code(), e.message()).about(Some(conversation_id)),
    );
    let _ = tx.send(SyncFrame::Text(Utf8Bytes::from(f.to_json()))).await;
}
