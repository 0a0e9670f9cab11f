//! Channel names: the single place that decides which names are legal.
//!
//! A channel name ends up inside Redis keys (`<prefix>{<channel>}:stream`), pub/sub channel
//! names, URLs and JSON, so the allowed alphabet is deliberately small: ASCII letters, digits and
//! `_ - . : @ / =`. Braces are excluded because they would move the Redis Cluster hash tag, and
//! whitespace, `,`, `%`, `&`, `?`, `#` and control characters because they break URLs, cursors
//! or logs.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest accepted channel name, in bytes; keeps keys, URLs and cursors small.
pub const MAX_CHANNEL_LEN: usize = 128;

/// Why a channel name was refused; the message is shown to API users as-is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The name was empty.
    #[error("channel name is empty")]
    Empty,
    /// The name was longer than [`MAX_CHANNEL_LEN`].
    #[error("channel name is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Length of the refused name in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name contained a byte outside the allowed alphabet.
    #[error(
        "channel name contains {found:?} at byte {at}; allowed are ASCII letters, digits and _ - . : @ / ="
    )]
    BadChar {
        /// The offending character (or U+FFFD for a non-ASCII byte).
        found: char,
        /// Its byte index.
        at: usize,
    },
}

/// A validated channel name; cheap to clone because every event and hub entry carries one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Validates `name`, so no other code has to re-check the alphabet or length.
    pub fn new(name: &str) -> Result<Self, ChannelError> {
        validate(name)?;
        Ok(Self(Arc::from(name)))
    }

    /// The name as text, for keys, logs and JSON.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate(name: &str) -> Result<(), ChannelError> {
    if name.is_empty() {
        return Err(ChannelError::Empty);
    }
    if name.len() > MAX_CHANNEL_LEN {
        return Err(ChannelError::TooLong {
            len: name.len(),
            max: MAX_CHANNEL_LEN,
        });
    }
    for (at, byte) in name.bytes().enumerate() {
        let ok = byte.is_ascii_alphanumeric()
            || matches!(byte, b'_' | b'-' | b'.' | b':' | b'@' | b'/' | b'=');
        if !ok {
            let found = if byte.is_ascii() {
                char::from(byte)
            } else {
                char::REPLACEMENT_CHARACTER
            };
            return Err(ChannelError::BadChar { found, at });
        }
    }
    Ok(())
}

/// Whether a channel pattern from a token or an API key covers `channel`: an exact name, a
/// prefix ending in `*` (`chat:*`), or `*` for every channel. One rule for every grant.
pub fn pattern_matches(pattern: &str, channel: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => pattern == channel,
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::str::FromStr for ChannelName {
    type Err = ChannelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for ChannelName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ChannelName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::new(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in [
            "a",
            "news",
            "chat:room-1",
            "user@example.com",
            "a/b/c",
            "x=y",
            "A_B.C",
        ] {
            assert!(ChannelName::new(ok).is_ok(), "{ok}");
        }
        assert!(ChannelName::new(&"x".repeat(MAX_CHANNEL_LEN)).is_ok());
    }

    #[test]
    fn refuses_names_that_would_break_keys_urls_or_cursors() {
        assert_eq!(ChannelName::new(""), Err(ChannelError::Empty));
        assert!(matches!(
            ChannelName::new(&"x".repeat(MAX_CHANNEL_LEN + 1)),
            Err(ChannelError::TooLong { len: 129, .. })
        ));
        for (bad, at) in [
            ("a{b", 1),
            ("a}b", 1),
            ("a b", 1),
            ("a,b", 1),
            ("é", 0),
            ("a\nb", 1),
        ] {
            match ChannelName::new(bad) {
                Err(ChannelError::BadChar { at: got, .. }) => assert_eq!(got, at, "{bad:?}"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn deserializing_validates() {
        let ok: ChannelName = serde_json::from_str("\"news\"").unwrap();
        assert_eq!(ok.as_str(), "news");
        assert!(serde_json::from_str::<ChannelName>("\"a{b}\"").is_err());
    }
}
