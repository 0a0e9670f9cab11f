//! Positions in a channel's history and the cursor that carries several of them.
//!
//! A position is `<epoch>:<offset>`: the offset counts the channel's events contiguously from 1,
//! and the epoch names one incarnation of the channel's history (a new epoch starts when the
//! history is lost and recreated, e.g. after expiry or a Redis restart without data). Because
//! offsets are contiguous, any instance can tell by arithmetic alone whether events are missing
//! (a jump), trimmed (first available > wanted) or gone (epoch changed). Offsets are compared as
//! integers, never as strings.
//!
//! A cursor is the SSE `id:` of a connection: one position per channel of the connection, in the
//! connection's canonical (sorted) channel order, joined by `,`. With one channel the cursor is
//! exactly that channel's position, so `id:` values stay readable in the common case.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest epoch text accepted: a `u64` in hex.
const MAX_EPOCH_DIGITS: usize = 16;
/// Longest offset text accepted: `u64::MAX` has 20 decimal digits.
const MAX_OFFSET_DIGITS: usize = 20;
/// Longest single position text: epoch, `:` and offset.
pub const MAX_POSITION_LEN: usize = MAX_EPOCH_DIGITS + 1 + MAX_OFFSET_DIGITS;

/// One incarnation of a channel's history; a different epoch means the old offsets mean nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl FromStr for Epoch {
    type Err = PositionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > MAX_EPOCH_DIGITS || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PositionError::BadEpoch);
        }
        u64::from_str_radix(s, 16)
            .map(Epoch)
            .map_err(|_| PositionError::BadEpoch)
    }
}

/// Why a position string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    /// No `:` separating epoch and offset.
    #[error("a position looks like <epoch-hex>:<offset>")]
    Shape,
    /// The epoch was not 1 to 16 hex digits.
    #[error("the epoch must be 1 to 16 hex digits")]
    BadEpoch,
    /// The offset was not a decimal number that fits in 64 bits.
    #[error("the offset must be a decimal number below 2^64")]
    BadOffset,
}

/// A place in one channel's history: "everything up to and including `offset` of `epoch`".
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Position {
    /// The history incarnation the offset belongs to.
    pub epoch: Epoch,
    /// Number of the last event covered; 0 means "before the first event".
    pub offset: u64,
}

impl Position {
    /// Builds a position; a plain constructor keeps call sites short.
    pub const fn new(epoch: Epoch, offset: u64) -> Self {
        Self { epoch, offset }
    }

    /// The position of the event that follows this one in the same epoch.
    pub const fn next(self) -> Self {
        Self {
            epoch: self.epoch,
            offset: self.offset.saturating_add(1),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

impl FromStr for Position {
    type Err = PositionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (epoch, offset) = s.split_once(':').ok_or(PositionError::Shape)?;
        let epoch = epoch.parse()?;
        if offset.is_empty()
            || offset.len() > MAX_OFFSET_DIGITS
            || !offset.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(PositionError::BadOffset);
        }
        let offset = offset.parse().map_err(|_| PositionError::BadOffset)?;
        Ok(Self { epoch, offset })
    }
}

impl Serialize for Position {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Position {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a cursor (SSE `Last-Event-ID`) was refused; shown to API users as-is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// The cursor text was empty.
    #[error("the cursor is empty")]
    Empty,
    /// Longer than any valid cursor for the expected channel count could be.
    #[error("the cursor is {len} bytes long; at most {max} fit {channels} channel(s)")]
    TooLong {
        /// Length of the refused cursor.
        len: usize,
        /// The most a valid cursor for this connection can have.
        max: usize,
        /// How many channels the connection has.
        channels: usize,
    },
    /// The cursor holds a different number of positions than the connection has channels.
    #[error("the cursor holds {found} position(s) but the connection has {expected} channel(s)")]
    WrongCount {
        /// Channels in the connection.
        expected: usize,
        /// Positions in the cursor.
        found: usize,
    },
    /// One of the positions did not parse.
    #[error("position {index} of the cursor is invalid: {error}")]
    BadPosition {
        /// Zero-based index of the bad position.
        index: usize,
        /// What was wrong with it.
        error: PositionError,
    },
}

/// The positions of all channels of one connection, in the connection's channel order.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Cursor(pub Vec<Position>);

impl Cursor {
    /// The longest valid cursor for `channels` channels; longer input is refused before parsing.
    pub const fn max_len(channels: usize) -> usize {
        channels * (MAX_POSITION_LEN + 1)
    }

