//! How a page of history read after some offset continues a reader's position: the one gap
//! rule, shared by resume (`join`) and history reads (`range`), so both tell the same story.
//!
//! A page whose history does not continue the position (see `shared::lineage`) means the
//! reader saw events that are gone: it is told with a gap and continues where the store can
//! vouch for. A page that starts after the next wanted offset means events were trimmed or
//! expired: a gap names the first one really available. Pure: the caller does the reading,
//! fencing and delivering.

use shared::{Continuity, Epoch, Position};

/// What the caller knows about the page it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    /// The page's (the channel's current) epoch.
    pub epoch: Epoch,
    /// The offset the page was read after.
    pub read_after: u64,
    /// The page's first available offset (see `Page::first_available`).
    pub first_available: u64,
    /// How the reader's position relates to the page's history.
    pub continuity: Continuity,
}

/// What to do with the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// The page was read after the wrong offset: read again after `after` (a gap is owed).
    Reread {
        /// Where the reader continues, in the page's epoch.
        after: Position,
    },
    /// Deliver the page's events after `after`, preceded by a gap notice naming `gap`.
    Deliver {
        /// The first available position, when events before it are gone.
        gap: Option<Position>,
        /// Only events after this position are delivered.
        after: Position,
    },
}

/// The decision, and whether the store must be fenced at the reader's position first (it is
/// beyond the store's head in the current epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// What to do with the page.
    pub next: Next,
    /// Fence the store before going on.
    pub fence: bool,
}

/// Applies the gap rule to one page; `owe_gap` when an earlier page already found the loss.
pub fn resolve(reading: Reading, owe_gap: bool) -> Resolved {
    let epoch = reading.epoch;
    let (from, owe_gap, fence) = match reading.continuity {
        Continuity::Continuous(at) => (at, owe_gap, false),
        Continuity::Lost {
            resume_after,
            fence,
        } => {
            let after = Position::new(epoch, resume_after);
            if reading.read_after != resume_after {
                return Resolved {
                    next: Next::Reread { after },
                    fence,
                };
            }
            (after, true, fence)
        }
    };
    let next = if owe_gap || reading.first_available > from.offset.saturating_add(1) {
        Next::Deliver {
            gap: Some(Position::new(epoch, reading.first_available)),
            after: Position::new(epoch, reading.first_available.saturating_sub(1)),
        }
    } else {
        Next::Deliver {
            gap: None,
            after: from,
        }
    };
    Resolved { next, fence }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: Epoch = Epoch(7);

    fn reading(read_after: u64, first_available: u64, continuity: Continuity) -> Reading {
        Reading {
            epoch: E,
            read_after,
            first_available,
            continuity,
        }
    }

    fn at(offset: u64) -> Position {
        Position::new(E, offset)
    }

    fn deliver(gap: Option<u64>, after: u64) -> Next {
        Next::Deliver {
            gap: gap.map(at),
            after: at(after),
        }
    }

    #[test]
    fn contiguous_history_has_no_gap() {
        let r = resolve(reading(4, 5, Continuity::Continuous(at(4))), false);
        assert_eq!(r.next, deliver(None, 4));
        assert!(!r.fence);
        // Nothing after the position yet: first available is the head + 1.
        let r = resolve(reading(9, 10, Continuity::Continuous(at(9))), false);
        assert_eq!(r.next, deliver(None, 9));
    }

    #[test]
    fn trimmed_history_is_a_gap_naming_the_first_kept_event() {
        let r = resolve(reading(4, 20, Continuity::Continuous(at(4))), false);
        assert_eq!(r.next, deliver(Some(20), 19));
    }

    #[test]
    fn an_owed_gap_is_told_even_when_history_is_contiguous() {
        let r = resolve(reading(4, 5, Continuity::Continuous(at(4))), true);
        assert_eq!(r.next, deliver(Some(5), 4));
    }

    #[test]
    fn a_position_beyond_the_head_is_reread_at_the_head_and_fenced() {
        let lost = Continuity::Lost {
            resume_after: 9,
            fence: true,
        };
        let r = resolve(reading(12, 13, lost), false);
        assert_eq!(r.next, Next::Reread { after: at(9) });
        assert!(r.fence);
        // Read at the right offset: a gap at the next event.
        let r = resolve(reading(9, 10, lost), true);
        assert_eq!(r.next, deliver(Some(10), 9));
    }

    #[test]
    fn a_foreign_epoch_starts_over_with_a_gap() {
        let lost = Continuity::Lost {
            resume_after: 0,
            fence: false,
        };
        let r = resolve(reading(0, 3, lost), false);
        assert_eq!(r.next, deliver(Some(3), 2));
        assert!(!r.fence);
    }
}
