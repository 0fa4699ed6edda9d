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
use proto::frames::{self, NewMessage};
use proto::{pb, subjects, ErrorCode};
use serde::{Deserialize, Serialize};
use warp::reply::Response;
use warp::Reply;

use crate::http::{
    authenticate, kind_name, parse_body, query_param, status_for, ConversationJson, HttpError,
};
use crate::ws::call;
use crate::Ctx;

/// The OpenAPI 3 document of this API (kept true by the test suite).
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// Most user ids one presence query may name.
const MAX_PRESENCE_IDS: usize = 500;

/// How long dev tokens live.
const DEV_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

type Answer = Result<Response, HttpError>;

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

fn bad(message: impl Into<String>) -> HttpError {
    HttpError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidField, message)
}

/// A failure reported by message-service.
fn failed(e: pb::Error) -> HttpError {
    let code = ErrorCode::parse(&e.code);
    HttpError::new(status_for(code), code, e.message)
}

fn transport((code, message): (ErrorCode, String)) -> HttpError {
    HttpError::new(status_for(code), code, message)
}

/// A query parameter given at most once (a repeated one is ambiguous: refused).
fn single_param(query: &str, name: &str) -> Result<Option<String>, HttpError> {
    let mut found = None;
    for pair in query.split('&') {
        let (k, _) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            if found.is_some() {
                return Err(bad(format!("{name} may be given only once")));
            }
            found = query_param(pair, name);
        }
    }
    Ok(found)
}

/// An optional integer query parameter (present but empty is an error).
fn int_param(query: &str, name: &str) -> Result<Option<i64>, HttpError> {
    match single_param(query, name)? {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| bad(format!("{name} must be an integer"))),
    }
}

/// A path id segment.
fn path_id(segment: &str) -> Result<i64, HttpError> {
    match segment.parse::<i64>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(HttpError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such route",
        )),
    }
}

/// Routes one `/api/v1/<tail>` request.
pub async fn dispatch(
    tail: String,
    method: Method,
    query: String,
    headers: HeaderMap,
    body: Bytes,
    ctx: Arc<Ctx>,
) -> Response {
    route(&tail, &method, &query, headers, body, ctx)
        .await
        .unwrap_or_else(HttpError::into_response)
}

async fn route(
    tail: &str,
    m: &Method,
    query: &str,
    headers: HeaderMap,
    body: Bytes,
    ctx: Arc<Ctx>,
) -> Answer {
    let segments: Vec<&str> = tail.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["openapi.json"] if m == Method::GET => {
            Ok(
                warp::reply::with_header(OPENAPI_JSON, "content-type", "application/json")
                    .into_response(),
            )
        }
        ["events"] if m == Method::GET => crate::sse::open(query, &headers, ctx).await,
        ["dev", "token"] if m == Method::GET => dev_token(query, &ctx),
        ["conversations"] if m == Method::GET => list_conversations(query, &headers, &ctx).await,
        ["conversations"] if m == Method::POST => {
            Ok(crate::http::create_conversation(headers, body, ctx).await)
        }
        ["conversations", id] if m == Method::GET => {
            get_conversation(path_id(id)?, &headers, &ctx).await
        }
        ["conversations", id, "participants"] if m == Method::POST => {
            Ok(crate::http::update_participants(path_id(id)?, headers, body, ctx).await)
        }
        ["conversations", id, "messages"] if m == Method::GET => {
            list_messages(path_id(id)?, query, &headers, &ctx).await
        }
        ["conversations", id, "messages"] if m == Method::POST => {
            send(Some(path_id(id)?), &headers, &body, &ctx).await
        }
        ["conversations", id, "typing"] if m == Method::POST => {
            typing(path_id(id)?, &headers, &body, &ctx).await
        }
        ["messages"] if m == Method::POST => send(None, &headers, &body, &ctx).await,
        ["messages", "unread"] if m == Method::GET => unread(&headers, &ctx).await,
        ["messages", "read"] if m == Method::POST => mark_read(&headers, &body, &ctx).await,
        // `read` is a POST-only sibling, answered with 405 below.
        ["messages", id] if m == Method::GET && *id != "read" => {
            get_message(path_id(id)?, &headers, &ctx).await
        }
        ["presence"] if m == Method::GET => presence(query, &headers, &ctx).await,
        ["devices"] if m == Method::GET => list_devices(&headers, &ctx).await,
        ["devices"] if m == Method::POST => register_device(&headers, &body, &ctx).await,
        ["devices"] if m == Method::DELETE => unregister_device(&headers, &body, &ctx).await,
        ["conversations", id, "mute"] if m == Method::POST => {
            mute(path_id(id)?, true, &headers, &body, &ctx).await
        }
        ["conversations", id, "mute"] if m == Method::DELETE => {
            mute(path_id(id)?, false, &headers, &body, &ctx).await
        }
        ["push", "preferences"] if m == Method::PUT => preferences(&headers, &body, &ctx).await,
        _ => match allowed_methods(&segments) {
            // RFC 9110: a 405 names the methods that would work.
            Some(allow) => {
                let mut r = HttpError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    ErrorCode::MethodNotAllowed,
                    format!("method not allowed; use {allow}"),
                )
                .into_response();
                r.headers_mut()
                    .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
                Ok(r)
            }
            None => Err(HttpError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "no such route",
            )),
        },
    }
}

