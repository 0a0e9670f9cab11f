//! The bounded label values of the gateway's labelled counters, one enum per label, so every
//! value can be pre-created at zero (a dashboard or alert sees `0`, not a missing series, before
//! the first increment) and a call site cannot invent a value no dashboard knows.

macro_rules! label_enum {
    ($(#[$meta:meta])* $name:ident { $( $(#[$doc:meta])* $variant:ident = $text:literal, )* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$doc])* $variant, )*
        }

        impl $name {
            /// Every value, for pre-creating series and for tests.
            pub const ALL: &'static [Self] = &[$( Self::$variant, )*];

            /// The label value as exported.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $text, )*
                }
            }
        }
    };
}

label_enum! {
    /// `kind` of `gateway_engine_errors_total`: what failed in the engine.
    EngineErrorKind {
        /// A command could not reach Redis (timeout, refused or broken connection).
        Unavailable = "unavailable",
        /// Redis answered something the gateway could not read.
        Protocol = "protocol",
        /// Redis refused the command (OOM, READONLY, NOSCRIPT...).
        Refused = "refused",
        /// The publish function rejected the event (a client error, not an outage).
        Rejected = "rejected",
        /// The pub/sub connection could not be opened.
        PubsubConnect = "pubsub_connect",
        /// An open pub/sub connection broke.
        PubsubLost = "pubsub_lost",
        /// The pub/sub connection stopped answering liveness probes.
        PubsubSilent = "pubsub_silent",
        /// A (sharded) subscribe command failed on the pub/sub connection.
        PubsubSubscribe = "pubsub_subscribe",
        /// One Redis Cluster node's sharded pub/sub connection dropped.
        PubsubNodeLost = "pubsub_node_lost",
        /// A Redis Cluster primary was replaced (failover): the sharded pub/sub connection is
        /// made again so every subscription reaches the new owner.
        PubsubFailover = "pubsub_failover",
        /// The Redis function library could not be loaded.
        Library = "library",
    }
}

label_enum! {
    /// `outcome` of `gateway_resumes_total`.
    ResumeOutcome {
        /// A subscription without a position to resume from.
        Fresh = "fresh",
        /// A resume served without loss from history.
        Recovered = "recovered",
        /// A resume that could not be served without loss: the client got a gap notice.
        Gap = "gap",
        /// A cursor or position the gateway could not read.
        BadCursor = "bad_cursor",
    }
}

label_enum! {
    /// `reason` of `gateway_channel_resyncs_total`: why a channel was re-read from history.
    ResyncReason {
        /// The first subscriber on this instance.
        Start = "start",
        /// A live event's offset jumped past the next one expected.
        Jump = "jump",
        /// The live path reconnected.
        Reconnect = "reconnect",
        /// A joining subscriber read history from an epoch the channel has not caught up with.
        StaleHead = "stale_head",
        /// The periodic head check found the store's head away from the last delivered offset.
        HeadCheck = "head_check",
        /// The engine hinted that the channel may have missed events.
        Hint = "hint",
    }
}

label_enum! {
    /// `seen_by` of `gateway_history_lost_total`.
    SeenBy {
        /// This instance delivered positions the store no longer has (Redis lost writes).
        Instance = "instance",
        /// A client resumed from beyond the store's head (lost writes, or a forged cursor).
        Client = "client",
    }
}

label_enum! {
    /// `transport` of the per-transport connection and delivery metrics.
    Transport {
        /// Server-Sent Events.
        Sse = "sse",
        /// WebSocket.
        Ws = "ws",
        /// Long poll.
        Poll = "poll",
    }
}

label_enum! {
    /// `api` of `gateway_messages_published_total`.
    PublishApi {
        /// `POST /publish`.
        Http = "http",
        /// `gateway publish` (the command line).
        Cli = "cli",
        /// A WebSocket `publish` command.
        Ws = "ws",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_distinct_snake_case() {
        let all: Vec<&str> = EngineErrorKind::ALL
            .iter()
            .map(|k| k.as_str())
            .chain(ResumeOutcome::ALL.iter().map(|o| o.as_str()))
            .collect();
        for v in &all {
            assert!(
                v.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{v}"
            );
        }
        let mut kinds: Vec<&str> = EngineErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), EngineErrorKind::ALL.len());
    }
}
