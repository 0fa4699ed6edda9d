//! The operations of message-service, typed: one function per request, returning the
//! protobuf response with failures in its `error` field. The NATS routes (`dispatch`) and
//! the gRPC service (`grpc`) both call these, so every entry point holds to the same rules:
//! validation lives here, not in the doors.

use std::collections::BTreeMap;
use tracing::Instrument;

use proto::limits::{CONVERSATION_PAGE, MAX_RECEIPT_IDS, MAX_SEND_BATCH, MESSAGE_PAGE};
use proto::pb::{self, ConversationKind};
use proto::{field_error, pb_error, ErrorCode};

use crate::delivery::{deliver, publish_event, Attempt};
use crate::metrics;
use crate::state::Inner;
use crate::store::{self, ConversationCursor, Role, Roster, StoreError, SYSTEM_SENDER_ID};

/// Conversations one unread summary covers (most recently active first): the largest
/// conversation page, so the summary and a full first page of the list agree.
const UNREAD_CONVERSATIONS: u32 = CONVERSATION_PAGE.max;

/// A response type: it can carry a failure, and say whether it does.
pub(crate) trait Answer: prost::Message + Default {
    /// The response for a request that failed as a whole.
    fn failed(e: pb::Error) -> Self;
    /// The failure, if the request failed.
    fn error(&self) -> Option<&pb::Error>;

    /// The response to an operation's outcome: `ok`'s answer, or the failure.
    fn from_result<T>(res: Result<T, pb::Error>, ok: impl FnOnce(T) -> Self) -> Self {
        res.map_or_else(Self::failed, ok)
    }
}

macro_rules! answer_with_error_field {
    ($($t:ty),* $(,)?) => {$(
        impl Answer for $t {
            fn failed(e: pb::Error) -> Self {
                let mut r = Self::default();
                r.error = Some(e);
                r
            }
            fn error(&self) -> Option<&pb::Error> {
                self.error.as_ref()
            }
        }
    )*};
}
answer_with_error_field!(
    pb::SendBatchResponse,
    pb::GetThreadResponse,
    pb::ListPinsResponse,
    pb::GetMessageReadsResponse,
    pb::MarkReadResponse,
    pb::TypingResponse,
    pb::ListMessagesResponse,
    pb::ListConversationsResponse,
    pb::GetUnreadCountsResponse,
    pb::SharedContactsResponse,
    pb::CreateUploadResponse,
    pb::GetAttachmentUrlResponse,
);

macro_rules! answer_with_result_oneof {
    ($($t:ty => $m:ident),* $(,)?) => {$(
        impl Answer for $t {
            fn failed(e: pb::Error) -> Self {
                let mut r = Self::default();
                r.result = Some(pb::$m::Result::Error(e));
                r
            }
            fn error(&self) -> Option<&pb::Error> {
                match &self.result {
                    Some(pb::$m::Result::Error(e)) => Some(e),
                    _ => None,
                }
            }
        }
    )*};
}
answer_with_result_oneof!(
    pb::SendMessageResponse => send_message_response,
    pb::CreateConversationResponse => create_conversation_response,
    pb::GetConversationResponse => get_conversation_response,
    pb::UpdateParticipantsResponse => update_participants_response,
    pb::SetParticipantRoleResponse => set_participant_role_response,
    pb::GetMessageResponse => get_message_response,
    pb::ChangeMessageResponse => change_message_response,
);

/// The failure a client sees for a store error: its own refusal, or `unavailable` (and a
/// log line and a count) when the database failed.
pub(crate) fn store_error(e: StoreError) -> pb::Error {
    match e {
        StoreError::Rejected { code, message } | StoreError::Conflict { code, message } => {
            pb_error(code, message)
        }
        StoreError::Overloaded { retry_after_ms } => pb::Error {
            retry_after_ms,
            ..pb_error(
                ErrorCode::Unavailable,
                format!("too many messages in flight; retry in {retry_after_ms} ms"),
            )
        },
        other => {
            metrics::store_error();
            tracing::error!(error = %other, "store failure");
            pb_error(
                ErrorCode::Unavailable,
                "the message store is unavailable; retry",
            )
        }
    }
}

/// A field's validation failure as a request failure naming it.
fn invalid(field: &str, e: proto::limits::Invalid) -> pb::Error {
    field_error(field, e.code, e.message)
}

/// `field` must be a positive id.
fn positive(field: &str, id: i64) -> Result<(), pb::Error> {
    proto::limits::validate_id(field, id).map_err(|e| invalid(field, e))
}

