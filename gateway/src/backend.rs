//! The operations every door shares. A WebSocket frame, a REST request and an event stream
//! reach message-service, presence-service and push-service only through these functions,
//! so each rule the gateway applies (the chat rate, what a send needs, page and id-list
//! bounds) is written once and holds on every door alike. Doors translate their wire format
//! to these typed calls and [`BackendError`] back to theirs.
//!
//! Every call is one NATS request ([`call`]): transport failures are counted and become
//! [`BackendError::Unavailable`] (retrying is safe: sends are idempotent by key), an
//! undecodable or empty answer [`BackendError::BadReply`], and a refusal by the service
//! [`BackendError::Refused`] with its stable code.

use bytes::Bytes;
use proto::limits::{CONVERSATION_PAGE, MAX_RECEIPT_IDS, MESSAGE_PAGE};
use proto::{pb, pb_error, subjects, ErrorCode};
use tracing::Instrument;

use crate::ctx::Ctx;
use crate::limits::OverBudget;
use crate::send_queue::Answer;

/// Most user ids one presence query may name.
pub(crate) const MAX_PRESENCE_IDS: usize = 500;

/// The service behind a bus subject, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    Message,
    Presence,
    Push,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Message => "message service",
            Service::Presence => "presence service",
            Service::Push => "push service",
        }
    }
}

/// Why an operation did not happen. The one error type of this layer: doors map it to an
/// HTTP status, an `error` frame or an SSE event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum BackendError {
    /// The service did not answer in time (or the bus is down); retrying is safe.
    Unavailable(Service),
    /// The service answered something this gateway cannot read.
    BadReply(Service),
    /// The operation was refused, with a stable code (by the gateway's own rules or by
    /// the service).
    Refused(pb::Error),
    /// The user spent a budget (`rate_limited`).
    Limited(Budget, OverBudget),
}

/// The per-user budgets operations spend (see `ctx::Budgets` for the rates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Budget {
    Chat,
    Typing,
    Receipts,
    Rest,
    CreateConversation,
}

impl Budget {
    /// The policy's name in `RateLimit` headers.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Budget::Chat => "chat",
            Budget::Typing => "typing",
            Budget::Receipts => "receipts",
            Budget::Rest => "rest",
            Budget::CreateConversation => "conversations",
        }
    }

    fn message(self, over: &OverBudget) -> String {
        let (q, w) = (over.quota, over.window_secs);
        match self {
            Budget::Chat => {
                format!("more than {q} messages in {w} s; retry later with the same client_msg_id")
            }
            Budget::Typing => "typing indicators: at most 2 state changes per second".into(),
            Budget::Receipts => {
                "read receipts: at most 10 submissions per second; batch the ids".into()
            }
            Budget::Rest => format!("more than {q} requests in {w} s; retry later"),
            Budget::CreateConversation => {
                format!("more than {q} new conversations in {w} s; retry later")
            }
        }
    }
}

/// Spends one operation of a user's budget; refusals are counted here, once.
pub(crate) fn spend(ctx: &Ctx, budget: Budget, user_id: i64) -> Result<()> {
    let b = &ctx.budgets;
    let bucket = match budget {
        Budget::Chat => &b.chat,
        Budget::Typing => &b.typing,
        Budget::Receipts => &b.receipts,
        Budget::Rest => &b.rest,
        Budget::CreateConversation => &b.create_conversation,
    };
    bucket
        .spend(user_id, std::time::Instant::now())
        .map_err(|over| {
            ctx.metrics.rate_limited();
            BackendError::Limited(budget, over)
        })
}

impl BackendError {
    /// A refusal decided here.
    pub(crate) fn refused(code: ErrorCode, message: impl Into<String>) -> BackendError {
        BackendError::Refused(pb_error(code, message))
    }

