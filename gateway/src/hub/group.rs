//! Delivery groups: the subscribers of one channel whose connections live on one worker thread.
//!
//! Fan-out (under the channel's lock, on whichever thread received the event) only appends the
//! event to each group's `pending` list and schedules the group on its worker; the worker then
//! pushes it into its own connections' queues. Every queue is thus written by the core that reads
//! it, fan-out work is spread over all workers, and no cache line bounces between cores per
//! subscriber.
//!
//! Exactness: events enter `pending` in channel order, under the channel lock, and leave it in
//! that order. A resume, before adding its subscriber (under the channel lock too), delivers the
//! group's pending events to the existing subscribers, so at that instant every subscriber of
//! the group has everything up to the channel's `last`, exactly as if fan-out were synchronous;
//! the new subscriber then receives only what is enqueued afterwards.

use std::sync::Arc;
use std::task::Waker;

use indexmap::IndexMap;
use parking_lot::Mutex;
use shared::Position;

use super::channel::{Sub, SubId};
use super::direct::Round;
use super::message::{Delivery, Message};
use super::queue::{CloseReason, Item, PushError};
use super::worker::Worker;
use crate::metrics::Metrics;

/// Something on its way to a group's subscribers.
#[derive(Clone, Debug)]
pub enum Pending {
    /// An event.
    Event(Arc<Message>),
    /// Events before this position are gone.
    Gap(Position),
}

/// Work produced under the channel lock, carried out after it is released.
#[derive(Default)]
pub struct Followups {
    /// Groups to deliver on their workers.
    pub jobs: Vec<(Arc<Worker>, Arc<Group>)>,
    /// Readers to wake (deliveries made on this thread).
    pub wakers: Vec<Waker>,
}

impl std::fmt::Debug for Followups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Followups")
            .field("jobs", &self.jobs.len())
            .field("wakers", &self.wakers.len())
            .finish()
    }
}

impl Followups {
    /// Schedules the jobs and wakes the readers.
    pub fn run(&mut self) {
        for (worker, group) in self.jobs.drain(..) {
            worker.schedule(group);
        }
        for w in self.wakers.drain(..) {
            w.wake();
        }
    }
}

impl Drop for Followups {
    fn drop(&mut self) {
        // Never lose a delivery or a wake-up.
        self.run();
    }
}

/// The subscribers of one channel owned by one worker (or by none: tests, delivered inline).
///
/// Two locks: fan-out (under the channel lock) only ever takes `inbox`'s, for a moment, while
/// a delivery round holds `inner`'s for as long as it writes (it may write to sockets itself,
/// `hub::direct`), so publishing never waits for a round. Lock order: `inner`, then `inbox`.
pub struct Group {
    owner: Option<Arc<Worker>>,
    inner: Mutex<Inner>,
    inbox: Mutex<Inbox>,
    metrics: Metrics,
}

struct Inner {
    subs: IndexMap<SubId, Sub>,
}

/// What fan-out handed over and no round has taken yet.
struct Inbox {
    pending: Vec<Pending>,
    scheduled: bool,
}

impl Group {
    /// An empty group for connections owned by `owner`.
    pub fn new(owner: Option<Arc<Worker>>, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            owner,
            inner: Mutex::new(Inner {
                subs: IndexMap::new(),
            }),
            inbox: Mutex::new(Inbox {
                pending: Vec::new(),
                scheduled: false,
            }),
            metrics,
        })
    }

    /// Whether this group is for connections owned by `owner`.
    pub fn is_for(&self, owner: Option<&Arc<Worker>>) -> bool {
        match (&self.owner, owner) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }

    /// Queues `item` for every subscriber, in order; called under the channel lock. A group
    /// without a worker delivers at once.
    pub fn enqueue(self: &Arc<Self>, item: Pending, out: &mut Followups) {
        let mut inbox = self.inbox.lock();
        inbox.pending.push(item);
        match &self.owner {
            None => {
                drop(inbox);
                self.deliver(&mut out.wakers);
            }
            Some(worker) if !inbox.scheduled => {
                inbox.scheduled = true;
                out.jobs.push((worker.clone(), self.clone()));
            }
            Some(_) => {}
        }
    }

    /// Delivers everything pending; the worker's job.
    pub fn deliver(&self, wakers: &mut Vec<Waker>) {
        let mut inner = self.inner.lock();
        let pending = self.take_pending();
        inner.deliver(pending, &self.metrics, wakers);
    }

    /// Delivers what is pending, then adds a subscriber; called under the channel lock, so
    /// nothing new is pending meanwhile, and a round already under way finishes first (it
    /// holds `inner`): the existing subscribers have everything up to the channel's last event.
    pub fn add(&self, id: SubId, sub: Sub, wakers: &mut Vec<Waker>) {
        let mut inner = self.inner.lock();
        let pending = self.take_pending();
        inner.deliver(pending, &self.metrics, wakers);
        inner.subs.insert(id, sub);
    }

    fn take_pending(&self) -> Vec<Pending> {
        let mut inbox = self.inbox.lock();
        inbox.scheduled = false;
        std::mem::take(&mut inbox.pending)
    }

    /// Removes a subscriber; `true` if it was here.
    pub fn remove(&self, id: SubId) -> bool {
        self.inner.lock().subs.swap_remove(&id).is_some()
    }

    /// Whether no subscriber is left.
    pub fn is_empty(&self) -> bool {
        self.inner.lock().subs.is_empty()
    }

    /// Closes every subscriber's queue (shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        for sub in self.inner.lock().subs.values() {
            sub.queue.close(reason);
        }
    }
}

