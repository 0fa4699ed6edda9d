//! Input validation shared by every entry point, so a message sent over the WebSocket, REST
//! or gRPC is held to the same rules.

use crate::ErrorCode;

/// Default maximum message length, in Unicode scalar values (what users call characters).
pub const DEFAULT_MAX_TEXT_CHARS: usize = 4000;
/// Default maximum number of participants in a group conversation.
pub const DEFAULT_MAX_GROUP_SIZE: usize = 1000;
/// Maximum length of a `client_msg_id` (a UUID is 36).
pub const MAX_CLIENT_MSG_ID_LEN: usize = 64;
/// Maximum length of a conversation title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Most message ids one read receipt may carry (WebSocket frame, REST body, bus request).
pub const MAX_RECEIPT_IDS: usize = 500;
/// A gateway silent for this many of its own heartbeat intervals is presumed dead: its
/// sockets leave the routing tables and presence.
pub const DEAD_AFTER_INTERVALS: u32 = 3;

/// The bounds of one kind of page: what an absent size means and the largest allowed.
/// Every door (WebSocket, REST, gRPC) and the store use the same [`PageLimit::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit {
    /// The field's name in errors (`limit`, `page_size`).
    pub field: &'static str,
    /// The size of a page when the caller names none (0 on the wire).
    pub default: u32,
    /// The largest page a caller may ask for.
    pub max: u32,
}

/// A page of one conversation's messages (history, REST pages, gRPC `ListMessages`).
pub const MESSAGE_PAGE: PageLimit = PageLimit {
    field: "limit",
    default: 50,
    max: 200,
};
/// A page of the caller's conversations.
pub const CONVERSATION_PAGE: PageLimit = PageLimit {
    field: "page_size",
    default: 100,
    max: 500,
};

impl PageLimit {
    /// The page size to use for a requested one (0: none requested). A request above the
    /// maximum is refused, never silently shortened: a caller paging with the wrong size
    /// would otherwise skip nothing but believe it asked for more.
    pub fn check(self, requested: u32) -> Result<u32, Invalid> {
        match requested {
            0 => Ok(self.default),
            n if n <= self.max => Ok(n),
            _ => Err(Invalid::new(
                ErrorCode::InvalidField,
                format!("{} must be 1 to {}", self.field, self.max),
            )),
        }
    }
}

/// A validation failure: a stable code plus a message for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// What went wrong, for machines.
    pub code: ErrorCode,
    /// What went wrong, for humans.
    pub message: String,
}

impl Invalid {
    /// Shorthand constructor.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Invalid {
            code,
            message: message.into(),
        }
    }
}

/// Checks message text: not blank, at most `max_chars` characters.
pub fn validate_text(text: &str, max_chars: usize) -> Result<(), Invalid> {
    if text.trim().is_empty() {
        return Err(Invalid::new(ErrorCode::EmptyText, "text must not be empty"));
    }
    // PostgreSQL text cannot hold U+0000 (the insert failed as a database error).
    if text.contains('\0') {
        return Err(Invalid::new(
            ErrorCode::InvalidField,
            "text must not contain U+0000 (NUL)",
        ));
    }
    // Byte length bounds the character count from above, so most texts skip the count.
    if text.len() > max_chars && text.chars().count() > max_chars {
        return Err(Invalid::new(
            ErrorCode::TextTooLong,
            format!("text is longer than {max_chars} characters"),
        ));
    }
    Ok(())
}

/// Checks an idempotency key: 1..=64 printable ASCII characters.
pub fn validate_client_msg_id(id: &str) -> Result<(), Invalid> {
    if id.is_empty()
        || id.len() > MAX_CLIENT_MSG_ID_LEN
        || !id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(Invalid::new(
            ErrorCode::InvalidField,
            format!(
                "client_msg_id must be 1 to {MAX_CLIENT_MSG_ID_LEN} printable ASCII characters"
            ),
        ));
    }
    Ok(())
}