    /// The stable code clients see.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            BackendError::Unavailable(_) => ErrorCode::Unavailable,
            BackendError::BadReply(_) => ErrorCode::Internal,
            BackendError::Refused(e) => ErrorCode::parse(&e.code),
            BackendError::Limited(..) => ErrorCode::RateLimited,
        }
    }

    /// For `rate_limited`, and `unavailable` past capacity: when the next attempt can
    /// succeed.
    pub(crate) fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            BackendError::Limited(_, over) => Some(over.retry_after),
            BackendError::Refused(e) if e.retry_after_ms > 0 => {
                Some(std::time::Duration::from_millis(e.retry_after_ms))
            }
            _ => None,
        }
    }

    /// The human-readable message.
    pub(crate) fn message(&self) -> String {
        match self {
            BackendError::Unavailable(s) => format!("{} unavailable; retry", s.name()),
            BackendError::BadReply(s) => format!("bad reply from {}", s.name()),
            BackendError::Refused(e) => e.message.clone(),
            BackendError::Limited(b, over) => b.message(over),
        }
    }
}

impl From<proto::limits::Invalid> for BackendError {
    fn from(e: proto::limits::Invalid) -> Self {
        BackendError::refused(e.code, e.message)
    }
}

type Result<T> = std::result::Result<T, BackendError>;

/// One request/reply over the bus.
pub(crate) async fn call<Req: prost::Message, Resp: prost::Message + Default>(
    ctx: &Ctx,
    service: Service,
    subject: &str,
    req: &Req,
) -> Result<Resp> {
    let reply = ctx
        .bus
        .request(
            subject,
            Bytes::from(req.encode_to_vec()),
            ctx.settings.request_timeout,
        )
        .await
        .map_err(|e| {
            ctx.metrics.bus_error();
            tracing::warn!(error = %e, subject, "backend request failed");
            BackendError::Unavailable(service)
        })?;
    Resp::decode(reply.payload).map_err(|_| BackendError::BadReply(service))
}

/// Answers whose failure is an `error` field beside the result.
trait ErrorField {
    fn error(&mut self) -> Option<pb::Error>;
}

macro_rules! error_field {
    ($($t:ty),* $(,)?) => {$(
        impl ErrorField for $t {
            fn error(&mut self) -> Option<pb::Error> {
                self.error.take()
            }
        }
    )*};
}

error_field!(
    pb::ListMessagesResponse,
    pb::ListConversationsResponse,
    pb::GetUnreadCountsResponse,
    pb::MarkReadResponse,
    pb::TypingResponse,
    pb::GetPresenceResponse,
    pb::ListDevicesResponse,
    pb::UnregisterDeviceResponse,
    pb::SetMuteResponse,
    pb::SetPushPreferencesResponse,
    pb::SharedContactsResponse,
    pb::GetThreadResponse,
    pb::CreateUploadResponse,
    pb::GetAttachmentUrlResponse,
    pb::ListPinsResponse,
    pb::GetMessageReadsResponse,
);

/// [`call`] for answers with an `error` field: a set error is a refusal.
async fn call_checked<Req: prost::Message, Resp: prost::Message + Default + ErrorField>(
    ctx: &Ctx,
    service: Service,
    subject: &str,
    req: &Req,
) -> Result<Resp> {
    let mut r: Resp = call(ctx, service, subject, req).await?;
    match r.error() {
        Some(e) => Err(BackendError::Refused(e)),
        None => Ok(r),
    }
}

/// Answers whose result is a `oneof` of the value and an error.
trait OneOf {
    type Value;
    /// Takes the result out (the answer's other fields stay readable).
    fn take(&mut self) -> Option<std::result::Result<Self::Value, pb::Error>>;
}

macro_rules! one_of {
    ($($t:ty => $module:ident :: $variant:ident ($value:ty)),* $(,)?) => {$(
        impl OneOf for $t {
            type Value = $value;
            fn take(&mut self) -> Option<std::result::Result<$value, pb::Error>> {
                self.result.take().map(|r| match r {
                    pb::$module::Result::$variant(v) => Ok(v),
                    pb::$module::Result::Error(e) => Err(e),
                })
            }
        }
    )*};
}

