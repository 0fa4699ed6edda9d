//! The REST fallback (`/api/v1/…`): everything a client needs when WebSockets are blocked,
//! and what backends find easier than a socket. Requests go to message-service and
//! presence over the bus exactly like WebSocket frames do, so a message sent here is
//! stored, numbered and delivered live like any other.
//!
//! One dispatcher matches method and path (a table is easier to read, and to keep in step
//! with the OpenAPI document, than a tree of warp filters). Every answer is JSON; every
//! failure is `{"error":{"code":…,"message":…}}` with a stable code.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use proto::frames::{self, NewMessage, ServerFrame};
use proto::limits::{CONVERSATION_PAGE, MESSAGE_PAGE};
use proto::{pb, ErrorCode};
use serde::{Deserialize, Serialize};
use warp::reply::Response;
use warp::Reply;

use crate::backend::{self, Budget, Change, Window};
use crate::ctx::Ctx;
use crate::reply::{
    authenticate, int_param, json, page_size_param, parse_body, parse_optional_body, path_id,
    segments, single_param, Answer, HttpError,
};
use crate::session::{PeerAddr, Transport};
use crate::views::{self, DeviceJson};

/// The OpenAPI 3 document of this API (kept true by the test suite).
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// How long dev tokens live.
const DEV_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// One REST request, as the router hands it over.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) tail: String,
    pub(crate) method: Method,
    pub(crate) query: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) peer: Option<PeerAddr>,
    /// The TCP connection (an event stream keeps it, to end it when its client stalls).
    pub(crate) transport: Option<Arc<Transport>>,
}

/// Routes one `/api/v1/<tail>` request.
pub(crate) async fn dispatch(req: Request, ctx: Arc<Ctx>) -> Response {
    route(req, ctx)
        .await
        .unwrap_or_else(HttpError::into_response)
}

