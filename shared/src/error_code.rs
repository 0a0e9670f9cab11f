//! Every error code the gateway sends, in HTTP error bodies (`{"error": code}`) and WebSocket
//! `error` replies: one enum, so a code is never a string compared by value, and clients (the
//! load generator, tests) name the same variants.

use std::fmt;

macro_rules! codes {
    ($( $(#[$doc:meta])* $variant:ident = $text:literal, )*) => {
        /// A stable, machine-readable error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, for tables and tests.
            pub const ALL: &'static [Self] = &[$( Self::$variant, )*];

            /// The code as sent on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $text, )*
                }
            }
        }
    };
}

codes! {
    // Requests and their heads.
    /// A head breaks HTTP/1.1's framing rules (Host, Content-Length).
    BadRequestHead = "bad_request_head",
    /// A request head beyond the head limit (16 KiB, 64 header lines): 431.
    HeadTooLarge = "head_too_large",
    /// A request target too long to parse: 414.
    UriTooLong = "uri_too_long",
    /// The request head did not arrive within the request timeout.
    RequestTimeout = "request_timeout",
    /// No such endpoint.
    NotFound = "not_found",
    /// The endpoint does not take that method.
    MethodNotAllowed = "method_not_allowed",
    /// `GET /ws` without a valid WebSocket handshake.
    NotWebsocket = "not_websocket",
    /// A WebSocket from an origin that is not allowed.
    OriginNotAllowed = "origin_not_allowed",
    /// A `Host` that is not in `server.allowed_hosts` (DNS rebinding).
    HostNotAllowed = "host_not_allowed",
    /// No token (and authentication is on).
    Unauthorized = "unauthorized",
    /// A token that is not a signed JWT the gateway can read (shape, encoding, JSON, claim
    /// types, no `exp`).
    TokenMalformed = "token_malformed",
    /// A token whose signature does not verify with the key it names (or any key of its
    /// algorithm).
    TokenBadSignature = "token_bad_signature",
    /// A token naming a key (`kid`) the gateway does not know (yet: it refreshes its JWKS).
    TokenUnknownKey = "token_unknown_key",
    /// A token whose `alg` is not the one its key is configured for (or `none`).
    TokenAlgorithmNotAllowed = "token_algorithm_not_allowed",
    /// A token past its `exp` (beyond the leeway); also the code of an SSE stream's final
    /// `error` event when its token expires.
    TokenExpired = "token_expired",
    /// A token before its `nbf` (beyond the leeway).
    TokenNotYetValid = "token_not_yet_valid",
    /// A token whose `aud` does not name this gateway's configured audience.
    TokenWrongAudience = "token_wrong_audience",
    /// A token whose `iss` is not a configured issuer.
    TokenWrongIssuer = "token_wrong_issuer",
    /// A token with a `crit` header: it requires extensions the gateway does not implement.
    TokenUnsupportedCrit = "token_unsupported_crit",
    /// The token does not allow the channel.
    Forbidden = "forbidden",
    /// Presence is not tracked on the channel (`presence.channels` does not match it): 404.
    PresenceOff = "presence_off",
    /// The instance is at its connection limit.
    ConnectionLimit = "connection_limit",
    /// The client address holds `limits.max_connections_per_ip` streams already (429).
    TooManyConnections = "too_many_connections",
    /// The client address opened more than `limits.new_connections_per_ip_per_second` (429).
    ConnectionRateLimited = "connection_rate_limited",
    /// The authorization hook (`auth.hook_url`) did not answer, or failed.
    AuthUnavailable = "auth_unavailable",
    // Subscribing.
    /// No channel named.
    MissingChannel = "missing_channel",
    /// A channel name breaks the naming rules.
    InvalidChannel = "invalid_channel",
    /// More channels than `limits.max_channels`.
    TooManyChannels = "too_many_channels",
    /// A `Last-Event-ID` / `lastEventId` that is not a cursor for these channels.
    BadCursor = "bad_cursor",
    /// A WebSocket `since` that is not a position.
    BadPosition = "bad_position",
    /// Subscribing twice to one channel on one WebSocket.
    AlreadySubscribed = "already_subscribed",
    /// Unsubscribing from a channel the WebSocket does not hold.
    NotSubscribed = "not_subscribed",
    /// A query parameter or command option that is not what it must be (`limit`, `latest`,
    /// `timeout`, `since`).
    InvalidParameter = "invalid_parameter",
    // Publishing.
    /// A publish body that is not the documented JSON object.
    InvalidJson = "invalid_json",
    /// A publish body that cannot be read or decoded.
    InvalidBody = "invalid_body",
    /// An event name breaks the naming rules.
    InvalidEvent = "invalid_event",
    /// A batch of more events than `publish.max_batch`.
    BatchTooLarge = "batch_too_large",
    /// A publish body beyond `publish.max_bytes`.
    BodyTooLarge = "body_too_large",
    /// A publish body that did not arrive within the request timeout.
    BodyTimeout = "body_timeout",
    /// A WebSocket publish payload beyond `publish.max_bytes`.
    TooLarge = "too_large",
    /// Client publishing is off, or the token does not allow the channel.
    PublishForbidden = "publish_forbidden",
    /// The store refused or failed a WebSocket publish.
    PublishFailed = "publish_failed",
    // WebSocket commands.
    /// A text message that is not JSON.
    BadJson = "bad_json",
    /// A JSON message without a string `type`.
    MissingType = "missing_type",
    /// A `type` the protocol does not have.
    UnknownType = "unknown_type",
    /// A known type with missing, extra or mistyped fields.
    InvalidMessage = "invalid_message",
    /// A binary frame that is not a valid publish frame.
    BadBinary = "bad_binary",
    /// Commands faster than `ws.commands_per_second`, or publishes faster than the API key's
    /// rate (HTTP 429 with `Retry-After`).
    RateLimited = "rate_limited",
    // The store and the instance.
    /// The history store cannot be reached.
    EngineUnavailable = "engine_unavailable",
    /// The history store answered with an error.
    EngineError = "engine_error",
    /// The store did not answer in time, or failed, during a subscribe.
    Unavailable = "unavailable",
    /// The instance is shutting down.
    ShuttingDown = "shutting_down",
    /// The connection was closed meanwhile.
    Closed = "closed",
}

impl ErrorCode {
    /// Whether a WebSocket error with this code counts toward `ws.max_protocol_errors`: only
    /// malformed input and floods do; refusals of well-formed commands are the app's business
    /// and must not end a connection the client would then not be allowed to re-open.
    pub const fn is_misuse(self) -> bool {
        matches!(
            self,
            Self::BadJson
                | Self::MissingType
                | Self::UnknownType
                | Self::InvalidMessage
                | Self::BadBinary
                | Self::RateLimited
        )
    }
}

impl AsRef<str> for ErrorCode {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_snake_case() {
        for (i, a) in ErrorCode::ALL.iter().enumerate() {
            assert!(
                a.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
            for b in &ErrorCode::ALL[i + 1..] {
                assert_ne!(a.as_str(), b.as_str());
            }
        }
    }
}
