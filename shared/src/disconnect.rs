//! Why the gateway ends a connection: one table of every disconnect, with its WebSocket close
//! code, its reason text, its label (SSE closing comment, metrics) and whether the client should
//! reconnect. Every transport renders a [`Disconnect`]; none invents its own code or text.

/// A reason the gateway closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disconnect {
    /// The client said goodbye (WebSocket close answered).
    Normal,
    /// The instance is shutting down; reconnect, possibly to another instance.
    Shutdown,
    /// Protocol misuse past the tolerated limit (malformed messages, command floods).
    Policy,
    /// A frame or message exceeded the size limit.
    TooBig,
    /// The client sent something that is not valid WebSocket.
    Protocol,
    /// The client did not read fast enough; reconnect and resume from your positions.
    SlowConsumer,
    /// The history store failed; reconnect with backoff and resume.
    Unavailable,
    /// No pong (or other traffic) within the heartbeat timeout.
    HeartbeatTimeout,
    /// The token is missing or invalid; do not retry with the same token.
    Unauthorized,
    /// The token expired and no fresh one came by `auth`; reconnect with a fresh token.
    TokenExpired,
}

impl Disconnect {
    /// Every disconnect, for tables and tests.
    pub const ALL: [Self; 10] = [
        Self::Normal,
        Self::Shutdown,
        Self::Policy,
        Self::TooBig,
        Self::Protocol,
        Self::SlowConsumer,
        Self::Unavailable,
        Self::HeartbeatTimeout,
        Self::Unauthorized,
        Self::TokenExpired,
    ];

    /// The WebSocket close code.
    pub const fn code(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::Shutdown => 1001,
            Self::Protocol => 1002,
            Self::Policy => 1008,
            Self::TooBig => 1009,
            Self::SlowConsumer => 4000,
            Self::Unavailable => 4001,
            Self::HeartbeatTimeout => 4002,
            Self::Unauthorized => 4500,
            Self::TokenExpired => 4501,
        }
    }

    /// A stable label: the SSE closing comment (`: closing: <label>`) and metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Shutdown => "shutdown",
            Self::Protocol => "protocol_error",
            Self::Policy => "policy",
            Self::TooBig => "too_big",
            Self::SlowConsumer => "slow_consumer",
            Self::Unavailable => "unavailable",
            Self::HeartbeatTimeout => "heartbeat_timeout",
            Self::Unauthorized => "unauthorized",
            Self::TokenExpired => "token_expired",
        }
    }

    /// The human-readable reason sent with the close code.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Normal => "bye",
            Self::Shutdown => "server shutting down",
            Self::Protocol => "protocol error",
            Self::Policy => "too many malformed commands or too fast",
            Self::TooBig => "message too big",
            Self::SlowConsumer => "slow consumer: reconnect and resume",
            Self::Unavailable => "history store unavailable: reconnect later",
            Self::HeartbeatTimeout => "no pong within the heartbeat timeout",
            Self::Unauthorized => "unauthorized",
            Self::TokenExpired => "token expired: reconnect with a fresh token",
        }
    }

    /// Whether a client should reconnect after it: not after misuse (the same input would be
    /// refused again) nor after an auth refusal or expiry (not with the same token).
    pub const fn reconnect(self) -> bool {
        !matches!(
            self,
            Self::Policy | Self::TooBig | Self::Protocol | Self::Unauthorized | Self::TokenExpired
        )
    }

    /// The disconnect a close code stands for, if the gateway sends it.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.code() == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_labels_are_distinct_and_round_trip() {
        for (i, a) in Disconnect::ALL.iter().enumerate() {
            assert_eq!(Disconnect::from_code(a.code()), Some(*a));
            assert!(a.reason().len() <= 123, "fits a close frame");
            for b in &Disconnect::ALL[i + 1..] {
                assert_ne!(a.code(), b.code());
                assert_ne!(a.label(), b.label());
            }
        }
        assert_eq!(Disconnect::from_code(1006), None);
    }

    #[test]
    fn misuse_and_auth_refusals_are_final() {
        let final_: Vec<_> = Disconnect::ALL
            .into_iter()
            .filter(|d| !d.reconnect())
            .map(Disconnect::code)
            .collect();
        assert_eq!(final_, [1008, 1009, 1002, 4500, 4501]);
    }
}
