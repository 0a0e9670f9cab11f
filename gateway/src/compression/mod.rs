//! Compression paid once per event, not once per delivery (issue 15): pure encoding code, no
//! I/O. Each event is deflated once into a self-contained piece (a fresh compressor, ended with
//! a sync flush and no final block), which the hub shares with every subscriber the way it
//! shares uncompressed frames; pieces from different events concatenate into one valid deflate
//! stream because none refers back to another.
//!
//! - `deflate`: the pieces (compressed, stored), stream headers, and inflating with a limit
//! - `accept_encoding`: which `Content-Encoding` an SSE stream gets
//! - `permessage`: WebSocket `permessage-deflate` (RFC 7692) negotiation

pub mod accept_encoding;
pub mod deflate;
pub mod permessage;

pub use accept_encoding::SseEncoding;
pub use deflate::{InflateError, Inflater};
pub use permessage::{Allow, PerMessageDeflate};
