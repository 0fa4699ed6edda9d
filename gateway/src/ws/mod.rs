//! The WebSocket door (`/ws/chat/`), in the order a socket lives:
//! - [`handshake`]: the HTTP upgrade, refused as JSON before anything opens;
//! - `socket`: first-message authentication, the session, and the two halves;
//! - `reader`: client frames handled in order, each a translation to `backend`;
//! - `resume`: a `sync` streamed on its own bounded channel;
//! - `writer`: the outbound queue, ordering and de-duplication, pings, the close frame.

mod handshake;
mod reader;
mod resume;
mod socket;
mod writer;

pub(crate) use handshake::handshake;
