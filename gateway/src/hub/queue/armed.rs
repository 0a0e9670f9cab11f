//! Arming, and fan-out's own writes to an armed queue's socket (see `hub::direct`).

use super::{Arm, Item, PushError, Pushed, Queue, Wrote};
use crate::hub::direct::{Direct, Link, MAX_FRAMES, Round};

impl Queue {
    /// Lets fan-out write to `direct` while the reader is parked (see `hub::direct`); called
    /// once, before the reader first arms the queue.
    pub fn set_direct(&self, direct: Direct) {
        let mut state = self.state.lock();
        if state.closed.is_none() {
            state.direct = Some(direct);
        }
    }

    /// Whether fan-out may write to this queue's socket (see [`Queue::set_direct`]).
    pub fn has_direct(&self) -> bool {
        self.state.lock().direct.is_some()
    }

    /// The reader has written everything and is about to park: from now on fan-out writes
    /// events to the socket itself — unless items arrived since the reader last drained.
    /// `after`: the event the connection's decompressor saw last (an SSE stream: whose frame
    /// its output ends with), if any.
    pub fn arm(&self, after: Option<Link>) -> Arm {
        let mut state = self.state.lock();
        if state.direct.is_none() || state.closed.is_some() {
            Arm::Off
        } else if !state.items.is_empty() {
            Arm::Busy
        } else {
            state.armed = true;
            state.after = after;
            Arm::Armed
        }
    }

    /// The reader is about to write something itself: fan-out queues again. Returns what
    /// fan-out wrote to the socket since the previous disarm, if anything.
    pub fn disarm(&self) -> Option<Wrote> {
        let mut state = self.state.lock();
        state.armed = false;
        let at = state.wrote_at.take()?;
        Some(Wrote {
            at,
            last: state.after,
        })
    }

    /// While the queue is armed (see `hub::direct`), writes a delivery round's events for
    /// channel `slot` to the socket in one write, and queues what the socket did not
    /// take: the rest of a frame first, then the events after it. `None` when not armed: the
    /// caller queues the events.
    pub fn write_round(
        &self,
        round: &mut Round<'_>,
        slot: u32,
    ) -> Option<Result<Pushed, PushError>> {
        let mut state = self.state.lock();
        if !state.armed || state.closed.is_some() || !state.items.is_empty() {
            return None;
        }
        let direct = state.direct.as_ref()?;
        let form = direct.form();
        let events = round.events();
        let sent = events.len().min(MAX_FRAMES);
        let at = round.at();
        let (joined, seen) = round.joined(form, Link::on(state.after, slot));
        let took = direct.write(joined);
        let mut pushed = Pushed {
            ws: form.is_ws(),
            ..Pushed::default()
        };
        let mut queue_from = 0;
        if took > 0 {
            state.wrote_at = Some(at);
            if let Some(position) = seen {
                state.after = Some(Link { slot, position });
            }
            pushed.written = sent as u32;
            queue_from = sent;
            if took < joined.len() {
                // The rest of the round's bytes, the rest of a frame first.
                state.armed = false;
                state.items.push_back(Item::Tail(joined.slice(took..)));
            }
        }
        for delivery in &events[queue_from..] {
            let item = Item::Event {
                slot,
                message: delivery.clone(),
                live: true,
            };
            if !state.put(item, self.capacity) {
                return Some(Err(self.overflowed(state)));
            }
        }
        if !state.items.is_empty() {
            pushed.waker = state.reader.take();
        }
        Some(Ok(pushed))
    }
}
