//! A connection's command budget: a token bucket against command floods
//! (`ws.commands_per_second`, bursts of twice that), and a count of misuse (malformed input,
//! floods) that ends the connection past `ws.max_protocol_errors`.

use std::time::Instant;

use shared::ErrorCode;

use crate::bucket::TokenBucket;

/// The budget of one connection.
pub struct Budget {
    commands: TokenBucket,
    errors: u32,
    max_errors: u32,
}

impl Budget {
    /// A full bucket.
    pub fn new(commands_per_second: u32, max_errors: u32) -> Self {
        let rate = f64::from(commands_per_second);
        Self {
            commands: TokenBucket::new(rate, rate * 2.0),
            errors: 0,
            max_errors,
        }
    }

    /// Takes one command's token; `false` when the client is too fast.
    pub fn take(&mut self) -> bool {
        self.commands.take(Instant::now())
    }

    /// Counts a refusal with `code`; `true` once misuse has passed the limit.
    pub fn refused(&mut self, code: ErrorCode) -> bool {
        if code.is_misuse() {
            self.errors += 1;
        }
        self.errors > self.max_errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bursts_of_twice_the_rate_then_refusals() {
        let mut budget = Budget::new(5, 3);
        let taken = (0..20).filter(|_| budget.take()).count();
        assert!((10..=11).contains(&taken), "{taken}");
    }

    #[test]
    fn only_misuse_counts_toward_the_limit() {
        let mut budget = Budget::new(5, 2);
        for _ in 0..10 {
            assert!(!budget.refused(ErrorCode::Forbidden));
        }
        assert!(!budget.refused(ErrorCode::BadJson));
        assert!(!budget.refused(ErrorCode::RateLimited));
        assert!(budget.refused(ErrorCode::UnknownType));
    }
}
