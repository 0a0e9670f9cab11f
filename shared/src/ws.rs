//! The WebSocket protocol: JSON text messages in both directions, plus a binary frame layout
//! for binary payloads.
//!
//! Text messages are JSON objects with a `"type"`. Any client command may carry a `"req"` value
//! (any JSON), echoed in the reply to that command, so a client can match replies to requests.
//!
//! Binary frames start with a kind byte, then length-prefixed fields (each length one byte, so
//! every field is at most 255 bytes), then the payload:
//!
//! ```text
//! server → client, kind 1 (event):   [1][len][channel][len][id][len][event name]  payload...
//! client → server, kind 2 (publish): [2][len][channel][len][event name][len][req] payload...
//! ```
//!
//! An empty event name means none; an empty `req` means none.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The close codes of [`crate::Disconnect`], as constants for clients that match on numbers;
/// 4000–4499 ask the client to reconnect (and resume), 4500–4999 ask it not to.
pub mod close {
    use crate::Disconnect;

    /// Normal closure.
    pub const NORMAL: u16 = Disconnect::Normal.code();
    /// The instance is going away (shutdown); reconnect, possibly elsewhere.
    pub const GOING_AWAY: u16 = Disconnect::Shutdown.code();
    /// Protocol misuse past the tolerated limit (malformed messages, command floods).
    pub const POLICY: u16 = Disconnect::Policy.code();
    /// A frame or message exceeded the size limit.
    pub const TOO_BIG: u16 = Disconnect::TooBig.code();
    /// The client sent something that is not valid WebSocket.
    pub const PROTOCOL: u16 = Disconnect::Protocol.code();
    /// The client did not read fast enough; reconnect and resume from your positions.
    pub const SLOW_CONSUMER: u16 = Disconnect::SlowConsumer.code();
    /// The history store failed; reconnect with backoff and resume.
    pub const UNAVAILABLE: u16 = Disconnect::Unavailable.code();
    /// No pong (or other traffic) within the heartbeat timeout.
    pub const HEARTBEAT_TIMEOUT: u16 = Disconnect::HeartbeatTimeout.code();
    /// The token is missing or invalid; do not retry with the same token.
    pub const UNAUTHORIZED: u16 = Disconnect::Unauthorized.code();
    /// The token expired without a fresh one sent by `auth`; reconnect with a fresh token.
    pub const TOKEN_EXPIRED: u16 = Disconnect::TokenExpired.code();

    /// Whether a client should reconnect after this code: per [`Disconnect::reconnect`] for
    /// the gateway's codes; codes 4500–4999 are reserved for "do not retry".
    pub fn should_reconnect(code: u16) -> bool {
        match Disconnect::from_code(code) {
            Some(d) => d.reconnect(),
            None => !matches!(code, 4500..=4999),
        }
    }
}

/// A command from a client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientMessage {
    /// Start receiving a channel, optionally resuming after `since` (a position), or with its
    /// last `latest` events first (`since: "latest"`: the last one).
    Subscribe {
        /// Channel name.
        channel: String,
        /// Last position the client has seen on this channel, or `latest`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<String>,
        /// Deliver the channel's last this many events first (ignored with a position `since`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        latest: Option<u64>,
        /// Echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<Value>,
    },
    /// Stop receiving a channel.
    Unsubscribe {
        /// Channel name.
        channel: String,
        /// Echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<Value>,
    },
    /// Publish an event (only where the gateway allows client publishing).
    Publish {
        /// Channel name.
        channel: String,
        /// Any JSON value: a string is delivered as-is, anything else as JSON.
        data: Value,
        /// Optional event name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<String>,
        /// Echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<Value>,
    },
    /// One page of a channel's history, answered with `history`.
    History {
        /// Channel name.
        channel: String,
        /// Events after this position; from the oldest kept without it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<String>,
        /// Most events in the page (bounded by the gateway).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
        /// Echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<Value>,
    },
    /// Who is subscribed to a channel right now, on every instance; answered with `presence`.
    Presence {
        /// Channel name.
        channel: String,
        /// Echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<Value>,
    },
    /// Application-level ping; answered with `pong`.
    Ping {
        /// Echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<Value>,
    },
    /// A token: the first message of a connection opened without one, or a fresh token
    /// replacing one that is about to expire; answered with `authenticated`.
    Auth {
        /// The token (a JWT).
        token: String,
        /// Echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<Value>,
    },
}