/// Validates a send request. Every entry point (gateway, REST, gRPC) lands here, so the
/// rules hold whoever the caller is.
pub(crate) fn validate_send(
    req: &pb::SendMessageRequest,
    max_text: usize,
) -> Result<(), pb::Error> {
    use proto::limits::{validate_client_msg_id, validate_text};
    if req.as_system {
        if req.sender_id != SYSTEM_SENDER_ID {
            return Err(field_error(
                "sender_id",
                ErrorCode::InvalidField,
                "a system message has sender_id 0",
            ));
        }
        if req.conversation_id.is_none() {
            return Err(field_error(
                "conversation_id",
                ErrorCode::InvalidField,
                "a system message needs conversation_id",
            ));
        }
    } else {
        positive("sender_id", req.sender_id)?;
    }
    if let Some(c) = req.conversation_id {
        positive("conversation_id", c)?;
    }
    match req.receiver_id {
        Some(r) => {
            positive("receiver_id", r)?;
            if r == req.sender_id {
                return Err(field_error(
                    "receiver_id",
                    ErrorCode::InvalidReceiver,
                    "receiver_id must not be the sender",
                ));
            }
        }
        None if req.conversation_id.is_none() => {
            return Err(field_error(
                "conversation_id",
                ErrorCode::InvalidField,
                "conversation_id or receiver_id is required",
            ))
        }
        None => {}
    }
    // With attachments a message may have no text (a photo on its own).
    if !req.text.is_empty() || req.attachments.is_empty() {
        validate_text(&req.text, max_text).map_err(|e| invalid("text", e))?;
    }
    if req.attachments.len() > crate::attachments::MAX_ATTACHMENTS {
        return Err(field_error(
            "attachments",
            ErrorCode::InvalidField,
            format!(
                "a message has at most {} attachments",
                crate::attachments::MAX_ATTACHMENTS
            ),
        ));
    }
    for (i, a) in req.attachments.iter().enumerate() {
        positive("attachments", *a)?;
        if req.attachments[..i].contains(a) {
            return Err(field_error(
                "attachments",
                ErrorCode::InvalidField,
                format!("attachment {a} is named twice"),
            ));
        }
    }
    if !req.attachments.is_empty() && req.as_system {
        return Err(field_error(
            "attachments",
            ErrorCode::InvalidField,
            "system messages carry no attachments",
        ));
    }
    if !req.client_msg_id.is_empty() {
        validate_client_msg_id(&req.client_msg_id).map_err(|e| invalid("client_msg_id", e))?;
    }
    if let Some(r) = req.reply_to {
        positive("reply_to", r)?;
    }
    if req.mentions.len() > proto::limits::MAX_MENTIONS {
        return Err(field_error(
            "mentions",
            ErrorCode::InvalidField,
            format!(
                "a message mentions at most {} users",
                proto::limits::MAX_MENTIONS
            ),
        ));
    }
    for u in &req.mentions {
        positive("mentions", *u)?;
    }
    Ok(())
}

/// Stores a message (idempotent on the sender's `client_msg_id`), then publishes it.
pub(crate) async fn send(inner: &Inner, req: pb::SendMessageRequest) -> pb::SendMessageResponse {
    use pb::send_message_response::Result as R;
    if let Err(e) = validate_send(&req, inner.settings.max_text_chars) {
        return pb::SendMessageResponse::failed(e);
    }
    let attachments = match req.attachments.is_empty() {
        true => Vec::new(),
        false => match crate::attachments::prepare(
            inner,
            req.sender_id,
            req.conversation_id,
            &req.attachments,
        )
        .instrument(tracing::info_span!("attachments"))
        .await
        {
            Ok(a) => a,
            Err(e) => return pb::SendMessageResponse::failed(store_error(e)),
        },
    };
    let new = store::NewMessage {
        attachments,
        sender_id: req.sender_id,
        conversation_id: req.conversation_id,
        receiver_id: req.receiver_id,
        text: req.text,
        client_msg_id: (!req.client_msg_id.is_empty()).then_some(req.client_msg_id),
        origin_connection_id: req.origin_connection_id.clone(),
        reply_to: req.reply_to,
        mentions: req.mentions,
    };
    let sent = match inner
        .sends
        .store(new)
        .instrument(tracing::info_span!("store"))
        .await
    {
        Ok(s) => s,
        Err(e) => return pb::SendMessageResponse::failed(store_error(e)),
    };
    tracing::debug!(
        message_id = sent.message.id,
        duplicate = sent.duplicate,
        "message stored"
    );
    if !sent.duplicate {
        // Its outbox row is held (renewed) until the delivery is out: see `Sends::store`.
        inner.crash_point_after_commit();
        metrics::message_stored();
        // Committed: publish now. The reply goes out after this, but a slow publish only
        // delays `message_sent`, never loses the message (the outbox row covers a crash).
        deliver(
            inner,
            &sent.message,
            &sent.participants,
            &sent.meta,
            &req.origin_connection_id,
            Attempt::First,
        )
        .instrument(tracing::info_span!("deliver"))
        .await;
    }
    pb::SendMessageResponse {
        result: Some(R::Message(sent.message)),
        duplicate: sent.duplicate,
    }
}

/// A presigned upload slot (`attachments::create_upload`).
pub(crate) async fn create_upload(
    inner: &Inner,
    req: pb::CreateUploadRequest,
) -> pb::CreateUploadResponse {
    crate::attachments::create_upload(inner, req)
        .await
        .unwrap_or_else(|e| pb::CreateUploadResponse::failed(store_error(e)))
}

/// A short-lived download address for a member (`attachments::url`).
pub(crate) async fn attachment_url(
    inner: &Inner,
    req: pb::GetAttachmentUrlRequest,
) -> pb::GetAttachmentUrlResponse {
    crate::attachments::url(inner, req)
        .await
        .unwrap_or_else(|e| pb::GetAttachmentUrlResponse::failed(store_error(e)))
}

/// Runs the sends of one gateway's batch side by side (the group commit puts them in the
/// same transactions) and answers them in order. Each send is exactly [`send`] — the same
/// rules as a lone one — in a span that continues that send's own trace.
pub(crate) async fn send_batch(inner: &Inner, req: pb::SendBatchRequest) -> pb::SendBatchResponse {
    if req.sends.len() > MAX_SEND_BATCH {
        return pb::SendBatchResponse::failed(pb_error(
            ErrorCode::InvalidField,
            format!("a batch holds at most {MAX_SEND_BATCH} sends"),
        ));
    }
    let mut traceparents = req.traceparents.into_iter();
    let runs = req.sends.into_iter().map(|s| {
        let span = tracing::info_span!("send", trace_id = tracing::field::Empty);
        if let Some(tp) = traceparents.next().filter(|tp| !tp.is_empty()) {
            bus::trace::follow_traceparent(&span, &tp);
        }
        send(inner, s).instrument(span)
    });
    pb::SendBatchResponse {
        results: futures_util::future::join_all(runs).await,
        error: None,
    }
}