async fn route(req: Request, ctx: Arc<Ctx>) -> Answer {
    let Request {
        tail,
        method: m,
        query,
        headers,
        body,
        peer,
        transport,
    } = req;
    let (query, headers, body, ctx) = (query.as_str(), &headers, &body[..], &ctx);
    let segments = segments(&tail);
    match segments.as_slice() {
        ["openapi.json"] if m == Method::GET => {
            Ok(
                warp::reply::with_header(OPENAPI_JSON, "content-type", "application/json")
                    .into_response(),
            )
        }
        ["events"] if m == Method::GET => {
            crate::sse::open(query, headers, peer, transport, ctx).await
        }
        ["dev", "token"] if m == Method::GET => dev_token(query, ctx),
        ["conversations"] if m == Method::GET => list_conversations(query, headers, ctx).await,
        ["conversations"] if m == Method::POST => create_conversation(headers, body, ctx).await,
        ["conversations", id] if m == Method::GET => {
            get_conversation(path_id(id)?, headers, ctx).await
        }
        ["conversations", id, "participants"] if m == Method::POST => {
            update_participants(path_id(id)?, headers, body, ctx).await
        }
        ["conversations", id, "participants", user_id] if m == Method::PUT => {
            set_role(id, user_id, headers, body, ctx).await
        }
        ["conversations", id, "leave"] if m == Method::POST => {
            leave_group(path_id(id)?, headers, ctx).await
        }
        ["conversations", id, "messages"] if m == Method::GET => {
            list_messages(path_id(id)?, query, headers, ctx).await
        }
        ["conversations", id, "messages"] if m == Method::POST => {
            send(Some(path_id(id)?), headers, body, ctx).await
        }
        ["conversations", id, "typing"] if m == Method::POST => {
            typing(path_id(id)?, headers, body, ctx).await
        }
        ["messages"] if m == Method::POST => send(None, headers, body, ctx).await,
        ["messages", "unread"] if m == Method::GET => unread(headers, ctx).await,
        ["messages", "read"] if m == Method::POST => mark_read(headers, body, ctx).await,
        // `read` is a POST-only sibling, answered with 405 below.
        ["messages", id] if m == Method::GET && *id != "read" => {
            get_message(path_id(id)?, headers, ctx).await
        }
        // `read` and `unread` are siblings with their own methods (405 below).
        ["messages", id] if m == Method::PATCH && !matches!(*id, "read" | "unread") => {
            change(path_id(id)?, headers, ctx, || {
                let b: EditBody = parse_body(body)?;
                Ok(Change::Edit(b.text))
            })
            .await
        }
        ["messages", id] if m == Method::DELETE && !matches!(*id, "read" | "unread") => {
            change(path_id(id)?, headers, ctx, || Ok(Change::Delete)).await
        }
        ["messages", id, "reactions"] if m == Method::POST => {
            change(path_id(id)?, headers, ctx, || {
                Ok(Change::React(emoji(query, body)?))
            })
            .await
        }
        ["messages", id, "reactions"] if m == Method::DELETE => {
            change(path_id(id)?, headers, ctx, || {
                Ok(Change::Unreact(emoji(query, body)?))
            })
            .await
        }
        ["messages", id, "pin"] if m == Method::POST => {
            change(path_id(id)?, headers, ctx, || Ok(Change::Pin)).await
        }
        ["messages", id, "pin"] if m == Method::DELETE => {
            change(path_id(id)?, headers, ctx, || Ok(Change::Unpin)).await
        }
        ["messages", id, "thread"] if m == Method::GET => {
            thread(path_id(id)?, query, headers, ctx).await
        }
        ["messages", id, "reads"] if m == Method::GET => {
            message_reads(path_id(id)?, headers, ctx).await
        }
        ["conversations", id, "pins"] if m == Method::GET => pins(path_id(id)?, headers, ctx).await,
        ["presence"] if m == Method::GET => presence(query, headers, ctx).await,
        ["devices"] if m == Method::GET => list_devices(headers, ctx).await,
        ["devices"] if m == Method::POST => register_device(headers, body, ctx).await,
        ["devices"] if m == Method::DELETE => unregister_device(headers, body, ctx).await,
        ["conversations", id, "mute"] if m == Method::POST => {
            mute(path_id(id)?, true, headers, body, ctx).await
        }
        ["conversations", id, "mute"] if m == Method::DELETE => {
            mute(path_id(id)?, false, headers, body, ctx).await
        }
        ["push", "preferences"] if m == Method::PUT => preferences(headers, body, ctx).await,
        ["uploads"] if m == Method::POST => create_upload(headers, body, ctx).await,
        ["attachments", id] if m == Method::GET => {
            attachment(path_id(id)?, false, query, headers, ctx).await
        }
        ["attachments", id, "thumbnail"] if m == Method::GET => {
            attachment(path_id(id)?, true, query, headers, ctx).await
        }
        _ => match allowed_methods(&segments) {
            // RFC 9110: a 405 names the methods that would work.
            Some(allow) => {
                let mut r = HttpError::coded(
                    ErrorCode::MethodNotAllowed,
                    format!("method not allowed; use {allow}"),
                )
                .into_response();
                r.headers_mut()
                    .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
                Ok(r)
            }
            None => Err(HttpError::no_route()),
        },
    }
}

/// The methods some route serves at this path (to tell 405 from 404).
fn allowed_methods(segments: &[&str]) -> Option<&'static str> {
    Some(match segments {
        ["conversations"] => "GET, POST",
        ["conversations", _, "participants" | "typing" | "leave"]
        | ["messages"]
        | ["messages", "read"] => "POST",
        ["conversations", _, "participants", _] => "PUT",
        ["conversations", _, "messages"] => "GET, POST",
        ["devices"] => "GET, POST, DELETE",
        ["conversations", _, "mute"] | ["messages", _, "reactions" | "pin"] => "POST, DELETE",
        ["messages", "unread"] => "GET",
        ["messages", _] => "GET, PATCH, DELETE",
        ["messages", _, "thread" | "reads"] | ["conversations", _, "pins"] => "GET",
        ["push", "preferences"] => "PUT",
        ["uploads"] => "POST",
        ["attachments", _] | ["attachments", _, "thumbnail"] => "GET",
        ["openapi.json"] | ["events"] | ["dev", "token"] | ["conversations", _] | ["presence"] => {
            "GET"
        }
        _ => return None,
    })
}

/// The caller of a REST request: its bearer token's user, after one operation of their
/// REST budget (shared with their event-stream opens).
fn user(headers: &HeaderMap, ctx: &Ctx) -> Result<i64, HttpError> {
    let user_id = authenticate(headers, ctx)?;
    backend::spend(ctx, Budget::Rest, user_id)?;
    Ok(user_id)
}

