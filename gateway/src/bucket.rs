//! The token bucket behind every rate in the gateway (a WebSocket's commands, an API key's
//! publishes, a client address's new streams): `rate` tokens a second, at most `burst` saved.
//! Time is passed in, so callers take one clock reading for all their checks and tests need no
//! sleeping.

use std::time::Instant;

/// A token bucket; starts full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// `rate` tokens a second, at most `burst` (at least one) saved; full at first.
    pub fn new(rate: f64, burst: f64) -> Self {
        let burst = burst.max(1.0);
        Self {
            rate,
            burst,
            tokens: burst,
            last: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let earned = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + earned).min(self.burst);
        }
        self.last = Some(now);
    }

    /// Takes one token; `false` when there is none.
    pub fn take(&mut self, now: Instant) -> bool {
        self.take_n(1, now).is_ok()
    }

    /// Takes `n` tokens at once, or none and says how many whole seconds until they are there.
    /// More than the burst passes on a full bucket and leaves it in debt, so the rate holds on
    /// average and no request is refused forever.
    pub fn take_n(&mut self, n: u32, now: Instant) -> Result<(), u32> {
        if n == 0 {
            return Ok(());
        }
        self.refill(now);
        let n = f64::from(n);
        let needed = n.min(self.burst);
        if self.tokens >= needed {
            self.tokens -= n;
            return Ok(());
        }
        if self.rate <= 0.0 {
            return Err(u32::MAX);
        }
        let wait = ((needed - self.tokens) / self.rate).ceil().max(1.0);
        // Bounded by burst / rate; saturating for absurd settings.
        Err(wait.min(f64::from(u32::MAX)) as u32)
    }

    /// Whether the bucket is full by `now` (its owner then has nothing left to remember).
    pub fn is_full(&self, now: Instant) -> bool {
        let since = self.last.map_or(0.0, |last| {
            now.saturating_duration_since(last).as_secs_f64()
        });
        self.tokens + since * self.rate >= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn buckets_refill_at_their_rate() {
        let mut b = TokenBucket::new(2.0, 2.0);
        let t0 = Instant::now();
        assert!(b.take(t0));
        assert!(b.take(t0));
        assert_eq!(b.take_n(1, t0), Err(1));
        assert!(b.take(t0 + Duration::from_millis(500)));
        assert!(!b.take(t0 + Duration::from_millis(500)));
        let later = t0 + Duration::from_secs(10);
        assert!(b.is_full(later));
        assert!(b.take(later) && b.take(later));
        assert!(!b.take(later));
    }

    #[test]
    fn a_batch_takes_all_its_tokens_or_none() {
        let mut b = TokenBucket::new(10.0, 20.0);
        let t0 = Instant::now();
        assert!(b.take_n(15, t0).is_ok());
        assert_eq!(b.take_n(6, t0), Err(1), "5 left: none taken");
        assert!(b.take_n(5, t0).is_ok());
        assert_eq!(
            b.take_n(50, t0),
            Err(2),
            "beyond the burst: wait for a full bucket"
        );
        assert!(b.take_n(0, t0).is_ok());
        let t2 = t0 + Duration::from_secs(2);
        assert!(b.take_n(50, t2).is_ok(), "then it passes, in debt");
        assert_eq!(b.take_n(1, t2), Err(4), "and the debt is paid at the rate");
    }
}
