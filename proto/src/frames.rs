//! The JSON frames of the client protocol: [`ClientFrame`] (client → server) and
//! [`ServerFrame`] (server → client), each a closed enum tagged by `type`.
//!
//! Names follow the spec exactly (`chat_message`, `new_message`, `message_sent`, ...);
//! everything Indaba adds is an optional field or a new `type`, never a rename, so the
//! spec's JavaScript and React Native clients work unchanged.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::limits::Invalid;
use crate::ErrorCode;

/// A positive integer id that also accepts a string of digits, because JavaScript clients
/// often keep ids as strings (`"42"`) after reading them from a URL or a data attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Id(pub i64);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a positive integer id")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Id, E> {
                if v > 0 {
                    Ok(Id(v))
                } else {
                    Err(E::custom("id must be a positive integer"))
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Id, E> {
                i64::try_from(v)
                    .map_err(|_| E::custom("id is too large"))
                    .and_then(|v| self.visit_i64(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Id, E> {
                // JSON numbers like `2.0` are integers to a JavaScript client.
                if v.fract() == 0.0 && (1.0..9.0e15).contains(&v) {
                    #[allow(clippy::cast_possible_truncation)]
                    self.visit_i64(v as i64)
                } else {
                    Err(E::custom("id must be a positive integer"))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Id, E> {
                v.parse::<i64>()
                    .map_err(|_| E::custom("id must be a positive integer"))
                    .and_then(|v| self.visit_i64(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// A client idempotency key: a string, or a number (kept as its decimal string).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ClientMsgId(pub String);

impl<'de> Deserialize<'de> for ClientMsgId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ClientMsgId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or integer client_msg_id")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ClientMsgId, E> {
                crate::limits::validate_client_msg_id(v).map_err(|e| E::custom(e.message))?;
                Ok(ClientMsgId(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ClientMsgId, E> {
                Ok(ClientMsgId(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ClientMsgId, E> {
                Ok(ClientMsgId(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `chat_message`: send a text message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Target conversation. When absent, the direct conversation with `receiver_id` is
    /// found or created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<Id>,
    /// The other user (the spec always sends it; optional when `conversation_id` is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver_id: Option<Id>,
    /// The message body (may be left out, or empty, when there are attachments).
    #[serde(default)]
    pub text: String,
    /// Idempotency key: resending with the same key never stores a second copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<ClientMsgId>,
    /// Reply in this message's thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Id>,
    /// Users to mention (participants only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<Id>,
    /// Uploads to attach (`upload_id`s from `POST /api/v1/uploads/`, at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Id>,
}

/// `edit_message`: replace the text of your message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EditMessage {
    /// The message.
    pub message_id: Id,
    /// Its new text (the rules of `chat_message`).
    pub text: String,
}

/// `delete_message`, `pin_message`, `unpin_message`, `message_reads`: one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageRef {
    /// The message.
    pub message_id: Id,
}

/// `add_reaction` / `remove_reaction`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reaction {
    /// The message.
    pub message_id: Id,
    /// One emoji, or a `:short_code:`.
    pub emoji: String,
}

/// `thread`: a thread's root and replies, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thread {
    /// The root (or a reply in its thread).
    pub message_id: Id,
    /// Only messages after this seq (paging; absent: from the root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<i64>,
    /// Page size (default 50, at most 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `typing_indicator`: the user started or stopped typing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypingIndicator {
    /// The conversation being typed in.
    pub conversation_id: Id,
    /// The spec's client names the other user; informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver_id: Option<Id>,
    /// `true` while typing. The spec's default is `true`.
    #[serde(default = "default_true")]
    pub is_typing: bool,
}

fn default_true() -> bool {
    true
}

/// `read_receipt`: the user has read these messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadReceipt {
    /// Ids of messages read.
    pub message_ids: Vec<Id>,
}

/// `join_conversation` / `leave_conversation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationRef {
    /// The conversation's id.
    pub conversation_id: Id,
}

/// `sync`: resume after a gap. Maps conversation id → the last `seq` the client has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sync {
    /// Conversation id → last seq seen (0 for "everything").
    pub conversations: std::collections::BTreeMap<Id, i64>,
}

/// `history`: an older page of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// The conversation.
    pub conversation_id: Id,
    /// Return messages with seq below this (absent: the newest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_seq: Option<i64>,
    /// Page size (default 50, at most 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `set_status`: the user says they are away, or back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetStatus {
    /// `away` or `online`.
    pub status: UserStatus,
}

/// Statuses a client may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    /// Present.
    Online,
    /// Away from the device.
    Away,
}

/// `presence_subscribe`: receive presence changes of these users.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceSubscribe {
    /// Users to watch (at most 500 per socket).
    pub user_ids: Vec<Id>,
}

/// `refresh_token`: a fresh JWT for the same user, before the current one expires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshToken {
    /// The new token.
    pub token: String,
}

/// `update_participants`: add or remove group members (the group rules decide who may).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateParticipants {
    /// The group.
    pub conversation_id: Id,
    /// Users to add.
    #[serde(default)]
    pub add: Vec<Id>,
    /// Users to remove.
    #[serde(default)]
    pub remove: Vec<Id>,
}

/// A participant's role in a group, as clients name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleName {
    /// A plain member.
    Member,
    /// Adds and removes members; appointed by the owner.
    Admin,
    /// The one owner: giving someone this role transfers ownership.
    Owner,
}

/// `set_role`: appoint or demote an admin, or (`owner`) transfer ownership.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetRole {
    /// The group.
    pub conversation_id: Id,
    /// The participant whose role changes.
    pub user_id: Id,
    /// The new role.
    pub role: RoleName,
}

/// Every frame a client may send. Closed: an unknown `type` is an `unknown_type` error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Send a message.
    ChatMessage(ChatMessage),
    /// Typing started/stopped.
    TypingIndicator(TypingIndicator),
    /// Messages were read.
    ReadReceipt(ReadReceipt),
    /// Subscribe this connection to a conversation's room events.
    JoinConversation(ConversationRef),
    /// Unsubscribe from a conversation's room events.
    LeaveConversation(ConversationRef),
    /// Application-level keepalive; answered with `pong`.
    Ping,
    /// Resume: stream what was missed, then `sync_complete`.
    Sync(Sync),
    /// An older page of messages.
    History(History),
    /// The conversation list with unread counts.
    ListConversations,
    /// Away / back.
    SetStatus(SetStatus),
    /// Watch users' presence.
    PresenceSubscribe(PresenceSubscribe),
    /// Extend the socket's authentication.
    RefreshToken(RefreshToken),
    /// First-message authentication: the first frame of a socket opened without a token.
    Authenticate(RefreshToken),
    /// Add or remove group members.
    UpdateParticipants(UpdateParticipants),
    /// Change a participant's role (or transfer ownership).
    SetRole(SetRole),
    /// Leave a group (remove yourself).
    LeaveGroup(ConversationRef),
    /// Edit your message.
    EditMessage(EditMessage),
    /// Delete a message for everyone.
    DeleteMessage(MessageRef),
    /// React to a message.
    AddReaction(Reaction),
    /// Take your reaction back.
    RemoveReaction(Reaction),
    /// Pin a message.
    PinMessage(MessageRef),
    /// Unpin a message.
    UnpinMessage(MessageRef),
    /// A thread page.
    Thread(Thread),
    /// A conversation's pinned messages.
    ListPins(ConversationRef),
    /// Who read a message ("seen by").
    MessageReads(MessageRef),
}

/// Why a client frame was rejected: the error frame to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// The frame's `client_msg_id`, if it had a readable one, so the client can match the
    /// error to its pending message.
    pub reference: Option<String>,
}

