//! Feeds arbitrary bytes to the client frame parser, as a WebSocket text frame would (the
//! transport already rejects non-UTF-8). The parser must never panic, and every rejection
//! must carry one of the stable codes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::frames::parse_client_frame;
use proto::ErrorCode;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = parse_client_frame(text) {
        assert!(matches!(
            e.code,
            ErrorCode::InvalidJson | ErrorCode::MissingType | ErrorCode::UnknownType | ErrorCode::InvalidField
        ));
        // The error frame itself must serialize.
        let _ = e.into_frame().to_json();
    }
});
