//! Writing from fan-out itself. While a connection's task is parked with nothing left to write,
//! its queue is *armed*: the worker delivering an event writes the event's shared frame straight
//! to the connection's socket (one non-blocking `send`), instead of queueing a reference, waking
//! the task and letting the task write the same bytes a moment later. Per delivery that saves a
//! queue push, a wake-up, a task poll and a drain, and touches no reference count.
//!
//! The rules that keep the byte stream whole and in order (enforced by `queue::Queue`):
//! - only a plain socket can be written this way (TLS needs the connection's own state), and only
//!   a connection whose frames are shared as they are (single-channel SSE, WebSocket);
//! - the task arms the queue, under the queue's lock, only when the queue is empty and the task
//!   has written everything it had; it disarms before it writes anything itself (a heartbeat,
//!   a reply), and any other push (a gap, history, a subscribe acknowledgement) disarms it too;
//! - a write the socket does not take whole disarms the queue: the unwritten end of the round's
//!   bytes is queued first ([`Item::Tail`](super::queue::Item::Tail)), then everything after it,
//!   and the task, woken, writes them in order, like any queued item;
//! - the queue keeps the socket alive (it holds a reference) until it is closed, so a write
//!   never reaches a descriptor the connection no longer owns.

use std::sync::Arc;

use bytes::Bytes;
use shared::Position;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::message::{Delivery, Message};
use super::queue::Arm;

/// Which of an event's shared frames a connection is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// The SSE frame with its `id:` line (a single-channel stream).
    Sse,
    /// The SSE frame as a deflate piece compressed at this level (gzip or deflate streams).
    SseDeflated(u32),
    /// The WebSocket frame.
    Ws,
    /// The WebSocket frame compressed at `level` (`permessage-deflate`) when the message is at
    /// most `max` bytes; larger ones, and those compression does not shrink, go uncompressed.
    WsDeflated {
        /// Compression level.
        level: u32,
        /// The longest message sent compressed (the client's window).
        max: u32,
    },
}

impl Form {
    /// The form of a single-channel SSE stream, compressed at `level` or not.
    pub fn sse(deflate_level: Option<u32>) -> Self {
        deflate_level.map_or(Self::Sse, Self::SseDeflated)
    }

    /// The form of a WebSocket that may compress messages up to `compress_up_to` bytes.
    pub fn ws(compress_up_to: Option<usize>, level: u32) -> Self {
        match compress_up_to {
            Some(max) => Self::WsDeflated {
                level,
                max: u32::try_from(max).unwrap_or(u32::MAX),
            },
            None => Self::Ws,
        }
    }

    /// The bytes a connection of this form is written for `message`: shared by every such
    /// subscriber, encoded (and compressed) once per event.
    pub fn frame(self, message: &Message) -> &Bytes {
        match self {
            Self::Sse => message.sse_frame(),
            Self::SseDeflated(level) => message.sse_frame_deflated(level),
            Self::Ws => message.ws_frame(),
            Self::WsDeflated { level, max } if message.ws_payload_len() <= max as usize => message
                .ws_deflated_frame(level)
                .unwrap_or_else(|| message.ws_frame()),
            Self::WsDeflated { .. } => message.ws_frame(),
        }
    }

    /// The bytes for `message` on a connection whose output so far ends with the frame of the
    /// event at `after` (`None`: with anything else). Only compressed SSE makes use of it: the
    /// piece compressed against that frame, when `message` follows it (`Message::follow`).
    pub fn frame_after(self, message: &Message, after: Option<Position>) -> &Bytes {
        match (self, after) {
            (Self::SseDeflated(level), Some(after)) => {
                message.sse_frame_deflated_after(level, after)
            }
            _ => self.frame(message),
        }
    }

    /// Whether a connection of this form gets pieces that refer back to the previous event.
    pub fn chains(self) -> bool {
        matches!(self, Self::SseDeflated(_))
    }