impl FrameError {
    /// Turns the error into the frame sent to the client.
    pub fn into_frame(self) -> ServerFrame {
        ServerFrame::error(self.code, self.message, self.reference)
    }
}

/// The client frame types this server understands, in protocol order.
pub const CLIENT_FRAME_TYPES: [&str; 25] = [
    "chat_message",
    "typing_indicator",
    "read_receipt",
    "join_conversation",
    "leave_conversation",
    "ping",
    "sync",
    "history",
    "list_conversations",
    "set_status",
    "presence_subscribe",
    "refresh_token",
    "authenticate",
    "update_participants",
    "set_role",
    "leave_group",
    "edit_message",
    "delete_message",
    "add_reaction",
    "remove_reaction",
    "pin_message",
    "unpin_message",
    "thread",
    "list_pins",
    "message_reads",
];

/// Parses one client text frame, telling apart: not JSON (`invalid_json`), no `type`
/// (`missing_type`), an unknown `type` (`unknown_type`) and a known type with bad fields
/// (`invalid_field`). Never panics, whatever the input.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "type")]
        ty: Option<serde_json::Value>,
        client_msg_id: Option<serde_json::Value>,
        text: Option<serde::de::IgnoredAny>,
    }
    // serde would happily read a struct from a JSON array; frames are objects only.
    if !text.trim_start().starts_with('{') {
        let valid = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
        return Err(FrameError {
            code: ErrorCode::InvalidJson,
            message: if valid {
                "frame must be a JSON object".to_owned()
            } else {
                "frame is not valid JSON".to_owned()
            },
            reference: None,
        });
    }
    let probe: Probe = serde_json::from_str(text).map_err(|e| FrameError {
        code: ErrorCode::InvalidJson,
        message: if e.is_data() {
            "frame must be a JSON object".to_owned()
        } else {
            format!("frame is not valid JSON: {e}")
        },
        reference: None,
    })?;
    let reference = match probe.client_msg_id {
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let ty = match probe.ty {
        Some(serde_json::Value::String(s)) => s,
        _ => {
            return Err(FrameError {
                code: ErrorCode::MissingType,
                message: "frame has no string `type`".to_owned(),
                reference,
            })
        }
    };
    if !CLIENT_FRAME_TYPES.contains(&ty.as_str()) {
        let mut shown: String = ty.chars().take(64).collect();
        if shown.len() < ty.len() {
            shown.push('…');
        }
        return Err(FrameError {
            code: ErrorCode::UnknownType,
            message: format!("unknown frame type `{shown}`"),
            reference,
        });
    }
    let frame = serde_json::from_str::<ClientFrame>(text).map_err(|e| FrameError {
        code: ErrorCode::InvalidField,
        message: strip_position(&e.to_string()),
        reference: reference.clone(),
    })?;
    // Only a message with attachments may leave its text out.
    if let ClientFrame::ChatMessage(m) = &frame {
        if probe.text.is_none() && m.attachments.is_empty() {
            return Err(FrameError {
                code: ErrorCode::InvalidField,
                message: "missing field `text`".to_owned(),
                reference,
            });
        }
    }
    Ok(frame)
}

