//! What every HTTP door (REST, event streams, the WebSocket handshake) shares: the JSON
//! error body, the mapping of stable codes to HTTP statuses, bearer tokens, query
//! parameters and JSON bodies. Below the doors, so none of them imports another.

use http::{HeaderMap, StatusCode};
use proto::limits::PageLimit;
use proto::ErrorCode;
use serde::Serialize;
use warp::reply::Response;
use warp::Reply;

use crate::auth::AuthError;
use crate::backend::BackendError;
use crate::ctx::Ctx;
use crate::session::Refusal;

/// The error body of every non-2xx HTTP answer: `{"error":{"code":…,"message":…}}`.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
struct ErrorDetail<'a> {
    code: &'static str,
    message: &'a str,
}

/// An HTTP failure on its way to becoming a JSON error response.
#[derive(Debug)]
pub(crate) struct HttpError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    /// Extra response headers (`Retry-After`, `RateLimit`…).
    headers: Vec<(&'static str, String)>,
}

/// An answer or the error it became.
pub(crate) type Answer = Result<Response, HttpError>;

/// The HTTP status of a stable code (one mapping, in `proto`, for every HTTP door).
pub(crate) fn status_for(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl HttpError {
    /// An error with an explicit status.
    pub(crate) fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        HttpError {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// An error with the status its code maps to.
    pub(crate) fn coded(code: ErrorCode, message: impl Into<String>) -> Self {
        HttpError::new(status_for(code), code, message)
    }

    /// `400 invalid_field`.
    pub(crate) fn bad(message: impl Into<String>) -> Self {
        HttpError::coded(ErrorCode::InvalidField, message)
    }

    /// `404 not_found` for a path no route serves.
    pub(crate) fn no_route() -> Self {
        HttpError::coded(ErrorCode::NotFound, "no such route")
    }

    /// The JSON response.
    pub(crate) fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str(),
                message: &self.message,
            },
        };
        let mut r = warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        for (name, value) in self.headers {
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                r.headers_mut().insert(name, v);
            }
        }
        r
    }
}

impl From<BackendError> for HttpError {
    fn from(e: BackendError) -> Self {
        let status = match e {
            // The service answered, but not in a form we read: a gateway's 502.
            BackendError::BadReply(_) => StatusCode::BAD_GATEWAY,
            _ => status_for(e.code()),
        };
        let mut h = HttpError::new(status, e.code(), e.message());
        if let (BackendError::Refused(_), Some(after)) = (&e, e.retry_after()) {
            // `unavailable` past capacity: RFC 9110 `Retry-After`, whole seconds rounded up.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            h.headers = vec![(proto::headers::RETRY_AFTER, secs.to_string())];
        }
        if let BackendError::Limited(budget, over) = e {
            // RFC 9110 `Retry-After` in whole seconds (rounded up: never too early), and the
            // IETF httpapi RateLimit fields: the policy (quota per window) and its state.
            let secs = over.retry_after.as_secs() + u64::from(over.retry_after.subsec_nanos() > 0);
            let name = budget.name();
            h.headers = vec![
                (proto::headers::RETRY_AFTER, secs.to_string()),
                (
                    proto::headers::RATELIMIT_POLICY,
                    format!("\"{name}\";q={};w={}", over.quota, over.window_secs),
                ),
                (
                    proto::headers::RATELIMIT,
                    format!("\"{name}\";r=0;t={secs}"),
                ),
            ];
        }
        h
    }
}

impl From<Refusal> for HttpError {
    fn from(r: Refusal) -> Self {
        let status = match r {
            Refusal::AddressRate | Refusal::ConnectionCap(_) => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Draining => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut e = HttpError::new(status, r.code(), r.message());
        if r == Refusal::AddressRate {
            e.headers = vec![(proto::headers::RETRY_AFTER, "10".into())];
        }
        e
    }
}

impl From<AuthError> for HttpError {
    fn from(e: AuthError) -> Self {
        HttpError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            e.to_string(),
        )
    }
}

/// A JSON answer.
pub(crate) fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

/// Parses a JSON body into `T`, telling bad JSON (`invalid_json`) from bad fields. Every
/// body is an object: serde would read a struct from an array too (`[null, null]` as a
/// mute with no fields), so anything else is refused first.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, HttpError> {
    if !body.trim_ascii_start().starts_with(b"{") {
        let valid = serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok();
        return Err(if valid {
            HttpError::bad("body must be a JSON object")
        } else {
            HttpError::coded(ErrorCode::InvalidJson, "body is not valid JSON")
        });
    }
    serde_json::from_slice(body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            HttpError::coded(
                ErrorCode::InvalidJson,
                format!("body is not valid JSON: {e}"),
            )
        } else {
            HttpError::bad(e.to_string())
        }
    })
}