fn dev_token(query: &str, ctx: &Ctx) -> Answer {
    if !ctx.settings.dev_tokens {
        return Err(HttpError::no_route());
    }
    let crate::auth::KeySource::Hs256Secret(secret) = &ctx.settings.jwt else {
        return Err(HttpError::no_route());
    };
    let user_id = int_param(query, "user_id")?
        .filter(|u| *u > 0)
        .ok_or_else(|| HttpError::bad("user_id must be a positive integer"))?;
    let token = crate::auth::mint_hs256(secret, user_id, DEV_TOKEN_TTL)
        .map_err(|e| HttpError::coded(ErrorCode::Internal, e.to_string()))?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"token": token, "user_id": user_id}),
    ))
}

/// `GET /api/v1/conversations/` answer.
#[derive(Debug, Serialize)]
struct ConversationList {
    conversations: Vec<frames::ConversationInfo>,
    #[serde(skip_serializing_if = "String::is_empty")]
    next_page_token: String,
}

async fn list_conversations(query: &str, headers: &HeaderMap, ctx: &Ctx) -> Answer {
    let user_id = user(headers, ctx)?;
    let page_size = page_size_param(query, CONVERSATION_PAGE)?;
    let token = single_param(query, "page_token")?.unwrap_or_default();
    let r = backend::conversations(ctx, user_id, page_size, token).await?;
    Ok(json(
        StatusCode::OK,
        &ConversationList {
            conversations: views::conversation_list(r.conversations),
            next_page_token: r.next_page_token,
        },
    ))
}

/// `POST /api/v1/conversations/` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateConversationBody {
    participant_ids: Vec<frames::Id>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    kind: Option<String>,
}

async fn create_conversation(headers: &HeaderMap, body: &[u8], ctx: &Ctx) -> Answer {
    let user_id = user(headers, ctx)?;
    let b: CreateConversationBody = parse_body(body)?;
    let kind = match b.kind.as_deref() {
        None => pb::ConversationKind::Unspecified,
        Some("direct") => pb::ConversationKind::Direct,
        Some("group") => pb::ConversationKind::Group,
        Some(other) => {
            return Err(HttpError::bad(format!(
                "kind must be \"direct\" or \"group\", got {other:?}"
            )))
        }
    };
    let req = pb::CreateConversationRequest {
        creator_id: user_id,
        participant_ids: b.participant_ids.iter().map(|i| i.0).collect(),
        title: b.title.unwrap_or_default(),
        kind: kind as i32,
    };
    let (c, existing) = backend::create_conversation(ctx, req).await?;
    let status = if existing {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json(status, &views::conversation(c)))
}

async fn get_conversation(id: i64, headers: &HeaderMap, ctx: &Ctx) -> Answer {
    let user_id = user(headers, ctx)?;
    let c = backend::conversation(ctx, user_id, id).await?;
    Ok(json(StatusCode::OK, &views::conversation(c)))
}

/// `POST /api/v1/conversations/{id}/participants/` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ParticipantsBody {
    #[serde(default)]
    add: Vec<frames::Id>,
    #[serde(default)]
    remove: Vec<frames::Id>,
}

async fn update_participants(
    conversation_id: i64,
    headers: &HeaderMap,
    body: &[u8],
    ctx: &Ctx,
) -> Answer {
    let user_id = user(headers, ctx)?;
    let b: ParticipantsBody = parse_body(body)?;
    let c = backend::update_participants(
        ctx,
        user_id,
        conversation_id,
        b.add.iter().map(|i| i.0).collect(),
        b.remove.iter().map(|i| i.0).collect(),
    )
    .await?;
    Ok(json(StatusCode::OK, &views::conversation(c)))
}

/// `PUT /api/v1/conversations/{id}/participants/{user_id}/` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    role: frames::RoleName,
}

/// Appoints or demotes an admin, or (`owner`) transfers ownership. The caller is
/// authenticated before the path's ids are read, like every route's.
async fn set_role(
    conversation_id: &str,
    user_id: &str,
    headers: &HeaderMap,
    body: &[u8],
    ctx: &Ctx,
) -> Answer {
    let actor = user(headers, ctx)?;
    let (conversation_id, user_id) = (path_id(conversation_id)?, path_id(user_id)?);
    let b: RoleBody = parse_body(body)?;
    let c = backend::set_role(ctx, actor, conversation_id, user_id, b.role).await?;
    Ok(json(StatusCode::OK, &views::conversation(c)))
}

