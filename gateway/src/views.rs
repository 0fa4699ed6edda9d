//! Protobuf records as clients see them in JSON, written once for every door (a
//! conversation in a WebSocket `conversations` frame and in a REST page is the same object).
//! Pure functions of their input; no I/O.

use proto::frames::{self, NewMessage};
use proto::pb;
use serde::Serialize;

/// A conversation as every door shows it (REST bodies, `conversation_updated`).
pub(crate) fn conversation(c: pb::Conversation) -> frames::ConversationView {
    frames::ConversationView {
        id: c.id,
        kind: kind_name(c.kind).to_owned(),
        title: c.title,
        participant_ids: c.participant_ids,
        owner_id: (c.owner_id > 0).then_some(c.owner_id),
        admin_ids: c.admin_ids,
        last_seq: c.last_seq,
        created_by: c.created_by,
        created_at: proto::time::rfc3339_ms(c.created_at_ms),
    }
}

/// `participants_changed` for a membership event.
pub(crate) fn participants_changed(ev: &pb::MembershipEvent) -> frames::ParticipantsChanged {
    frames::ParticipantsChanged {
        conversation_id: ev.conversation_id,
        added_user_ids: ev.added_user_ids.clone(),
        removed_user_ids: ev.removed_user_ids.clone(),
        actor_id: (ev.actor_id > 0).then_some(ev.actor_id),
        owner_id: (ev.owner_id > 0).then_some(ev.owner_id),
        admin_ids: ev.admin_ids.clone(),
    }
}

/// The wire name of a conversation kind.
pub(crate) fn kind_name(kind: i32) -> &'static str {
    match pb::ConversationKind::try_from(kind) {
        Ok(pb::ConversationKind::Direct) => "direct",
        _ => "group",
    }
}

/// The conversations of a list answer, as list entries (summaries without a conversation
/// are skipped: an older peer's answer).
pub(crate) fn conversation_list(
    list: Vec<pb::ConversationSummary>,
) -> Vec<frames::ConversationInfo> {
    list.into_iter()
        .filter_map(|s| {
            let c = s.conversation?;
            Some(frames::ConversationInfo {
                id: c.id,
                kind: kind_name(c.kind).to_owned(),
                title: c.title,
                participant_ids: c.participant_ids,
                owner_id: (c.owner_id > 0).then_some(c.owner_id),
                admin_ids: c.admin_ids,
                last_seq: c.last_seq,
                last_read_seq: s.last_read_seq,
                unread_count: s.unread_count,
                unread_mentions: s.unread_mentions,
                last_message: s.last_message.as_ref().map(NewMessage::from_pb),
            })
        })
        .collect()
}

/// Messages of a page, as `new_message` objects.
pub(crate) fn messages(list: &[pb::ChatMessage]) -> Vec<NewMessage> {
    list.iter().map(NewMessage::from_pb).collect()
}

/// A thread page as the client sees it.
pub(crate) fn thread(p: pb::GetThreadResponse) -> frames::ThreadPage {
    frames::ThreadPage {
        message_id: p.root_id,
        conversation_id: p.conversation_id,
        messages: messages(&p.messages),
        has_more: p.has_more,
    }
}

/// "Seen by" as the client sees it.
pub(crate) fn message_reads(r: pb::GetMessageReadsResponse) -> frames::MessageReads {
    frames::MessageReads {
        message_id: r.message_id,
        conversation_id: r.conversation_id,
        reads: r
            .reads
            .into_iter()
            .map(|x| frames::ReadView {
                user_id: x.user_id,
                read_at: proto::time::rfc3339_ms(x.read_at_ms),
            })
            .collect(),
    }
}

/// The client form of a presence record.
pub(crate) fn presence(user_id: i64, status: &str, last_seen_ms: i64) -> frames::Presence {
    frames::Presence {
        user_id,
        status: status.to_owned(),
        last_seen: (last_seen_ms > 0).then(|| proto::time::rfc3339_ms(last_seen_ms)),
    }
}

/// The wire name of a push platform.
pub(crate) fn platform_name(p: i32) -> &'static str {
    match pb::DevicePlatform::try_from(p) {
        Ok(pb::DevicePlatform::Fcm) => "fcm",
        Ok(pb::DevicePlatform::Apns) => "apns",
        Ok(pb::DevicePlatform::Webpush) => "webpush",
        Ok(pb::DevicePlatform::Webhook) => "webhook",
        _ => "unknown",
    }
}

/// A push device as the REST API shows it.
#[derive(Debug, Serialize)]
pub(crate) struct DeviceJson {
    id: i64,
    platform: &'static str,
    token: String,
    created_at: String,
}

impl From<pb::Device> for DeviceJson {
    fn from(d: pb::Device) -> Self {
        DeviceJson {
            id: d.id,
            platform: platform_name(d.platform),
            token: d.token,
            created_at: proto::time::rfc3339_ms(d.created_at_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_without_last_seen_omits_it() {
        assert_eq!(presence(7, "online", 0).last_seen, None);
        assert!(presence(7, "offline", 1_700_000_000_000)
            .last_seen
            .is_some());
    }

    #[test]
    fn roles_show_only_when_there_are_some() {
        let direct = conversation(pb::Conversation {
            id: 1,
            kind: pb::ConversationKind::Direct as i32,
            participant_ids: vec![1, 2],
            ..Default::default()
        });
        let v = serde_json::to_value(&direct).unwrap();
        assert!(v.get("owner_id").is_none());
        assert_eq!(v["admin_ids"], serde_json::json!([]));
        let ev = participants_changed(&pb::MembershipEvent {
            conversation_id: 3,
            owner_id: 1,
            admin_ids: vec![2],
            ..Default::default()
        });
        assert_eq!((ev.actor_id, ev.owner_id), (None, Some(1)));
    }

    #[test]
    fn unknown_kinds_read_as_groups() {
        assert_eq!(kind_name(pb::ConversationKind::Direct as i32), "direct");
        assert_eq!(kind_name(pb::ConversationKind::Group as i32), "group");
        assert_eq!(kind_name(99), "group");
    }
}
