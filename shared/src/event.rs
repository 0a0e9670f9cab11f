//! The event envelope: what a publisher sent, where it sits in history, and how to frame it.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{ChannelName, Position};

/// Longest accepted event name; SSE `event:` values are short labels, not payloads.
pub const MAX_EVENT_NAME_LEN: usize = 64;

/// Event names the gateway sends itself; publishers may not use them, so clients can trust them.
pub const RESERVED_EVENT_NAMES: &[&str] = &["gap", "binary", "presence.join", "presence.leave"];

/// SSE clients receive binary payloads base64-encoded in events of type `binary`, or
/// `binary:<name>` when the event has a name; publishers may not use this prefix either.
pub const BINARY_EVENT_PREFIX: &str = "binary:";

/// How the payload bytes are to be read; decides JSON vs. string on WebSocket and base64 on SSE.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadKind {
    /// UTF-8 text, delivered as-is (SSE) or as a JSON string (WebSocket).
    #[default]
    Text,
    /// Compact JSON text, delivered as-is (SSE) or as a JSON value (WebSocket).
    Json,
    /// Arbitrary bytes.
    Binary,
}

impl PayloadKind {
    /// The wire name used in Redis and in the publish function's arguments.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
            Self::Binary => "binary",
        }
    }

    /// Parses the wire name; `None` for anything unknown.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "text" => Some(Self::Text),
            "json" => Some(Self::Json),
            "binary" => Some(Self::Binary),
            _ => None,
        }
    }
}

/// Why an event name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventNameError {
    /// Empty or longer than [`MAX_EVENT_NAME_LEN`].
    #[error("event name must be 1 to {MAX_EVENT_NAME_LEN} characters")]
    Length,
    /// Contains a character outside ASCII letters, digits and `_ - . :`.
    #[error("event name may contain only ASCII letters, digits and _ - . :")]
    BadChar,
    /// One of the gateway's own event names.
    #[error("event name {0:?} is reserved for the gateway")]
    Reserved(String),
}

/// A validated SSE event name (the `event:` field), cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EventName(Arc<str>);

impl EventName {
    /// Validates a publisher-supplied name; gateway-reserved names are refused.
    pub fn new(name: &str) -> Result<Self, EventNameError> {
        Self::validate_syntax(name)?;
        if RESERVED_EVENT_NAMES.contains(&name) || name.starts_with(BINARY_EVENT_PREFIX) {
            return Err(EventNameError::Reserved(name.to_owned()));
        }
        Ok(Self(Arc::from(name)))
    }

    /// Accepts a name read back from storage: the syntax is checked, the reserved list is not,
    /// because the publish path already enforced it and an event in history must not be lost.
    pub fn from_stored(name: &str) -> Result<Self, EventNameError> {
        Self::validate_syntax(name)?;
        Ok(Self(Arc::from(name)))
    }

    /// Checks only the alphabet and length (what a client must accept when decoding).
    pub fn validate_syntax(name: &str) -> Result<(), EventNameError> {
        if name.is_empty() || name.len() > MAX_EVENT_NAME_LEN {
            return Err(EventNameError::Length);
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
        {
            return Err(EventNameError::BadChar);
        }
        Ok(())
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One published event as every gateway instance sees it, live or from history.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Event {
    /// Where it was published.
    pub channel: ChannelName,
    /// Its place in the channel's history.
    pub position: Position,
    /// Optional SSE event name.
    pub name: Option<EventName>,
    /// How to read `data`.
    pub kind: PayloadKind,
    /// The payload, exactly as published (compact JSON for [`PayloadKind::Json`]).
    pub data: Bytes,
    /// Publish time in Unix milliseconds, taken by the history store; feeds the latency metric.
    pub published_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names() {
        assert!(EventName::new("update").is_ok());
        assert!(EventName::new("user.created:v2").is_ok());
        assert_eq!(EventName::new(""), Err(EventNameError::Length));
        assert_eq!(EventName::new("a b"), Err(EventNameError::BadChar));
        assert_eq!(EventName::new("a\nb"), Err(EventNameError::BadChar));
        assert_eq!(
            EventName::new("gap"),
            Err(EventNameError::Reserved("gap".into()))
        );
        assert!(EventName::new(&"x".repeat(65)).is_err());
    }

    #[test]
    fn payload_kind_names_round_trip() {
        for k in [PayloadKind::Text, PayloadKind::Json, PayloadKind::Binary] {
            assert_eq!(PayloadKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(PayloadKind::parse("xml"), None);
    }
}