/// Leaves a group; the answer is the group without the caller.
async fn leave_group(conversation_id: i64, headers: &HeaderMap, ctx: &Ctx) -> Answer {
    let user_id = user(headers, ctx)?;
    let c = backend::leave_group(ctx, user_id, conversation_id).await?;
    Ok(json(StatusCode::OK, &views::conversation(c)))
}

/// A page of messages. Forward pages (`after_seq`) also carry the changes to earlier
/// messages in the page's range (`changes`: event objects, `type` included) and where the
/// page ends (`end_seq`: the next page's `after_seq`).
#[derive(Debug, Serialize)]
struct MessagePage {
    messages: Vec<NewMessage>,
    has_more: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    changes: Option<Vec<ServerFrame>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    end_seq: Option<i64>,
}

async fn list_messages(id: i64, query: &str, headers: &HeaderMap, ctx: &Ctx) -> Answer {
    let user_id = user(headers, ctx)?;
    let window = match (
        int_param(query, "after_seq")?,
        int_param(query, "before_seq")?,
    ) {
        (Some(_), Some(_)) => return Err(HttpError::bad("give after_seq or before_seq, not both")),
        (Some(a), None) => Window::After(a),
        (None, Some(b)) => Window::Before(b),
        (None, None) => Window::Newest,
    };
    let limit = page_size_param(query, MESSAGE_PAGE)?;
    let r = backend::messages(ctx, user_id, id, window, limit).await?;
    let forward = matches!(window, Window::After(_));
    Ok(json(
        StatusCode::OK,
        &MessagePage {
            messages: views::messages(&r.messages),
            has_more: r.has_more,
            changes: forward.then(|| {
                r.changes
                    .iter()
                    .filter_map(ServerFrame::from_change)
                    .collect()
            }),
            end_seq: forward.then_some(r.end_seq),
        },
    ))
}

/// `PATCH /messages/{id}/` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EditBody {
    text: String,
}

/// `…/reactions/` body (a `DELETE` may name the emoji in the query instead).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReactionBody {
    emoji: Option<String>,
}

/// The emoji of a reaction request: the body's, or the `emoji` query parameter.
fn emoji(query: &str, body: &[u8]) -> Result<String, HttpError> {
    let b: ReactionBody = parse_optional_body(body)?;
    match (b.emoji, single_param(query, "emoji")?) {
        (Some(e), _) | (None, Some(e)) => Ok(e),
        (None, None) => Err(HttpError::bad("emoji is required")),
    }
}

/// A change to a message (read from the request by `what`, after authentication); the
/// answer is the change event every member receives.
async fn change(
    id: i64,
    headers: &HeaderMap,
    ctx: &Ctx,
    what: impl FnOnce() -> Result<Change, HttpError>,
) -> Answer {
    let user_id = user(headers, ctx)?;
    let ch = backend::change(ctx, user_id, id, what()?).await?;
    let frame = ServerFrame::from_change(&ch)
        .ok_or_else(|| HttpError::coded(ErrorCode::Internal, "unknown change kind"))?;
    Ok(json(StatusCode::OK, &frame))
}

async fn thread(id: i64, query: &str, headers: &HeaderMap, ctx: &Ctx) -> Answer {
    let user_id = user(headers, ctx)?;
    let after = int_param(query, "after_seq")?.unwrap_or(0);
    let limit = page_size_param(query, MESSAGE_PAGE)?;
    let p = backend::thread(ctx, user_id, id, after, limit).await?;
    Ok(json(StatusCode::OK, &views::thread(p)))
}

async fn pins(id: i64, headers: &HeaderMap, ctx: &Ctx) -> Answer {
    let user_id = user(headers, ctx)?;
    let m = backend::pins(ctx, user_id, id).await?;
    Ok(json(
        StatusCode::OK,
        &frames::Pins {
            conversation_id: id,
            messages: views::messages(&m),
        },
    ))
}

