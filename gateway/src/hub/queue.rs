//! The per-connection outbound queue, shared by all channels of one connection.
//!
//! Backpressure rule: fan-out never waits. It calls [`Queue::push`], which either appends or —
//! when the queue is full — closes the queue as a slow consumer and drops what it held. The
//! connection then ends, the client reconnects and resumes from history, so nothing is lost and
//! one slow client can never stall a channel. Only a connection's own resume task may wait for
//! room ([`Queue::push_wait`]), because it stalls nobody but that connection.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use parking_lot::Mutex;
use shared::{Disconnect, Position};
use tokio::sync::Notify;

use super::direct::{Direct, Link};
use super::message::Delivery;
use super::worker::Worker;
use crate::metrics::Metrics;

/// One thing for a connection to write; `slot` identifies the channel within the connection.
#[derive(Clone, Debug)]
pub enum Item {
    /// An event, shared by every subscriber of its channel on this instance.
    Event {
        /// Channel slot within the connection.
        slot: u32,
        /// The event and its cached frames.
        message: Arc<Delivery>,
        /// `true` for live fan-out, `false` for history replayed on resume (which is old by
        /// design and must not count as delivery latency).
        live: bool,
    },
    /// Events before `first_available` are gone; the client must refetch its state.
    Gap {
        /// Channel slot within the connection.
        slot: u32,
        /// The first position that will be delivered after the gap.
        first_available: Position,
    },
    /// A subscription is established (sent before its first event, for transports that ack).
    Subscribed {
        /// Channel slot within the connection.
        slot: u32,
        /// The position the subscription starts after.
        position: Position,
        /// Whether the requested position was resumed without loss.
        recovered: bool,
    },
    /// The unwritten end of a frame that fan-out began writing to the socket itself (see
    /// `hub::direct`): written as it is, before anything else.
    Tail(Bytes),
}

/// Why the gateway ended a connection; transports translate it to close codes or comments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client did not read fast enough; it should reconnect and resume.
    SlowConsumer,
    /// The instance is shutting down; reconnect (to another instance).
    Shutdown,
    /// The history store failed during resume; reconnect later.
    Unavailable,
    /// The client went away; nothing is written any more.
    Gone,
}

impl CloseReason {
    /// What the client is told, from the one disconnect table; `None` when it is gone.
    pub const fn disconnect(self) -> Option<Disconnect> {
        match self {
            Self::SlowConsumer => Some(Disconnect::SlowConsumer),
            Self::Shutdown => Some(Disconnect::Shutdown),
            Self::Unavailable => Some(Disconnect::Unavailable),
            Self::Gone => None,
        }
    }

    /// Stable label for logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self.disconnect() {
            Some(d) => d.label(),
            None => "client_gone",
        }
    }

    /// Counts the disconnect in `gateway_disconnects_total` as a transport tells its client,
    /// once per connection: a slow consumer is counted where its queue overflowed (the delivery
    /// group), and a client that left is not a disconnect.
    pub fn count(self, metrics: &Metrics) {
        if matches!(self, Self::Shutdown | Self::Unavailable) {
            metrics
                .disconnects
                .with_label_values(&[self.as_str()])
                .inc();
        }
    }
}

/// Why a push did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError {
    /// The queue was already closed.
    Closed,
    /// This push overflowed the queue, which is now closed as a slow consumer.
    Overflowed,
}

/// What a push did (see [`Queue::push_batch`]).
#[derive(Debug, Default)]
pub struct Pushed {
    /// The reader, if it was waiting and now has items: wake it once the caller's locks are
    /// released.
    pub waker: Option<Waker>,
    /// Events written to the socket directly (not queued).
    pub written: u32,
    /// Whether those went to a WebSocket (else an SSE stream).
    pub ws: bool,
}

/// What [`Queue::arm`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm {
    /// Fan-out writes to the socket until the reader disarms the queue.
    Armed,
    /// Items arrived since the reader last drained: drain them first.
    Busy,
    /// This queue has no socket to write to (TLS, HTTP/2, several channels per frame).
    Off,
}

/// What a drain produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Items were moved into the caller's buffer.
    Items,
    /// The queue is closed and empty.
    Closed(CloseReason),
}

/// Bounded multi-producer, single-consumer queue with a close reason.
pub struct Queue {
    state: Mutex<State>,
    room: Notify,
    capacity: usize,
    /// The worker thread whose task reads this queue; fan-out delivers to it on that worker.
    owner: Option<Arc<Worker>>,
}

struct State {
    items: VecDeque<Item>,
    closed: Option<CloseReason>,
    reader: Option<Waker>,
    /// The connection's socket, when fan-out may write to it (see `hub::direct`).
    direct: Option<Direct>,
    /// The reader is parked with nothing to write: fan-out writes through `direct`.
    armed: bool,
    /// The event the connection's decompressor saw last, while armed (compressed pieces may
    /// refer back to it: `hub::direct::Form::frame_after`); on an SSE stream, the last event
    /// written.
    after: Option<Link>,
    /// When fan-out last wrote to the socket, until the reader disarms and learns it.
    wrote_at: Option<tokio::time::Instant>,
}

/// What fan-out wrote to an armed connection's socket (see [`Queue::disarm`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wrote {
    /// When (the round's start): the connection's last write, for its heartbeat.
    pub at: tokio::time::Instant,
    /// The event the connection's decompressor saw last, once the queued rest of the round (if
    /// any) is written; on an SSE stream the last event written, whose frame the output ends
    /// with.
    pub last: Option<Link>,
}

