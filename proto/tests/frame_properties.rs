//! Property tests of the client frame parser: generated inputs (a fixed-seed generator, so a
//! failure reproduces) instead of hand-picked ones. The cargo-fuzz target in `proto/fuzz`
//! explores the same parser coverage-guided.

#![allow(clippy::unwrap_used)]

use proto::frames::{parse_client_frame, ClientFrame};
use proto::ErrorCode;
use serde_json::{json, Value};

/// xorshift64*: small, deterministic, good enough to generate inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
    fn text(&mut self, max: usize) -> String {
        let alphabet = [
            'a', 'Z', ' ', '"', '\\', '{', '}', 'é', '漢', '🎉', '\n', '\u{0}', '0', ',',
        ];
        (0..self.below(max as u64 + 1))
            .map(|_| *self.pick(&alphabet))
            .collect()
    }
}

const CODES: [ErrorCode; 4] = [
    ErrorCode::InvalidJson,
    ErrorCode::MissingType,
    ErrorCode::UnknownType,
    ErrorCode::InvalidField,
];

fn check_rejection(text: &str) {
    match parse_client_frame(text) {
        Ok(_) => {}
        Err(e) => {
            assert!(CODES.contains(&e.code), "{text:?} → {:?}", e.code);
            let frame: Value = serde_json::from_str(&e.into_frame().to_json()).unwrap();
            assert_eq!(frame["type"], "error");
        }
    }
}

fn valid_frames(r: &mut Rng) -> Value {
    let id = |r: &mut Rng| -> Value {
        let n = 1 + r.below(1_000_000) as i64;
        if r.below(2) == 0 {
            json!(n)
        } else {
            json!(n.to_string())
        }
    };
    match r.below(6) {
        0 => {
            json!({"type": "chat_message", "receiver_id": id(r), "text": format!("x{}", r.text(50)), "client_msg_id": format!("k{}", r.below(1 << 30))})
        }
        1 => {
            json!({"type": "typing_indicator", "conversation_id": id(r), "is_typing": r.below(2) == 0})
        }
        2 => json!({"type": "read_receipt", "message_ids": [id(r), id(r)]}),
        3 => json!({"type": "join_conversation", "conversation_id": id(r)}),
        4 => json!({"type": "history", "conversation_id": id(r), "limit": 1 + r.below(200)}),
        _ => json!({"type": "ping"}),
    }
}

#[test]
fn arbitrary_text_never_panics_and_gets_a_stable_code() {
    let mut r = Rng(0x1dea_5eed);
    for _ in 0..20_000 {
        let len = r.below(64) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| r.next() as u8).collect();
        check_rejection(&String::from_utf8_lossy(&bytes));
        check_rejection(&r.text(40));
    }
}

#[test]
fn mutated_valid_frames_never_panic() {
    let mut r = Rng(42);
    for _ in 0..20_000 {
        let mut s = valid_frames(&mut r).to_string().into_bytes();
        for _ in 0..1 + r.below(4) {
            if s.is_empty() {
                break;
            }
            let i = r.below(s.len() as u64) as usize;
            match r.below(4) {
                0 => s[i] = r.next() as u8,
                1 => s.truncate(i),
                2 => s.insert(i, *r.pick(b"{}[]\",:0-e\\")),
                _ => {
                    s.remove(i);
                }
            }
        }
        check_rejection(&String::from_utf8_lossy(&s));
    }
}

#[test]
fn generated_valid_frames_parse_to_what_they_say() {
    let mut r = Rng(7);
    for _ in 0..5_000 {
        let v = valid_frames(&mut r);
        let parsed = parse_client_frame(&v.to_string())
            .unwrap_or_else(|e| panic!("{v} refused: {:?} {}", e.code, e.message));
        let as_i64 = |x: &Value| {
            x.as_i64()
                .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
                .unwrap()
        };
        match (v["type"].as_str().unwrap(), parsed) {
            ("chat_message", ClientFrame::ChatMessage(m)) => {
                assert_eq!(m.text, v["text"].as_str().unwrap());
                assert_eq!(m.receiver_id.map(|i| i.0), Some(as_i64(&v["receiver_id"])));
            }
            ("typing_indicator", ClientFrame::TypingIndicator(t)) => {
                assert_eq!(t.conversation_id.0, as_i64(&v["conversation_id"]));
            }
            ("read_receipt", ClientFrame::ReadReceipt(rr)) => assert_eq!(rr.message_ids.len(), 2),
            ("join_conversation", ClientFrame::JoinConversation(c)) => {
                assert_eq!(c.conversation_id.0, as_i64(&v["conversation_id"]));
            }
            ("history", ClientFrame::History(h)) => {
                assert_eq!(h.conversation_id.0, as_i64(&v["conversation_id"]));
            }
            ("ping", ClientFrame::Ping) => {}
            (ty, other) => panic!("{ty} parsed as {other:?}"),
        }
    }
}

#[test]
fn unknown_types_are_unknown_and_missing_types_missing() {
    let mut r = Rng(99);
    for _ in 0..2_000 {
        let ty = format!("zz_{}", r.text(10));
        let e = parse_client_frame(&json!({"type": ty}).to_string()).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownType);
        let e = parse_client_frame(&json!({"text": r.text(10)}).to_string()).unwrap_err();
        assert_eq!(e.code, ErrorCode::MissingType);
    }
}
