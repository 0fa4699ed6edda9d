//! Read receipts: per-message read times (first read wins) and each reader's
//! per-conversation watermark, written together so unread counts and receipts agree.

use sqlx::Row;

use super::{Store, StoreError};

/// A message newly marked read, as the relay to its sender needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReadMark {
    /// The message.
    pub(crate) message_id: i64,
    /// Its conversation.
    pub(crate) conversation_id: i64,
    /// Its author (who gets the receipt).
    pub(crate) sender_id: i64,
}

/// The result of [`Store::mark_read`].
#[derive(Debug, Clone, Default)]
pub(crate) struct MarkedRead {
    /// Ids the reader may see (now read, whether or not they already were).
    pub(crate) accepted: Vec<i64>,
    /// Ids that do not exist or belong to conversations the reader is not in.
    pub(crate) rejected: Vec<i64>,
    /// Messages read for the first time by this reader, written by someone else.
    pub(crate) newly_read: Vec<ReadMark>,
    /// The read time recorded.
    pub(crate) read_at_ms: i64,
}

impl Store {
    /// Records that `reader` read `ids`: per-message read time (first read wins) and the
    /// reader's per-conversation watermark, in one transaction.
    pub(crate) async fn mark_read(
        &self,
        reader: i64,
        ids: &[i64],
    ) -> Result<MarkedRead, StoreError> {
        let mut ids: Vec<i64> = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let now = proto::time::now_ms();
        let mut out = MarkedRead {
            read_at_ms: now,
            ..MarkedRead::default()
        };
        if ids.is_empty() {
            return Ok(out);
        }
        let visible: Vec<(i64, i64, i64, i64)> = on_pool!(self, |pool, begin| {
            let mut tx = pool.begin_with(begin).await?;
            let mut qb = sqlx::QueryBuilder::new(
                "SELECT m.id, m.conversation_id, m.sender_id, m.seq FROM messages m
                 JOIN participants p ON p.conversation_id = m.conversation_id AND p.user_id = ",
            );
            qb.push_bind(reader);
            qb.push(" WHERE m.id IN (");
            let mut sep = qb.separated(", ");
            for id in &ids {
                sep.push_bind(*id);
            }
            qb.push(") ORDER BY m.id");
            let rows = qb.build().fetch_all(&mut *tx).await?;
            let mut visible = Vec::with_capacity(rows.len());
            for r in &rows {
                visible.push((
                    r.try_get::<i64, _>("id")?,
                    r.try_get::<i64, _>("conversation_id")?,
                    r.try_get::<i64, _>("sender_id")?,
                    r.try_get::<i64, _>("seq")?,
                ));
            }
            for (id, conv, sender, _) in &visible {
                let inserted: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO message_reads (message_id, user_id, read_at_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (message_id, user_id) DO NOTHING RETURNING message_id",
                )
                .bind(*id)
                .bind(reader)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                if inserted.is_some() && *sender != reader {
                    out.newly_read.push(ReadMark {
                        message_id: *id,
                        conversation_id: *conv,
                        sender_id: *sender,
                    });
                }
            }
            let mut marks: std::collections::BTreeMap<i64, i64> = std::collections::BTreeMap::new();
            for (_, conv, _, seq) in &visible {
                let e = marks.entry(*conv).or_insert(0);
                *e = (*e).max(*seq);
            }
            for (conv, seq) in marks {
                sqlx::query(
                    "UPDATE participants SET last_read_seq = $1
                     WHERE conversation_id = $2 AND user_id = $3 AND last_read_seq < $1",
                )
                .bind(seq)
                .bind(conv)
                .bind(reader)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            visible
        });
        let seen: std::collections::HashSet<i64> = visible.iter().map(|v| v.0).collect();
        for id in ids {
            if seen.contains(&id) {
                out.accepted.push(id);
            } else {
                out.rejected.push(id);
            }
        }
        Ok(out)
    }
}