/// Most sends a gateway puts in one `SendBatchRequest`.
pub const MAX_SEND_BATCH: usize = 256;

/// Most distinct reactions (emoji) one message may carry.
pub const MAX_REACTIONS_PER_MESSAGE: i64 = 20;
/// Longest `:short_code:` reaction, in bytes, colons included.
pub const MAX_SHORT_CODE_BYTES: usize = 32;
/// Most users one message may mention.
pub const MAX_MENTIONS: usize = 50;

/// Checks a reaction: exactly one Unicode emoji sequence (skin tones and ZWJ sequences
/// included, as the Unicode emoji list has them), or a `:short_code:` of at most
/// [`MAX_SHORT_CODE_BYTES`] bytes made of `a-z 0-9 _ + -` (a team's custom emoji: the
/// server does not know them all, so any well-formed code is accepted).
pub fn validate_emoji(emoji: &str) -> Result<(), Invalid> {
    let short_code = emoji.len() <= MAX_SHORT_CODE_BYTES
        && emoji.len() > 2
        && emoji.starts_with(':')
        && emoji.ends_with(':')
        && emoji[1..emoji.len() - 1]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_+-".contains(&b));
    if short_code || emojis::get(emoji).is_some() {
        return Ok(());
    }
    Err(Invalid::new(
        ErrorCode::InvalidField,
        format!(
            "emoji must be one emoji or a :short_code: of at most {MAX_SHORT_CODE_BYTES} bytes"
        ),
    ))
}

/// Checks an id is a positive integer.
pub fn validate_id(field: &str, id: i64) -> Result<(), Invalid> {
    if id <= 0 {
        return Err(Invalid::new(
            ErrorCode::InvalidField,
            format!("{field} must be a positive integer"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reactions_are_one_emoji_or_a_short_code() {
        for ok in ["👍", "👍🏽", "❤️", "👨‍👩‍👧", "🇿🇦", ":party_parrot:", ":+1:"]
        {
            assert!(validate_emoji(ok).is_ok(), "{ok}");
        }
        let long = format!(":{}:", "a".repeat(31));
        for bad in ["", "👍👍", "a", "hi", "::", ":Caps:", ":a b:", &long, "👍 "] {
            assert!(validate_emoji(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn text_rules() {
        assert_eq!(
            validate_text("", 10).unwrap_err().code,
            ErrorCode::EmptyText
        );
        assert_eq!(
            validate_text(" \n\t", 10).unwrap_err().code,
            ErrorCode::EmptyText
        );
        assert!(validate_text("hello", 5).is_ok());
        assert_eq!(
            validate_text("hello!", 5).unwrap_err().code,
            ErrorCode::TextTooLong
        );
        // Five characters, fifteen bytes: the limit counts characters.
        assert!(validate_text("ééééé", 5).is_ok());
        assert!(validate_text("日本語です", 5).is_ok());
        assert_eq!(
            validate_text("a\u{0}b", 5).unwrap_err().code,
            ErrorCode::InvalidField
        );
    }

    #[test]
    fn page_limits() {
        assert_eq!(MESSAGE_PAGE.check(0), Ok(50));
        assert_eq!(MESSAGE_PAGE.check(1), Ok(1));
        assert_eq!(MESSAGE_PAGE.check(200), Ok(200));
        assert_eq!(
            MESSAGE_PAGE.check(201).unwrap_err().code,
            ErrorCode::InvalidField
        );
        assert_eq!(CONVERSATION_PAGE.check(0), Ok(100));
        assert!(CONVERSATION_PAGE.check(501).is_err());
    }

    #[test]
    fn client_msg_id_rules() {
        assert!(validate_client_msg_id("3f2b-1").is_ok());
        assert!(validate_client_msg_id("").is_err());
        assert!(validate_client_msg_id("has space").is_err());
        assert!(validate_client_msg_id(&"x".repeat(65)).is_err());
    }
}