one_of!(
    pb::SendMessageResponse => send_message_response::Message(pb::ChatMessage),
    pb::GetMessageResponse => get_message_response::Message(pb::ChatMessage),
    pb::GetConversationResponse => get_conversation_response::Conversation(pb::Conversation),
    pb::CreateConversationResponse => create_conversation_response::Conversation(pb::Conversation),
    pb::UpdateParticipantsResponse => update_participants_response::Conversation(pb::Conversation),
    pb::SetParticipantRoleResponse => set_participant_role_response::Conversation(pb::Conversation),
    pb::RegisterDeviceResponse => register_device_response::Device(pb::Device),
    pb::ChangeMessageResponse => change_message_response::Change(pb::MessageChange),
);

/// A `oneof` answer's value; its error is a refusal, its absence a bad reply.
fn value<R: OneOf>(r: &mut R, service: Service) -> Result<R::Value> {
    match r.take() {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(BackendError::Refused(e)),
        None => Err(BackendError::BadReply(service)),
    }
}

/// [`call`] for `oneof` answers.
async fn call_one_of<Req, Resp>(
    ctx: &Ctx,
    service: Service,
    subject: &str,
    req: &Req,
) -> Result<Resp::Value>
where
    Req: prost::Message,
    Resp: prost::Message + Default + OneOf,
{
    let mut r: Resp = call(ctx, service, subject, req).await?;
    value(&mut r, service)
}

/// What a client asks to send, from any door.
#[derive(Debug, Default)]
pub(crate) struct Send {
    pub(crate) conversation_id: Option<i64>,
    pub(crate) receiver_id: Option<i64>,
    pub(crate) text: String,
    pub(crate) client_msg_id: Option<String>,
    /// The socket that sent it (its own copy is not delivered back to it); empty for REST.
    pub(crate) origin_connection_id: String,
    /// Reply in this message's thread.
    pub(crate) reply_to: Option<i64>,
    /// Users mentioned.
    pub(crate) mentions: Vec<i64>,
    /// Uploads to attach.
    pub(crate) attachments: Vec<i64>,
}

/// Stores a message (after the chat rate and the checks the gateway can make alone;
/// message-service checks again). Returns the stored message and whether it was a
/// repeat of an earlier send with the same key.
pub(crate) async fn send(ctx: &Ctx, user_id: i64, s: Send) -> Result<(pb::ChatMessage, bool)> {
    let started = std::time::Instant::now();
    spend(ctx, Budget::Chat, user_id)?;
    // A photo on its own has no text.
    if !s.text.is_empty() || s.attachments.is_empty() {
        proto::limits::validate_text(&s.text, ctx.settings.max_text_chars)?;
    }
    if s.conversation_id.is_none() && s.receiver_id.is_none() {
        return Err(BackendError::refused(
            ErrorCode::InvalidField,
            "conversation_id or receiver_id is required",
        ));
    }
    if s.receiver_id == Some(user_id) {
        return Err(BackendError::refused(
            ErrorCode::InvalidReceiver,
            "receiver_id must not be yourself",
        ));
    }
    if s.mentions.len() > proto::limits::MAX_MENTIONS {
        return Err(BackendError::refused(
            ErrorCode::InvalidField,
            format!(
                "a message mentions at most {} users",
                proto::limits::MAX_MENTIONS
            ),
        ));
    }
    let req = pb::SendMessageRequest {
        sender_id: user_id,
        conversation_id: s.conversation_id,
        receiver_id: s.receiver_id,
        text: s.text,
        client_msg_id: s.client_msg_id.unwrap_or_default(),
        origin_connection_id: s.origin_connection_id,
        as_system: false,
        reply_to: s.reply_to,
        mentions: s.mentions,
        attachments: s.attachments,
    };
    // The root of the message's trace: the request carries it to message-service, which
    // carries it on to the delivery (see `bus::trace`).
    let span = tracing::info_span!("chat_message", user_id, trace_id = tracing::field::Empty);
    bus::trace::record_trace_id(&span);
    // Through the send queue: alone at rest, with the sends queued meanwhile under load;
    // a send with attachments always alone (`SendQueue::send_alone`).
    let traceparent = span
        .in_scope(bus::trace::current_traceparent)
        .unwrap_or_default();
    let sending = async {
        match req.attachments.is_empty() {
            true => ctx.sends.send(req, traceparent).await,
            false => ctx.sends.send_alone(req, traceparent).await,
        }
    };
    let mut resp = match sending.instrument(span).await {
        Answer::Reply(r) => *r,
        Answer::Unavailable => return Err(BackendError::Unavailable(Service::Message)),
        Answer::BadReply => return Err(BackendError::BadReply(Service::Message)),
    };
    let m = value(&mut resp, Service::Message)?;
    let duplicate = resp.duplicate;
    ctx.metrics.message_sent(started.elapsed());
    Ok((m, duplicate))
}