/// A message from the gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage {
    /// An event of a subscribed channel.
    Event {
        /// Channel name.
        channel: String,
        /// The event's position; send it back as `since` to resume.
        id: String,
        /// Optional event name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<String>,
        /// A string for text payloads, any JSON value for JSON payloads.
        data: Value,
    },
    /// A subscription is active; events follow.
    Subscribed {
        /// Channel name.
        channel: String,
        /// The position the subscription starts after.
        position: String,
        /// Whether `since` was resumed without loss (`false` for fresh subscriptions and after
        /// a gap).
        recovered: bool,
        /// The request's `req`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<Value>,
    },
    /// A subscription ended: at the client's request, or (with `reason`) because a fresh
    /// token no longer allows the channel.
    Unsubscribed {
        /// Channel name.
        channel: String,
        /// Why the gateway ended it (`forbidden`); absent when the client asked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The request's `req`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<Value>,
    },
    /// A client publish was stored.
    Published {
        /// Channel name.
        channel: String,
        /// The new event's position.
        id: String,
        /// The request's `req`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<Value>,
    },
    /// Events before `first_available` are gone; refetch the channel's state.
    Gap {
        /// Channel name.
        channel: String,
        /// First position that follows.
        first_available: String,
    },
    /// A command failed; the connection stays open.
    Error {
        /// Stable machine-readable code.
        code: String,
        /// Human explanation.
        message: String,
        /// The channel concerned, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        /// The request's `req`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<Value>,
    },
    /// A page of history (reply to `history`), shaped like the body of `GET /history`.
    History {
        /// Channel name.
        channel: String,
        /// `{"type":"event",...}` objects, oldest first.
        events: Vec<Value>,
        /// `{"first_available": "<id>"}` when events after `since` are gone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gap: Option<Value>,
        /// Send as `since` for the next page.
        next: String,
        /// The channel's newest position when the page was read.
        head: String,
        /// Whether events after `next` were already stored.
        more: bool,
        /// The request's `req`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<Value>,
    },
    /// Who is subscribed to a channel (reply to `presence`), shaped like `GET /presence`.
    Presence {
        /// Channel name.
        channel: String,
        /// Connections subscribed, on every instance.
        count: u64,
        /// `{"sub","info","conn"}` per connection; absent when `count` is over the
        /// gateway's `presence.max_entries` (then only the count is told).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clients: Option<Vec<Value>>,
        /// The request's `req`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<Value>,
    },
    /// Answer to `ping`.
    Pong {
        /// The request's `req`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<Value>,
    },
    /// A token was accepted (`auth`); it is valid until `exp`.
    Authenticated {
        /// The token's expiry, Unix seconds.
        exp: u64,
        /// The request's `req`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<Value>,
    },
    /// The connection's token expires at `exp`: send `auth` with a fresh one before then, or
    /// the connection is closed with 4501.
    #[serde(rename = "token_expiring")]
    TokenExpiring {
        /// The token's expiry, Unix seconds.
        exp: u64,
    },
}

/// Why a client text message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON at all.
    #[error("message is not valid JSON: {0}")]
    BadJson(String),
    /// JSON, but not an object with a string `type`.
    #[error("message must be a JSON object with a \"type\"")]
    NoType,
    /// A `type` this protocol does not have.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// A known type with missing, extra or mistyped fields.
    #[error("invalid {kind} message: {detail}")]
    BadFields {
        /// The message type.
        kind: String,
        /// What serde said.
        detail: String,
    },
}

impl ParseError {
    /// Stable error code for the `error` reply.
    pub const fn code(&self) -> crate::ErrorCode {
        match self {
            Self::BadJson(_) => crate::ErrorCode::BadJson,
            Self::NoType => crate::ErrorCode::MissingType,
            Self::UnknownType(_) => crate::ErrorCode::UnknownType,
            Self::BadFields { .. } => crate::ErrorCode::InvalidMessage,
        }
    }
}

const TYPES: &[&str] = &[
    "subscribe",
    "unsubscribe",
    "publish",
    "history",
    "presence",
    "ping",
    "auth",
];