/// [`parse_body`], or `T::default()` for an empty body (optional bodies).
pub(crate) fn parse_optional_body<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
) -> Result<T, HttpError> {
    if body.is_empty() {
        Ok(T::default())
    } else {
        parse_body(body)
    }
}

/// The bearer token of `Authorization: Bearer <token>`.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(proto::headers::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// The user of a REST request's bearer token.
pub(crate) fn authenticate(headers: &HeaderMap, ctx: &Ctx) -> Result<i64, HttpError> {
    match bearer(headers).map(|t| ctx.verifier.verify(&t)) {
        Some(Ok(u)) => Ok(u),
        None => Err(AuthError::Missing.into()),
        Some(Err(e)) => Err(e.into()),
    }
}

/// A connection's token: `?token=` (browsers cannot set headers on WebSockets and
/// `EventSource`) or the bearer header.
pub(crate) fn connection_token(query: &str, headers: &HeaderMap) -> Option<String> {
    query_param(query, "token")
        .filter(|t| !t.is_empty())
        .or_else(|| bearer(headers))
}

/// Whether a comma-separated header (`Connection`, `Upgrade`) holds `token`.
pub(crate) fn header_has_token(headers: &HeaderMap, name: &str, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Percent-decodes a query value (tokens are URL-safe, but clients may encode anyway).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first value of a query parameter, decoded.
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

/// A query parameter given at most once (a repeated one is ambiguous: refused).
pub(crate) fn single_param(query: &str, name: &str) -> Result<Option<String>, HttpError> {
    let mut found = None;
    for pair in query.split('&') {
        let (k, _) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            if found.is_some() {
                return Err(HttpError::bad(format!("{name} may be given only once")));
            }
            found = query_param(pair, name);
        }
    }
    Ok(found)
}

/// An optional integer query parameter (present but empty is an error).
pub(crate) fn int_param(query: &str, name: &str) -> Result<Option<i64>, HttpError> {
    match single_param(query, name)? {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| HttpError::bad(format!("{name} must be an integer"))),
    }
}

/// A page-size parameter (`limit`, `page_size`): absent is 0 (the default page); present,
/// it must be 1 to the page's maximum (the bound itself is checked by `backend`, with the
/// same rule for every door).
pub(crate) fn page_size_param(query: &str, page: PageLimit) -> Result<u32, HttpError> {
    match int_param(query, page.field)? {
        None => Ok(0),
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| HttpError::bad(format!("{} must be 1 to {}", page.field, page.max))),
    }
}

/// A path id segment; anything but a positive integer is no route.
pub(crate) fn path_id(segment: &str) -> Result<i64, HttpError> {
    match segment.parse::<i64>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(HttpError::no_route()),
    }
}

/// The non-empty segments of a path tail (`a//b/` is `["a", "b"]`). Every rule keyed on
/// a path (routing, the event stream's address budget) reads this, never the raw tail.
pub(crate) fn segments(tail: &str) -> Vec<&str> {
    tail.split('/').filter(|s| !s.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_percent_decoding() {
        assert_eq!(
            query_param("token=abc.def&x=1", "token").as_deref(),
            Some("abc.def")
        );
        assert_eq!(
            query_param("x=1&token=a%2Eb", "token").as_deref(),
            Some("a.b")
        );
        assert_eq!(query_param("x=1", "token"), None);
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn bodies_are_objects() {
        #[derive(Debug, Default, serde::Deserialize)]
        struct B {
            #[allow(dead_code)]
            a: Option<i64>,
        }
        assert!(parse_body::<B>(b" {\"a\": 1}").is_ok());
        assert!(
            parse_body::<B>(b"[null]").is_err(),
            "an array is no struct body"
        );
        assert!(parse_body::<B>(b"null").is_err());
        assert!(parse_body::<B>(b"{").is_err());
        assert!(parse_optional_body::<B>(b"").is_ok());
    }

    #[test]
    fn repeated_parameters_are_refused() {
        assert!(single_param("a=1&a=2", "a").is_err());
        assert_eq!(single_param("a=1&b=2", "a").unwrap().as_deref(), Some("1"));
        assert!(int_param("limit=", "limit").is_err());
    }

    #[test]
    fn empty_segments_do_not_count() {
        assert_eq!(segments("/events/"), ["events"]);
        assert_eq!(segments("//events"), ["events"]);
        assert_eq!(
            segments("conversations//7/messages"),
            ["conversations", "7", "messages"]
        );
    }
}