/// A change a user asks for, from any door.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// New text for your message.
    Edit(String),
    /// Delete for everyone.
    Delete,
    /// React with an emoji.
    React(String),
    /// Take a reaction back.
    Unreact(String),
    /// Pin.
    Pin,
    /// Unpin.
    Unpin,
}

/// Edits, deletes, reacts to, pins or unpins a message (after the chat budget, which
/// every write to a conversation shares, and the checks the gateway can make alone;
/// message-service judges who may). The committed change, as every member hears it.
pub(crate) async fn change(
    ctx: &Ctx,
    user_id: i64,
    message_id: i64,
    change: Change,
) -> Result<pb::MessageChange> {
    use pb::ChangeKind as K;
    spend(ctx, Budget::Chat, user_id)?;
    let (kind, text, emoji) = match change {
        Change::Edit(t) => {
            proto::limits::validate_text(&t, ctx.settings.max_text_chars)?;
            (K::Edited, t, String::new())
        }
        Change::Delete => (K::Deleted, String::new(), String::new()),
        Change::React(e) => {
            proto::limits::validate_emoji(&e)?;
            (K::ReactionAdded, String::new(), e)
        }
        Change::Unreact(e) => {
            proto::limits::validate_emoji(&e)?;
            (K::ReactionRemoved, String::new(), e)
        }
        Change::Pin => (K::Pinned, String::new(), String::new()),
        Change::Unpin => (K::Unpinned, String::new(), String::new()),
    };
    let req = pb::ChangeMessageRequest {
        actor_id: user_id,
        message_id,
        kind: kind as i32,
        text,
        emoji,
        as_system: false,
    };
    call_one_of::<_, pb::ChangeMessageResponse>(ctx, Service::Message, subjects::MSG_CHANGE, &req)
        .await
}

/// A page of a thread (root and replies), for a member.
pub(crate) async fn thread(
    ctx: &Ctx,
    user_id: i64,
    message_id: i64,
    after_seq: i64,
    limit: u32,
) -> Result<pb::GetThreadResponse> {
    let limit = MESSAGE_PAGE.check(limit)?;
    if after_seq < 0 {
        return Err(BackendError::refused(
            ErrorCode::InvalidField,
            "after_seq must not be negative",
        ));
    }
    let req = pb::GetThreadRequest {
        user_id,
        message_id,
        after_seq,
        limit,
    };
    call_checked(ctx, Service::Message, subjects::MSG_THREAD, &req).await
}

/// A conversation's pinned messages, for a member.
pub(crate) async fn pins(
    ctx: &Ctx,
    user_id: i64,
    conversation_id: i64,
) -> Result<Vec<pb::ChatMessage>> {
    let req = pb::ListPinsRequest {
        user_id,
        conversation_id,
    };
    let r: pb::ListPinsResponse =
        call_checked(ctx, Service::Message, subjects::MSG_PINS, &req).await?;
    Ok(r.messages)
}

