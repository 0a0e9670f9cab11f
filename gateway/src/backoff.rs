//! Capped exponential backoff with full jitter, shared by every retry loop so none of them can
//! busy-loop while Redis is down or stampede it when it returns.

use std::time::Duration;

/// Delay generator: the n-th delay is uniform in `[0, min(cap, base * 2^n)]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, never exceeds `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next delay to sleep before retrying.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        // At least a millisecond, so a loop around this can never spin.
        let millis = u64::try_from(ceiling.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Duration::from_millis(fastrand::u64(1..=millis))
    }

    /// Back to the first delay after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_never_reach_zero() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(200));
        for _ in 0..100 {
            let d = b.next_delay();
            assert!(d >= Duration::from_millis(1) && d <= Duration::from_millis(200));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(10));
    }
}
