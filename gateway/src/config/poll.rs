//! `[poll]`: the long-poll fallback for clients behind proxies that break streaming. A poll
//! holds a connection slot while it waits, so its wait is bounded here.

use serde::{Deserialize, Serialize};

use super::{ConfigError, Settings};

/// `[poll]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollSettings {
    /// Longest wait for an event a poll may ask for (`timeout=`), seconds; more is clamped.
    /// Keep it below proxies' read timeouts (the shipped HAProxy: `timeout server 30s`).
    pub max_timeout_seconds: u64,
    /// The wait of a poll that does not say, seconds (clamped to `max_timeout_seconds`).
    pub default_timeout_seconds: u64,
}

impl Default for PollSettings {
    fn default() -> Self {
        Self {
            max_timeout_seconds: 25,
            default_timeout_seconds: 25,
        }
    }
}

impl Settings {
    /// `poll.*` and `history.max_page`: bounds that make sense.
    pub(super) fn validate_poll(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: &str| ConfigError::Invalid {
            key,
            problem: problem.to_owned(),
        };
        if !(1..=300).contains(&self.poll.max_timeout_seconds) {
            return Err(invalid(
                "poll.max_timeout_seconds",
                "must be between 1 and 300",
            ));
        }
        if !(1..=10_000).contains(&self.history.max_page) {
            return Err(invalid("history.max_page", "must be between 1 and 10000"));
        }
        Ok(())
    }
}