/// Who read a message ("seen by"), for a member.
pub(crate) async fn message_reads(
    ctx: &Ctx,
    user_id: i64,
    message_id: i64,
) -> Result<pb::GetMessageReadsResponse> {
    let req = pb::GetMessageReadsRequest {
        user_id,
        message_id,
    };
    call_checked(ctx, Service::Message, subjects::MSG_READS, &req).await
}

/// A presigned upload slot (message-service checks the type, size, quota and membership).
pub(crate) async fn create_upload(
    ctx: &Ctx,
    req: pb::CreateUploadRequest,
) -> Result<pb::CreateUploadResponse> {
    call_checked(ctx, Service::Message, subjects::MSG_UPLOAD, &req).await
}

/// A short-lived address of an attachment or its thumbnail, for a member.
pub(crate) async fn attachment_url(
    ctx: &Ctx,
    user_id: i64,
    attachment_id: i64,
    thumbnail: bool,
) -> Result<pb::GetAttachmentUrlResponse> {
    let req = pb::GetAttachmentUrlRequest {
        user_id,
        attachment_id,
        thumbnail,
    };
    call_checked(ctx, Service::Message, subjects::MSG_ATTACHMENT, &req).await
}

/// Which part of a conversation's messages a page holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Window {
    /// The newest messages.
    Newest,
    /// Messages with seq below this, newest last.
    Before(i64),
    /// Messages with seq above this, oldest first (resume and forward paging).
    After(i64),
}

/// A page of one conversation's messages. `limit` 0 asks for the default page size; more
/// than [`MESSAGE_PAGE`] allows is refused.
pub(crate) async fn messages(
    ctx: &Ctx,
    user_id: i64,
    conversation_id: i64,
    window: Window,
    limit: u32,
) -> Result<pb::ListMessagesResponse> {
    let limit = MESSAGE_PAGE.check(limit)?;
    let (after_seq, before_seq) = match window {
        Window::Newest => (0, i64::MAX),
        Window::Before(b) if b <= 0 => {
            return Err(BackendError::refused(
                ErrorCode::InvalidField,
                "before_seq must be positive",
            ))
        }
        Window::Before(b) => (0, b),
        Window::After(a) if a < 0 => {
            return Err(BackendError::refused(
                ErrorCode::InvalidField,
                "after_seq must not be negative",
            ))
        }
        Window::After(a) => (a, 0),
    };
    let req = pb::ListMessagesRequest {
        user_id,
        conversation_id,
        after_seq,
        before_seq,
        limit,
    };
    call_checked(ctx, Service::Message, subjects::MSG_LIST, &req).await
}

/// The event stream's resume: messages in any of the user's conversations since a cursor
/// message id (see `sse`).
pub(crate) async fn messages_since(
    ctx: &Ctx,
    req: &pb::MessagesSinceRequest,
) -> Result<pb::ListMessagesResponse> {
    call_checked(ctx, Service::Message, subjects::MSG_SINCE, req).await
}

/// One message, for a member of its conversation.
pub(crate) async fn message(ctx: &Ctx, user_id: i64, message_id: i64) -> Result<pb::ChatMessage> {
    let req = pb::GetMessageRequest {
        message_id,
        as_user_id: user_id,
    };
    call_one_of::<_, pb::GetMessageResponse>(ctx, Service::Message, subjects::MSG_GET, &req).await
}

/// A page of the user's conversations, most recently active first (page size 0: the
/// default; more than [`CONVERSATION_PAGE`] allows is refused).
pub(crate) async fn conversations(
    ctx: &Ctx,
    user_id: i64,
    page_size: u32,
    page_token: String,
) -> Result<pb::ListConversationsResponse> {
    let req = pb::ListConversationsRequest {
        user_id,
        page_size: CONVERSATION_PAGE.check(page_size)?,
        page_token,
    };
    call_checked(ctx, Service::Message, subjects::CONV_LIST, &req).await
}