/// Marks messages read and relays one receipt per (conversation, sender).
pub(crate) async fn mark_read(inner: &Inner, req: pb::MarkReadRequest) -> pb::MarkReadResponse {
    let res = async {
        positive("reader_id", req.reader_id)?;
        if req.message_ids.is_empty() || req.message_ids.len() > MAX_RECEIPT_IDS {
            return Err(field_error(
                "message_ids",
                ErrorCode::InvalidField,
                format!("message_ids must hold 1 to {MAX_RECEIPT_IDS} ids"),
            ));
        }
        let marked = inner
            .store
            .mark_read(req.reader_id, &req.message_ids)
            .await
            .map_err(store_error)?;
        let mut groups: BTreeMap<(i64, i64), Vec<i64>> = BTreeMap::new();
        for m in &marked.newly_read {
            groups
                .entry((m.conversation_id, m.sender_id))
                .or_default()
                .push(m.message_id);
        }
        for ((conversation_id, sender_id), message_ids) in groups {
            let ev = pb::delivery::Event::ReadReceipt(pb::ReadReceiptEvent {
                conversation_id,
                reader_id: req.reader_id,
                message_ids,
                read_at_ms: marked.read_at_ms,
            });
            publish_event(inner, ev, &[sender_id], "").await;
        }
        Ok(marked)
    }
    .await;
    pb::MarkReadResponse::from_result(res, |m| pb::MarkReadResponse {
        accepted_ids: m.accepted,
        rejected_ids: m.rejected,
        read_at_ms: m.read_at_ms,
        error: None,
    })
}

/// Routes a typing indicator to the other members (never stored).
pub(crate) async fn typing(inner: &Inner, req: pb::TypingRequest) -> pb::TypingResponse {
    let res = async {
        let members = inner
            .store
            .require_member(req.conversation_id, req.user_id)
            .await
            .map_err(store_error)?;
        let ev = pb::delivery::Event::Typing(pb::TypingEvent {
            conversation_id: req.conversation_id,
            user_id: req.user_id,
            is_typing: req.is_typing,
        });
        // Everyone but the typist (whose other devices do not need it).
        let others: Vec<i64> = members.into_iter().filter(|u| *u != req.user_id).collect();
        publish_event(inner, ev, &others, &req.origin_connection_id).await;
        Ok(())
    }
    .await;
    pb::TypingResponse { error: res.err() }
}

/// A page of one conversation's messages.
pub(crate) async fn list_messages(
    inner: &Inner,
    req: pb::ListMessagesRequest,
) -> pb::ListMessagesResponse {
    if req.after_seq < 0 {
        return pb::ListMessagesResponse::failed(field_error(
            "after_seq",
            ErrorCode::InvalidField,
            "after_seq must not be negative",
        ));
    }
    if req.before_seq < 0 {
        return pb::ListMessagesResponse::failed(field_error(
            "before_seq",
            ErrorCode::InvalidField,
            "before_seq must not be negative",
        ));
    }
    let limit = match MESSAGE_PAGE.check(req.limit) {
        Ok(n) => n,
        Err(e) => return pb::ListMessagesResponse::failed(invalid(MESSAGE_PAGE.field, e)),
    };
    match inner
        .store
        .list_messages(
            req.user_id,
            req.conversation_id,
            req.after_seq,
            req.before_seq,
            limit,
        )
        .await
    {
        Ok(p) => pb::ListMessagesResponse {
            messages: p.messages,
            has_more: p.has_more,
            last_seq: p.last_seq,
            first_retained_seq: p.first_retained_seq,
            error: None,
            changes: p.changes,
            end_seq: p.end_seq,
        },
        Err(e) => pb::ListMessagesResponse::failed(store_error(e)),
    }
}

/// The event stream's resume: messages in any of the user's conversations since a cursor.
pub(crate) async fn messages_since(
    inner: &Inner,
    req: pb::MessagesSinceRequest,
) -> pb::ListMessagesResponse {
    if let Err(e) = positive("user_id", req.user_id) {
        return pb::ListMessagesResponse::failed(e);
    }
    if req.after_message_id < 0 || req.scan_from < 0 || req.window_ms < 0 {
        return pb::ListMessagesResponse::failed(pb_error(
            ErrorCode::InvalidField,
            "cursor, scan_from and window_ms must not be negative",
        ));
    }
    match inner
        .store
        .messages_since(
            req.user_id,
            req.after_message_id,
            req.window_ms.min(60_000),
            req.scan_from,
            req.limit,
        )
        .await
    {
        Ok((messages, has_more, changes)) => pb::ListMessagesResponse {
            messages,
            has_more,
            changes,
            ..Default::default()
        },
        Err(e) => pb::ListMessagesResponse::failed(store_error(e)),
    }
}

/// Most users one shared-contacts question may name (a presence query's bound).
pub(crate) const MAX_SHARED_CONTACTS: usize = 500;

/// Which of the named users share a conversation with the asking user.
pub(crate) async fn shared_contacts(
    inner: &Inner,
    req: pb::SharedContactsRequest,
) -> pb::SharedContactsResponse {
    let res = async {
        positive("user_id", req.user_id)?;
        if req.user_ids.len() > MAX_SHARED_CONTACTS {
            return Err(field_error(
                "user_ids",
                ErrorCode::InvalidField,
                format!("user_ids names at most {MAX_SHARED_CONTACTS} users"),
            ));
        }
        if req.user_ids.is_empty() {
            return Ok(Vec::new());
        }
        inner
            .store
            .shared_contacts(req.user_id, &req.user_ids)
            .await
            .map_err(store_error)
    }
    .await;
    pb::SharedContactsResponse::from_result(res, |user_ids| pb::SharedContactsResponse {
        user_ids,
        error: None,
    })
}

/// Encodes a conversation-list cursor as an opaque page token.
fn page_token(c: ConversationCursor) -> String {
    // Opaque to callers; versioned so the format can change without breaking old tokens
    // silently (an unknown version is refused, not misread).
    format!("v1.{}.{}", c.last_message_at_ms, c.id)
}

/// The cursor of a token [`page_token`] made; `None` for anything else.
fn parse_page_token(token: &str) -> Option<ConversationCursor> {
    let rest = token.strip_prefix("v1.")?;
    let (at, id) = rest.split_once('.')?;
    Some(ConversationCursor {
        last_message_at_ms: at.parse().ok()?,
        id: id.parse().ok()?,
    })
}