/// serde_json appends " at line 1 column 57"; clients do not need the position.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// `connection_established`: sent once, first, on every accepted socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionEstablished {
    /// The authenticated user.
    pub user_id: i64,
    /// This socket's id (`<gateway>/<n>`), unique across the cluster.
    pub connection_id: String,
    /// Server clock, RFC 3339.
    pub server_time: String,
}

/// `message_sent`: the sender's own socket learns the message is durably stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageSent {
    /// The stored message's id.
    pub message_id: i64,
    /// Its conversation (useful when the client sent only `receiver_id`).
    pub conversation_id: i64,
    /// Its position in the conversation.
    pub seq: i64,
    /// The client's idempotency key, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// When the store accepted it, RFC 3339.
    pub created_at: String,
    /// True when this answers a retry of an already stored message.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// `new_message`: a message for this user (from someone else, or from their other device).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewMessage {
    /// The message's id (what `read_receipt` names).
    pub message_id: i64,
    /// Its conversation.
    pub conversation_id: i64,
    /// Who wrote it.
    pub sender_id: i64,
    /// The receiver the sender named, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver_id: Option<i64>,
    /// The body.
    pub text: String,
    /// Its position in the conversation.
    pub seq: i64,
    /// When it was stored, RFC 3339.
    pub created_at: String,
    /// The sender's idempotency key (lets the sender's other devices de-duplicate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// The thread root this replies to (null: not a reply).
    #[serde(default)]
    pub reply_to: Option<i64>,
    /// Users mentioned.
    #[serde(default)]
    pub mentions: Vec<i64>,
    /// Last edit, RFC 3339 (null: never edited).
    #[serde(default)]
    pub edited_at: Option<String>,
    /// Deleted for everyone: a tombstone (empty text).
    #[serde(default)]
    pub deleted: bool,
    /// When, RFC 3339 (null unless deleted).
    #[serde(default)]
    pub deleted_at: Option<String>,
    /// Who deleted it (null unless deleted; 0: the system).
    #[serde(default)]
    pub deleted_by: Option<i64>,
    /// Emoji → how many reacted with it and whether you did.
    #[serde(default)]
    pub reactions: std::collections::BTreeMap<String, ReactionView>,
    /// Replies in its thread.
    #[serde(default)]
    pub reply_count: i64,
    /// When the last reply came, RFC 3339 (null: none).
    #[serde(default)]
    pub last_reply_at: Option<String>,
    /// When it was pinned, RFC 3339 (null: not pinned).
    #[serde(default)]
    pub pinned_at: Option<String>,
    /// Who pinned it (null: not pinned).
    #[serde(default)]
    pub pinned_by: Option<i64>,
    /// Files attached (none once deleted).
    #[serde(default)]
    pub attachments: Vec<AttachmentView>,
}