/// One conversation, for a member.
pub(crate) async fn conversation(
    ctx: &Ctx,
    user_id: i64,
    conversation_id: i64,
) -> Result<pb::Conversation> {
    let req = pb::GetConversationRequest {
        conversation_id,
        as_user_id: user_id,
    };
    call_one_of::<_, pb::GetConversationResponse>(ctx, Service::Message, subjects::CONV_GET, &req)
        .await
}

/// Creates a conversation (or finds the existing direct one: then `true`).
pub(crate) async fn create_conversation(
    ctx: &Ctx,
    req: pb::CreateConversationRequest,
) -> Result<(pb::Conversation, bool)> {
    spend(ctx, Budget::CreateConversation, req.creator_id)?;
    let mut r: pb::CreateConversationResponse =
        call(ctx, Service::Message, subjects::CONV_CREATE, &req).await?;
    let c = value(&mut r, Service::Message)?;
    Ok((c, r.existing))
}

/// `actor_id` adds and removes members of a group (message-service's group rules decide
/// whether they may; a door never acts as the system).
pub(crate) async fn update_participants(
    ctx: &Ctx,
    actor_id: i64,
    conversation_id: i64,
    add_user_ids: Vec<i64>,
    remove_user_ids: Vec<i64>,
) -> Result<pb::Conversation> {
    let req = pb::UpdateParticipantsRequest {
        actor_id,
        conversation_id,
        add_user_ids,
        remove_user_ids,
        as_system: false,
    };
    call_one_of::<_, pb::UpdateParticipantsResponse>(
        ctx,
        Service::Message,
        subjects::CONV_MEMBERS,
        &req,
    )
    .await
}

/// `user_id` leaves a group: removes themselves (an owner must transfer ownership first).
/// The answer is the group without them.
pub(crate) async fn leave_group(
    ctx: &Ctx,
    user_id: i64,
    conversation_id: i64,
) -> Result<pb::Conversation> {
    update_participants(ctx, user_id, conversation_id, Vec::new(), vec![user_id]).await
}

/// `actor_id` gives participant `user_id` a role; `owner` transfers ownership (the old
/// owner becomes an admin).
pub(crate) async fn set_role(
    ctx: &Ctx,
    actor_id: i64,
    conversation_id: i64,
    user_id: i64,
    role: proto::frames::RoleName,
) -> Result<pb::Conversation> {
    use proto::frames::RoleName;
    let role = match role {
        RoleName::Member => pb::ParticipantRole::Member,
        RoleName::Admin => pb::ParticipantRole::Admin,
        RoleName::Owner => pb::ParticipantRole::Owner,
    };
    let req = pb::SetParticipantRoleRequest {
        actor_id,
        conversation_id,
        user_id,
        role: role as i32,
        as_system: false,
    };
    call_one_of::<_, pb::SetParticipantRoleResponse>(
        ctx,
        Service::Message,
        subjects::CONV_ROLE,
        &req,
    )
    .await
}

/// Unread counts of the user's conversations.
pub(crate) async fn unread(ctx: &Ctx, user_id: i64) -> Result<pb::GetUnreadCountsResponse> {
    call_checked(
        ctx,
        Service::Message,
        subjects::UNREAD,
        &pb::GetUnreadCountsRequest { user_id },
    )
    .await
}

/// Checks a read receipt's id list against the one bound every door uses.
pub(crate) fn check_receipt_ids(n: usize) -> Result<()> {
    if n == 0 || n > MAX_RECEIPT_IDS {
        return Err(BackendError::refused(
            ErrorCode::InvalidField,
            format!("message_ids must hold 1 to {MAX_RECEIPT_IDS} ids"),
        ));
    }
    Ok(())
}

/// Marks messages read (at most [`MAX_RECEIPT_IDS`]). Doors spend [`Budget::Receipts`]
/// per submission (a socket batches several frames into one call).
pub(crate) async fn mark_read(
    ctx: &Ctx,
    user_id: i64,
    message_ids: Vec<i64>,
) -> Result<pb::MarkReadResponse> {
    check_receipt_ids(message_ids.len())?;
    let req = pb::MarkReadRequest {
        reader_id: user_id,
        message_ids,
    };
    call_checked(ctx, Service::Message, subjects::RECEIPTS_MARK, &req).await
}

