//! The once-a-second housekeeping: republishes deliveries whose writer died before
//! publishing (outbox rows past their lease), forgets gateways that stopped sending
//! heartbeats and old catch-up entries, applies message retention, and (every 10 s)
//! removes the objects of stale uploads and deleted messages' attachments.
//!
//! It sits above [`crate::delivery`] because a republish is an ordinary delivery: the
//! same routing, push job and outbox completion as the first attempt.

use std::sync::Arc;
use std::time::Duration;

use crate::attachments;
use crate::delivery::{deliver, Attempt};
use crate::metrics;
use crate::outbox;
use crate::state::Inner;

/// Pause between sweeps.
const EVERY: Duration = Duration::from_secs(1);
/// Most outbox rows (each a committed batch of messages) claimed per sweep.
const CLAIM: i64 = 500;
/// Attachment objects are swept every this many sweeps (10 s): a deleted message's
/// objects go within seconds, without a query a second.
const ATTACHMENT_SWEEP_EVERY: u64 = 10;
/// Most messages deleted for retention per sweep.
const PRUNE: i64 = 1000;
/// Most outbox leases renewed per statement.
const RENEW_CHUNK: usize = 10_000;

/// Sweeps every [`EVERY`] until aborted.
pub(crate) async fn sweep(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick_count: u64 = 0;
    loop {
        tick.tick().await;
        inner.recent.prune();
        let dropped = inner.routes.expire();
        if dropped > 0 {
            tracing::warn!(dropped, "gateways stopped sending heartbeats");
        }
        if let Some(keep) = inner.settings.retention {
            let cutoff =
                proto::time::now_ms() - i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
            match inner.store.prune_before(cutoff, PRUNE).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(n, "pruned messages past retention"),
                Err(e) => tracing::warn!(error = %e, "retention prune failed"),
            }
        }
        if tick_count.is_multiple_of(ATTACHMENT_SWEEP_EVERY) {
            match attachments::sweep(&inner).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(n, "removed stale uploads and deleted messages' attachments")
                }
                Err(e) => tracing::warn!(error = %e, "attachment sweep failed"),
            }
        }
        tick_count += 1;
        // Rows this instance is merely late with are not orphans (see outbox::Completions).
        // SQLite binds at most 32,766 parameters per statement.
        for ids in inner
            .completions
            .overdue(outbox::RENEW_AFTER)
            .chunks(RENEW_CHUNK)
        {
            match inner.store.renew_outbox(ids).await {
                Ok(()) => metrics::outbox_renewed(ids.len()),
                Err(e) => tracing::warn!(error = %e, "outbox lease renewal failed"),
            }
        }
        // Until every gateway answered the resync, "nobody to deliver to" may be wrong.
        if !inner.routes_warm() {
            continue;
        }
        match inner.store.claim_expired_outbox(CLAIM).await {
            Ok(rows) => {
                let n: usize = rows.iter().map(|r| r.deliveries.len()).sum();
                if n > 0 {
                    tracing::info!(n, rows = rows.len(), "republishing orphaned deliveries");
                    metrics::outbox_republished(n);
                }
                // Held like a fresh commit's rows: deleted once every message is out again.
                for r in &rows {
                    let ids: Vec<i64> = r.deliveries.iter().map(|p| p.message.id).collect();
                    inner.completions.hold(r.row, &ids);
                }
                for p in rows.into_iter().flat_map(|r| r.deliveries) {
                    deliver(
                        &inner,
                        &p.message,
                        &p.participants,
                        &p.meta,
                        &p.origin_connection_id,
                        Attempt::Republish,
                    )
                    .await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "outbox sweep failed"),
        }
    }
}