/// The methods some route serves at this path (to tell 405 from 404).
fn allowed_methods(segments: &[&str]) -> Option<&'static str> {
    Some(match segments {
        ["conversations"] => "GET, POST",
        ["conversations", _, "participants" | "typing"] | ["messages"] | ["messages", "read"] => {
            "POST"
        }
        ["conversations", _, "messages"] => "GET, POST",
        ["devices"] => "GET, POST, DELETE",
        ["conversations", _, "mute"] => "POST, DELETE",
        ["push", "preferences"] => "PUT",
        ["openapi.json"]
        | ["events"]
        | ["dev", "token"]
        | ["conversations", _]
        | ["messages", _]
        | ["presence"] => "GET",
        _ => return None,
    })
}

fn dev_token(query: &str, ctx: &Ctx) -> Answer {
    let not_found = || HttpError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such route");
    if !ctx.settings.dev_tokens {
        return Err(not_found());
    }
    let crate::auth::KeySource::Hs256Secret(secret) = &ctx.settings.jwt else {
        return Err(not_found());
    };
    let user_id = int_param(query, "user_id")?
        .filter(|u| *u > 0)
        .ok_or_else(|| bad("user_id must be a positive integer"))?;
    let token = crate::auth::mint_hs256(secret, user_id, DEV_TOKEN_TTL).map_err(|e| {
        HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            e.to_string(),
        )
    })?;
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
    let user_id = authenticate(headers, ctx)?;
    let page_size = match int_param(query, "page_size")? {
        None => 0,
        Some(n) if (1..=500).contains(&n) => u32::try_from(n).unwrap_or(100),
        Some(_) => return Err(bad("page_size must be 1 to 500")),
    };
    let req = pb::ListConversationsRequest {
        user_id,
        page_size,
        page_token: single_param(query, "page_token")?.unwrap_or_default(),
    };
    let r: pb::ListConversationsResponse = call(ctx, subjects::CONV_LIST, &req)
        .await
        .map_err(transport)?;
    if let Some(e) = r.error {
        return Err(failed(e));
    }
    let conversations = r
        .conversations
        .into_iter()
        .filter_map(|s| {
            let c = s.conversation?;
            Some(frames::ConversationInfo {
                id: c.id,
                kind: kind_name(c.kind).to_owned(),
                title: c.title,
                participant_ids: c.participant_ids,
                last_seq: c.last_seq,
                last_read_seq: s.last_read_seq,
                unread_count: s.unread_count,
                last_message: s.last_message.as_ref().map(NewMessage::from_pb),
            })
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &ConversationList {
            conversations,
            next_page_token: r.next_page_token,
        },
    ))
}

async fn get_conversation(id: i64, headers: &HeaderMap, ctx: &Ctx) -> Answer {
    let user_id = authenticate(headers, ctx)?;
    let req = pb::GetConversationRequest {
        conversation_id: id,
        as_user_id: user_id,
    };
    let r: pb::GetConversationResponse = call(ctx, subjects::CONV_GET, &req)
        .await
        .map_err(transport)?;
    match r.result {
        Some(pb::get_conversation_response::Result::Conversation(c)) => {
            Ok(json(StatusCode::OK, &ConversationJson::from(c)))
        }
        Some(pb::get_conversation_response::Result::Error(e)) => Err(failed(e)),
        None => Err(HttpError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::Internal,
            "empty reply from message service",
        )),
    }
}

