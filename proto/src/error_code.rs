use std::fmt;

/// Stable error codes. Clients match on the string form (`as_str`), so a variant's string
/// never changes once released; new variants may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame or body is not valid JSON.
    InvalidJson,
    /// The frame has no `type`, or `type` is not a string.
    MissingType,
    /// `type` names no frame this server understands.
    UnknownType,
    /// A field is missing, has the wrong type, or an out-of-range value.
    InvalidField,
    /// The message text is empty or only whitespace.
    EmptyText,
    /// The message text is longer than the configured limit.
    TextTooLong,
    /// `receiver_id` is the sender, or is not a participant of the conversation.
    InvalidReceiver,
    /// The conversation does not exist.
    ConversationNotFound,
    /// The caller is not allowed to do this (e.g. not a participant).
    Forbidden,
    /// The group would exceed the configured member limit.
    TooManyParticipants,
    /// Authentication is missing, invalid or expired.
    Unauthorized,
    /// The caller is sending too fast.
    RateLimited,
    /// A backend this request needs is unreachable or timed out; retrying (with the same
    /// `client_msg_id`) is safe.
    Unavailable,
    /// A bug or unexpected failure on our side.
    Internal,
    /// The route does not exist.
    NotFound,
    /// The HTTP method is not allowed on this route.
    MethodNotAllowed,
    /// The frame type is part of the protocol but this server does not serve it yet.
    Unsupported,
    /// The request body is larger than allowed.
    PayloadTooLarge,
    /// The message ids do not exist or belong to conversations the caller is not in.
    MessageNotFound,
    /// The message was deleted: it can no longer be edited, reacted to, pinned or replied to.
    MessageDeleted,
    /// The edit window (`INDABA_EDIT_WINDOW_SECS`) has passed for this message.
    EditWindowExpired,
    /// The message already has the most distinct reactions allowed (20).
    TooManyReactions,
    /// `reply_to` names a message of another conversation (or none).
    InvalidReply,
    /// `mentions` names someone who is not a participant of the conversation.
    InvalidMention,
    /// An upload that cannot be attached: unknown, another user's, another conversation's,
    /// already attached, or never completed.
    InvalidAttachment,
    /// The upload's time ran out (its URL expired before the bytes arrived, or it was never
    /// attached within a day).
    UploadExpired,
    /// The stored object's size differs from the declared one.
    SizeMismatch,
    /// The bytes are not of the declared type.
    TypeMismatch,
    /// The declared type is not on the allowed list.
    UnsupportedMediaType,
    /// The user's daily upload allowance is spent.
    QuotaExceeded,
    /// An image with more pixels than the server decodes (a decompression bomb, or a photo
    /// far beyond any camera's).
    ImageTooLarge,
}

impl ErrorCode {
    /// Every code, for documentation and exhaustive tests.
    pub const ALL: [ErrorCode; 31] = [
        ErrorCode::InvalidJson,
        ErrorCode::MissingType,
        ErrorCode::UnknownType,
        ErrorCode::InvalidField,
        ErrorCode::EmptyText,
        ErrorCode::TextTooLong,
        ErrorCode::InvalidReceiver,
        ErrorCode::ConversationNotFound,
        ErrorCode::Forbidden,
        ErrorCode::TooManyParticipants,
        ErrorCode::Unauthorized,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Unsupported,
        ErrorCode::PayloadTooLarge,
        ErrorCode::MessageNotFound,
        ErrorCode::MessageDeleted,
        ErrorCode::EditWindowExpired,
        ErrorCode::TooManyReactions,
        ErrorCode::InvalidReply,
        ErrorCode::InvalidMention,
        ErrorCode::InvalidAttachment,
        ErrorCode::UploadExpired,
        ErrorCode::SizeMismatch,
        ErrorCode::TypeMismatch,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::QuotaExceeded,
        ErrorCode::ImageTooLarge,
    ];

    /// The wire form of the code.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::MissingType => "missing_type",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::EmptyText => "empty_text",
            ErrorCode::TextTooLong => "text_too_long",
            ErrorCode::InvalidReceiver => "invalid_receiver",
            ErrorCode::ConversationNotFound => "conversation_not_found",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooManyParticipants => "too_many_participants",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::MessageNotFound => "message_not_found",
            ErrorCode::MessageDeleted => "message_deleted",
            ErrorCode::EditWindowExpired => "edit_window_expired",
            ErrorCode::TooManyReactions => "too_many_reactions",
            ErrorCode::InvalidReply => "invalid_reply",
            ErrorCode::InvalidMention => "invalid_mention",
            ErrorCode::InvalidAttachment => "invalid_attachment",
            ErrorCode::UploadExpired => "upload_expired",
            ErrorCode::SizeMismatch => "size_mismatch",
            ErrorCode::TypeMismatch => "type_mismatch",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::ImageTooLarge => "image_too_large",
        }
    }

    /// The HTTP status every HTTP door answers this code with.
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::ConversationNotFound | ErrorCode::MessageNotFound | ErrorCode::NotFound => {
                404
            }
            ErrorCode::MethodNotAllowed => 405,
            // The state of the message refuses the change: the client must not retry it.
            ErrorCode::EditWindowExpired | ErrorCode::TooManyReactions => 409,
            ErrorCode::MessageDeleted | ErrorCode::UploadExpired => 410,
            ErrorCode::PayloadTooLarge | ErrorCode::ImageTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::RateLimited | ErrorCode::QuotaExceeded => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
            ErrorCode::InvalidJson
            | ErrorCode::MissingType
            | ErrorCode::UnknownType
            | ErrorCode::InvalidField
            | ErrorCode::EmptyText
            | ErrorCode::TextTooLong
            | ErrorCode::InvalidReceiver
            | ErrorCode::InvalidReply
            | ErrorCode::InvalidMention
            | ErrorCode::InvalidAttachment
            | ErrorCode::SizeMismatch
            | ErrorCode::TypeMismatch
            // A request the current state refuses: the client must change it, not retry.
            | ErrorCode::TooManyParticipants
            | ErrorCode::Unsupported => 400,
        }
    }

    /// Parses the wire form; unknown strings (from a newer peer) map to `Internal`.
    pub fn parse(s: &str) -> ErrorCode {
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .unwrap_or(ErrorCode::Internal)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "duplicate code {c}");
            assert_eq!(ErrorCode::parse(c.as_str()), c);
        }
        assert_eq!(ErrorCode::parse("no_such_code"), ErrorCode::Internal);
    }

    #[test]
    fn every_code_has_an_error_status() {
        for c in ErrorCode::ALL {
            assert!((400..600).contains(&c.http_status()), "{c}");
        }
    }
}