/// Tells a conversation's members the user started or stopped typing (a state change:
/// doors coalesce repeats before calling this).
pub(crate) async fn typing(
    ctx: &Ctx,
    user_id: i64,
    conversation_id: i64,
    is_typing: bool,
    origin_connection_id: String,
) -> Result<()> {
    spend(ctx, Budget::Typing, user_id)?;
    publish_typing(
        ctx,
        user_id,
        conversation_id,
        is_typing,
        origin_connection_id,
    )
    .await
}

/// A closing socket's typists stop: not the user's doing, so it spends no budget.
pub(crate) async fn typing_stopped_on_close(
    ctx: &Ctx,
    user_id: i64,
    conversation_id: i64,
    origin_connection_id: String,
) -> Result<()> {
    publish_typing(ctx, user_id, conversation_id, false, origin_connection_id).await
}

async fn publish_typing(
    ctx: &Ctx,
    user_id: i64,
    conversation_id: i64,
    is_typing: bool,
    origin_connection_id: String,
) -> Result<()> {
    let req = pb::TypingRequest {
        user_id,
        conversation_id,
        is_typing,
        origin_connection_id,
    };
    let _: pb::TypingResponse = call_checked(ctx, Service::Message, subjects::TYPING, &req).await?;
    Ok(())
}

/// One user's presence as a viewer may see it.
#[derive(Debug, Clone)]
pub(crate) struct SeenPresence {
    pub(crate) user: pb::UserPresence,
    /// False: the viewer may not see this user, and `user` is the stand-in every such
    /// user reads as (offline, no `last_seen`), indistinguishable from a real offline one.
    pub(crate) visible: bool,
}

/// Which of `user_ids` `viewer` may see the presence of: themselves, and with
/// `INDABA_PRESENCE_VISIBILITY=shared` (the default) only users who share a conversation
/// with them (one query to message-service, however many are asked about).
pub(crate) async fn visible_to(
    ctx: &Ctx,
    viewer: i64,
    user_ids: &[i64],
) -> Result<std::collections::HashSet<i64>> {
    if ctx.settings.presence_visibility == crate::settings::PresenceVisibility::Everyone {
        return Ok(user_ids.iter().copied().collect());
    }
    let others: Vec<i64> = user_ids.iter().copied().filter(|u| *u != viewer).collect();
    let mut visible: std::collections::HashSet<i64> = if others.is_empty() {
        Default::default()
    } else {
        let r: pb::SharedContactsResponse = call_checked(
            ctx,
            Service::Message,
            subjects::CONV_SHARED,
            &pb::SharedContactsRequest {
                user_id: viewer,
                user_ids: others,
            },
        )
        .await?;
        r.user_ids.into_iter().collect()
    };
    if user_ids.contains(&viewer) {
        visible.insert(viewer);
    }
    Ok(visible)
}

/// Current presence of 1 to [`MAX_PRESENCE_IDS`] users, as `viewer` may see it, in the
/// order asked.
pub(crate) async fn presence(
    ctx: &Ctx,
    viewer: i64,
    user_ids: Vec<i64>,
) -> Result<Vec<SeenPresence>> {
    if user_ids.is_empty() || user_ids.len() > MAX_PRESENCE_IDS {
        return Err(BackendError::refused(
            ErrorCode::InvalidField,
            format!("user_ids must name 1 to {MAX_PRESENCE_IDS} users"),
        ));
    }
    let visible = visible_to(ctx, viewer, &user_ids).await?;
    let asked: Vec<i64> = user_ids
        .iter()
        .copied()
        .filter(|u| visible.contains(u))
        .collect();
    let mut known: std::collections::HashMap<i64, pb::UserPresence> = if asked.is_empty() {
        Default::default()
    } else {
        let r: pb::GetPresenceResponse = call_checked(
            ctx,
            Service::Presence,
            subjects::PRESENCE_GET,
            &pb::GetPresenceRequest { user_ids: asked },
        )
        .await?;
        r.users.into_iter().map(|u| (u.user_id, u)).collect()
    };
    Ok(user_ids
        .into_iter()
        .map(|id| match known.remove(&id) {
            Some(user) if visible.contains(&id) => SeenPresence {
                user,
                visible: true,
            },
            _ => SeenPresence {
                user: pb::UserPresence {
                    user_id: id,
                    status: "offline".into(),
                    last_seen_ms: 0,
                    connections: 0,
                },
                visible: visible.contains(&id),
            },
        })
        .collect())
}