async fn message_reads(id: i64, headers: &HeaderMap, ctx: &Ctx) -> Answer {
    let user_id = user(headers, ctx)?;
    let r = backend::message_reads(ctx, user_id, id).await?;
    Ok(json(StatusCode::OK, &views::message_reads(r)))
}

/// `POST …/messages/` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    #[serde(default)]
    text: String,
    #[serde(default)]
    client_msg_id: Option<frames::ClientMsgId>,
    #[serde(default)]
    receiver_id: Option<frames::Id>,
    #[serde(default)]
    reply_to: Option<frames::Id>,
    #[serde(default)]
    mentions: Vec<frames::Id>,
    #[serde(default)]
    attachments: Vec<frames::Id>,
}

/// A stored message, as the sender sees it (the `message_sent` frame minus `type`).
#[derive(Debug, Serialize)]
struct Sent {
    message_id: i64,
    conversation_id: i64,
    seq: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_msg_id: Option<String>,
    created_at: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
}

async fn send(conversation_id: Option<i64>, headers: &HeaderMap, body: &[u8], ctx: &Ctx) -> Answer {
    let user_id = user(headers, ctx)?;
    let b: SendBody = parse_body(body)?;
    // The header wins: it is what HTTP clients and proxies retry with.
    let key = match headers.get(proto::headers::IDEMPOTENCY_KEY) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| {
                    HttpError::bad("Idempotency-Key must be 1 to 64 printable ASCII characters")
                })?
                .to_owned(),
        ),
        None => b.client_msg_id.map(|c| c.0),
    };
    if conversation_id.is_none() && b.receiver_id.is_none() {
        return Err(HttpError::bad("receiver_id is required"));
    }
    let send = backend::Send {
        conversation_id,
        receiver_id: b.receiver_id.map(|r| r.0),
        text: b.text,
        client_msg_id: key.clone(),
        origin_connection_id: String::new(),
        reply_to: b.reply_to.map(|r| r.0),
        mentions: b.mentions.iter().map(|u| u.0).collect(),
        attachments: b.attachments.iter().map(|a| a.0).collect(),
    };
    let (m, duplicate) = backend::send(ctx, user_id, send).await?;
    let status = if duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json(
        status,
        &Sent {
            message_id: m.id,
            conversation_id: m.conversation_id,
            seq: m.seq,
            client_msg_id: key,
            created_at: proto::time::rfc3339_ms(m.created_at_ms),
            duplicate,
        },
    ))
}

async fn get_message(id: i64, headers: &HeaderMap, ctx: &Ctx) -> Answer {
    let user_id = user(headers, ctx)?;
    let m = backend::message(ctx, user_id, id).await?;
    Ok(json(StatusCode::OK, &NewMessage::from_pb(&m)))
}

/// `POST /api/v1/uploads/` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadBody {
    conversation_id: frames::Id,
    filename: String,
    content_type: String,
    size: i64,
    /// Audio: amplitudes 0–255, at most 100.
    #[serde(default)]
    waveform: Vec<u8>,
}

/// `POST /api/v1/uploads/` answer.
#[derive(Debug, Serialize)]
struct UploadAnswer {
    upload_id: i64,
    url: String,
    method: String,
    headers: std::collections::BTreeMap<String, String>,
    expires_at: String,
}

async fn create_upload(headers: &HeaderMap, body: &[u8], ctx: &Ctx) -> Answer {
    let user_id = user(headers, ctx)?;
    let b: UploadBody = parse_body(body)?;
    let r = backend::create_upload(
        ctx,
        pb::CreateUploadRequest {
            user_id,
            conversation_id: b.conversation_id.0,
            filename: b.filename,
            content_type: b.content_type,
            size: b.size,
            waveform: b.waveform,
        },
    )
    .await?;
    Ok(json(
        StatusCode::CREATED,
        &UploadAnswer {
            upload_id: r.upload_id,
            url: r.url,
            method: r.method,
            headers: r.headers.into_iter().collect(),
            expires_at: proto::time::rfc3339_ms(r.expires_at_ms),
        },
    ))
}

/// `GET /api/v1/attachments/{id}/[thumbnail/]` answer with `?redirect=false`.
#[derive(Debug, Serialize)]
struct AttachmentUrl {
    url: String,
    expires_at: String,
}