/// Parses a client text message; on failure also returns the `req` (if one could be read) so
/// the error reply can echo it.
pub fn parse_client(text: &str) -> Result<ClientMessage, (ParseError, Option<Value>)> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| (ParseError::BadJson(e.to_string()), None))?;
    let req = value.get("req").cloned();
    let Some(kind) = value.get("type").and_then(Value::as_str) else {
        return Err((ParseError::NoType, req));
    };
    if !TYPES.contains(&kind) {
        return Err((
            ParseError::UnknownType(kind.chars().take(64).collect()),
            req,
        ));
    }
    let kind = kind.to_owned();
    serde_json::from_value(value).map_err(|e| {
        (
            ParseError::BadFields {
                kind,
                detail: e.to_string(),
            },
            req,
        )
    })
}

/// A decoded binary frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BinaryFrame<'a> {
    /// Server → client event.
    Event {
        /// Channel name.
        channel: &'a str,
        /// Position.
        id: &'a str,
        /// Event name, if any.
        event: Option<&'a str>,
        /// Payload.
        data: &'a [u8],
    },
    /// Client → server publish.
    Publish {
        /// Channel name.
        channel: &'a str,
        /// Event name, if any.
        event: Option<&'a str>,
        /// Request id to echo, if any.
        req: Option<&'a str>,
        /// Payload.
        data: &'a [u8],
    },
}

/// Kind byte of a server → client binary event.
pub const BINARY_EVENT: u8 = 1;
/// Kind byte of a client → server binary publish.
pub const BINARY_PUBLISH: u8 = 2;

/// Why a binary frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinaryError {
    /// Empty frame or an unknown kind byte.
    #[error("unknown binary frame kind")]
    Kind,
    /// A length prefix points past the end of the frame.
    #[error("binary frame is truncated")]
    Truncated,
    /// A text field is not UTF-8.
    #[error("binary frame field is not UTF-8")]
    Utf8,
    /// A field is longer than 255 bytes and cannot be encoded.
    #[error("binary frame field is longer than 255 bytes")]
    TooLong,
}

fn put_field(out: &mut Vec<u8>, field: &str) -> Result<(), BinaryError> {
    let len = u8::try_from(field.len()).map_err(|_| BinaryError::TooLong)?;
    out.push(len);
    out.extend_from_slice(field.as_bytes());
    Ok(())
}

/// Encodes a server → client binary event.
pub fn encode_binary_event(
    channel: &str,
    id: &str,
    event: Option<&str>,
    data: &[u8],
) -> Result<Vec<u8>, BinaryError> {
    let mut out = Vec::with_capacity(4 + channel.len() + id.len() + data.len() + 16);
    out.push(BINARY_EVENT);
    put_field(&mut out, channel)?;
    put_field(&mut out, id)?;
    put_field(&mut out, event.unwrap_or(""))?;
    out.extend_from_slice(data);
    Ok(out)
}