/// An attachment as clients see it. `url` and `thumbnail` are the gateway's download
/// routes (members only; each answers with a redirect to a short-lived address).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttachmentView {
    pub id: i64,
    pub filename: String,
    pub content_type: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    /// `GET` this for the file (`/api/v1/attachments/{id}/`).
    pub url: String,
    /// `GET` this for a JPEG of at most 320 px (images only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<String>,
    /// Audio: the sender's waveform, one amplitude (0–255) per sample.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waveform: Vec<u8>,
}

impl AttachmentView {
    /// The client form of a stored attachment.
    pub fn from_pb(a: &crate::pb::Attachment) -> AttachmentView {
        let url = format!("/api/v1/attachments/{}/", a.id);
        AttachmentView {
            id: a.id,
            filename: a.filename.clone(),
            content_type: a.content_type.clone(),
            size: a.size,
            width: (a.width > 0).then_some(a.width),
            height: (a.height > 0).then_some(a.height),
            duration_ms: (a.duration_ms > 0).then_some(a.duration_ms),
            thumbnail: a.has_thumbnail.then(|| format!("{url}thumbnail/")),
            url,
            waveform: a.waveform.clone(),
        }
    }
}

/// What a notification says for a message without text: "📷 Photo", "🎤 Voice message
/// (0:12)", "📎 file.pdf" (the first attachment; "+ N more" for the rest).
pub fn attachment_summary(list: &[crate::pb::Attachment]) -> String {
    let Some(a) = list.first() else {
        return String::new();
    };
    let mut s = if a.content_type.starts_with("image/") {
        "📷 Photo".to_owned()
    } else if a.content_type.starts_with("audio/") {
        match a.duration_ms {
            0 => "🎤 Voice message".to_owned(),
            ms => {
                let secs = (ms + 500) / 1000;
                format!("🎤 Voice message ({}:{:02})", secs / 60, secs % 60)
            }
        }
    } else if a.content_type.starts_with("video/") {
        "🎥 Video".to_owned()
    } else {
        format!("📎 {}", a.filename)
    };
    if list.len() > 1 {
        s.push_str(&format!(" + {} more", list.len() - 1));
    }
    s
}

/// One emoji's reactions on a message, as the reader sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactionView {
    /// Users who reacted with it.
    pub count: i64,
    /// Whether you are one of them.
    pub me: bool,
}

/// `message_updated`: a message's text was edited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageUpdated {
    /// The message.
    pub message_id: i64,
    /// Its conversation.
    pub conversation_id: i64,
    /// The change's position in the conversation (the sync cursor).
    pub seq: i64,
    /// The text now.
    pub text: String,
    /// When, RFC 3339.
    pub edited_at: String,
    /// Who edited it (0: the system).
    pub user_id: i64,
}

/// `message_deleted`: a message was deleted for everyone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageDeleted {
    /// The message.
    pub message_id: i64,
    /// Its conversation.
    pub conversation_id: i64,
    /// The change's position in the conversation.
    pub seq: i64,
    /// When, RFC 3339.
    pub deleted_at: String,
    /// Who deleted it (0: the system).
    pub deleted_by: i64,
}

/// `reaction_added` / `reaction_removed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReactionNotice {
    /// The message.
    pub message_id: i64,
    /// Its conversation.
    pub conversation_id: i64,
    /// The change's position in the conversation.
    pub seq: i64,
    /// Who reacted.
    pub user_id: i64,
    /// The emoji.
    pub emoji: String,
    /// How many users have reacted with it after this change (set it; 0: none left).
    pub count: i64,
}

/// `message_pinned` / `message_unpinned`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PinNotice {
    /// The message.
    pub message_id: i64,
    /// Its conversation.
    pub conversation_id: i64,
    /// The change's position in the conversation.
    pub seq: i64,
    /// Who pinned or unpinned it (0: the system).
    pub user_id: i64,
    /// When, RFC 3339.
    pub at: String,
}

/// `thread`: a page of a thread, oldest first (the root first when the page starts there).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadPage {
    /// The root.
    pub message_id: i64,
    /// Its conversation.
    pub conversation_id: i64,
    /// The root and replies, ascending by seq.
    pub messages: Vec<NewMessage>,
    /// More replies follow.
    pub has_more: bool,
}