/// A page of messages.
#[derive(Debug, Serialize)]
struct MessagePage {
    messages: Vec<NewMessage>,
    has_more: bool,
}

async fn list_messages(id: i64, query: &str, headers: &HeaderMap, ctx: &Ctx) -> Answer {
    let user_id = authenticate(headers, ctx)?;
    let after = int_param(query, "after_seq")?;
    let before = int_param(query, "before_seq")?;
    if after.is_some() && before.is_some() {
        return Err(bad("give after_seq or before_seq, not both"));
    }
    if after.is_some_and(|a| a < 0) || before.is_some_and(|b| b <= 0) {
        return Err(bad(
            "after_seq must not be negative; before_seq must be positive",
        ));
    }
    let limit = match int_param(query, "limit")? {
        None => 50,
        Some(n) if (1..=200).contains(&n) => u32::try_from(n).unwrap_or(50),
        Some(_) => return Err(bad("limit must be 1 to 200")),
    };
    // Without bounds: the newest page (like `history`).
    let before_seq = match (after, before) {
        (None, None) => i64::MAX,
        (_, b) => b.unwrap_or(0),
    };
    let req = pb::ListMessagesRequest {
        user_id,
        conversation_id: id,
        after_seq: after.unwrap_or(0),
        before_seq,
        limit,
    };
    let r: pb::ListMessagesResponse = call(ctx, subjects::MSG_LIST, &req)
        .await
        .map_err(transport)?;
    if let Some(e) = r.error {
        return Err(failed(e));
    }
    Ok(json(
        StatusCode::OK,
        &MessagePage {
            messages: r.messages.iter().map(NewMessage::from_pb).collect(),
            has_more: r.has_more,
        },
    ))
}

/// `POST …/messages/` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    text: String,
    #[serde(default)]
    client_msg_id: Option<frames::ClientMsgId>,
    #[serde(default)]
    receiver_id: Option<frames::Id>,
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
    let started = std::time::Instant::now();
    let user_id = authenticate(headers, ctx)?;
    let b: SendBody = parse_body(body)?;
    // The header wins: it is what HTTP clients and proxies retry with.
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| bad("Idempotency-Key must be 1 to 64 printable ASCII characters"))?
                .to_owned(),
        ),
        None => b.client_msg_id.map(|c| c.0),
    };
    if conversation_id.is_none() && b.receiver_id.is_none() {
        return Err(bad("receiver_id is required"));
    }
    if b.receiver_id.map(|r| r.0) == Some(user_id) {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidReceiver,
            "receiver_id must not be yourself",
        ));
    }
    if !ctx.allow_chat(user_id) {
        ctx.metrics.rate_limited();
        return Err(HttpError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            format!(
                "more than {} messages in 10 s; retry later with the same idempotency key",
                ctx.settings.chat_rate_per_10s
            ),
        ));
    }
    let req = pb::SendMessageRequest {
        sender_id: user_id,
        conversation_id,
        receiver_id: b.receiver_id.map(|r| r.0),
        text: b.text,
        client_msg_id: key.clone().unwrap_or_default(),
        origin_connection_id: String::new(),
        as_system: false,
    };
    let (m, duplicate) = crate::ws::send_message(ctx, req).await.map_err(transport)?;
    ctx.metrics.message_sent(started.elapsed());
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
    let user_id = authenticate(headers, ctx)?;
    let req = pb::GetMessageRequest {
        message_id: id,
        as_user_id: user_id,
    };
    let r: pb::GetMessageResponse = call(ctx, subjects::MSG_GET, &req)
        .await
        .map_err(transport)?;
    match r.result {
        Some(pb::get_message_response::Result::Message(m)) => {
            Ok(json(StatusCode::OK, &NewMessage::from_pb(&m)))
        }
        Some(pb::get_message_response::Result::Error(e)) => Err(failed(e)),
        None => Err(HttpError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::Internal,
            "empty reply from message service",
        )),
    }
}