/// `GET /api/v1/attachments/{id}/[thumbnail/]`: a redirect to a short-lived address of
/// the bytes, for members only (anyone else: 404, as for an attachment that never was).
/// With `?redirect=false` the address as JSON, for clients that hand a URL to an image
/// view which cannot send the bearer token (`<img>`, React Native's `Image`).
async fn attachment(
    id: i64,
    thumbnail: bool,
    query: &str,
    headers: &HeaderMap,
    ctx: &Ctx,
) -> Answer {
    let user_id = user(headers, ctx)?;
    let redirect = match single_param(query, "redirect")?.as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(_) => return Err(HttpError::bad("redirect must be true or false")),
    };
    let r = backend::attachment_url(ctx, user_id, id, thumbnail).await?;
    if !redirect {
        let body = AttachmentUrl {
            url: r.url,
            expires_at: proto::time::rfc3339_ms(r.expires_at_ms),
        };
        let mut resp = json(StatusCode::OK, &body);
        resp.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("private, no-store"),
        );
        return Ok(resp);
    }
    let mut resp = StatusCode::FOUND.into_response();
    let h = resp.headers_mut();
    let location = http::HeaderValue::from_str(&r.url)
        .map_err(|_| HttpError::from(backend::BackendError::BadReply(backend::Service::Message)))?;
    h.insert(http::header::LOCATION, location);
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("private, no-store"),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    Ok(resp)
}

/// `POST …/typing/` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TypingBody {
    #[serde(default = "yes")]
    is_typing: bool,
}

impl Default for TypingBody {
    fn default() -> Self {
        TypingBody { is_typing: true }
    }
}

fn yes() -> bool {
    true
}