/// `pins`: a conversation's pinned messages, most recently pinned first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pins {
    /// The conversation.
    pub conversation_id: i64,
    /// The pinned messages.
    pub messages: Vec<NewMessage>,
}

/// One reader of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadView {
    /// Who.
    pub user_id: i64,
    /// When, RFC 3339.
    pub read_at: String,
}

/// `message_reads`: who read a message ("seen by").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageReads {
    /// The message.
    pub message_id: i64,
    /// Its conversation.
    pub conversation_id: i64,
    /// Readers, earliest first.
    pub reads: Vec<ReadView>,
}

/// `error`: a frame was rejected; the connection stays open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// Stable code (see [`ErrorCode`]).
    pub code: String,
    /// Human-readable detail.
    pub message: String,
    /// The rejected frame's `client_msg_id`, when it had one.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The conversation the error is about, when the frame named several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<i64>,
    /// The message ids rejected, for a partly accepted `read_receipt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_ids: Option<Vec<i64>>,
    /// For `rate_limited`: how long to wait before the next attempt can succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// `typing_indicator` (server → client): someone in a conversation is typing, or stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypingNotice {
    /// The conversation.
    pub conversation_id: i64,
    /// Who is typing.
    pub user_id: i64,
    /// Started (true) or stopped (false).
    pub is_typing: bool,
}

/// `read_receipt` (server → client): a reader read some of your messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptNotice {
    /// The messages read.
    pub message_ids: Vec<i64>,
    /// Their conversation.
    pub conversation_id: i64,
    /// Who read them.
    pub reader_id: i64,
    /// When, RFC 3339.
    pub read_at: String,
}

/// `joined_conversation`: the socket now gets the room's events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Joined {
    /// The room.
    pub conversation_id: i64,
    /// Its members.
    pub participant_ids: Vec<i64>,
}

/// `left_conversation`: the socket no longer gets the room's events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Left {
    /// The room.
    pub conversation_id: i64,
    /// Why, when the server decided (`removed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `participants_changed`: members were added to or removed from a group, or roles
/// changed (both lists empty).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParticipantsChanged {
    /// The group.
    pub conversation_id: i64,
    /// New members.
    pub added_user_ids: Vec<i64>,
    /// Former members.
    pub removed_user_ids: Vec<i64>,
    /// Who made the change; absent when the system did (a backend over gRPC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<i64>,
    /// The group's owner after the change; absent when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<i64>,
    /// The group's admins after the change.
    #[serde(default)]
    pub admin_ids: Vec<i64>,
}

/// A conversation as every door shows it (a REST body, a `conversation_updated` frame).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationView {
    /// Id.
    pub id: i64,
    /// `direct` or `group`.
    pub kind: String,
    /// Title (empty for direct chats).
    pub title: String,
    /// Members.
    pub participant_ids: Vec<i64>,
    /// The group's owner; absent for direct conversations (no roles) and ownerless groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<i64>,
    /// The group's admins (never the owner).
    #[serde(default)]
    pub admin_ids: Vec<i64>,
    /// Newest message's seq.
    pub last_seq: i64,
    /// Creator.
    pub created_by: i64,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

/// `conversation_updated`: the answer to `update_participants`, `set_role` and
/// `leave_group`, the conversation after the change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationUpdated {
    /// The conversation.
    pub conversation: ConversationView,
}

/// `message_delivered`: a recipient's device received your message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivered {
    /// The message.
    pub message_id: i64,
    /// Its conversation.
    pub conversation_id: i64,
    /// The recipient whose device got it.
    pub recipient_id: i64,
    /// When, RFC 3339.
    pub delivered_at: String,
}

/// `sync_complete`: every missed message has been sent; live traffic follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncComplete {
    /// Conversation id → its newest seq, for every conversation synced successfully.
    pub conversations: std::collections::BTreeMap<String, i64>,
    /// Conversations where messages the client asked for are no longer retained; the
    /// client has a gap it cannot fill and should say so to the user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub truncated: Vec<i64>,
}

/// `history` (server → client): a page of older messages, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// The conversation.
    pub conversation_id: i64,
    /// The messages, ascending by seq.
    pub messages: Vec<NewMessage>,
    /// Older messages exist.
    pub has_more: bool,
}