impl Inner {
    fn deliver(&mut self, pending: Vec<Pending>, metrics: &Metrics, wakers: &mut Vec<Waker>) {
        if pending.is_empty() {
            return;
        }
        // One handle per event for this group (see `Delivery`).
        let local: Vec<Local> = pending
            .into_iter()
            .map(|p| match p {
                Pending::Event(m) => Local::Event(m.position().offset, Arc::new(Delivery(m))),
                Pending::Gap(position) => Local::Gap(position),
            })
            .collect();
        let mut dead = Vec::new();
        let (mut slow, mut gaps) = (0u64, 0u64);
        // Events fan-out wrote to sockets itself (`hub::direct`), counted here, not by the
        // transports: (SSE, WebSocket).
        let (mut sse, mut ws) = (0u64, 0u64);
        // A round without gaps may be written straight to armed subscribers' sockets.
        let events: Vec<Arc<Delivery>> = local
            .iter()
            .map_while(|l| match l {
                Local::Event(_, delivery) => Some(delivery.clone()),
                Local::Gap(_) => None,
            })
            .collect();
        let direct = events.len() == local.len();
        let first_offset = events.first().map_or(0, |d| d.position().offset);
        let mut round = Round::new(&events);
        for (id, sub) in self.subs.iter_mut() {
            let slot = sub.slot;
            let written = (direct && sub.skip_until < first_offset)
                .then(|| sub.queue.write_round(&mut round, slot))
                .flatten();
            let pushed = written.unwrap_or_else(|| {
                let mut skip_until = sub.skip_until;
                let items = local.iter().filter_map(|l| match l {
                    Local::Event(offset, delivery) => (*offset > skip_until).then(|| Item::Event {
                        slot,
                        message: delivery.clone(),
                        live: true,
                    }),
                    Local::Gap(first_available) => {
                        // Offsets of a new history mean nothing next to the old ones.
                        skip_until = 0;
                        gaps += 1;
                        Some(Item::Gap {
                            slot,
                            first_available: *first_available,
                        })
                    }
                });
                let pushed = sub.queue.push_batch(items);
                sub.skip_until = skip_until;
                pushed
            });
            match pushed {
                Ok(pushed) => {
                    if let Some(waker) = pushed.waker {
                        wakers.push(waker);
                    }
                    if pushed.written > 0 {
                        *(if pushed.ws { &mut ws } else { &mut sse }) += u64::from(pushed.written);
                    }
                }
                Err(PushError::Overflowed) => {
                    slow += 1;
                    dead.push(*id);
                }
                Err(PushError::Closed) => dead.push(*id),
            }
        }
        for id in &dead {
            self.subs.swap_remove(id);
        }
        if !dead.is_empty() {
            metrics.subscriptions.sub(dead.len() as i64);
        }
        if slow > 0 {
            metrics.slow_consumers.inc_by(slow);
            metrics
                .disconnects
                .with_label_values(&[CloseReason::SlowConsumer.as_str()])
                .inc_by(slow);
        }
        if gaps > 0 {
            metrics.gaps.inc_by(gaps);
        }
        // Direct writes are whole rounds of live events: the round's first is the oldest.
        let oldest_ms = (sse + ws > 0)
            .then(|| events.first().map(|d| d.event.published_ms))
            .flatten();
        count_written(metrics, sse, ws, oldest_ms);
    }
}

/// Counts events fan-out wrote itself, as the transports count what they write: deliveries,
/// and one latency sample per batch (here: per group and delivery round).
fn count_written(metrics: &Metrics, sse: u64, ws: u64, oldest_ms: Option<u64>) {
    if sse > 0 {
        metrics.hot.delivered_sse.inc_by(sse);
    }
    if ws > 0 {
        metrics.hot.delivered_ws.inc_by(ws);
        metrics.hot.ws_frames_out.inc_by(ws);
    }
    if let Some(ms) = oldest_ms {
        metrics.observe_delivery(ms);
    }
}

enum Local {
    Event(u64, Arc<Delivery>),
    Gap(Position),
}