    /// Whether this is a WebSocket's form (for the delivery metrics).
    pub fn is_ws(self) -> bool {
        matches!(self, Self::Ws | Self::WsDeflated { .. })
    }
}

/// A connection's plain socket and the form of its frames.
pub struct Direct {
    socket: Arc<TcpStream>,
    form: Form,
}

impl Direct {
    /// Direct writes of `form` frames to `socket`.
    pub fn new(socket: Arc<TcpStream>, form: Form) -> Self {
        Self { socket, form }
    }

    /// The form of this connection's frames.
    pub fn form(&self) -> Form {
        self.form
    }

    /// Writes `bytes` without waiting; how many the socket took (0 when it is full, or failed:
    /// the task finds out when it writes itself). A `writev`, like the connection's own writes,
    /// not a `send`: the same system call cost, and the bytes count in the process's `wchar`
    /// (/proc/PID/io), which the benchmarks read as bytes on the wire.
    pub fn write(&self, bytes: &[u8]) -> usize {
        self.socket
            .try_write_vectored(&[std::io::IoSlice::new(bytes)])
            .unwrap_or(0)
    }
}

/// Events of one round written in one write at most; a round with more queues the rest.
pub const MAX_FRAMES: usize = 64;

/// One delivery round's events, in order, with each form's frames joined into one buffer once
/// per round and written whole to every armed subscriber of the group: one contiguous copy
/// into each socket, however many events the round carries.
pub struct Round<'a> {
    events: &'a [Arc<Delivery>],
    /// By form, and by the event the first one's piece refers back to (compressed SSE).
    joined: Vec<(Form, Option<Position>, Bytes)>,
    at: Instant,
}

impl<'a> Round<'a> {
    /// A round of `events` (no gaps among them).
    pub fn new(events: &'a [Arc<Delivery>]) -> Self {
        Self {
            events,
            joined: Vec::new(),
            at: Instant::now(),
        }
    }

    /// When the round began: what a connection fan-out wrote to records as its last write
    /// (read once per round, not per connection).
    pub fn at(&self) -> Instant {
        self.at
    }

    /// The round's events.
    pub fn events(&self) -> &'a [Arc<Delivery>] {
        self.events
    }

    /// The frames of the first [`MAX_FRAMES`] events in `form`, joined (shared, not copied,
    /// when there is one event), for a connection whose output ends with the frame of the
    /// event at `after` (see [`Form::frame_after`]); each next piece refers back to the one
    /// before it where the form allows.
    pub fn joined(&mut self, form: Form, after: Option<Position>) -> &Bytes {
        let events = &self.events[..self.events.len().min(MAX_FRAMES)];
        // Connections differ only in whether the first piece may refer back.
        let first_follows = events.first().and_then(|d| d.follows());
        let after = after.filter(|a| form.chains() && first_follows == Some(*a));
        let i = match self
            .joined
            .iter()
            .position(|(f, a, _)| *f == form && *a == after)
        {
            Some(i) => i,
            None => {
                let bytes = match events {
                    [one] => form.frame_after(one, after).clone(),
                    many => {
                        let mut out = Vec::new();
                        let mut last = after;
                        for d in many {
                            out.extend_from_slice(form.frame_after(d, last));
                            last = Some(d.position());
                        }
                        Bytes::from(out)
                    }
                };
                self.joined.push((form, after, bytes));
                self.joined.len() - 1
            }
        };
        &self.joined[i].2
    }
}

/// A writer of a connection's queue (the raw SSE pump) that lets fan-out write for it while
/// it is parked.
pub trait Parking {
    /// About to park with nothing left to write: see [`Queue::arm`](super::queue::Queue::arm).
    fn arm(&mut self) -> Arm;
    /// Woken, and about to write itself (having learnt when fan-out last wrote for it, if it
    /// did: a stream that fan-out keeps busy needs no heartbeat).
    fn disarm(&mut self);
}

#[cfg(test)]
mod tests;
