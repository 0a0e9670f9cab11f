//! One watched channel's state on this instance, and every rule that decides what its
//! subscribers receive. Pure and synchronous: callers hold the shard lock and do I/O elsewhere.
//!
//! Invariants (each guarded by a test below or in `tests/`):
//! - `last` is the position of the newest event handed to the subscribers (through their
//!   delivery groups, see `group`); subscribers receive the channel's events in offset order,
//!   each once, and a jump is announced with a gap first.
//! - Live messages are hints, history is truth: in `Live` a message is fanned out only if it is
//!   exactly `last + 1`; anything else (a jump, a new epoch) switches to `Syncing`, and the sync
//!   task re-reads history from `last`.
//! - While not `Live`, live messages wait in `pending` (bounded) with an arrival number, so after
//!   a history read the channel can tell which of them the read already covered.
//! - `ring` holds the newest events, contiguous and ending at `last`, so a resume that is only a
//!   little behind is served from memory under the lock, atomically with joining live delivery.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use shared::{Continuity, Position};
use tokio::sync::watch;

use super::group::{Followups, Group, Pending};
use super::history::Page;
use super::message::Message;
use super::queue::{CloseReason, Queue};
use crate::metrics::Metrics;

/// Identifies one connection's subscription to one channel.
pub type SubId = u64;

/// A connection subscribed to this channel.
pub struct Sub {
    /// The connection's queue.
    pub queue: Arc<Queue>,
    /// The channel's slot within the connection.
    pub slot: u32,
    /// Events at or below this offset were already delivered (a client that resumed ahead of
    /// this instance); reset when the epoch changes.
    pub skip_until: u64,
}

/// Where the channel is in its life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Subscribing in the engine and reading the head; `last` is unknown.
    Starting,
    /// In sync: live messages are fanned out directly.
    Live,
    /// Re-reading history to catch up; live messages are held in `pending`.
    Syncing,
}

/// Work produced under the lock, carried out after it is released (deliveries scheduled on
/// workers, readers woken).
#[derive(Default, Debug)]
pub struct Effects {
    /// Scheduled deliveries and wake-ups; run when the effects are dropped.
    pub followups: Followups,
}

/// The state of one channel.
pub struct ChannelState {
    /// Distinguishes this incarnation from a later one with the same name.
    pub generation: u64,
    /// Connections attached (subscribed or still resuming); the state is dropped at zero.
    pub refs: usize,
    /// Connections receiving live fan-out, grouped by the worker that owns them.
    groups: Vec<Arc<Group>>,
    /// Newest event handed to the subscribers.
    pub last: Option<Position>,
    /// Life-cycle phase.
    pub phase: Phase,
    /// Becomes `true` once `last` is known; joiners wait on it.
    pub ready: watch::Sender<bool>,
    ring: VecDeque<Arc<Message>>,
    ring_capacity: usize,
    /// The event at `last`, while anyone holds it (see `Message::follow`).
    previous: Weak<Message>,
    pending: VecDeque<(u64, Arc<Message>)>,
    pending_capacity: usize,
    arrivals: u64,
    poked_at: u64,
    metrics: Metrics,
}

impl ChannelState {
    /// A channel that is starting up.
    pub fn new(
        generation: u64,
        ring_capacity: usize,
        pending_capacity: usize,
        metrics: Metrics,
    ) -> Self {
        Self {
            generation,
            refs: 0,
            groups: Vec::new(),
            last: None,
            phase: Phase::Starting,
            ready: watch::channel(false).0,
            ring: VecDeque::new(),
            ring_capacity,
            previous: Weak::new(),
            pending: VecDeque::new(),
            pending_capacity: pending_capacity.max(1),
            arrivals: 0,
            poked_at: 0,
            metrics,
        }
    }

    /// Adds a subscriber to live delivery: its worker's group first delivers what is pending,
    /// so the new subscriber receives exactly the events after `last`.
    pub fn add_sub(&mut self, id: SubId, sub: Sub, fx: &mut Effects) {
        let owner = sub.queue.owner().cloned();
        let group = match self.groups.iter().find(|g| g.is_for(owner.as_ref())) {
            Some(g) => g.clone(),
            None => {
                let g = Group::new(owner, self.metrics.clone());
                self.groups.push(g.clone());
                g
            }
        };
        group.add(id, sub, &mut fx.followups.wakers);
        self.metrics.subscriptions.inc();
    }