/// `POST …/typing/` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TypingBody {
    #[serde(default = "yes")]
    is_typing: bool,
}

fn yes() -> bool {
    true
}

async fn typing(id: i64, headers: &HeaderMap, body: &[u8], ctx: &Ctx) -> Answer {
    let user_id = authenticate(headers, ctx)?;
    let b: TypingBody = if body.is_empty() {
        TypingBody { is_typing: true }
    } else {
        parse_body(body)?
    };
    let req = pb::TypingRequest {
        user_id,
        conversation_id: id,
        is_typing: b.is_typing,
        origin_connection_id: String::new(),
    };
    let r: pb::TypingResponse = call(ctx, subjects::TYPING, &req).await.map_err(transport)?;
    if let Some(e) = r.error {
        return Err(failed(e));
    }
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
    let user_id = authenticate(headers, ctx)?;
    let r: pb::GetUnreadCountsResponse = call(
        ctx,
        subjects::UNREAD,
        &pb::GetUnreadCountsRequest { user_id },
    )
    .await
    .map_err(transport)?;
    if let Some(e) = r.error {
        return Err(failed(e));
    }
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
    let user_id = authenticate(headers, ctx)?;
    let b: ReadBody = parse_body(body)?;
    if b.message_ids.is_empty() || b.message_ids.len() > crate::ws::MAX_RECEIPT_IDS {
        return Err(bad(format!(
            "message_ids must hold 1 to {} ids",
            crate::ws::MAX_RECEIPT_IDS
        )));
    }
    let req = pb::MarkReadRequest {
        reader_id: user_id,
        message_ids: b.message_ids.iter().map(|i| i.0).collect(),
    };
    let r: pb::MarkReadResponse = call(ctx, subjects::RECEIPTS_MARK, &req)
        .await
        .map_err(transport)?;
    if let Some(e) = r.error {
        return Err(failed(e));
    }
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
    authenticate(headers, ctx)?;
    let raw = single_param(query, "user_ids")?.unwrap_or_default();
    let mut ids = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<i64>() {
            Ok(v) if v > 0 => ids.push(v),
            _ => return Err(bad("user_ids must be comma-separated positive integers")),
        }
    }
    if ids.is_empty() || ids.len() > MAX_PRESENCE_IDS {
        return Err(bad(format!(
            "user_ids must name 1 to {MAX_PRESENCE_IDS} users"
        )));
    }
    let r: pb::GetPresenceResponse = call(
        ctx,
        subjects::PRESENCE_GET,
        &pb::GetPresenceRequest { user_ids: ids },
    )
    .await
    .map_err(|(code, _)| {
        HttpError::new(
            status_for(code),
            code,
            "presence service unavailable; retry",
        )
    })?;
    if let Some(e) = r.error {
        return Err(failed(e));
    }
    let presence: Vec<frames::Presence> = r
        .users
        .iter()
        .map(|u| crate::hub::presence_frame(u.user_id, &u.status, u.last_seen_ms))
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "presence": presence }),
    ))
}

/// A device as the REST API shows it.
#[derive(Debug, Serialize)]
struct DeviceJson {
    id: i64,
    platform: &'static str,
    token: String,
    created_at: String,
}

fn platform_name(p: i32) -> &'static str {
    match pb::DevicePlatform::try_from(p) {
        Ok(pb::DevicePlatform::Fcm) => "fcm",
        Ok(pb::DevicePlatform::Apns) => "apns",
        Ok(pb::DevicePlatform::Webpush) => "webpush",
        Ok(pb::DevicePlatform::Webhook) => "webhook",
        _ => "unknown",
    }
}

fn parse_platform(name: &str) -> Result<pb::DevicePlatform, HttpError> {
    Ok(match name {
        "fcm" => pb::DevicePlatform::Fcm,
        "apns" => pb::DevicePlatform::Apns,
        "webpush" => pb::DevicePlatform::Webpush,
        "webhook" => pb::DevicePlatform::Webhook,
        _ => return Err(bad("platform must be fcm, apns, webpush or webhook")),
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
            _ => Err(bad(
                "give token (or a Web Push subscription's endpoint), not both",
            )),
        }
    }
}

/// Push-service failures and transport errors as HTTP errors.
fn push_call_failed((code, _): (ErrorCode, String)) -> HttpError {
    HttpError::new(status_for(code), code, "push service unavailable; retry")
}