    /// Parses a cursor that must cover exactly `channels` channels.
    pub fn parse(text: &str, channels: usize) -> Result<Self, CursorError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(CursorError::Empty);
        }
        let max = Self::max_len(channels);
        if text.len() > max {
            return Err(CursorError::TooLong {
                len: text.len(),
                max,
                channels,
            });
        }
        let found = text.split(',').count();
        if found != channels {
            return Err(CursorError::WrongCount {
                expected: channels,
                found,
            });
        }
        text.split(',')
            .enumerate()
            .map(|(index, part)| {
                part.trim()
                    .parse()
                    .map_err(|error| CursorError::BadPosition { index, error })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Cursor)
    }

    /// Appends the cursor text to `out`; used on the per-event hot path, so it avoids a `String`.
    pub fn write_to(positions: &[Position], out: &mut Vec<u8>) {
        use std::io::Write;
        for (i, p) in positions.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{p}");
        }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn position_text_form() {
        let p = Position::new(Epoch(0x1a2b), 42);
        assert_eq!(p.to_string(), "1a2b:42");
        assert_eq!("1a2b:42".parse::<Position>(), Ok(p));
        assert_eq!(
            "1A2B:42".parse::<Position>(),
            Ok(p),
            "hex is case-insensitive"
        );
        assert_eq!("1a2b:0042".parse::<Position>(), Ok(p));
    }

    #[test]
    fn offsets_compare_as_integers() {
        let a: Position = "1:9".parse().unwrap();
        let b: Position = "1:10".parse().unwrap();
        assert!(a.offset < b.offset);
    }

    #[test]
    fn absurd_positions_are_refused() {
        for bad in [
            "",
            ":",
            "1:",
            ":1",
            "1-1",
            "x:1",
            "1:-1",
            "1:+1",
            "1:1.0",
            "1: 1",
            "1:1e3",
            "12345678901234567:1",
            "1:18446744073709551616",
            "1:1:1",
        ] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            "ffffffffffffffff:18446744073709551615"
                .parse::<Position>()
                .map(|p| p.offset),
            Ok(u64::MAX)
        );
    }

    #[test]
    fn cursor_checks_count_length_and_each_position() {
        assert_eq!(Cursor::parse("", 1), Err(CursorError::Empty));
        assert_eq!(
            Cursor::parse("a:1,b:2", 3),
            Err(CursorError::WrongCount {
                expected: 3,
                found: 2
            })
        );
        assert!(matches!(
            Cursor::parse("a:1,zz:2", 2),
            Err(CursorError::BadPosition { index: 1, .. })
        ));
        let huge = "a:1,".repeat(10_000);
        assert!(matches!(
            Cursor::parse(&huge, 2),
            Err(CursorError::TooLong { .. })
        ));
        assert_eq!(
            Cursor::parse(" a:1,b:2 ", 2),
            Ok(Cursor(vec![
                Position::new(Epoch(10), 1),
                Position::new(Epoch(11), 2)
            ]))
        );
    }

    #[test]
    fn single_channel_cursor_is_the_position() {
        let p = Position::new(Epoch(0xdead), 7);
        assert_eq!(Cursor(vec![p]).to_string(), p.to_string());
    }

    fn position() -> impl Strategy<Value = Position> {
        (any::<u64>(), any::<u64>()).prop_map(|(e, o)| Position::new(Epoch(e), o))
    }

    proptest! {
        #[test]
        fn cursor_round_trips(positions in proptest::collection::vec(position(), 1..64)) {
            let cursor = Cursor(positions.clone());
            let text = cursor.to_string();
            prop_assert!(text.len() <= Cursor::max_len(positions.len()));
            prop_assert_eq!(Cursor::parse(&text, positions.len()), Ok(cursor.clone()));
            let mut bytes = Vec::new();
            Cursor::write_to(&positions, &mut bytes);
            prop_assert_eq!(bytes, text.into_bytes());
        }

        #[test]
        fn cursor_parse_never_panics(text in ".{0,200}", channels in 1usize..8) {
            let _ = Cursor::parse(&text, channels);
        }
    }
}
