//! Reassembly of gateway heartbeats split into parts (a gateway with many sockets would
//! otherwise exceed NATS's 1 MB payload limit). Parts of one snapshot arrive in order on
//! one subscription; a snapshot is applied only when complete, and a missing part simply
//! drops it (the next heartbeat repairs everything).

use std::collections::HashMap;

use proto::pb::GatewayHeartbeat;

/// Most sockets one heartbeat part carries (~25 bytes each on the wire).
pub const SOCKETS_PER_PART: usize = 10_000;

/// Collects parts per gateway.
#[derive(Debug, Default)]
pub struct Assembler {
    pending: HashMap<String, GatewayHeartbeat>,
}

impl Assembler {
    /// Feeds one message; returns a complete heartbeat when this completes one.
    pub fn push(&mut self, hb: GatewayHeartbeat) -> Option<GatewayHeartbeat> {
        if hb.parts <= 1 {
            self.pending.remove(&hb.gateway_id);
            return Some(hb);
        }
        if hb.part == 0 {
            self.pending.insert(hb.gateway_id.clone(), hb);
            return None;
        }
        let acc = self.pending.get_mut(&hb.gateway_id)?;
        if acc.part + 1 != hb.part || acc.parts != hb.parts {
            // A part went missing: drop this snapshot.
            self.pending.remove(&hb.gateway_id);
            return None;
        }
        acc.part = hb.part;
        acc.sockets.extend(hb.sockets);
        if hb.part + 1 == hb.parts {
            let mut full = self.pending.remove(&hb.gateway_id)?;
            full.part = 0;
            full.parts = 1;
            return Some(full);
        }
        None
    }
}

/// Splits a heartbeat into parts of at most [`SOCKETS_PER_PART`] sockets.
pub fn split(hb: GatewayHeartbeat) -> Vec<GatewayHeartbeat> {
    if hb.sockets.len() <= SOCKETS_PER_PART {
        return vec![hb];
    }
    let parts = hb.sockets.len().div_ceil(SOCKETS_PER_PART);
    let parts_u32 = u32::try_from(parts).unwrap_or(u32::MAX);
    (0..parts)
        .map(|i| {
            let len = hb.sockets.len();
            let range = (i * SOCKETS_PER_PART).min(len)..((i + 1) * SOCKETS_PER_PART).min(len);
            GatewayHeartbeat {
                gateway_id: hb.gateway_id.clone(),
                sent_at_ms: hb.sent_at_ms,
                interval_ms: hb.interval_ms,
                stopping: hb.stopping,
                sockets: hb.sockets[range].to_vec(),
                part: u32::try_from(i).unwrap_or(u32::MAX),
                parts: parts_u32,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::pb::SocketInfo;

    fn big(n: usize) -> GatewayHeartbeat {
        GatewayHeartbeat {
            gateway_id: "g".into(),
            sockets: (0..n as i64)
                .map(|u| SocketInfo {
                    user_id: u,
                    connection_id: format!("g/{u}"),
                    away: false,
                })
                .collect(),
            interval_ms: 10_000,
            ..Default::default()
        }
    }

    #[test]
    fn split_and_reassemble() {
        let parts = split(big(25_000));
        assert_eq!(parts.len(), 3);
        let mut a = Assembler::default();
        assert!(a.push(parts[0].clone()).is_none());
        assert!(a.push(parts[1].clone()).is_none());
        let full = a.push(parts[2].clone()).unwrap();
        assert_eq!(full.sockets.len(), 25_000);
        assert_eq!(full.sockets[24_999].user_id, 24_999);
        // A lost part drops the snapshot instead of applying half of it.
        assert!(a.push(parts[0].clone()).is_none());
        assert!(a.push(parts[2].clone()).is_none());
        assert!(a.push(parts[1].clone()).is_none());
        // Small heartbeats pass straight through.
        assert_eq!(split(big(10)).len(), 1);
        assert!(a.push(big(10)).is_some());
    }
}
