//! Exact per-subscriber accounting: sequence numbers (loss, duplication, reordering) and the
//! gateway's `epoch:offset` ids (which must grow by exactly one per event).

use shared::Position;

/// Most skipped ranges remembered per subscriber (to tell a late arrival from a duplicate).
const MAX_MISSING_RANGES: usize = 256;

/// What one arriving sequence number meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqOutcome {
    /// The expected one.
    InOrder,
    /// Later than expected: this many before it were skipped (counted lost).
    Jump(u64),
    /// Seen before.
    Duplicate,
    /// A skipped one arriving late (counted reordered; it stays counted lost).
    Late,
}

/// Sequence accounting of one subscriber on one channel, whose publisher numbers events
/// 0, 1, 2, ... and never has two in flight.
#[derive(Clone, Debug, Default)]
pub struct SeqTracker {
    /// The next sequence number expected.
    pub expected: u64,
    /// Events that arrived in order (including the one ending a jump).
    pub in_order: u64,
    /// Events skipped by jumps.
    pub lost: u64,
    /// Events seen twice.
    pub duplicated: u64,
    /// Skipped events that arrived later.
    pub reordered: u64,
    /// Skipped ranges `[start, end)` not yet seen, oldest first.
    missing: Vec<(u64, u64)>,
    /// Whether old ranges were forgotten (late arrivals from them then count as duplicates).
    pub missing_overflow: bool,
}

impl SeqTracker {
    /// Accounts one arriving sequence number.
    pub fn on_seq(&mut self, seq: u64) -> SeqOutcome {
        if seq == self.expected {
            self.expected = self.expected.saturating_add(1);
            self.in_order += 1;
            return SeqOutcome::InOrder;
        }
        if seq > self.expected {
            let skipped = seq - self.expected;
            if self.missing.len() == MAX_MISSING_RANGES {
                self.missing.remove(0);
                self.missing_overflow = true;
            }
            self.missing.push((self.expected, seq));
            // Sums saturate: a broken server may send absurd sequence numbers.
            self.lost = self.lost.saturating_add(skipped);
            self.in_order += 1;
            self.expected = seq.saturating_add(1);
            return SeqOutcome::Jump(skipped);
        }
        match self
            .missing
            .iter()
            .position(|&(start, end)| start <= seq && seq < end)
        {
            Some(i) => {
                let (start, end) = self.missing[i];
                match (seq == start, seq.saturating_add(1) == end) {
                    (true, true) => {
                        self.missing.remove(i);
                    }
                    (true, false) => self.missing[i].0 = seq.saturating_add(1),
                    (false, true) => self.missing[i].1 = seq,
                    (false, false) => {
                        self.missing[i].1 = seq;
                        self.missing.insert(i + 1, (seq.saturating_add(1), end));
                    }
                }
                self.reordered += 1;
                SeqOutcome::Late
            }
            None => {
                self.duplicated += 1;
                SeqOutcome::Duplicate
            }
        }
    }

    /// Whether every one of `published` events has been seen (in order or late).
    pub fn complete(&self, published: u64) -> bool {
        self.expected >= published && self.missing.is_empty()
    }

    /// Events still not received at the end (late arrivals included, failed publishes
    /// excused); 0 means this subscriber has everything.
    pub fn unreceived(&self, published: u64, failed: &[u64]) -> u64 {
        let tail = published.saturating_sub(self.expected);
        let holes: u64 = self.missing.iter().map(|&(a, b)| b - a).sum();
        let excused = failed
            .iter()
            .filter(|&&s| {
                (s >= self.expected && s < published)
                    || self.missing.iter().any(|&(a, b)| a <= s && s < b)
            })
            .count() as u64;
        tail.saturating_add(holes).saturating_sub(excused)
    }

    /// Events never received, given how many the channel's publisher sent (`published`,
    /// counting failed attempts) and which of those attempts failed (`failed`, never stored,
    /// so no subscriber can have them and they are not counted as lost).
    pub fn final_lost(&self, published: u64, failed: &[u64]) -> u64 {
        let tail = published.saturating_sub(self.expected);
        let excused = failed
            .iter()
            .filter(|&&s| s >= self.expected || self.missing.iter().any(|&(a, b)| a <= s && s < b))
            .count() as u64;
        self.lost.saturating_add(tail).saturating_sub(excused)
    }
}

/// Checks that a channel's gateway ids advance by exactly one offset within one epoch.
#[derive(Clone, Debug, Default)]
pub struct IdTracker {
    prev: Option<Position>,
    /// Events whose id was not the previous one plus one (or did not parse).
    pub jumps: u64,
}