/// The user's push devices.
pub(crate) async fn devices(ctx: &Ctx, user_id: i64) -> Result<Vec<pb::Device>> {
    let r: pb::ListDevicesResponse = call_checked(
        ctx,
        Service::Push,
        subjects::PUSH_LIST_DEVICES,
        &pb::ListDevicesRequest { user_id },
    )
    .await?;
    Ok(r.devices)
}

/// Registers a push device.
pub(crate) async fn register_device(
    ctx: &Ctx,
    req: pb::RegisterDeviceRequest,
) -> Result<pb::Device> {
    call_one_of::<_, pb::RegisterDeviceResponse>(ctx, Service::Push, subjects::PUSH_REGISTER, &req)
        .await
}

/// Forgets a push device; false when there was none.
pub(crate) async fn unregister_device(ctx: &Ctx, req: pb::UnregisterDeviceRequest) -> Result<bool> {
    let r: pb::UnregisterDeviceResponse =
        call_checked(ctx, Service::Push, subjects::PUSH_UNREGISTER, &req).await?;
    Ok(r.removed)
}

/// Mutes or unmutes a conversation's notifications for a member of it.
pub(crate) async fn set_mute(ctx: &Ctx, req: pb::SetMuteRequest) -> Result<()> {
    // Only members may mute: the same check as reading the conversation.
    conversation(ctx, req.user_id, req.conversation_id).await?;
    let _: pb::SetMuteResponse =
        call_checked(ctx, Service::Push, subjects::PUSH_MUTE, &req).await?;
    Ok(())
}

/// Sets the user's notification preferences.
pub(crate) async fn set_preferences(ctx: &Ctx, req: pb::SetPushPreferencesRequest) -> Result<()> {
    let _: pb::SetPushPreferencesResponse =
        call_checked(ctx, Service::Push, subjects::PUSH_PREFS, &req).await?;
    Ok(())
}

/// How many sockets and streams the user holds on every gateway, as presence-service
/// counts them; `None` when it cannot answer.
pub(crate) async fn connection_count(ctx: &Ctx, user_id: i64) -> Option<u32> {
    let req = pb::GetPresenceRequest {
        user_ids: vec![user_id],
    };
    let r: pb::GetPresenceResponse =
        call_checked(ctx, Service::Presence, subjects::PRESENCE_GET, &req)
            .await
            .ok()?;
    Some(r.users.first().map_or(0, |u| u.connections))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_stable_codes() {
        assert_eq!(
            BackendError::Unavailable(Service::Push).code(),
            ErrorCode::Unavailable
        );
        assert_eq!(
            BackendError::Unavailable(Service::Push).message(),
            "push service unavailable; retry"
        );
        assert_eq!(
            BackendError::BadReply(Service::Message).code(),
            ErrorCode::Internal
        );
        let e = BackendError::refused(ErrorCode::Forbidden, "no");
        assert_eq!(e.code(), ErrorCode::Forbidden);
        assert_eq!(e.message(), "no");
    }

    #[test]
    fn receipt_id_lists_are_bounded() {
        assert!(check_receipt_ids(0).is_err());
        assert!(check_receipt_ids(1).is_ok());
        assert!(check_receipt_ids(MAX_RECEIPT_IDS).is_ok());
        assert!(check_receipt_ids(MAX_RECEIPT_IDS + 1).is_err());
    }
}
