//! Which earlier epochs a channel's current epoch continues, so that a move to a new epoch
//! delivers nothing twice and tells clients where continuity could not be proven.
//!
//! The store moves a channel to a new epoch whenever it cannot vouch that no offset of the old
//! one was handed out and then lost: when it was restored from a snapshot, promoted from a
//! replica, or when someone saw an offset beyond its head. The offsets up to the head it still
//! holds stay valid, so the new epoch *inherits* them: the lineage records "epoch E is valid up
//! to offset C" for the last few epochs, and offsets continue from the inherited head.
//!
//! Whether events after C existed and are gone is not known, so crossing a move fails closed:
//! a position at or below C keeps its place and gets a gap there (nothing it had is repeated);
//! a position beyond C saw events that are gone and continues after C with a gap.
//!
//! Text form (as the publish function stores it): `"<epoch-hex>:<cap> <epoch-hex>:<cap> ..."`,
//! newest first; each cap is already the smallest along the chain, so lookup is direct.

use std::fmt;
use std::str::FromStr;

use crate::position::{Epoch, Position, PositionError};

/// Most ancestors kept; an older epoch gets a gap (the safe answer).
pub const MAX_ANCESTORS: usize = 8;

/// One ancestor epoch and the highest of its offsets the current epoch holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ancestor {
    /// The earlier epoch.
    pub epoch: Epoch,
    /// Its offsets up to here are offsets of the current epoch too.
    pub cap: u64,
}

/// Ancestors of the current epoch, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lineage {
    ancestors: Vec<Ancestor>,
}

/// How a position relates to the channel's current history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Continuity {
    /// The position is in the current epoch, at or below its head: it continues from there.
    Continuous(Position),
    /// The holder saw events the store no longer has (or a foreign epoch): it gets a gap and
    /// continues after `resume_after` of the current epoch.
    Lost {
        /// The newest offset of the current epoch the holder may keep.
        resume_after: u64,
        /// The position is ahead of the store's head in the *current* epoch: the store must move
        /// to a new epoch before publishing again, or it would reuse offsets the holder has seen.
        fence: bool,
    },
}

impl Lineage {
    /// A lineage from its ancestors, newest first (tests and tools).
    pub fn new(ancestors: Vec<Ancestor>) -> Self {
        let mut ancestors = ancestors;
        ancestors.truncate(MAX_ANCESTORS);
        Self { ancestors }
    }

    /// The ancestors, newest first.
    pub fn ancestors(&self) -> &[Ancestor] {
        &self.ancestors
    }

    /// The entry for `epoch`, if it is an ancestor.
    pub fn ancestor(&self, epoch: Epoch) -> Option<&Ancestor> {
        self.ancestors.iter().find(|a| a.epoch == epoch)
    }

    /// Relates `pos` to the channel whose head is `head` (current epoch, newest offset).
    pub fn continuity(&self, head: Position, pos: Position) -> Continuity {
        if pos.epoch == head.epoch {
            return if pos.offset <= head.offset {
                Continuity::Continuous(pos)
            } else {
                Continuity::Lost {
                    resume_after: head.offset,
                    fence: true,
                }
            };
        }
        match self.ancestor(pos.epoch) {
            // Nothing the holder saw is gone, but what followed `cap` may be: it keeps its
            // place and is told before it goes on.
            Some(a) if pos.offset <= a.cap => Continuity::Lost {
                resume_after: pos.offset,
                fence: false,
            },
            Some(a) => Continuity::Lost {
                resume_after: a.cap.min(head.offset),
                fence: false,
            },
            None => Continuity::Lost {
                resume_after: 0,
                fence: false,
            },
        }
    }
}

impl fmt::Display for Lineage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.ancestors.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}:{}", a.epoch, a.cap)?;
        }
        Ok(())
    }
}

impl FromStr for Lineage {
    type Err = PositionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ancestors = s
            .split_ascii_whitespace()
            .take(MAX_ANCESTORS)
            .map(|entry| {
                let p: Position = entry.parse()?;
                Ok(Ancestor {
                    epoch: p.epoch,
                    cap: p.offset,
                })
            })
            .collect::<Result<Vec<_>, PositionError>>()?;
        Ok(Self { ancestors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Epoch = Epoch(0xc);
    const PREV: Epoch = Epoch(0xb);
    const OLD: Epoch = Epoch(0xa);

    /// PREV moved to NOW at 7; OLD moved to PREV at 3.
    fn lineage() -> Lineage {
        "b:7 a:3".parse().unwrap()
    }

    fn at(epoch: Epoch, offset: u64) -> Position {
        Position::new(epoch, offset)
    }

    fn lost(resume_after: u64, fence: bool) -> Continuity {
        Continuity::Lost {
            resume_after,
            fence,
        }
    }

    #[test]
    fn same_epoch_up_to_the_head_is_continuous() {
        let head = at(NOW, 9);
        for offset in [0, 5, 9] {
            assert_eq!(
                lineage().continuity(head, at(NOW, offset)),
                Continuity::Continuous(at(NOW, offset))
            );
        }
    }

    #[test]
    fn ahead_of_the_head_in_the_same_epoch_is_lost_and_needs_a_fence() {
        assert_eq!(lineage().continuity(at(NOW, 9), at(NOW, 12)), lost(9, true));
    }

    #[test]
    fn crossing_a_move_is_a_gap_in_place() {
        // Nothing before the holder's position is gone: it keeps its place and gets a gap.
        assert_eq!(
            lineage().continuity(at(NOW, 9), at(PREV, 7)),
            lost(7, false)
        );
        assert_eq!(lineage().continuity(at(NOW, 9), at(OLD, 2)), lost(2, false));
    }

    #[test]
    fn offsets_beyond_what_was_inherited_were_lost() {
        let head = at(NOW, 9);
        assert_eq!(lineage().continuity(head, at(PREV, 8)), lost(7, false));
        assert_eq!(lineage().continuity(head, at(OLD, 4)), lost(3, false));
    }

    #[test]
    fn an_unknown_epoch_restarts_from_the_beginning() {
        assert_eq!(
            Lineage::default().continuity(at(NOW, 9), at(OLD, 1)),
            lost(0, false)
        );
    }

    #[test]
    fn text_round_trips_and_is_bounded() {
        assert_eq!(lineage().to_string(), "b:7 a:3");
        assert_eq!(lineage().ancestor(OLD).map(|a| a.cap), Some(3));
        assert_eq!("".parse::<Lineage>().unwrap(), Lineage::default());
        let long = (1..=20).map(|i| format!("{i:x}:{i}")).collect::<Vec<_>>();
        let parsed: Lineage = long.join(" ").parse().unwrap();
        assert_eq!(parsed.ancestors().len(), MAX_ANCESTORS);
        for bad in ["b:x", "b~1", "zz:1", "b"] {
            assert!(bad.parse::<Lineage>().is_err(), "{bad}");
        }
    }
}