/// Parses an `epoch:offset` id.
pub fn parse_position(id: &[u8]) -> Option<Position> {
    std::str::from_utf8(id).ok()?.parse().ok()
}

impl IdTracker {
    /// A position handed out without an event (the SSE start frame, WS `subscribed`, a gap
    /// event's cursor): the next event must follow it.
    pub fn marker(&mut self, id: &[u8]) {
        self.prev = parse_position(id);
    }

    /// Sets the position directly.
    pub fn set(&mut self, pos: Option<Position>) {
        self.prev = pos;
    }

    /// An event's id.
    pub fn event(&mut self, id: &[u8]) {
        let pos = parse_position(id);
        match (self.prev, pos) {
            (Some(p), Some(q))
                if p.epoch == q.epoch && p.offset.checked_add(1) == Some(q.offset) => {}
            (None, Some(_)) => {}
            _ => self.jumps += 1,
        }
        self.prev = pos;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream() {
        let mut t = SeqTracker::default();
        for s in 0..10 {
            assert_eq!(t.on_seq(s), SeqOutcome::InOrder);
        }
        assert!(t.complete(10));
        assert_eq!(t.final_lost(10, &[]), 0);
        assert_eq!(t.final_lost(12, &[]), 2, "a short tail is lost");
    }

    #[test]
    fn jumps_duplicates_and_late_arrivals() {
        let mut t = SeqTracker::default();
        assert_eq!(t.on_seq(0), SeqOutcome::InOrder);
        assert_eq!(t.on_seq(4), SeqOutcome::Jump(3)); // 1, 2, 3 missing
        assert_eq!(t.on_seq(4), SeqOutcome::Duplicate);
        assert_eq!(t.on_seq(2), SeqOutcome::Late); // splits the range
        assert_eq!(t.on_seq(2), SeqOutcome::Duplicate);
        assert_eq!(t.on_seq(1), SeqOutcome::Late);
        assert_eq!(t.on_seq(0), SeqOutcome::Duplicate);
        assert!(!t.complete(5));
        assert_eq!(t.on_seq(3), SeqOutcome::Late);
        assert!(t.complete(5));
        assert_eq!((t.lost, t.reordered, t.duplicated), (3, 3, 3));
        // Late arrivals stay counted as lost: they were not there when due.
        assert_eq!(t.final_lost(5, &[]), 3);
        assert_eq!(t.unreceived(5, &[]), 0, "late, but all there");
        assert_eq!(t.unreceived(7, &[5]), 1);
    }

    #[test]
    fn failed_publishes_are_not_lost() {
        let mut t = SeqTracker::default();
        t.on_seq(0);
        t.on_seq(2); // 1 was never stored
        assert_eq!(t.final_lost(4, &[1, 3]), 0);
        assert_eq!(t.final_lost(4, &[3]), 1);
        // A "failed" publish that was stored after all and arrived is not excused twice.
        let mut u = SeqTracker::default();
        u.on_seq(0);
        u.on_seq(1);
        assert_eq!(u.final_lost(3, &[1]), 1);
    }

    #[test]
    fn missing_ranges_are_bounded() {
        let mut t = SeqTracker::default();
        for i in 0..(MAX_MISSING_RANGES as u64 + 10) {
            t.on_seq(i * 2 + 1);
        }
        assert!(t.missing_overflow);
        assert_eq!(t.on_seq(0), SeqOutcome::Duplicate, "forgotten range");
        assert_eq!(
            t.on_seq(2 * (MAX_MISSING_RANGES as u64 + 9)),
            SeqOutcome::Late
        );
    }

    #[test]
    fn absurd_numbers_saturate() {
        let mut t = SeqTracker::default();
        t.on_seq(u64::MAX - 1);
        t.on_seq(u64::MAX);
        assert_eq!(t.expected, u64::MAX);
        assert_eq!(t.final_lost(10, &[]), u64::MAX - 1);
        let mut ids = IdTracker::default();
        ids.marker(b"a:18446744073709551615");
        ids.event(b"a:0");
        assert_eq!(ids.jumps, 1);
    }

    #[test]
    fn ids_must_advance_by_one() {
        let mut ids = IdTracker::default();
        ids.marker(b"ab:0");
        ids.event(b"ab:1");
        ids.event(b"ab:2");
        assert_eq!(ids.jumps, 0);
        ids.event(b"ab:4");
        assert_eq!(ids.jumps, 1);
        ids.event(b"cd:5"); // epoch changed
        assert_eq!(ids.jumps, 2);
        ids.event(b"garbage");
        assert_eq!(ids.jumps, 3);
        ids.marker(b"cd:9"); // e.g. a gap's cursor
        ids.event(b"cd:10");
        assert_eq!(ids.jumps, 3);
    }
}
