//! The scenarios: connect, publish, drain, measure, report.

mod accounting;
mod combine;
mod harness;
mod idle;
mod progress;
mod publisher;
mod rate;
mod redis_window;
mod saturate;
mod setup;
mod storm;

use std::time::Duration;

use anyhow::ensure;

pub use combine::combine;
pub(crate) use harness::{Harness, Published};
pub use idle::idle;
pub use progress::Progress;
pub use publisher::publish_scenario;
pub use rate::{channels, fanout};
pub use saturate::saturate;
pub use storm::storm;

/// Longest a run may last; the watchdog in `main` enforces it, scenarios plan within it.
pub const MAX_RUN: Duration = Duration::from_secs(600);
/// Planned phases must fit in this, leaving room for connecting and reporting.
const PLAN_BUDGET: f64 = 560.0;

/// Events and seconds of a rate-controlled run.
fn amount(rate: f64, count: Option<u64>, duration: Option<f64>) -> anyhow::Result<(u64, f64)> {
    ensure!(rate > 0.0 && rate.is_finite(), "--rate must be positive");
    let (count, secs) = match (count, duration) {
        (Some(c), _) => (c, c as f64 / rate),
        (None, d) => {
            let d = d.unwrap_or(10.0);
            ensure!(d > 0.0, "--duration must be positive");
            ((rate * d).round().max(1.0) as u64, d)
        }
    };
    ensure!(
        secs <= PLAN_BUDGET,
        "publishing would take {secs:.0} s; runs are capped at 10 minutes"
    );
    Ok((count, secs))
}

pub(crate) fn check_budget(what: &str, seconds: f64) -> anyhow::Result<()> {
    ensure!(
        seconds <= PLAN_BUDGET,
        "{what} would take about {seconds:.0} s; a run is capped at 10 minutes (ramp faster, \
         publish for less, or split the load over several processes)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts() {
        assert_eq!(amount(100.0, None, None).unwrap(), (1000, 10.0));
        assert_eq!(amount(200.0, Some(50), None).unwrap(), (50, 0.25));
        assert_eq!(amount(10.0, None, Some(3.0)).unwrap(), (30, 3.0));
        assert!(amount(1.0, Some(1000), None).is_err(), "over the time cap");
        assert!(amount(0.0, None, None).is_err());
    }
}