/// One row of `conversations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationInfo {
    /// Id.
    pub id: i64,
    /// `direct` or `group`.
    pub kind: String,
    /// Title (empty for direct chats).
    pub title: String,
    /// Members.
    pub participant_ids: Vec<i64>,
    /// The group's owner (absent: a direct conversation, or no owner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<i64>,
    /// The group's admins.
    #[serde(default)]
    pub admin_ids: Vec<i64>,
    /// Newest seq.
    pub last_seq: i64,
    /// Your read watermark.
    pub last_read_seq: i64,
    /// Messages from others after your watermark (deleted ones not counted).
    pub unread_count: i64,
    /// Of those, the ones mentioning you.
    #[serde(default)]
    pub unread_mentions: i64,
    /// The newest message.
    #[serde(default)]
    pub last_message: Option<NewMessage>,
}

/// `presence`: a watched user's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    /// Whose.
    pub user_id: i64,
    /// `online`, `away` or `offline`.
    pub status: String,
    /// When last connected, RFC 3339 (null if never seen).
    pub last_seen: Option<String>,
}

/// `conversations`: answer to `list_conversations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversations {
    /// Most recently active first.
    pub conversations: Vec<ConversationInfo>,
}

/// Every frame the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// First frame on every socket.
    ConnectionEstablished(ConnectionEstablished),
    /// The sender's message is stored.
    MessageSent(MessageSent),
    /// A message to show.
    NewMessage(NewMessage),
    /// A rejected frame.
    Error(ErrorFrame),
    /// Answer to `ping`.
    Pong,
    /// Someone is typing.
    TypingIndicator(TypingNotice),
    /// Your messages were read.
    ReadReceipt(ReceiptNotice),
    /// Your message reached a recipient's device.
    MessageDelivered(Delivered),
    /// Room joined.
    JoinedConversation(Joined),
    /// Room left.
    LeftConversation(Left),
    /// Group membership changed.
    ParticipantsChanged(ParticipantsChanged),
    /// End of a resume.
    SyncComplete(SyncComplete),
    /// A history page.
    History(HistoryPage),
    /// The conversation list.
    Conversations(Conversations),
    /// A watched user's presence.
    Presence(Presence),
    /// The socket's authentication was extended.
    TokenRefreshed(TokenRefreshed),
    /// A membership or role change you asked for is done.
    ConversationUpdated(ConversationUpdated),
    /// A message was edited.
    MessageUpdated(MessageUpdated),
    /// A message was deleted.
    MessageDeleted(MessageDeleted),
    /// Someone reacted.
    ReactionAdded(ReactionNotice),
    /// Someone took a reaction back.
    ReactionRemoved(ReactionNotice),
    /// A message was pinned.
    MessagePinned(PinNotice),
    /// A message was unpinned.
    MessageUnpinned(PinNotice),
    /// A thread page.
    Thread(ThreadPage),
    /// Pinned messages.
    Pins(Pins),
    /// Who read a message.
    MessageReads(MessageReads),
}

/// `token_refreshed`: the socket now stays open until `valid_until`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRefreshed {
    /// RFC 3339.
    pub valid_until: String,
}

impl ServerFrame {
    /// Serializes the frame. Our frames contain only strings and integers, so this cannot
    /// fail; the fallback keeps that promise without a panic path.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"serialization failed"}"#.to_owned()
        })
    }

    /// Builds an error frame.
    pub fn error(code: ErrorCode, message: impl Into<String>, reference: Option<String>) -> Self {
        ServerFrame::Error(ErrorFrame {
            reference,
            ..ErrorFrame::new(code, message)
        })
    }
}

impl ErrorFrame {
    /// An error without references.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorFrame {
        ErrorFrame {
            code: code.as_str().to_owned(),
            message: message.into(),
            reference: None,
            conversation_id: None,
            message_ids: None,
            retry_after_ms: None,
        }
    }

    /// Says when a refused attempt may be repeated.
    pub fn retry_after(mut self, retry_after_ms: Option<u64>) -> ErrorFrame {
        self.retry_after_ms = retry_after_ms;
        self
    }

    /// Names the conversation the error is about.
    pub fn about(mut self, conversation_id: Option<i64>) -> ErrorFrame {
        self.conversation_id = conversation_id;
        self
    }

    /// Lists the rejected message ids.
    pub fn rejecting(mut self, message_ids: Vec<i64>) -> ErrorFrame {
        self.message_ids = Some(message_ids);
        self
    }
}

/// A time that may be unset (0) as an RFC 3339 string or null.
fn time_or_null(ms: i64) -> Option<String> {
    (ms > 0).then(|| crate::time::rfc3339_ms(ms))
}