impl State {
    /// Appends `item` unless the queue is full (`false`). Fan-out writes nothing itself past a
    /// queued item: the reader writes them in order.
    fn put(&mut self, item: Item, capacity: usize) -> bool {
        if self.items.len() >= capacity {
            return false;
        }
        self.armed = false;
        self.items.push_back(item);
        true
    }

    /// Closes as a slow consumer, dropping what was queued — but the rest of a frame already
    /// half-written (a tail is always first: it is queued only into an empty queue), so the
    /// client's stream ends on a whole frame before the close; returns the reader to wake.
    fn overflow(&mut self) -> Option<Waker> {
        self.closed = Some(CloseReason::SlowConsumer);
        let tail = match self.items.pop_front() {
            Some(tail @ Item::Tail(_)) => Some(tail),
            _ => None,
        };
        self.items = VecDeque::new();
        self.items.extend(tail);
        self.disconnect_socket();
        self.reader.take()
    }

    /// Forgets the socket: nothing is written directly once the queue is closed.
    fn disconnect_socket(&mut self) {
        self.armed = false;
        self.direct = None;
    }
}

impl Queue {
    /// An empty queue holding at most `capacity` items, read by a task on the calling thread.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: None,
                reader: None,
                direct: None,
                armed: false,
                after: None,
                wrote_at: None,
            }),
            room: Notify::new(),
            capacity,
            owner: Worker::current(),
        })
    }

    /// A queue read on `owner` (tests; real queues take the creating thread's worker).
    #[cfg(test)]
    pub fn owned_by(capacity: usize, owner: Arc<Worker>) -> Arc<Self> {
        let mut queue = Self::new(capacity);
        if let Some(q) = Arc::get_mut(&mut queue) {
            q.owner = Some(owner);
        }
        queue
    }

    /// The worker whose task reads this queue, if any.
    pub fn owner(&self) -> Option<&Arc<Worker>> {
        self.owner.as_ref()
    }

    /// Closes the queue as a slow consumer (see `State::overflow`), then, with the lock
    /// released, wakes everyone waiting on it.
    fn overflowed(&self, mut state: parking_lot::MutexGuard<'_, State>) -> PushError {
        let reader = state.overflow();
        drop(state);
        self.room.notify_waiters();
        if let Some(w) = reader {
            w.wake();
        }
        PushError::Overflowed
    }

    /// Appends several items under one lock without waiting, and hands back the reader's waker
    /// (if it was waiting and got items) for the caller to wake after its own locks are
    /// released. A queue that overflows is closed as a slow consumer, as with [`Queue::push`].
    pub fn push_batch(&self, items: impl Iterator<Item = Item>) -> Result<Pushed, PushError> {
        let mut state = self.state.lock();
        if state.closed.is_some() {
            return Err(PushError::Closed);
        }
        let before = state.items.len();
        for item in items {
            if !state.put(item, self.capacity) {
                return Err(self.overflowed(state));
            }
        }
        let mut pushed = Pushed::default();
        if state.items.len() > before {
            pushed.waker = state.reader.take();
        }
        Ok(pushed)
    }

    /// Appends without waiting; a full queue is closed as a slow consumer.
    pub fn push(&self, item: Item) -> Result<(), PushError> {
        let mut state = self.state.lock();
        if state.closed.is_some() {
            return Err(PushError::Closed);
        }
        if !state.put(item, self.capacity) {
            return Err(self.overflowed(state));
        }
        let reader = state.reader.take();
        drop(state);
        if let Some(w) = reader {
            w.wake();
        }
        Ok(())
    }

    /// Appends, waiting for room; only for the connection's own resume task.
    pub async fn push_wait(&self, item: Item) -> Result<(), PushError> {
        let mut item = Some(item);
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state.lock();
                if state.closed.is_some() {
                    return Err(PushError::Closed);
                }
                if state.items.len() < self.capacity {
                    if let Some(item) = item.take() {
                        state.put(item, self.capacity);
                    }
                    let reader = state.reader.take();
                    drop(state);
                    if let Some(w) = reader {
                        w.wake();
                    }
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    /// Free slots right now.
    pub fn room(&self) -> usize {
        let state = self.state.lock();
        if state.closed.is_some() {
            0
        } else {
            self.capacity - state.items.len()
        }
    }

    /// Whether the connection is over.
    pub fn is_closed(&self) -> bool {
        self.state.lock().closed.is_some()
    }

    /// The reason the queue was closed, if it was.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.state.lock().closed
    }

    /// Closes the queue; the first reason wins. Queued items stay readable unless the queue
    /// overflowed.
    pub fn close(&self, reason: CloseReason) {
        let mut state = self.state.lock();
        if state.closed.is_none() {
            state.closed = Some(reason);
        }
        state.disconnect_socket();
        let reader = state.reader.take();
        drop(state);
        self.room.notify_waiters();
        if let Some(w) = reader {
            w.wake();
        }
    }

    /// Waits for items (moved into `out`) or the close.
    pub async fn drain(&self, out: &mut Vec<Item>) -> Drained {
        std::future::poll_fn(|cx| self.poll_drain(cx, out)).await
    }

    /// Moves everything queued into `out` (one lock for a whole batch, so the writer can
    /// coalesce it into one write), or reports the close, or registers the waker.
    pub fn poll_drain(&self, cx: &mut Context<'_>, out: &mut Vec<Item>) -> Poll<Drained> {
        let mut state = self.state.lock();
        if !state.items.is_empty() {
            out.extend(state.items.drain(..));
            drop(state);
            self.room.notify_waiters();
            return Poll::Ready(Drained::Items);
        }
        if let Some(reason) = state.closed {
            return Poll::Ready(Drained::Closed(reason));
        }
        match &state.reader {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.reader = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

mod armed;
#[cfg(test)]
mod tests;
