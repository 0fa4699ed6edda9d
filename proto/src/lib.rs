//! The Indaba contract, and nothing else: no I/O, no async runtime, no database.
//!
//! Layout:
//! - [`pb`]: the `indaba.chat.v1` protobuf types (gRPC API and internal NATS envelopes).
//! - [`frames`]: the JSON frames of the client protocol, one closed enum per direction.
//! - [`subjects`]: every NATS subject and queue group, as documented constants.
//! - [`headers`]: every NATS/HTTP header name we set or read.
//! - [`env`]: every environment variable name any Indaba program reads.
//! - [`ErrorCode`]: the stable error codes clients and callers match on.
//! - [`limits`]: input validation shared by every entry point (WebSocket, REST, gRPC).

pub mod env;
pub mod frames;
#[cfg(feature = "grpc")]
pub mod grpc_auth;
#[cfg(feature = "grpc")]
pub mod grpc_status;
pub mod headers;
pub mod limits;
pub mod subjects;
pub mod time;

mod error_code;
pub use error_code::ErrorCode;

/// Generated `indaba.chat.v1` protobuf types.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/indaba.chat.v1.rs"));
}

/// The encoded `FileDescriptorSet` of `indaba.chat.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/chat_v1_descriptor.bin"));

/// Builds the protobuf error record for a code and a human-readable message.
pub fn pb_error(code: ErrorCode, message: impl Into<String>) -> pb::Error {
    pb::Error {
        code: code.as_str().to_owned(),
        message: message.into(),
        field: String::new(),
        retry_after_ms: 0,
    }
}

/// A [`pb::Error`] that blames one request field.
pub fn field_error(field: &str, code: ErrorCode, message: impl Into<String>) -> pb::Error {
    pb::Error {
        field: field.to_owned(),
        ..pb_error(code, message)
    }
}