impl NewMessage {
    /// The client form of a stored message.
    pub fn from_pb(m: &crate::pb::ChatMessage) -> NewMessage {
        NewMessage {
            message_id: m.id,
            conversation_id: m.conversation_id,
            sender_id: m.sender_id,
            receiver_id: m.receiver_id,
            text: m.text.clone(),
            seq: m.seq,
            created_at: crate::time::rfc3339_ms(m.created_at_ms),
            client_msg_id: (!m.client_msg_id.is_empty()).then(|| m.client_msg_id.clone()),
            reply_to: m.reply_to,
            mentions: m.mentions.clone(),
            edited_at: time_or_null(m.edited_at_ms),
            deleted: m.deleted,
            deleted_at: m.deleted.then(|| crate::time::rfc3339_ms(m.deleted_at_ms)),
            deleted_by: m.deleted.then_some(m.deleted_by),
            reactions: m
                .reactions
                .iter()
                .map(|r| {
                    (
                        r.emoji.clone(),
                        ReactionView {
                            count: r.count,
                            me: r.me,
                        },
                    )
                })
                .collect(),
            reply_count: m.reply_count,
            last_reply_at: time_or_null(m.last_reply_at_ms),
            pinned_at: time_or_null(m.pinned_at_ms),
            pinned_by: (m.pinned_at_ms > 0).then_some(m.pinned_by),
            attachments: m.attachments.iter().map(AttachmentView::from_pb).collect(),
        }
    }
}

impl ServerFrame {
    /// The event a committed change is shown as (`None`: a kind from a newer peer).
    pub fn from_change(c: &crate::pb::MessageChange) -> Option<ServerFrame> {
        use crate::pb::ChangeKind;
        let at = crate::time::rfc3339_ms(c.at_ms);
        let (message_id, conversation_id, seq) = (c.message_id, c.conversation_id, c.seq);
        let reaction = || ReactionNotice {
            message_id,
            conversation_id,
            seq,
            user_id: c.actor_id,
            emoji: c.emoji.clone(),
            count: c.count,
        };
        let pin = || PinNotice {
            message_id,
            conversation_id,
            seq,
            user_id: c.actor_id,
            at: at.clone(),
        };
        Some(match ChangeKind::try_from(c.kind).ok()? {
            ChangeKind::Unspecified => return None,
            ChangeKind::Edited => ServerFrame::MessageUpdated(MessageUpdated {
                message_id,
                conversation_id,
                seq,
                text: c.text.clone(),
                edited_at: at.clone(),
                user_id: c.actor_id,
            }),
            ChangeKind::Deleted => ServerFrame::MessageDeleted(MessageDeleted {
                message_id,
                conversation_id,
                seq,
                deleted_at: at.clone(),
                deleted_by: c.actor_id,
            }),
            ChangeKind::ReactionAdded => ServerFrame::ReactionAdded(reaction()),
            ChangeKind::ReactionRemoved => ServerFrame::ReactionRemoved(reaction()),
            ChangeKind::Pinned => ServerFrame::MessagePinned(pin()),
            ChangeKind::Unpinned => ServerFrame::MessageUnpinned(pin()),
        })
    }
}