    /// Removes a subscriber; `true` if it was receiving live delivery.
    pub fn remove_sub(&mut self, id: SubId) -> bool {
        let Some(index) = self.groups.iter().position(|g| g.remove(id)) else {
            return false;
        };
        if self.groups[index].is_empty() {
            self.groups.swap_remove(index);
        }
        self.metrics.subscriptions.dec();
        true
    }

    /// Closes every subscriber's queue (shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        for g in &self.groups {
            g.close_all(reason);
        }
    }

    /// The arrival counter; a history read records it when it starts.
    pub fn arrivals(&self) -> u64 {
        self.arrivals
    }

    /// Handles a live message; returns `true` when a sync task must be started.
    pub fn on_live(&mut self, msg: Arc<Message>, fx: &mut Effects) -> bool {
        if self.phase == Phase::Live {
            if let Some(last) = self.last {
                let p = msg.position();
                if p.epoch == last.epoch && p.offset == last.offset + 1 {
                    self.fan_out(msg, fx);
                    return false;
                }
                if p.epoch == last.epoch && p.offset <= last.offset {
                    return false;
                }
            }
            self.phase = Phase::Syncing;
            self.hold(msg);
            return true;
        }
        self.hold(msg);
        false
    }

    /// Requests a history re-read (reconnect, undecodable message, stale head); returns `true`
    /// when a sync task must be started.
    pub fn poke(&mut self) -> bool {
        self.arrivals += 1;
        self.poked_at = self.arrivals;
        if self.phase == Phase::Live {
            self.phase = Phase::Syncing;
            return true;
        }
        false
    }

    fn hold(&mut self, msg: Arc<Message>) {
        self.arrivals += 1;
        if self.pending.len() >= self.pending_capacity {
            // Forget the backlog; history has all of it and the poke forces another read.
            self.pending.clear();
            self.poked_at = self.arrivals;
        } else {
            self.pending.push_back((self.arrivals, msg));
        }
    }

    /// Applies a history page that was read when the arrival counter was `read_arrivals`, and
    /// (when `last` was known) after the offset its continuity asks for (see the sync task).
    /// Returns `true` when the channel is in sync again.
    pub fn apply_page(&mut self, page: &Page, read_arrivals: u64, fx: &mut Effects) -> bool {
        match self.last {
            None => self.last = Some(page.head()),
            Some(last) => {
                let (from, lost) = match page.continuity(last) {
                    Continuity::Continuous(at) => (at, false),
                    Continuity::Lost { resume_after, .. } => {
                        (Position::new(page.epoch, resume_after), true)
                    }
                };
                if lost || page.first_available() > from.offset + 1 {
                    self.gap_all(Position::new(page.epoch, page.first_available()), fx);
                }
                for msg in &page.messages {
                    self.accept(msg.clone(), fx);
                }
            }
        }
        self.drain_pending(fx);
        // Messages that arrived before the read started are reflected in it.
        self.pending.retain(|(n, _)| *n > read_arrivals);
        let caught_up = self
            .last
            .is_some_and(|l| l.epoch == page.epoch && l.offset >= page.top);
        let in_sync = caught_up && self.pending.is_empty() && self.poked_at <= read_arrivals;
        if in_sync {
            self.phase = Phase::Live;
        } else if self.phase == Phase::Starting {
            self.phase = Phase::Syncing;
        }
        self.ready
            .send_if_modified(|ready| !std::mem::replace(ready, true));
        in_sync
    }

    /// Fans out `msg` if it is newer than `last`; a hole before it is announced as a gap.
    fn accept(&mut self, msg: Arc<Message>, fx: &mut Effects) {
        let Some(last) = self.last else { return };
        let p = msg.position();
        if p.epoch != last.epoch || p.offset <= last.offset {
            return;
        }
        if p.offset > last.offset + 1 {
            self.gap_all(p, fx);
        }
        self.fan_out(msg, fx);
    }

    fn drain_pending(&mut self, fx: &mut Effects) {
        while let (Some(last), Some((_, msg))) = (self.last, self.pending.front()) {
            let p = msg.position();
            if p.epoch != last.epoch || p.offset > last.offset + 1 {
                break;
            }
            if let Some((_, msg)) = self.pending.pop_front()
                && p.offset == last.offset + 1
            {
                self.fan_out(msg, fx);
            }
        }
    }

    /// Hands `msg` to every subscriber without waiting and makes it the new `last`.
    pub fn fan_out(&mut self, msg: Arc<Message>, fx: &mut Effects) {
        // Linked only where `previous` is the event at `last` (its position is rechecked when
        // the link is used).
        if let Some(last) = self.last {
            msg.follow(last, std::mem::take(&mut self.previous));
        }
        self.previous = Arc::downgrade(&msg);
        for g in &self.groups {
            g.enqueue(Pending::Event(msg.clone()), &mut fx.followups);
        }
        self.last = Some(msg.position());
        if self.ring_capacity > 0 {
            if self.ring.len() >= self.ring_capacity {
                self.ring.pop_front();
            }
            self.ring.push_back(msg);
        }
    }

    /// Tells every subscriber that events before `first_available` are gone.
    fn gap_all(&mut self, first_available: Position, fx: &mut Effects) {
        for g in &self.groups {
            g.enqueue(Pending::Gap(first_available), &mut fx.followups);
        }
        self.ring.clear();
        self.previous = Weak::new();
        self.last = Some(Position::new(
            first_available.epoch,
            first_available.offset.saturating_sub(1),
        ));
    }

    /// Extends the ring backwards with history a resume just read, so the next resumes from
    /// about the same position are served from memory instead of Redis (a reconnect storm then
    /// costs one read, not one per client). Only events that keep the ring contiguous and ending
    /// at `last` are taken, and never more than its capacity.
    pub fn seed_ring(&mut self, history: &[Arc<Message>]) {
        let Some(last) = self.last else { return };
        // The oldest offset the ring holds (or would hold next): history must reach up to it.
        let next_older = self
            .ring
            .front()
            .map_or(last.offset, |m| m.position().offset - 1);
        let usable = history
            .iter()
            .rev()
            .skip_while(|m| m.position().offset > next_older)
            .take(self.ring_capacity.saturating_sub(self.ring.len()));
        let mut expected = next_older;
        for m in usable {
            let p = m.position();
            if p.epoch != last.epoch || p.offset != expected || expected == 0 {
                break;
            }
            self.ring.push_front(m.clone());
            expected -= 1;
        }
    }

    /// The ring's events after `from` up to `last`, or `None` if the ring does not reach back
    /// to `from` (then history must be read).
    pub fn ring_after(&self, from: Position) -> Option<Vec<Arc<Message>>> {
        let last = self.last?;
        if from.epoch != last.epoch {
            return None;
        }
        if from.offset >= last.offset {
            return Some(Vec::new());
        }
        let first = self.ring.front()?.position().offset;
        if first > from.offset + 1 {
            return None;
        }
        let skip = usize::try_from(from.offset + 1 - first).ok()?;
        Some(self.ring.iter().skip(skip).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::queue::{Drained, Item};
    use bytes::Bytes;
    use shared::{Ancestor, ChannelName, Epoch, Event, Lineage, PayloadKind};
    use std::task::{Context, Poll};

    const E: Epoch = Epoch(7);

    fn msg(epoch: Epoch, offset: u64) -> Arc<Message> {
        Arc::new(Message::new(Event {
            channel: ChannelName::new("c").unwrap(),
            position: Position::new(epoch, offset),
            name: None,
            kind: PayloadKind::Text,
            data: Bytes::from(offset.to_string()),
            published_ms: 0,
        }))
    }

    fn page(epoch: Epoch, top: u64, offsets: std::ops::RangeInclusive<u64>) -> Page {
        Page {
            epoch,
            top,
            messages: offsets.map(|o| msg(epoch, o)).collect(),
            lineage: Lineage::default(),
        }
    }

    /// A page of a new epoch that inherited `parent` up to `cap`.
    fn inherited(
        epoch: Epoch,
        top: u64,
        offsets: std::ops::RangeInclusive<u64>,
        parent: Epoch,
        cap: u64,
    ) -> Page {
        Page {
            lineage: Lineage::new(vec![Ancestor { epoch: parent, cap }]),
            ..page(epoch, top, offsets)
        }
    }

    /// A page with the head only, as the start task reads it.
    fn head(epoch: Epoch, top: u64) -> Page {
        Page {
            epoch,
            top,
            messages: Vec::new(),
            lineage: Lineage::default(),
        }
    }

    /// What a subscriber saw: offsets of events, and `-first_available` for gaps.
    fn seen(q: &Queue) -> Vec<i64> {
        let mut out = Vec::new();
        let waker = futures_util::task::noop_waker();
        if let Poll::Ready(Drained::Items) =
            q.poll_drain(&mut Context::from_waker(&waker), &mut out)
        {}
        out.into_iter()
            .map(|i| match i {
                Item::Event { message, .. } => message.position().offset as i64,
                Item::Gap {
                    first_available, ..
                } => -(first_available.offset as i64),
                Item::Subscribed { .. } | Item::Tail(_) => 0,
            })
            .collect()
    }

    fn live_channel(last: u64) -> (ChannelState, Arc<Queue>) {
        live_channel_skipping(last, 0)
    }

    fn live_channel_skipping(last: u64, skip_until: u64) -> (ChannelState, Arc<Queue>) {
        let mut ch = ChannelState::new(1, 4, 16, Metrics::new());
        let mut fx = Effects::default();
        assert!(ch.apply_page(&head(E, last), 0, &mut fx));
        let q = Queue::new(64);
        ch.add_sub(
            1,
            Sub {
                queue: q.clone(),
                slot: 0,
                skip_until,
            },
            &mut fx,
        );
        (ch, q)
    }

    #[test]
    fn in_order_live_messages_fan_out_and_duplicates_are_dropped() {
        let (mut ch, q) = live_channel(10);
        let mut fx = Effects::default();
        assert!(!ch.on_live(msg(E, 11), &mut fx));
        assert!(!ch.on_live(msg(E, 11), &mut fx));
        assert!(!ch.on_live(msg(E, 9), &mut fx));
        assert!(!ch.on_live(msg(E, 12), &mut fx));
        assert_eq!(seen(&q), [11, 12]);
        assert_eq!(ch.last, Some(Position::new(E, 12)));
    }

    #[test]
    fn a_jump_triggers_a_sync_that_fills_the_hole_from_history() {
        let (mut ch, q) = live_channel(10);
        let mut fx = Effects::default();
        assert!(ch.on_live(msg(E, 13), &mut fx), "jump must start a sync");
        assert_eq!(ch.phase, Phase::Syncing);
        let read_at = ch.arrivals();
        // 14 arrives while the read is in flight; the read (taken earlier) reaches 13.
        assert!(!ch.on_live(msg(E, 14), &mut fx));
        assert!(ch.apply_page(&page(E, 13, 11..=13), read_at, &mut fx));
        assert_eq!(seen(&q), [11, 12, 13, 14]);
        assert_eq!(ch.phase, Phase::Live);
    }

    #[test]
    fn a_message_beyond_the_read_forces_another_read() {
        let (mut ch, q) = live_channel(10);
        let mut fx = Effects::default();
        ch.on_live(msg(E, 12), &mut fx);
        let read_at = ch.arrivals();
        ch.on_live(msg(E, 16), &mut fx); // arrived after the read started, not contiguous
        assert!(!ch.apply_page(&page(E, 12, 11..=12), read_at, &mut fx));
        let read_at = ch.arrivals();
        assert!(ch.apply_page(&page(E, 16, 13..=16), read_at, &mut fx));
        assert_eq!(seen(&q), [11, 12, 13, 14, 15, 16]);
    }

    #[test]
    fn trimmed_history_is_announced_as_a_gap_before_the_rest() {
        let (mut ch, q) = live_channel(10);
        let mut fx = Effects::default();
        ch.poke();
        assert!(ch.apply_page(&page(E, 30, 25..=30), ch.arrivals(), &mut fx));
        assert_eq!(seen(&q), [-25, 25, 26, 27, 28, 29, 30]);
        assert_eq!(ch.metrics.gaps.get(), 1);
    }

    #[test]
    fn a_new_epoch_is_announced_as_a_gap() {
        let (mut ch, q) = live_channel(10);
        let mut fx = Effects::default();
        let other = Epoch(8);
        assert!(ch.on_live(msg(other, 1), &mut fx));
        assert!(ch.apply_page(&page(other, 2, 1..=2), ch.arrivals(), &mut fx));
        assert_eq!(seen(&q), [-1, 1, 2]);
        assert_eq!(ch.last, Some(Position::new(other, 2)));
    }

    #[test]
    fn a_poke_during_a_read_forces_another_read() {
        let (mut ch, _q) = live_channel(10);
        let mut fx = Effects::default();
        assert!(ch.poke());
        let read_at = ch.arrivals();
        assert!(!ch.poke(), "already syncing");
        assert!(!ch.apply_page(&head(E, 10), read_at, &mut fx));
        assert!(ch.apply_page(&head(E, 10), ch.arrivals(), &mut fx));
    }

    #[test]
    fn overflowing_subscribers_are_removed_and_counted() {
        let (mut ch, q) = live_channel(0);
        let tiny = Queue::new(1);
        let mut fx = Effects::default();
        ch.add_sub(
            2,
            Sub {
                queue: tiny.clone(),
                slot: 0,
                skip_until: 0,
            },
            &mut fx,
        );
        ch.on_live(msg(E, 1), &mut fx);
        ch.on_live(msg(E, 2), &mut fx);
        assert_eq!(tiny.close_reason(), Some(CloseReason::SlowConsumer));
        assert_eq!(ch.metrics.slow_consumers.get(), 1);
        assert_eq!(
            ch.metrics.subscriptions.get(),
            1,
            "the slow one was removed"
        );
        assert_eq!(seen(&q), [1, 2], "the healthy one got everything");
    }

    #[test]
    fn ring_serves_recent_resumes_only() {
        let (mut ch, _q) = live_channel(0);
        let mut fx = Effects::default();
        for o in 1..=6 {
            ch.on_live(msg(E, o), &mut fx);
        }
        let offsets = |v: Option<Vec<Arc<Message>>>| {
            v.map(|v| v.iter().map(|m| m.position().offset).collect::<Vec<_>>())
        };
        assert_eq!(offsets(ch.ring_after(Position::new(E, 6))), Some(vec![]));
        assert_eq!(
            offsets(ch.ring_after(Position::new(E, 4))),
            Some(vec![5, 6])
        );
        assert_eq!(
            offsets(ch.ring_after(Position::new(E, 2))),
            Some(vec![3, 4, 5, 6])
        );
        assert_eq!(
            offsets(ch.ring_after(Position::new(E, 1))),
            None,
            "ring holds 4"
        );
        assert_eq!(offsets(ch.ring_after(Position::new(Epoch(1), 5))), None);
    }

    #[test]
    fn history_read_by_a_resume_seeds_the_ring_only_when_contiguous_with_the_head() {
        let offsets = |ch: &ChannelState, from: u64| {
            ch.ring_after(Position::new(E, from))
                .map(|v| v.iter().map(|m| m.position().offset).collect::<Vec<_>>())
        };
        // Cold channel at head 20: nothing in the ring yet.
        let (mut ch, _q) = live_channel(20);
        assert_eq!(offsets(&ch, 15), None);
        // A page that does not reach the head is useless to later resumes.
        ch.seed_ring(&page(E, 20, 10..=18).messages);
        assert_eq!(offsets(&ch, 15), None);
        // One that does is kept, newest first, up to the ring's capacity (4).
        ch.seed_ring(&page(E, 20, 10..=20).messages);
        assert_eq!(offsets(&ch, 16), Some(vec![17, 18, 19, 20]));
        assert_eq!(offsets(&ch, 15), None, "capacity 4");
        // Later live events keep the ring contiguous.
        let mut fx = Effects::default();
        ch.on_live(msg(E, 21), &mut fx);
        assert_eq!(offsets(&ch, 17), Some(vec![18, 19, 20, 21]));
        // Another epoch's history is never mixed in.
        let (mut ch, _q) = live_channel(5);
        ch.seed_ring(&page(Epoch(9), 5, 1..=5).messages);
        assert_eq!(offsets(&ch, 3), None);
    }

    #[test]
    fn a_subscriber_joining_while_its_worker_has_undelivered_events_gets_each_once() {
        use crate::hub::message::Delivery;
        use crate::hub::worker::Worker;
        // The worker's delivery loop is not running: what fan-out enqueues stays pending.
        let worker = Worker::detached();
        let mut ch = ChannelState::new(1, 8, 16, Metrics::new());
        let mut fx = Effects::default();
        assert!(ch.apply_page(&head(E, 10), 0, &mut fx));
        let early = Queue::owned_by(64, worker.clone());
        ch.add_sub(
            1,
            Sub {
                queue: early.clone(),
                slot: 0,
                skip_until: 10,
            },
            &mut fx,
        );
        // History was recreated: a gap and the new epoch's first events are pending.
        let other = Epoch(9);
        assert!(ch.poke());
        assert!(ch.apply_page(&page(other, 2, 1..=2), ch.arrivals(), &mut fx));
        drop(fx);
        assert_eq!(seen(&early), Vec::<i64>::new(), "not delivered yet");

        // A client that already follows the new epoch resumes now, as `Hub::join` does under
        // the lock: the ring first, then live delivery.
        let from = Position::new(other, 0);
        let late = Queue::owned_by(64, worker.clone());
        let mut fx = Effects::default();
        for m in ch.ring_after(from).unwrap() {
            let item = Item::Event {
                slot: 0,
                message: Arc::new(Delivery(m)),
                live: false,
            };
            late.push(item).unwrap();
        }
        ch.add_sub(
            2,
            Sub {
                queue: late.clone(),
                slot: 0,
                skip_until: 2,
            },
            &mut fx,
        );
        ch.on_live(msg(other, 3), &mut fx);
        drop(fx);
        worker.deliver_now();
        assert_eq!(seen(&early), [-1, 1, 2, 3]);
        assert_eq!(seen(&late), [1, 2, 3], "no stale gap, nothing twice");
    }

    #[test]
    fn a_new_epoch_that_may_have_lost_events_after_last_is_a_gap_first() {
        // Redis restarted without a durability promise: nothing this instance delivered is
        // gone, but events after it may be, so subscribers are told before they go on.
        let (mut ch, q) = live_channel(10);
        let mut fx = Effects::default();
        let next = Epoch(8);
        assert!(ch.on_live(msg(next, 11), &mut fx));
        let page = inherited(next, 11, 11..=11, E, 10);
        assert!(ch.apply_page(&page, ch.arrivals(), &mut fx));
        assert_eq!(seen(&q), [-11, 11]);
        assert_eq!(ch.last, Some(Position::new(next, 11)));
    }

    #[test]
    fn events_lost_by_the_store_are_a_gap_and_every_new_event_follows() {
        // This instance delivered up to 10; the store came back at 7 and moved to a new epoch
        // inheriting 7; 8 and 9 of the new epoch are new events. The sync task reads after 7.
        let (mut ch, q) = live_channel(10);
        let mut fx = Effects::default();
        let next = Epoch(8);
        assert!(ch.poke());
        let page = inherited(next, 9, 8..=9, E, 7);
        assert!(ch.apply_page(&page, ch.arrivals(), &mut fx));
        assert_eq!(seen(&q), [-8, 8, 9]);
        assert_eq!(ch.last, Some(Position::new(next, 9)));
    }

    #[test]
    fn skip_until_protects_clients_that_resumed_ahead() {
        let (mut ch, q) = live_channel_skipping(10, 12);
        let mut fx = Effects::default();
        for o in 11..=13 {
            ch.on_live(msg(E, o), &mut fx);
        }
        assert_eq!(seen(&q), [13]);
    }
}
