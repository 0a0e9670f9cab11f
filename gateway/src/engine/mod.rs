//! Engines own history and cross-instance live delivery. Two implementations share one contract:
//! `redis` (pub/sub + Streams, any number of instances) and `memory` (one instance, no Redis).
//!
//! The contract, which `tests/it/engine.rs` checks against both:
//! - `publish` assigns the next contiguous offset in the channel's current epoch, stores the
//!   event in capped, expiring history and pushes it live — atomically, so history and live can
//!   never disagree; it returns the event's position.
//! - `read(channel, after, limit)` returns the channel's epoch, its top offset, and up to `limit`
//!   events with offset > `after`, oldest first. A channel without history gets a fresh epoch
//!   at offset 0, so every watched channel always has a concrete position.
//! - `subscribe(channel)` resolves once every later publish on that channel will reach the
//!   [`Listener`]; the listener may also see events of channels it did not ask for, or the same
//!   event twice, and must filter by position (the hub does).
//! - After a live-path outage the engine calls [`Listener::on_resubscribed`]: anything published
//!   meanwhile must be re-read from history.
//! - Offsets are never handed out twice under one epoch, even when the store loses acknowledged
//!   writes: the store then moves to a new epoch whose [`Lineage`] says which old offsets it
//!   still holds, and `fence(channel, seen)` makes it move when a position beyond its head was
//!   seen (see `shared::lineage`). The in-memory engine never loses writes and never moves.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use bytes::Bytes;
use shared::{ChannelName, Continuity, Epoch, Event, EventName, Lineage, PayloadKind, Position};

/// Why an engine call failed; `Unavailable` maps to HTTP 503 so clients retry elsewhere.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The backing store cannot be reached (or timed out).
    #[error("history store unavailable: {0}")]
    Unavailable(String),
    /// The store answered with something the gateway cannot use.
    #[error("history store returned unexpected data: {0}")]
    Protocol(String),
    /// The store refused the request (an error reply from Redis itself).
    #[error("history store refused the request: {0}")]
    Refused(String),
    /// The publish function rejected an argument (its `GATEWAY` error replies).
    #[error("the publish function rejected the request: {0}")]
    Rejected(String),
}

/// What a publisher asks to store and push.
#[derive(Clone, Debug)]
pub struct PublishRequest {
    /// Target channel.
    pub channel: ChannelName,
    /// Optional SSE event name.
    pub name: Option<EventName>,
    /// How the payload is to be read.
    pub kind: PayloadKind,
    /// The payload bytes.
    pub data: Bytes,
}

/// One read of a channel's history, taken atomically.
#[derive(Clone, Debug)]
pub struct HistoryPage {
    /// The channel's current epoch.
    pub epoch: Epoch,
    /// Offset of the newest event of the epoch (0 when none was published yet).
    pub top: u64,
    /// Events with offset greater than the requested one, oldest first.
    pub events: Vec<Event>,
    /// Earlier epochs whose offsets the current one inherited.
    pub lineage: Lineage,
}

impl HistoryPage {
    /// The channel's current head.
    pub fn head(&self) -> Position {
        Position::new(self.epoch, self.top)
    }

    /// How `pos` relates to this page's history (see `shared::lineage`).
    pub fn continuity(&self, pos: Position) -> Continuity {
        self.lineage.continuity(self.head(), pos)
    }

    /// Offset of the first event this page can still deliver: anything between the requested
    /// offset and this one was trimmed or expired.
    pub fn first_available(&self) -> u64 {
        self.events
            .first()
            .map_or(self.top.saturating_add(1), |e| e.position.offset)
    }
}

/// Receives what the engine's live path produces; implemented by the hub.
pub trait Listener: Send + Sync + 'static {
    /// A live event; may be a duplicate or out of order after reconnects.
    fn on_event(&self, event: Event);
    /// Something arrived for `channel` that could not be decoded: re-read its history.
    fn on_hint(&self, channel: &ChannelName);
    /// The live path was re-established: events may have been missed on every channel.
    fn on_resubscribed(&self);
    /// The live path is up (`true`) or down (`false`); feeds `/readyz`.
    fn on_live_path(&self, up: bool);
}

/// The engine in use; an enum rather than a trait object because there are exactly two and
/// static dispatch keeps the async methods simple.
#[derive(Clone)]
pub enum Engine {
    /// Single instance, everything in process memory.
    Memory(memory::MemoryEngine),
    /// Any number of instances sharing one Redis.
    Redis(redis::RedisEngine),
}

impl Engine {
    /// Stores and pushes one event; see the module contract.
    pub async fn publish(&self, req: PublishRequest) -> Result<Position, EngineError> {
        match self {
            Self::Memory(e) => e.publish(req),
            Self::Redis(e) => e.publish(req).await,
        }
    }

    /// Stores and pushes many events in one round trip, in order, all at once (on a Redis
    /// Cluster: all at once per hash slot, and each slot's group stored or refused by itself);
    /// positions in request order, the outer error when every call to the store failed.
    pub async fn publish_batch(
        &self,
        requests: &[PublishRequest],
    ) -> Result<Vec<Result<Position, EngineError>>, EngineError> {
        match self {
            Self::Memory(e) => Ok(e.publish_many(requests).into_iter().map(Ok).collect()),
            Self::Redis(e) => e.publish_batch(requests).await,
        }
    }

    /// Reads history after `after`; see the module contract.
    pub async fn read(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: usize,
    ) -> Result<HistoryPage, EngineError> {
        match self {
            Self::Memory(e) => Ok(e.read(channel, after, limit)),
            Self::Redis(e) => e.read(channel, after, limit).await,
        }
    }

    /// Tells the store that `seen` was delivered although it is beyond the store's head, so it
    /// moves to a new epoch instead of handing those offsets out again.
    pub async fn fence(&self, channel: &ChannelName, seen: Position) -> Result<(), EngineError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(e) => e.fence(channel, seen).await,
        }
    }

    /// Starts live delivery of `channel` to the listener; resolves once it is confirmed.
    pub async fn subscribe(&self, channel: &ChannelName) -> Result<(), EngineError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(e) => e.subscribe(channel).await,
        }
    }

    /// Stops live delivery of `channel`; fire-and-forget.
    pub fn unsubscribe(&self, channel: &ChannelName) {
        match self {
            Self::Memory(_) => {}
            Self::Redis(e) => e.unsubscribe(channel),
        }
    }

    /// Heads of many channels in one round trip (`None`: no history exists); lets the hub find
    /// lost tails on quiet channels cheaply.
    pub async fn heads(
        &self,
        channels: &[ChannelName],
    ) -> Result<Vec<Option<Position>>, EngineError> {
        match self {
            Self::Memory(e) => Ok(e.heads(channels)),
            Self::Redis(e) => e.heads(channels).await,
        }
    }

    /// Connects the live path and starts background work; events go to `listener`.
    pub fn start(&self, listener: Arc<dyn Listener>) {
        match self {
            Self::Memory(e) => e.start(listener),
            Self::Redis(e) => e.start(listener),
        }
    }

    /// Checks that the store answers now; used by `/readyz`.
    pub async fn ping(&self) -> Result<(), EngineError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(e) => e.ping().await,
        }
    }

    /// Short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Redis(_) => "redis",
        }
    }

    /// Stops background tasks so the process (or a test) can end cleanly.
    pub fn stop(&self) {
        match self {
            Self::Memory(e) => e.stop(),
            Self::Redis(e) => e.stop(),
        }
    }
}