/// The user's conversations, most recently active first, one page at a time.
pub(crate) async fn list_conversations(
    inner: &Inner,
    req: pb::ListConversationsRequest,
) -> pb::ListConversationsResponse {
    let res = async {
        positive("user_id", req.user_id)?;
        let size = CONVERSATION_PAGE
            .check(req.page_size)
            .map_err(|e| invalid(CONVERSATION_PAGE.field, e))?;
        let after = if req.page_token.is_empty() {
            None
        } else {
            Some(parse_page_token(&req.page_token).ok_or_else(|| {
                field_error(
                    "page_token",
                    ErrorCode::InvalidField,
                    "page_token is not a token this API returned",
                )
            })?)
        };
        inner
            .store
            .list_conversations(req.user_id, size, after)
            .await
            .map_err(store_error)
    }
    .await;
    pb::ListConversationsResponse::from_result(res, |(list, next)| pb::ListConversationsResponse {
        conversations: list
            .into_iter()
            .map(|s| pb::ConversationSummary {
                conversation: Some(s.conversation),
                last_read_seq: s.last_read_seq,
                unread_count: s.unread_count,
                last_message: s.last_message,
                unread_mentions: s.unread_mentions,
            })
            .collect(),
        error: None,
        next_page_token: next.map(page_token).unwrap_or_default(),
    })
}

/// Unread counts of the user's most recently active conversations.
pub(crate) async fn unread_counts(
    inner: &Inner,
    req: pb::GetUnreadCountsRequest,
) -> pb::GetUnreadCountsResponse {
    if let Err(e) = positive("user_id", req.user_id) {
        return pb::GetUnreadCountsResponse::failed(e);
    }
    match inner
        .store
        .unread_summaries(req.user_id, UNREAD_CONVERSATIONS)
        .await
    {
        Ok(list) => {
            let conversations: Vec<pb::ConversationUnread> = list
                .into_iter()
                .filter(|s| s.unread_count > 0)
                .map(|s| pb::ConversationUnread {
                    conversation_id: s.conversation.id,
                    unread_count: s.unread_count,
                    last_read_seq: s.last_read_seq,
                    last_seq: s.conversation.last_seq,
                })
                .collect();
            pb::GetUnreadCountsResponse {
                total_unread: conversations.iter().map(|c| c.unread_count).sum(),
                conversations,
                error: None,
            }
        }
        Err(e) => pb::GetUnreadCountsResponse::failed(store_error(e)),
    }
}

/// Who asks for a membership or role change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Actor {
    /// A backend over gRPC with `as_system` (`actor_id` 0): no role rule applies.
    System,
    /// A user: the group's rules apply.
    User(i64),
}

impl Actor {
    /// The actor a request names; `as_system` needs `actor_id` 0, a user a positive id.
    fn of(actor_id: i64, as_system: bool) -> Result<Actor, pb::Error> {
        if as_system {
            if actor_id != SYSTEM_SENDER_ID {
                return Err(field_error(
                    "actor_id",
                    ErrorCode::InvalidField,
                    "a system change has actor_id 0",
                ));
            }
            return Ok(Actor::System);
        }
        positive("actor_id", actor_id)?;
        Ok(Actor::User(actor_id))
    }

    /// The id events name (0: the system).
    fn id(self) -> i64 {
        match self {
            Actor::System => SYSTEM_SENDER_ID,
            Actor::User(u) => u,
        }
    }
}

/// A refusal by the group rules.
fn refuse(code: ErrorCode, message: impl Into<String>) -> StoreError {
    StoreError::Rejected {
        code,
        message: message.into(),
    }
}

/// The actor's role, or `forbidden` for a user who is not a participant; `None` for the
/// system.
fn actor_role(actor: Actor, roster: &Roster) -> Result<Option<Role>, StoreError> {
    match actor {
        Actor::System => Ok(None),
        Actor::User(u) => roster.role(u).map(Some).ok_or_else(|| {
            refuse(
                ErrorCode::Forbidden,
                "you are not a participant of this conversation",
            )
        }),
    }
}