/// Encodes a client → server binary publish.
pub fn encode_binary_publish(
    channel: &str,
    event: Option<&str>,
    req: Option<&str>,
    data: &[u8],
) -> Result<Vec<u8>, BinaryError> {
    let mut out = Vec::with_capacity(4 + channel.len() + data.len() + 16);
    out.push(BINARY_PUBLISH);
    put_field(&mut out, channel)?;
    put_field(&mut out, event.unwrap_or(""))?;
    put_field(&mut out, req.unwrap_or(""))?;
    out.extend_from_slice(data);
    Ok(out)
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// Decodes either kind of binary frame.
pub fn decode_binary(frame: &[u8]) -> Result<BinaryFrame<'_>, BinaryError> {
    let (&kind, mut rest) = frame.split_first().ok_or(BinaryError::Kind)?;
    let mut field = || -> Result<&str, BinaryError> {
        let (&len, tail) = rest.split_first().ok_or(BinaryError::Truncated)?;
        let len = usize::from(len);
        if tail.len() < len {
            return Err(BinaryError::Truncated);
        }
        let (text, tail) = tail.split_at(len);
        rest = tail;
        std::str::from_utf8(text).map_err(|_| BinaryError::Utf8)
    };
    match kind {
        BINARY_EVENT => {
            let channel = field()?;
            let id = field()?;
            let event = non_empty(field()?);
            Ok(BinaryFrame::Event {
                channel,
                id,
                event,
                data: rest,
            })
        }
        BINARY_PUBLISH => {
            let channel = field()?;
            let event = non_empty(field()?);
            let req = non_empty(field()?);
            Ok(BinaryFrame::Publish {
                channel,
                event,
                req,
                data: rest,
            })
        }
        _ => Err(BinaryError::Kind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn client_messages_parse_with_req() {
        assert_eq!(
            parse_client(r#"{"type":"subscribe","channel":"a","since":"1:2","req":7}"#),
            Ok(ClientMessage::Subscribe {
                channel: "a".into(),
                since: Some("1:2".into()),
                latest: None,
                req: Some(json!(7))
            })
        );
        assert_eq!(
            parse_client(r#"{"type":"history","channel":"a","limit":5}"#),
            Ok(ClientMessage::History {
                channel: "a".into(),
                since: None,
                limit: Some(5),
                req: None
            })
        );
        assert_eq!(
            parse_client(r#"{"type":"ping"}"#),
            Ok(ClientMessage::Ping { req: None })
        );
        assert_eq!(
            parse_client(r#"{"type":"presence","channel":"a","req":3}"#),
            Ok(ClientMessage::Presence {
                channel: "a".into(),
                req: Some(json!(3))
            })
        );
    }

    #[test]
    fn client_errors_say_what_is_wrong_and_keep_req() {
        let code = |t: &str| parse_client(t).unwrap_err().0.code().as_str();
        assert_eq!(code("{"), "bad_json");
        assert_eq!(code("[1]"), "missing_type");
        assert_eq!(code(r#"{"type":"dance"}"#), "unknown_type");
        assert_eq!(code(r#"{"type":"subscribe"}"#), "invalid_message");
        assert_eq!(
            code(r#"{"type":"subscribe","channel":"a","extra":1}"#),
            "invalid_message"
        );
        let (_, req) = parse_client(r#"{"type":"dance","req":"r1"}"#).unwrap_err();
        assert_eq!(req, Some(json!("r1")));
    }

    #[test]
    fn server_messages_have_the_documented_shape() {
        let m = ServerMessage::Event {
            channel: "a".into(),
            id: "1:2".into(),
            event: None,
            data: json!({"x": 1}),
        };
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"type":"event","channel":"a","id":"1:2","data":{"x":1}})
        );
        let h = ServerMessage::History {
            channel: "a".into(),
            events: vec![json!({"type":"event","channel":"a","id":"1:3","data":"x"})],
            gap: Some(json!({"first_available": "1:3"})),
            next: "1:3".into(),
            head: "1:9".into(),
            more: true,
            req: Some(json!(4)),
        };
        assert_eq!(
            serde_json::to_value(&h).unwrap(),
            json!({"type":"history","channel":"a",
                "events":[{"type":"event","channel":"a","id":"1:3","data":"x"}],
                "gap":{"first_available":"1:3"},"next":"1:3","head":"1:9","more":true,"req":4})
        );
    }

    #[test]
    fn binary_frames_round_trip_and_reject_garbage() {
        let f = encode_binary_event("chan", "a:1", Some("img"), &[0, 255, 10]).unwrap();
        assert_eq!(
            decode_binary(&f),
            Ok(BinaryFrame::Event {
                channel: "chan",
                id: "a:1",
                event: Some("img"),
                data: &[0, 255, 10]
            })
        );
        let f = encode_binary_publish("chan", None, Some("r"), b"").unwrap();
        assert_eq!(
            decode_binary(&f),
            Ok(BinaryFrame::Publish {
                channel: "chan",
                event: None,
                req: Some("r"),
                data: b""
            })
        );
        assert_eq!(decode_binary(&[]), Err(BinaryError::Kind));
        assert_eq!(decode_binary(&[9, 0]), Err(BinaryError::Kind));
        assert_eq!(decode_binary(&[2, 5, b'a']), Err(BinaryError::Truncated));
        assert_eq!(decode_binary(&[2, 1, 0xff, 0, 0]), Err(BinaryError::Utf8));
        assert_eq!(
            encode_binary_publish(&"x".repeat(256), None, None, b""),
            Err(BinaryError::TooLong)
        );
    }

    #[test]
    fn close_codes_say_whether_to_reconnect() {
        assert!(close::should_reconnect(close::SLOW_CONSUMER));
        assert!(close::should_reconnect(close::GOING_AWAY));
        assert!(!close::should_reconnect(close::UNAUTHORIZED));
        assert!(!close::should_reconnect(close::POLICY));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(text in ".{0,200}", bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_client(&text);
            let _ = decode_binary(&bytes);
        }
    }
}