async fn list_devices(headers: &HeaderMap, ctx: &Ctx) -> Answer {
    let user_id = authenticate(headers, ctx)?;
    let r: pb::ListDevicesResponse = call(
        ctx,
        subjects::PUSH_LIST_DEVICES,
        &pb::ListDevicesRequest { user_id },
    )
    .await
    .map_err(push_call_failed)?;
    if let Some(e) = r.error {
        return Err(failed(e));
    }
    let devices: Vec<DeviceJson> = r
        .devices
        .into_iter()
        .map(|d| DeviceJson {
            id: d.id,
            platform: platform_name(d.platform),
            token: d.token,
            created_at: proto::time::rfc3339_ms(d.created_at_ms),
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "devices": devices }),
    ))
}

async fn register_device(headers: &HeaderMap, body: &[u8], ctx: &Ctx) -> Answer {
    let user_id = authenticate(headers, ctx)?;
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
    let r: pb::RegisterDeviceResponse = call(ctx, subjects::PUSH_REGISTER, &req)
        .await
        .map_err(push_call_failed)?;
    match r.result {
        Some(pb::register_device_response::Result::Device(d)) => Ok(json(
            StatusCode::CREATED,
            &DeviceJson {
                id: d.id,
                platform: platform_name(d.platform),
                token: d.token,
                created_at: proto::time::rfc3339_ms(d.created_at_ms),
            },
        )),
        Some(pb::register_device_response::Result::Error(e)) => Err(failed(e)),
        None => Err(HttpError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::Internal,
            "empty reply from push service",
        )),
    }
}

async fn unregister_device(headers: &HeaderMap, body: &[u8], ctx: &Ctx) -> Answer {
    let user_id = authenticate(headers, ctx)?;
    let b: DeviceBody = parse_body(body)?;
    let req = pb::UnregisterDeviceRequest {
        user_id,
        platform: parse_platform(&b.platform)? as i32,
        token: b.token()?,
    };
    let r: pb::UnregisterDeviceResponse = call(ctx, subjects::PUSH_UNREGISTER, &req)
        .await
        .map_err(push_call_failed)?;
    if let Some(e) = r.error {
        return Err(failed(e));
    }
    if !r.removed {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such device",
        ));
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
}

async fn mute(
    conversation_id: i64,
    muted: bool,
    headers: &HeaderMap,
    body: &[u8],
    ctx: &Ctx,
) -> Answer {
    let user_id = authenticate(headers, ctx)?;
    let b: MuteBody = if body.is_empty() {
        MuteBody::default()
    } else {
        parse_body(body)?
    };
    if b.until_ms.is_some_and(|u| u <= 0) {
        return Err(bad("until_ms must be a positive unix time in milliseconds"));
    }
    // Only members may mute: the same check as reading the conversation.
    let conv: pb::GetConversationResponse = call(
        ctx,
        subjects::CONV_GET,
        &pb::GetConversationRequest {
            conversation_id,
            as_user_id: user_id,
        },
    )
    .await
    .map_err(transport)?;
    if let Some(pb::get_conversation_response::Result::Error(e)) = conv.result {
        return Err(failed(e));
    }
    let req = pb::SetMuteRequest {
        user_id,
        conversation_id,
        muted,
        until_ms: b.until_ms.unwrap_or(0),
    };
    let r: pb::SetMuteResponse = call(ctx, subjects::PUSH_MUTE, &req)
        .await
        .map_err(push_call_failed)?;
    match r.error {
        Some(e) => Err(failed(e)),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// `PUT /api/v1/push/preferences/` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrefsBody {
    hide_text: bool,
}

async fn preferences(headers: &HeaderMap, body: &[u8], ctx: &Ctx) -> Answer {
    let user_id = authenticate(headers, ctx)?;
    let b: PrefsBody = parse_body(body)?;
    let r: pb::SetPushPreferencesResponse = call(
        ctx,
        subjects::PUSH_PREFS,
        &pb::SetPushPreferencesRequest {
            user_id,
            hide_text: b.hide_text,
        },
    )
    .await
    .map_err(push_call_failed)?;
    match r.error {
        Some(e) => Err(failed(e)),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}
