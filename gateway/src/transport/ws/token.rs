//! The clock of a WebSocket's token: the deadline for a first `auth` message, the warning
//! before `exp`, and the close at `exp`. A connection without a token that ends (auth off)
//! has no clock and pays nothing for it: the timer is allocated only when one is due.

use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Sleep;

use crate::auth::Grant;

/// What is due when the clock fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    /// No token came as the first message in time: close with 4500.
    NoToken,
    /// The token expires at `exp` (Unix seconds): tell the client.
    Warn {
        /// The token's expiry.
        exp: u64,
    },
    /// The token has expired: close with 4501.
    Expired,
}

/// The next thing due for a connection's token, and when.
#[derive(Default)]
pub(super) struct TokenClock {
    next: Option<(Due, Pin<Box<Sleep>>)>,
    /// The token's expiry once warned, so the close follows the warning.
    exp: Option<u64>,
}

impl TokenClock {
    /// A connection that must send its token within `within`.
    pub fn awaiting(within: Duration) -> Self {
        Self {
            next: Some((Due::NoToken, Box::pin(tokio::time::sleep(within)))),
            exp: None,
        }
    }

    /// The clock of `grant`: a warning `warning` before its expiry (at once when that is
    /// already past), then the close; nothing for a grant that does not expire.
    pub fn for_grant(grant: &Grant, warning: Duration) -> Self {
        let Some(exp) = grant.expires() else {
            return Self::default();
        };
        let left = seconds_until(exp);
        let warn_in = left.saturating_sub(warning);
        Self {
            next: Some((Due::Warn { exp }, Box::pin(tokio::time::sleep(warn_in)))),
            exp: Some(exp),
        }
    }

    /// Whether the connection still waits for its first token.
    pub fn awaiting_token(&self) -> bool {
        matches!(self.next, Some((Due::NoToken, _)))
    }

    /// Waits for what is due next (forever when nothing is), and schedules what follows it.
    pub async fn fire(&mut self) -> Due {
        let Some((due, sleep)) = &mut self.next else {
            return std::future::pending().await;
        };
        sleep.as_mut().await;
        let due = *due;
        self.next = match (due, self.exp) {
            (Due::Warn { .. }, Some(exp)) => {
                // `sleep` saturates a duration beyond the clock's range: never.
                Some((
                    Due::Expired,
                    Box::pin(tokio::time::sleep(seconds_until(exp))),
                ))
            }
            _ => None,
        };
        due
    }
}

/// How long until Unix second `exp` (zero when it is past).
fn seconds_until(exp: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(exp).saturating_sub(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Claims;
    use std::sync::Arc;
    use tokio::time::Instant;

    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn grant(exp: u64) -> Grant {
        Grant::Token(Arc::new(Claims {
            exp,
            ..Claims::default()
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_is_warned_about_then_expires() {
        let exp = unix_now() + 100;
        let mut clock = TokenClock::for_grant(&grant(exp), Duration::from_secs(30));
        let start = Instant::now();
        assert_eq!(clock.fire().await, Due::Warn { exp });
        let warned = start.elapsed();
        assert!(
            warned >= Duration::from_secs(69) && warned <= Duration::from_secs(71),
            "{warned:?}"
        );
        assert_eq!(clock.fire().await, Due::Expired);
        let expired = start.elapsed();
        assert!(expired >= Duration::from_secs(99), "{expired:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_token_is_warned_about_at_once() {
        let exp = unix_now() + 10;
        let mut clock = TokenClock::for_grant(&grant(exp), Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(clock.fire().await, Due::Warn { exp });
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn no_clock_without_expiry_and_a_deadline_for_the_first_token() {
        let mut clock = TokenClock::for_grant(&Grant::Anyone, Duration::from_secs(1));
        let fired = tokio::time::timeout(Duration::from_secs(3600), clock.fire()).await;
        assert!(fired.is_err(), "never fires");
        let mut clock = TokenClock::awaiting(Duration::from_secs(5));
        assert!(clock.awaiting_token());
        assert_eq!(clock.fire().await, Due::NoToken);
    }
}
