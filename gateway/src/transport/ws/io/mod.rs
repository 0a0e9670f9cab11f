//! WebSocket I/O on a socket hyper handed back after the upgrade (plain TCP or TLS).
//!
//! Built to cost nothing while idle: the reader waits for bytes without a buffer and reads
//! through a stack array, the writer keeps its output only until it is written, and both release
//! their allocations as soon as they are empty. Frames are parsed and written with actix-http's
//! `Parser`; a frame's length is checked from its header before any payload is kept.
//!
//! - `frame`: frame headers (lengths, boundaries), no I/O
//! - `decode`: client frames into messages, no I/O
//! - `read`: [`MessageStream`], the reading half
//! - `write`: [`Session`], the writing half

use actix_http::ws::CloseReason;
use bytes::Bytes;
use bytestring::ByteString;
use tokio::io::{AsyncRead, AsyncWrite};

mod decode;
mod frame;
mod read;
#[cfg(test)]
mod testing;
mod write;

pub use read::MessageStream;
pub use write::Session;

/// The socket's reading half, whatever the transport underneath (TCP, TLS).
pub type ReadIo = Box<dyn AsyncRead + Unpin>;
/// The socket's writing half.
pub type WriteIo = Box<dyn AsyncWrite + Unpin>;

/// The connection is gone: nothing more can be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// One complete message from the client (fragments joined).
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// A text message (valid UTF-8).
    Text(ByteString),
    /// A binary message.
    Binary(Bytes),
    /// A ping, to be answered with its payload.
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// The client's close frame.
    Close(Option<CloseReason>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_halves_stay_small() {
        // What every raw connection's session task carries for its socket.
        assert!(
            std::mem::size_of::<Session>() <= 64,
            "{}",
            std::mem::size_of::<Session>()
        );
        // 96 before permessage-deflate: one pointer more, to state boxed only when negotiated.
        assert!(
            std::mem::size_of::<MessageStream>() <= 104,
            "{}",
            std::mem::size_of::<MessageStream>()
        );
    }
}
