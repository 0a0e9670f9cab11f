//! `GET /ws`: the WebSocket transport. One connection, many channels; JSON text commands and
//! replies, binary frames for binary payloads (layouts in `shared::ws`).
//!
//! Backpressure rule: the session task is the only writer. It drains the connection's queue
//! (filled by fan-out without waiting) and writes frames; a queue overflow, or a write that makes
//! no progress within the heartbeat timeout, ends the connection as a slow consumer (close 4000),
//! and the client resumes from history. Work that waits on Redis (resume, publish) runs in side
//! tasks that report back through the inbox, so the session never stops reading, heartbeating
//! or draining because Redis is slow.
//!
//! - `accept`: the upgrade request (handshake, admission) and the hand-off of the socket
//! - `session`: the loop and how a connection ends
//! - `commands`: what the client asks for, and refusals
//! - `writer`: frames out, with deadlines, batched
//! - `token`: the token's clock (first `auth` deadline, expiry warning, close at `exp`)
//! - `connection`, `inbox`, `limits`: the state they share
//! - `io`: WebSocket framing on the socket

mod accept;
mod commands;
mod connection;
mod history;
mod inbox;
pub mod io;
mod limits;
mod presence;
mod session;
mod token;
mod writer;

pub use accept::{Accepted, Upgrade, respond};

/// How a session ends: with a close frame from the disconnect table, or silently (client gone).
type End = Option<shared::Disconnect>;