impl From<Invalid> for FrameError {
    fn from(i: Invalid) -> Self {
        FrameError {
            code: i.code,
            message: i.message,
            reference: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        parse_client_frame(text).unwrap_err().code
    }

    #[test]
    fn parses_the_spec_frames_verbatim() {
        let f = parse_client_frame(
            r#"{"type": "chat_message", "conversation_id": 1, "receiver_id": 2, "text": "Hello!"}"#,
        )
        .unwrap();
        assert_eq!(
            f,
            ClientFrame::ChatMessage(ChatMessage {
                conversation_id: Some(Id(1)),
                receiver_id: Some(Id(2)),
                text: "Hello!".into(),
                client_msg_id: None,
                reply_to: None,
                mentions: Vec::new(),
                attachments: Vec::new(),
            })
        );
        let f = parse_client_frame(
            r#"{"type":"typing_indicator","conversation_id":1,"receiver_id":2,"is_typing":false}"#,
        )
        .unwrap();
        assert!(matches!(
            f,
            ClientFrame::TypingIndicator(TypingIndicator {
                is_typing: false,
                ..
            })
        ));
        let f = parse_client_frame(r#"{"type":"read_receipt","message_ids":[1,"2"]}"#).unwrap();
        assert_eq!(
            f,
            ClientFrame::ReadReceipt(ReadReceipt {
                message_ids: vec![Id(1), Id(2)]
            })
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"ping"}"#).unwrap(),
            ClientFrame::Ping
        );
    }

    #[test]
    fn sync_history_and_list() {
        let f = parse_client_frame(r#"{"type":"sync","conversations":{"3":10,"4":0}}"#).unwrap();
        let ClientFrame::Sync(s) = f else {
            panic!("not sync")
        };
        assert_eq!(s.conversations.get(&Id(3)), Some(&10));
        assert_eq!(s.conversations.len(), 2);
        assert_eq!(
            code(r#"{"type":"sync","conversations":{"x":1}}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(code(r#"{"type":"sync"}"#), ErrorCode::InvalidField);
        let f = parse_client_frame(r#"{"type":"history","conversation_id":3,"before_seq":20}"#)
            .unwrap();
        assert!(matches!(
            f,
            ClientFrame::History(History {
                before_seq: Some(20),
                limit: None,
                ..
            })
        ));
        assert_eq!(
            parse_client_frame(r#"{"type":"list_conversations"}"#).unwrap(),
            ClientFrame::ListConversations
        );
    }

    #[test]
    fn ids_may_be_strings_of_digits() {
        let f =
            parse_client_frame(r#"{"type":"join_conversation","conversation_id":"17"}"#).unwrap();
        assert_eq!(
            f,
            ClientFrame::JoinConversation(ConversationRef {
                conversation_id: Id(17)
            })
        );
    }

    #[test]
    fn error_codes_for_bad_frames() {
        assert_eq!(code("not json"), ErrorCode::InvalidJson);
        assert_eq!(code("[1,2]"), ErrorCode::InvalidJson);
        assert_eq!(code(""), ErrorCode::InvalidJson);
        assert_eq!(code(r#"{"text":"hi"}"#), ErrorCode::MissingType);
        assert_eq!(code(r#"{"type":5}"#), ErrorCode::MissingType);
        assert_eq!(code(r#"{"type":"launch_rockets"}"#), ErrorCode::UnknownType);
        assert_eq!(
            code(r#"{"type":"chat_message","receiver_id":2}"#),
            ErrorCode::InvalidField
        );
        // With attachments the text may be left out; a notification then says what it is.
        let a = |ct: &str, name: &str, ms: i64| crate::pb::Attachment {
            content_type: ct.into(),
            filename: name.into(),
            duration_ms: ms,
            ..Default::default()
        };
        assert_eq!(
            attachment_summary(&[a("image/jpeg", "k.jpg", 0)]),
            "📷 Photo"
        );
        assert_eq!(
            attachment_summary(&[a("audio/ogg", "v.ogg", 12_400)]),
            "🎤 Voice message (0:12)"
        );
        assert_eq!(
            attachment_summary(&[a("application/pdf", "file.pdf", 0), a("image/png", "x", 0)]),
            "📎 file.pdf + 1 more"
        );
        assert!(
            parse_client_frame(r#"{"type":"chat_message","receiver_id":2,"attachments":[4]}"#)
                .is_ok()
        );
        assert_eq!(
            code(r#"{"type":"chat_message","receiver_id":"bob","text":"x"}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code(r#"{"type":"chat_message","receiver_id":-3,"text":"x"}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code(r#"{"type":"chat_message","receiver_id":2,"text":7}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code(r#"{"type":"read_receipt","message_ids":"1"}"#),
            ErrorCode::InvalidField
        );
    }

    #[test]
    fn error_keeps_the_client_msg_id_as_ref() {
        let e = parse_client_frame(r#"{"type":"chat_message","text":5,"client_msg_id":"abc"}"#)
            .unwrap_err();
        assert_eq!(e.reference.as_deref(), Some("abc"));
        let e = parse_client_frame(r#"{"type":"nope","client_msg_id":12}"#).unwrap_err();
        assert_eq!(e.reference.as_deref(), Some("12"));
    }

    #[test]
    fn server_frames_use_the_spec_names() {
        let j = ServerFrame::MessageSent(MessageSent {
            message_id: 9,
            conversation_id: 3,
            seq: 1,
            client_msg_id: None,
            created_at: "t".into(),
            duplicate: false,
        })
        .to_json();
        assert_eq!(
            j,
            r#"{"type":"message_sent","message_id":9,"conversation_id":3,"seq":1,"created_at":"t"}"#
        );
        let j = ServerFrame::error(ErrorCode::Forbidden, "no", Some("k".into())).to_json();
        assert_eq!(
            j,
            r#"{"type":"error","code":"forbidden","message":"no","ref":"k"}"#
        );
    }
}