/// The group rules for adding and removing members, judged on the roster under the
/// conversation's lock. Every door (WebSocket, REST, gRPC) reaches them through
/// [`update_participants`]:
/// - direct conversations never change (`invalid_field`), whoever asks;
/// - the system may do anything else; a user must be a participant (`forbidden`);
/// - only the owner and admins add members, or remove someone else (`forbidden`);
/// - nobody removes the owner (`forbidden`), and only the owner removes an admin;
/// - anyone may remove themselves (leave), except the owner of a group with other members,
///   who must transfer ownership first (`forbidden`).
///
/// Names in `remove` who are not participants are ignored (nothing to remove).
pub(crate) fn may_update_participants(
    actor: Actor,
    roster: &Roster,
    add: &[i64],
    remove: &[i64],
) -> Result<(), StoreError> {
    let role = actor_role(actor, roster)?;
    if roster.is_direct() {
        return Err(refuse(
            ErrorCode::InvalidField,
            "members of a direct conversation cannot change",
        ));
    }
    let (Actor::User(me), Some(role)) = (actor, role) else {
        return Ok(());
    };
    let manages = matches!(role, Role::Owner | Role::Admin);
    if !add.is_empty() && !manages {
        return Err(refuse(
            ErrorCode::Forbidden,
            "only the group's owner and admins add members",
        ));
    }
    for &u in remove {
        match roster.role(u) {
            None => {}
            // The last member may go, owner or not: there is nobody to hand the group to.
            Some(Role::Owner) if u == me && roster.members.len() > 1 => {
                return Err(refuse(
                    ErrorCode::Forbidden,
                    "the owner cannot leave the group: transfer ownership first \
                     (give another member the owner role)",
                ));
            }
            Some(_) if u == me => {}
            Some(Role::Owner) => {
                return Err(refuse(
                    ErrorCode::Forbidden,
                    "nobody removes the group's owner",
                ))
            }
            Some(Role::Admin) if role != Role::Owner => {
                return Err(refuse(
                    ErrorCode::Forbidden,
                    "only the group's owner removes an admin",
                ))
            }
            Some(_) if !manages => {
                return Err(refuse(
                    ErrorCode::Forbidden,
                    "only the group's owner and admins remove members",
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The group rules for roles, judged on the roster under the conversation's lock:
/// - direct conversations have no roles (`invalid_field`);
/// - a user must be a participant, and only the owner appoints or demotes admins and
///   transfers ownership (`forbidden`); the system may do all of it;
/// - the target must be a participant and the role member, admin or owner
///   (`invalid_field`);
/// - the owner's own role changes only by a transfer to someone else (`invalid_field`):
///   a group never loses its owner to a role change.
pub(crate) fn may_set_role(
    actor: Actor,
    roster: &Roster,
    user: i64,
    role: Role,
) -> Result<(), StoreError> {
    let actor_role = actor_role(actor, roster)?;
    if roster.is_direct() {
        return Err(refuse(
            ErrorCode::InvalidField,
            "a direct conversation has no roles",
        ));
    }
    if actor_role.is_some_and(|r| r != Role::Owner) {
        return Err(refuse(
            ErrorCode::Forbidden,
            "only the group's owner appoints admins and transfers ownership",
        ));
    }
    if role == Role::Unspecified {
        return Err(refuse(
            ErrorCode::InvalidField,
            "role must be member, admin or owner",
        ));
    }
    match roster.role(user) {
        None => Err(refuse(
            ErrorCode::InvalidField,
            format!("user {user} is not a participant of this conversation"),
        )),
        Some(Role::Owner) if role != Role::Owner => Err(refuse(
            ErrorCode::InvalidField,
            "the owner's role changes only by transferring ownership to another member",
        )),
        Some(_) => Ok(()),
    }
}

/// Tells `audience` that a group's members or roles changed, and who changed them.
async fn publish_membership(
    inner: &Inner,
    actor: Actor,
    conv: &pb::Conversation,
    added: Vec<i64>,
    removed: Vec<i64>,
    audience: &[i64],
) {
    let ev = pb::delivery::Event::Membership(pb::MembershipEvent {
        conversation_id: conv.id,
        added_user_ids: added,
        removed_user_ids: removed,
        actor_id: actor.id(),
        owner_id: conv.owner_id,
        admin_ids: conv.admin_ids.clone(),
    });
    publish_event(inner, ev, audience, "").await;
}

/// Adds or removes group members (a member removing themselves leaves), under the group
/// rules of [`may_update_participants`]; everyone affected hears it at once.
pub(crate) async fn update_participants(
    inner: &Inner,
    req: pb::UpdateParticipantsRequest,
) -> pb::UpdateParticipantsResponse {
    use pb::update_participants_response::Result as R;
    let res = async {
        let actor = Actor::of(req.actor_id, req.as_system)?;
        for u in &req.add_user_ids {
            positive("add_user_ids", *u)?;
        }
        for u in &req.remove_user_ids {
            positive("remove_user_ids", *u)?;
        }
        let (conv, added, removed) = inner
            .store
            .update_participants(
                req.conversation_id,
                &req.add_user_ids,
                &req.remove_user_ids,
                inner.settings.max_group_size,
                |roster| {
                    may_update_participants(actor, roster, &req.add_user_ids, &req.remove_user_ids)
                },
            )
            .await
            .map_err(store_error)?;
        if !added.is_empty() || !removed.is_empty() {
            // Current members and the removed.
            let mut audience = conv.participant_ids.clone();
            audience.extend(&removed);
            publish_membership(inner, actor, &conv, added, removed, &audience).await;
        }
        Ok(conv)
    }
    .await;
    pb::UpdateParticipantsResponse::from_result(res, |c| pb::UpdateParticipantsResponse {
        result: Some(R::Conversation(c)),
    })
}

/// Appoints or demotes an admin, or transfers ownership, under the rules of
/// [`may_set_role`]; the members hear the new roles as `participants_changed` with no one
/// added or removed.
pub(crate) async fn set_participant_role(
    inner: &Inner,
    req: pb::SetParticipantRoleRequest,
) -> pb::SetParticipantRoleResponse {
    use pb::set_participant_role_response::Result as R;
    let res = async {
        let actor = Actor::of(req.actor_id, req.as_system)?;
        positive("conversation_id", req.conversation_id)?;
        positive("user_id", req.user_id)?;
        let role = Role::try_from(req.role)
            .ok()
            .filter(|r| *r != Role::Unspecified)
            .ok_or_else(|| {
                field_error(
                    "role",
                    ErrorCode::InvalidField,
                    "role must be PARTICIPANT_ROLE_MEMBER, _ADMIN or _OWNER",
                )
            })?;
        let mut before = None;
        let conv = inner
            .store
            .set_role(req.conversation_id, req.user_id, role, |roster| {
                may_set_role(actor, roster, req.user_id, role)?;
                before = Some((roster.owner().unwrap_or_default(), roster.admins()));
                Ok(())
            })
            .await
            .map_err(store_error)?;
        if before != Some((conv.owner_id, conv.admin_ids.clone())) {
            publish_membership(
                inner,
                actor,
                &conv,
                Vec::new(),
                Vec::new(),
                &conv.participant_ids,
            )
            .await;
        }
        Ok(conv)
    }
    .await;
    pb::SetParticipantRoleResponse::from_result(res, |c| pb::SetParticipantRoleResponse {
        result: Some(R::Conversation(c)),
    })
}

/// Creates a conversation (or returns the existing direct one of a pair).
pub(crate) async fn create_conversation(
    inner: &Inner,
    req: pb::CreateConversationRequest,
) -> pb::CreateConversationResponse {
    use pb::create_conversation_response::Result as R;
    let res = async {
        positive("creator_id", req.creator_id)?;
        for p in &req.participant_ids {
            positive("participant_ids", *p)?;
        }
        if req.title.chars().count() > proto::limits::MAX_TITLE_CHARS {
            return Err(field_error(
                "title",
                ErrorCode::InvalidField,
                format!(
                    "title is longer than {} characters",
                    proto::limits::MAX_TITLE_CHARS
                ),
            ));
        }
        // PostgreSQL text cannot hold U+0000 (it was a database error).
        if req.title.contains('\0') {
            return Err(field_error(
                "title",
                ErrorCode::InvalidField,
                "title must not contain U+0000 (NUL)",
            ));
        }
        let mut distinct = req.participant_ids.clone();
        distinct.push(req.creator_id);
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() < 2 {
            return Err(field_error(
                "participant_ids",
                ErrorCode::InvalidField,
                "a conversation needs at least one participant besides you",
            ));
        }
        if distinct.len() > inner.settings.max_group_size {
            return Err(field_error(
                "participant_ids",
                ErrorCode::TooManyParticipants,
                format!(
                    "a group has at most {} members",
                    inner.settings.max_group_size
                ),
            ));
        }
        let kind = ConversationKind::try_from(req.kind).map_err(|_| {
            field_error("kind", ErrorCode::InvalidField, "unknown conversation kind")
        })?;
        inner
            .store
            .create_conversation(req.creator_id, &req.participant_ids, &req.title, kind)
            .await
            .map_err(store_error)
    }
    .await;
    pb::CreateConversationResponse::from_result(res, |(c, existing)| {
        pb::CreateConversationResponse {
            result: Some(R::Conversation(c)),
            existing,
        }
    })
}

/// One conversation, if `as_user_id` (when set) is a member.
pub(crate) async fn get_conversation(
    inner: &Inner,
    req: pb::GetConversationRequest,
) -> pb::GetConversationResponse {
    use pb::get_conversation_response::Result as R;
    let res = async {
        let conv = inner
            .store
            .get_conversation(req.conversation_id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                pb_error(
                    ErrorCode::ConversationNotFound,
                    format!("conversation {} does not exist", req.conversation_id),
                )
            })?;
        if req.as_user_id != 0 && !conv.participant_ids.contains(&req.as_user_id) {
            return Err(pb_error(
                ErrorCode::Forbidden,
                "you are not a participant of this conversation",
            ));
        }
        Ok(conv)
    }
    .await;
    pb::GetConversationResponse::from_result(res, |c| pb::GetConversationResponse {
        result: Some(R::Conversation(c)),
    })
}

/// One message, if `as_user_id` (when set) is a member of its conversation.
pub(crate) async fn get_message(
    inner: &Inner,
    req: pb::GetMessageRequest,
) -> pb::GetMessageResponse {
    use pb::get_message_response::Result as R;
    let res = async {
        positive("message_id", req.message_id)?;
        let not_found = || {
            pb_error(
                ErrorCode::MessageNotFound,
                format!("message {} does not exist", req.message_id),
            )
        };
        let m = inner
            .store
            .get_message(req.message_id)
            .await
            .map_err(store_error)?
            .ok_or_else(not_found)?;
        if req.as_user_id != 0 {
            // Someone else's message looks like a missing one: ids are not secrets, but
            // existence in a conversation you are not in is none of your business.
            let members = inner
                .store
                .participants(m.conversation_id)
                .await
                .map_err(store_error)?;
            if !members.contains(&req.as_user_id) {
                return Err(not_found());
            }
        }
        Ok(m)
    }
    .await;
    pb::GetMessageResponse::from_result(res, |m| pb::GetMessageResponse {
        result: Some(R::Message(m)),
    })
}

/// Who may make `kind` of change to a message, judged on the message and its
/// conversation's roster under the conversation's lock (every door reaches this through
/// [`change`]):
/// - a user outside the conversation gets `message_not_found` (its existence is not
///   their business); the system may do anything but react;
/// - a tombstone takes no edit, reaction or pin (`message_deleted`);
/// - only the sender edits, within `edit_window` (`forbidden`, `edit_window_expired`);
/// - the sender deletes, and in a group its owner and admins too (`forbidden`);
/// - in a direct chat either member pins; in a group the owner and admins (`forbidden`).
pub(crate) fn may_change(
    actor: Actor,
    kind: pb::ChangeKind,
    target: &store::Target,
    edit_window: Option<std::time::Duration>,
    now_ms: i64,
) -> Result<(), StoreError> {
    use pb::ChangeKind as K;
    let not_found = || refuse(ErrorCode::MessageNotFound, "no such message");
    let role = match actor {
        Actor::System => None,
        Actor::User(u) => Some(target.roster.role(u).ok_or_else(not_found)?),
    };
    if target.deleted && kind != K::Deleted && kind != K::Unpinned {
        return Err(refuse(ErrorCode::MessageDeleted, "the message was deleted"));
    }
    let (Actor::User(user), Some(role)) = (actor, role) else {
        return match kind {
            K::ReactionAdded | K::ReactionRemoved => Err(refuse(
                ErrorCode::InvalidField,
                "the system does not react; name a user",
            )),
            _ => Ok(()),
        };
    };
    let manager = !target.roster.is_direct() && matches!(role, Role::Owner | Role::Admin);
    match kind {
        K::Unspecified => Err(refuse(ErrorCode::InvalidField, "unknown change")),
        K::Edited => {
            if target.sender_id != user {
                return Err(refuse(
                    ErrorCode::Forbidden,
                    "only the sender may edit a message",
                ));
            }
            let window_ms = edit_window.map(|w| i64::try_from(w.as_millis()).unwrap_or(i64::MAX));
            if window_ms.is_some_and(|w| now_ms.saturating_sub(target.created_at_ms) > w) {
                return Err(refuse(
                    ErrorCode::EditWindowExpired,
                    "the time to edit this message has passed",
                ));
            }
            Ok(())
        }
        K::Deleted if target.sender_id == user || manager => Ok(()),
        K::Deleted => Err(refuse(
            ErrorCode::Forbidden,
            "only the sender, or a group's owner or admin, may delete a message",
        )),
        K::ReactionAdded | K::ReactionRemoved => Ok(()),
        K::Pinned | K::Unpinned if target.roster.is_direct() || manager => Ok(()),
        K::Pinned | K::Unpinned => Err(refuse(
            ErrorCode::Forbidden,
            "only a group's owner or admins may pin messages",
        )),
    }
}

/// Edits, deletes, reacts to, pins or unpins a message under the rules of [`may_change`];
/// every member's sockets (the actor's too) hear the change, in the conversation's order.
pub(crate) async fn change(
    inner: &Inner,
    req: pb::ChangeMessageRequest,
) -> pb::ChangeMessageResponse {
    use pb::change_message_response::Result as R;
    use pb::ChangeKind as K;
    let res = async {
        let actor = Actor::of(req.actor_id, req.as_system)?;
        positive("message_id", req.message_id)?;
        let kind = K::try_from(req.kind).unwrap_or_default();
        match kind {
            K::Unspecified => {
                return Err(field_error(
                    "kind",
                    ErrorCode::InvalidField,
                    "kind must name a change",
                ))
            }
            K::Edited => proto::limits::validate_text(&req.text, inner.settings.max_text_chars)
                .map_err(|e| invalid("text", e))?,
            K::ReactionAdded | K::ReactionRemoved => {
                proto::limits::validate_emoji(&req.emoji).map_err(|e| invalid("emoji", e))?
            }
            _ => {}
        }
        let change = store::ChangeRequest {
            actor_id: actor.id(),
            message_id: req.message_id,
            kind,
            text: if kind == K::Edited {
                req.text
            } else {
                String::new()
            },
            emoji: if matches!(kind, K::ReactionAdded | K::ReactionRemoved) {
                req.emoji
            } else {
                String::new()
            },
        };
        let window = inner.settings.edit_window;
        let now = proto::time::now_ms();
        let changed = inner
            .store
            .change_message(&change, |t| may_change(actor, kind, t, window, now))
            .await
            .map_err(store_error)?;
        if changed.change.id != 0 {
            metrics::message_changed();
            let ev = pb::delivery::Event::Change(changed.change.clone());
            publish_event(inner, ev, &changed.participants, "").await;
            // A notification still collecting (push-service) is updated or withdrawn.
            if inner.settings.push_jobs {
                if let Some(w) = crate::push_jobs::ChangeWork::of(&changed.change) {
                    inner.push.offer_change(w);
                }
            }
        }
        Ok(changed.change)
    }
    .await;
    pb::ChangeMessageResponse::from_result(res, |c| pb::ChangeMessageResponse {
        result: Some(R::Change(c)),
    })
}

/// A page of a thread: its root and replies.
pub(crate) async fn thread(inner: &Inner, req: pb::GetThreadRequest) -> pb::GetThreadResponse {
    let res = async {
        positive("user_id", req.user_id)?;
        positive("message_id", req.message_id)?;
        if req.after_seq < 0 {
            return Err(field_error(
                "after_seq",
                ErrorCode::InvalidField,
                "after_seq must not be negative",
            ));
        }
        let limit = MESSAGE_PAGE
            .check(req.limit)
            .map_err(|e| invalid(MESSAGE_PAGE.field, e))?;
        inner
            .store
            .thread(req.user_id, req.message_id, req.after_seq, limit)
            .await
            .map_err(store_error)
    }
    .await;
    pb::GetThreadResponse::from_result(res, |t| pb::GetThreadResponse {
        root_id: t.root_id,
        conversation_id: t.conversation_id,
        messages: t.messages,
        has_more: t.has_more,
        error: None,
    })
}

/// A conversation's pinned messages.
pub(crate) async fn pins(inner: &Inner, req: pb::ListPinsRequest) -> pb::ListPinsResponse {
    let res = async {
        positive("user_id", req.user_id)?;
        positive("conversation_id", req.conversation_id)?;
        inner
            .store
            .pins(req.user_id, req.conversation_id)
            .await
            .map_err(store_error)
    }
    .await;
    pb::ListPinsResponse::from_result(res, |messages| pb::ListPinsResponse {
        messages,
        error: None,
    })
}

/// Who read a message ("seen by").
pub(crate) async fn message_reads(
    inner: &Inner,
    req: pb::GetMessageReadsRequest,
) -> pb::GetMessageReadsResponse {
    let res = async {
        positive("user_id", req.user_id)?;
        positive("message_id", req.message_id)?;
        inner
            .store
            .message_reads(req.user_id, req.message_id)
            .await
            .map_err(store_error)
    }
    .await;
    pb::GetMessageReadsResponse::from_result(res, |(conversation_id, reads)| {
        pb::GetMessageReadsResponse {
            message_id: req.message_id,
            conversation_id,
            reads,
            error: None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> pb::SendMessageRequest {
        pb::SendMessageRequest {
            sender_id: 1,
            receiver_id: Some(2),
            text: text.into(),
            ..Default::default()
        }
    }

    #[test]
    fn send_validation_codes() {
        let code = |r: &pb::SendMessageRequest| validate_send(r, 10).unwrap_err().code;
        assert!(validate_send(&req("hi"), 10).is_ok());
        assert_eq!(code(&req("")), "empty_text");
        assert_eq!(code(&req("01234567890")), "text_too_long");
        let mut r = req("hi");
        r.receiver_id = Some(1);
        assert_eq!(code(&r), "invalid_receiver");
        r.receiver_id = None;
        assert_eq!(code(&r), "invalid_field");
        r.conversation_id = Some(-1);
        assert_eq!(code(&r), "invalid_field");
        let mut r = req("hi");
        r.client_msg_id = "has space".into();
        let e = validate_send(&r, 10).unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.field.as_str()),
            ("invalid_field", "client_msg_id")
        );
    }

    #[test]
    fn system_messages_need_sender_zero_and_a_conversation() {
        let mut r = req("booking confirmed");
        r.as_system = true;
        r.receiver_id = None;
        r.conversation_id = Some(3);
        assert_eq!(validate_send(&r, 100).unwrap_err().field, "sender_id");
        r.sender_id = 0;
        assert!(validate_send(&r, 100).is_ok());
        r.conversation_id = None;
        assert_eq!(validate_send(&r, 100).unwrap_err().field, "conversation_id");
        // Without as_system, sender 0 is not a user.
        let mut r = req("hi");
        r.sender_id = 0;
        assert_eq!(validate_send(&r, 100).unwrap_err().field, "sender_id");
    }

    /// A group: 1 owner, 2 and 3 admins, 4 and 5 members.
    fn group() -> Roster {
        Roster {
            kind: ConversationKind::Group,
            members: [
                (1, Role::Owner),
                (2, Role::Admin),
                (3, Role::Admin),
                (4, Role::Member),
                (5, Role::Member),
            ]
            .into_iter()
            .collect(),
        }
    }

    fn refusal(r: Result<(), StoreError>) -> Option<ErrorCode> {
        match r {
            Ok(()) => None,
            Err(StoreError::Rejected { code, .. }) => Some(code),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn only_the_owner_and_admins_add_or_remove_others() {
        let g = group();
        let upd = |a, add: &[i64], rm: &[i64]| refusal(may_update_participants(a, &g, add, rm));
        assert_eq!(upd(Actor::User(1), &[9], &[4]), None);
        assert_eq!(upd(Actor::User(2), &[9], &[4]), None);
        assert_eq!(upd(Actor::User(4), &[9], &[]), Some(ErrorCode::Forbidden));
        assert_eq!(upd(Actor::User(4), &[], &[5]), Some(ErrorCode::Forbidden));
        assert_eq!(upd(Actor::User(9), &[], &[]), Some(ErrorCode::Forbidden));
    }

    #[test]
    fn nobody_removes_the_owner_and_only_the_owner_removes_admins() {
        let g = group();
        let upd = |a, rm: &[i64]| refusal(may_update_participants(a, &g, &[], rm));
        assert_eq!(upd(Actor::User(2), &[1]), Some(ErrorCode::Forbidden));
        assert_eq!(upd(Actor::User(4), &[1]), Some(ErrorCode::Forbidden));
        assert_eq!(upd(Actor::User(2), &[3]), Some(ErrorCode::Forbidden));
        assert_eq!(upd(Actor::User(1), &[3]), None);
    }

    #[test]
    fn anyone_may_leave_but_the_owner_transfers_first() {
        let g = group();
        let upd = |a, rm: &[i64]| refusal(may_update_participants(a, &g, &[], rm));
        assert_eq!(upd(Actor::User(4), &[4]), None);
        assert_eq!(upd(Actor::User(2), &[2]), None);
        assert_eq!(upd(Actor::User(1), &[1]), Some(ErrorCode::Forbidden));
        let alone = Roster {
            kind: ConversationKind::Group,
            members: [(1, Role::Owner)].into_iter().collect(),
        };
        assert_eq!(
            refusal(may_update_participants(Actor::User(1), &alone, &[], &[1])),
            None
        );
    }

    #[test]
    fn only_the_owner_sets_roles_and_the_owner_changes_only_by_transfer() {
        let g = group();
        let set = |a, u, r| refusal(may_set_role(a, &g, u, r));
        assert_eq!(set(Actor::User(1), 4, Role::Admin), None);
        assert_eq!(set(Actor::User(1), 2, Role::Member), None);
        assert_eq!(set(Actor::User(1), 4, Role::Owner), None);
        assert_eq!(
            set(Actor::User(2), 4, Role::Admin),
            Some(ErrorCode::Forbidden)
        );
        assert_eq!(
            set(Actor::User(2), 2, Role::Owner),
            Some(ErrorCode::Forbidden)
        );
        assert_eq!(
            set(Actor::User(4), 4, Role::Owner),
            Some(ErrorCode::Forbidden)
        );
        assert_eq!(
            set(Actor::User(1), 1, Role::Member),
            Some(ErrorCode::InvalidField)
        );
        assert_eq!(
            set(Actor::User(1), 9, Role::Admin),
            Some(ErrorCode::InvalidField)
        );
        assert_eq!(
            set(Actor::System, 1, Role::Admin),
            Some(ErrorCode::InvalidField)
        );
    }

    #[test]
    fn the_system_may_do_anything_but_change_a_direct_conversation() {
        let g = group();
        assert_eq!(
            refusal(may_update_participants(Actor::System, &g, &[9], &[1, 2])),
            None
        );
        assert_eq!(
            refusal(may_set_role(Actor::System, &g, 4, Role::Owner)),
            None
        );
        let direct = Roster {
            kind: ConversationKind::Direct,
            members: [(1, Role::Member), (2, Role::Member)].into_iter().collect(),
        };
        assert_eq!(
            refusal(may_update_participants(Actor::System, &direct, &[3], &[])),
            Some(ErrorCode::InvalidField)
        );
        assert_eq!(
            refusal(may_set_role(Actor::User(1), &direct, 2, Role::Admin)),
            Some(ErrorCode::InvalidField)
        );
    }

    #[test]
    fn actors_are_users_or_the_system_with_actor_zero() {
        assert_eq!(Actor::of(0, true).unwrap(), Actor::System);
        assert_eq!(Actor::of(7, false).unwrap(), Actor::User(7));
        assert_eq!(Actor::of(7, true).unwrap_err().field, "actor_id");
        assert_eq!(Actor::of(0, false).unwrap_err().field, "actor_id");
    }

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let c = ConversationCursor {
            last_message_at_ms: 1_700_000_000_123,
            id: 42,
        };
        assert_eq!(parse_page_token(&page_token(c)), Some(c));
        for bad in ["", "v1.", "v1.x.1", "v2.1.2", "1.2", "v1.1"] {
            assert_eq!(parse_page_token(bad), None, "{bad:?}");
        }
    }
}
