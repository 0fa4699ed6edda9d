//! One mapping from a failed operation ([`pb::Error`]) to a gRPC status, shared by every
//! gRPC server: the status code follows the stable [`ErrorCode`], and the details carry
//! `google.rpc.ErrorInfo` (our code, domain `indaba.chat.v1`) and, when one request field
//! is to blame, `google.rpc.BadRequest` naming it.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{pb, ErrorCode};

/// The error domain in `ErrorInfo` details.
pub const ERROR_DOMAIN: &str = "indaba.chat.v1";

/// The gRPC status code for an error code.
pub const fn code(c: ErrorCode) -> Code {
    match c {
        ErrorCode::ConversationNotFound | ErrorCode::MessageNotFound | ErrorCode::NotFound => {
            Code::NotFound
        }
        ErrorCode::Forbidden => Code::PermissionDenied,
        ErrorCode::Unauthorized => Code::Unauthenticated,
        ErrorCode::RateLimited | ErrorCode::QuotaExceeded => Code::ResourceExhausted,
        ErrorCode::Unavailable => Code::Unavailable,
        ErrorCode::Internal => Code::Internal,
        ErrorCode::TooManyParticipants
        | ErrorCode::Unsupported
        | ErrorCode::MessageDeleted
        | ErrorCode::EditWindowExpired
        | ErrorCode::TooManyReactions
        | ErrorCode::UploadExpired => Code::FailedPrecondition,
        ErrorCode::MethodNotAllowed => Code::Unimplemented,
        ErrorCode::InvalidJson
        | ErrorCode::MissingType
        | ErrorCode::UnknownType
        | ErrorCode::InvalidField
        | ErrorCode::EmptyText
        | ErrorCode::TextTooLong
        | ErrorCode::InvalidReceiver
        | ErrorCode::InvalidReply
        | ErrorCode::InvalidMention
        | ErrorCode::PayloadTooLarge
        | ErrorCode::InvalidAttachment
        | ErrorCode::SizeMismatch
        | ErrorCode::TypeMismatch
        | ErrorCode::UnsupportedMediaType
        | ErrorCode::ImageTooLarge => Code::InvalidArgument,
    }
}

/// The gRPC status for a failed operation, with rich details.
pub fn status(e: &pb::Error) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(
        e.code.clone(),
        ERROR_DOMAIN,
        std::collections::HashMap::new(),
    );
    if !e.field.is_empty() {
        details.add_bad_request_violation(e.field.clone(), e.message.clone());
    }
    if e.retry_after_ms > 0 {
        details.set_retry_info(Some(std::time::Duration::from_millis(e.retry_after_ms)));
    }
    Status::with_error_details(code(ErrorCode::parse(&e.code)), e.message.clone(), details)
}

/// A required positive id, or `INVALID_ARGUMENT` naming the field.
pub fn require_id(field: &str, v: i64) -> Result<(), Status> {
    if v > 0 {
        Ok(())
    } else {
        Err(status(&crate::field_error(
            field,
            ErrorCode::InvalidField,
            format!("{field} must be a positive integer"),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_carry_the_stable_code_and_the_field() {
        let s = status(&crate::field_error(
            "text",
            ErrorCode::EmptyText,
            "text must not be empty",
        ));
        assert_eq!(s.code(), Code::InvalidArgument);
        let d = s.get_error_details();
        assert_eq!(
            d.error_info().map(|i| i.reason.as_str()),
            Some("empty_text")
        );
        assert_eq!(
            d.bad_request()
                .map(|b| b.field_violations[0].field.as_str()),
            Some("text")
        );
    }

    #[test]
    fn a_retry_hint_becomes_retry_info() {
        let e = pb::Error {
            retry_after_ms: 250,
            ..crate::pb_error(ErrorCode::Unavailable, "overloaded")
        };
        let s = status(&e);
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(
            s.get_error_details()
                .retry_info()
                .and_then(|r| r.retry_delay),
            Some(std::time::Duration::from_millis(250))
        );
        assert!(status(&crate::pb_error(ErrorCode::Unavailable, "x"))
            .get_error_details()
            .retry_info()
            .is_none());
    }
}
