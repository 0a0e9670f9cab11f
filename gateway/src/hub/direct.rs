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
use super::ws_frame;

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
        /// The client keeps its window between messages (server context takeover): a message
        /// may refer back into the last compressed one.
        chain: bool,
    },
}

/// The event whose bytes a connection's decompressor saw last — what a chained piece may refer
/// back into (`Form::frame_after`). The slot tells channels of one WebSocket apart: positions
/// are only unique within a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// Channel slot within the connection (0 on a single-channel SSE stream).
    pub slot: u32,
    /// The event's position in that channel.
    pub position: Position,
}

impl Link {
    /// `after` for `frame_after` on channel `slot`: the position, if the link is on it.
    pub fn on(link: Option<Link>, slot: u32) -> Option<Position> {
        link.filter(|l| l.slot == slot).map(|l| l.position)
    }
}

impl Form {
    /// The form of a single-channel SSE stream, compressed at `level` or not.
    pub fn sse(deflate_level: Option<u32>) -> Self {
        deflate_level.map_or(Self::Sse, Self::SseDeflated)
    }

    /// The form of a WebSocket that may compress messages up to `compress_up_to` bytes, and
    /// refer back into the last compressed one when the client keeps its window (`chain`).
    pub fn ws(compress_up_to: Option<usize>, level: u32, chain: bool) -> Self {
        match compress_up_to {
            Some(max) => Self::WsDeflated {
                level,
                max: u32::try_from(max).unwrap_or(u32::MAX),
                chain,
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
            Self::WsDeflated { level, max, .. } if message.ws_payload_len() <= max as usize => {
                message
                    .ws_deflated_frame(level)
                    .unwrap_or_else(|| message.ws_frame())
            }
            Self::WsDeflated { .. } => message.ws_frame(),
        }
    }

    /// The bytes for `message` on a connection whose decompressor saw the bytes of the event at
    /// `after` last (`None`: something else). Only compressed forms make use of it: the piece
    /// compressed against that event, when `message` follows it (`Message::follow`).
    pub fn frame_after(self, message: &Message, after: Option<Position>) -> &Bytes {
        match (self, after) {
            (Self::SseDeflated(level), Some(after)) => {
                message.sse_frame_deflated_after(level, after)
            }
            (
                Self::WsDeflated {
                    level,
                    max,
                    chain: true,
                },
                Some(after),
            ) if message.ws_payload_len() <= max as usize => message
                .ws_deflated_frame_after(level, after)
                .unwrap_or_else(|| message.ws_frame()),
            _ => self.frame(message),
        }
    }

    /// What the connection's decompressor saw last once `frame` (this form's frame for
    /// `message`) is written: the event itself when the frame goes through it, `None` when the
    /// frame leaves it as it was. An SSE stream's every byte is inflated; a WebSocket client
    /// inflates only compressed (RSV1) messages.
    pub fn seen_after(self, message: &Message, frame: &Bytes) -> Option<Position> {
        let inflated = match self {
            Self::Sse | Self::SseDeflated(_) => true,
            Self::Ws => false,
            Self::WsDeflated { .. } => ws_frame::is_compressed(frame),
        };
        inflated.then(|| message.position())
    }

    /// Whether a connection of this form gets pieces that refer back to the previous event.
    pub fn chains(self) -> bool {
        matches!(
            self,
            Self::SseDeflated(_) | Self::WsDeflated { chain: true, .. }
        )
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
    /// By form, and by the event the first one's piece refers back to (compressed forms).
    joined: Vec<Joined>,
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
    /// when there is one event), for a connection whose decompressor saw the event at `after`
    /// last (see [`Form::frame_after`]); each next piece refers back to the one before it
    /// where the form allows. Also what the decompressor saw last after them, if they changed
    /// it ([`Form::seen_after`]).
    pub fn joined(&mut self, form: Form, after: Option<Position>) -> (&Bytes, Option<Position>) {
        let events = &self.events[..self.events.len().min(MAX_FRAMES)];
        // Connections differ only in whether the first piece may refer back.
        let first_follows = events.first().and_then(|d| d.follows());
        let after = after.filter(|a| form.chains() && first_follows == Some(*a));
        let i = match self
            .joined
            .iter()
            .position(|j| j.form == form && j.after == after)
        {
            Some(i) => i,
            None => {
                let (bytes, seen) = match events {
                    [one] => {
                        let frame = form.frame_after(one, after);
                        (frame.clone(), form.seen_after(one, frame))
                    }
                    many => {
                        let mut out = Vec::new();
                        let (mut last, mut seen) = (after, None);
                        for d in many {
                            let frame = form.frame_after(d, last);
                            out.extend_from_slice(frame);
                            if let Some(p) = form.seen_after(d, frame) {
                                (last, seen) = (Some(p), Some(p));
                            }
                        }
                        (Bytes::from(out), seen)
                    }
                };
                self.joined.push(Joined {
                    form,
                    after,
                    bytes,
                    seen,
                });
                self.joined.len() - 1
            }
        };
        let j = &self.joined[i];
        (&j.bytes, j.seen)
    }
}

/// One form's joined frames of a round (see [`Round::joined`]).
struct Joined {
    form: Form,
    after: Option<Position>,
    bytes: Bytes,
    seen: Option<Position>,
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