async fn typing(id: i64, headers: &HeaderMap, body: &[u8], ctx: &Ctx) -> Answer {
    let user_id = user(headers, ctx)?;
    let b: TypingBody = parse_optional_body(body)?;
    backend::typing(ctx, user_id, id, b.is_typing, String::new()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/v1/messages/unread/` answer.
#[derive(Debug, Serialize)]
struct Unread {
    total_unread: i64,
    conversations: Vec<UnreadRow>,
}

#[derive(Debug, Serialize)]
struct UnreadRow {
    conversation_id: i64,
    unread_count: i64,
    last_read_seq: i64,
    last_seq: i64,
}

async fn unread(headers: &HeaderMap, ctx: &Ctx) -> Answer {
    let user_id = user(headers, ctx)?;
    let r = backend::unread(ctx, user_id).await?;
    Ok(json(
        StatusCode::OK,
        &Unread {
            total_unread: r.total_unread,
            conversations: r
                .conversations
                .into_iter()
                .map(|c| UnreadRow {
                    conversation_id: c.conversation_id,
                    unread_count: c.unread_count,
                    last_read_seq: c.last_read_seq,
                    last_seq: c.last_seq,
                })
                .collect(),
        },
    ))
}

/// `POST /api/v1/messages/read/` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadBody {
    message_ids: Vec<frames::Id>,
}

async fn mark_read(headers: &HeaderMap, body: &[u8], ctx: &Ctx) -> Answer {
    let user_id = user(headers, ctx)?;
    let b: ReadBody = parse_body(body)?;
    // A request is one submission, like a socket's `read_receipt` frame.
    backend::spend(ctx, Budget::Receipts, user_id)?;
    let ids = b.message_ids.iter().map(|i| i.0).collect();
    let r = backend::mark_read(ctx, user_id, ids).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "read": r.accepted_ids,
            "rejected": r.rejected_ids,
            "read_at": proto::time::rfc3339_ms(r.read_at_ms),
        }),
    ))
}

async fn presence(query: &str, headers: &HeaderMap, ctx: &Ctx) -> Answer {
    let viewer = user(headers, ctx)?;
    let raw = single_param(query, "user_ids")?.unwrap_or_default();
    let mut ids = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<i64>() {
            Ok(v) if v > 0 => ids.push(v),
            _ => {
                return Err(HttpError::bad(
                    "user_ids must be comma-separated positive integers",
                ))
            }
        }
    }
    let users = backend::presence(ctx, viewer, ids).await?;
    let presence: Vec<frames::Presence> = users
        .iter()
        .map(|s| views::presence(s.user.user_id, &s.user.status, s.user.last_seen_ms))
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "presence": presence }),
    ))
}

fn parse_platform(name: &str) -> Result<pb::DevicePlatform, HttpError> {
    Ok(match name {
        "fcm" => pb::DevicePlatform::Fcm,
        "apns" => pb::DevicePlatform::Apns,
        "webpush" => pb::DevicePlatform::Webpush,
        "webhook" => pb::DevicePlatform::Webhook,
        _ => {
            return Err(HttpError::bad(
                "platform must be fcm, apns, webpush or webhook",
            ))
        }
    })
}

/// Web Push subscription keys, as `PushSubscription.toJSON()` gives them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionKeys {
    p256dh: String,
    auth: String,
}

/// `POST`/`DELETE /api/v1/devices/` body: a token, or a browser's subscription as is
/// (`endpoint` + `keys`, plus the `expirationTime` browsers include).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceBody {
    platform: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    keys: Option<SubscriptionKeys>,
    #[serde(default, rename = "expirationTime")]
    _expiration_time: Option<serde_json::Value>,
}

impl DeviceBody {
    fn token(&self) -> Result<String, HttpError> {
        match (&self.token, &self.endpoint) {
            (Some(t), None) | (None, Some(t)) => Ok(t.clone()),
            _ => Err(HttpError::bad(
                "give token (or a Web Push subscription's endpoint), not both",
            )),
        }
    }
}

async fn list_devices(headers: &HeaderMap, ctx: &Ctx) -> Answer {
    let user_id = user(headers, ctx)?;
    let devices: Vec<DeviceJson> = backend::devices(ctx, user_id)
        .await?
        .into_iter()
        .map(DeviceJson::from)
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "devices": devices }),
    ))
}

async fn register_device(headers: &HeaderMap, body: &[u8], ctx: &Ctx) -> Answer {
    let user_id = user(headers, ctx)?;
    let b: DeviceBody = parse_body(body)?;
    let platform = parse_platform(&b.platform)?;
    let (p256dh, auth) = b.keys.as_ref().map_or((String::new(), String::new()), |k| {
        (k.p256dh.clone(), k.auth.clone())
    });
    let req = pb::RegisterDeviceRequest {
        user_id,
        platform: platform as i32,
        token: b.token()?,
        p256dh,
        auth,
    };
    let d = backend::register_device(ctx, req).await?;
    Ok(json(StatusCode::CREATED, &DeviceJson::from(d)))
}

async fn unregister_device(headers: &HeaderMap, body: &[u8], ctx: &Ctx) -> Answer {
    let user_id = user(headers, ctx)?;
    let b: DeviceBody = parse_body(body)?;
    let req = pb::UnregisterDeviceRequest {
        user_id,
        platform: parse_platform(&b.platform)? as i32,
        token: b.token()?,
    };
    if !backend::unregister_device(ctx, req).await? {
        return Err(HttpError::coded(ErrorCode::NotFound, "no such device"));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST …/mute/` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MuteBody {
    /// Unix ms; absent or null: until unmuted.
    #[serde(default)]
    until_ms: Option<i64>,
    /// `all` or `mentions_only`; absent or null: `mentions_only` (push-service checks it,
    /// for every door alike).
    #[serde(default)]
    level: Option<String>,
}

async fn mute(
    conversation_id: i64,
    muted: bool,
    headers: &HeaderMap,
    body: &[u8],
    ctx: &Ctx,
) -> Answer {
    let user_id = user(headers, ctx)?;
    let b: MuteBody = parse_optional_body(body)?;
    if b.until_ms.is_some_and(|u| u <= 0) {
        return Err(HttpError::bad(
            "until_ms must be a positive unix time in milliseconds",
        ));
    }
    let req = pb::SetMuteRequest {
        user_id,
        conversation_id,
        muted,
        until_ms: b.until_ms.unwrap_or(0),
        level: b.level.unwrap_or_default(),
    };
    backend::set_mute(ctx, req).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PUT /api/v1/push/preferences/` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrefsBody {
    hide_text: bool,
}

async fn preferences(headers: &HeaderMap, body: &[u8], ctx: &Ctx) -> Answer {
    let user_id = user(headers, ctx)?;
    let b: PrefsBody = parse_body(body)?;
    let req = pb::SetPushPreferencesRequest {
        user_id,
        hide_text: b.hide_text,
    };
    backend::set_preferences(ctx, req).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
