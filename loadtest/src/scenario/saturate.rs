//! `saturate`: raise the rate step by step to the highest sustained one.

use std::time::{Duration, Instant};

use anyhow::ensure;
use serde_json::{Map, Value, json};

use super::redis_window::sample;
use super::{Harness, PLAN_BUDGET, Published, check_budget};
use crate::cli::SaturateArgs;
use crate::procfs::CpuWindow;
use crate::redis_nodes::RedisNodes;
use crate::report::{Report, round3};
use crate::stats::Stats;

/// Longest a publish may wait, from due to answered, in a sustained step (µs).
const MAX_PUBLISH_WAIT_US: u64 = 1_000_000;
/// A step's publisher keeps the rate when it reaches this share of it.
const RATE_KEPT: f64 = 0.9;

/// What a step measured, as far as its verdict goes.
#[derive(Clone, Copy, Debug)]
struct StepCheck {
    /// The step's target rate, events per second.
    rate: f64,
    /// Publishes the step should make.
    count: u64,
    /// Publishes it made (failed ones included).
    attempted: u64,
    /// Publishes per second it reached.
    achieved: f64,
    /// Longest publish wait (due to answered), µs; `None` when nothing was published.
    max_wait_us: Option<u64>,
    /// Whether every subscriber got every event.
    complete: bool,
    /// Events lost in this step.
    lost: u64,
    /// Events delivered twice in this step.
    duplicated: u64,
    /// Messages that could not be read in this step (garbled, or not inflated).
    malformed: u64,
    /// p99 delivery latency, µs; `None` when nothing arrived.
    p99_us: Option<u64>,
}

impl StepCheck {
    /// `None` when the step sustained its rate: every event arrived, once, readable, p99
    /// delivery within the limit, and the publisher kept the rate with no publish waiting over
    /// 1 s. Otherwise why not (the run's stop reason), publisher first: a late publisher makes
    /// late deliveries.
    fn failure(&self, p99_limit_ms: f64) -> Option<&'static str> {
        if self.attempted < self.count || self.achieved < self.rate * RATE_KEPT {
            Some("publish rate not reached (one publish in flight per channel)")
        } else if self.max_wait_us.is_none_or(|w| w > MAX_PUBLISH_WAIT_US) {
            Some("publishes fell behind (a publish waited over 1 s)")
        } else if self.lost > 0 || !self.complete {
            Some("loss")
        } else if self.duplicated > 0 {
            Some("duplicates")
        } else if self.malformed > 0 {
            Some("malformed messages")
        } else if self.p99_us.is_none_or(|p| p as f64 > p99_limit_ms * 1000.0) {
            Some("p99 over the limit")
        } else {
            None
        }
    }
}

/// `saturate`.
pub async fn saturate(a: SaturateArgs) -> anyhow::Result<Report> {
    ensure!(
        a.start_rate > 0.0 && a.step_seconds > 0.0,
        "--start-rate and --step-seconds must be positive"
    );
    let connect_s = a.conns as f64 / a.subs.ramp;
    check_budget(
        "connecting and one step",
        connect_s + a.step_seconds + a.subs.drain,
    )?;
    let mut h = Harness::new("saturate", &a.common, Some(&a.subs), &a.publish, 1, &[])?;
    h.report.set("conns", a.conns as u64);
    h.report.set("channels", 1u64);
    h.report.set("start_rate", a.start_rate);
    h.report.set("step_s", a.step_seconds);
    h.report.set("p99_limit_ms", a.p99_limit_ms);
    h.report
        .set("publish_wait_limit_ms", MAX_PUBLISH_WAIT_US as f64 / 1000.0);
    let mut nodes =
        RedisNodes::from_opts(&a.publish.redis_cluster, a.publish.redis_url.as_ref()).await?;
    h.connect(a.conns, a.subs.ramp).await?;
    let subscribers = Stats::get(&h.sh.stats.established);
    let step_drain = h
        .drain
        .min(Duration::from_secs_f64(a.step_seconds.max(5.0)));
    let mut rate = a.start_rate;
    let mut best: Option<(f64, f64)> = None;
    let mut stop_reason = "time budget";
    let mut total = crate::stats::new_histogram();
    let run_start = Instant::now();
    let mut step = 0;
    let mut shortfall_before = 0u64;
    let whole = CpuWindow::start(&h.pids);
    loop {
        if run_start.elapsed().as_secs_f64() + connect_s + a.step_seconds + step_drain.as_secs_f64()
            > PLAN_BUDGET
        {
            break;
        }
        if a.max_rate.is_some_and(|m| rate > m) {
            stop_reason = "max rate";
            break;
        }
        step += 1;
        let count = (rate * a.step_seconds).round().max(1.0) as u64;
        h.progress.say(&format!(
            "step {step}: {rate:.0} events/s x {subscribers} subscribers"
        ));
        let c0 = h.counters();
        let disc0 = Stats::get(&h.sh.stats.disconnects);
        let _ = h.sh.stats.latency(true);
        // A node that does not answer ends the stepping, not the run: the steps so far stand.
        let redis_before = match sample(&mut nodes).await {
            Ok(s) => s,
            Err(e) => {
                h.report.set("redis_info_error", format!("{e:#}"));
                stop_reason = "Redis INFO failed";
                break;
            }
        };
        let cpu = CpuWindow::start(&h.pids);
        let Published {
            secs: pub_secs,
            attempted,
            wait,
        } = h
            .publish(
                count,
                Some(rate),
                Duration::from_secs_f64(a.step_seconds * 1.5 + 5.0),
            )
            .await;
        let complete = h.drain(step_drain).await;
        let cpu_use = cpu.finish();
        let c1 = h.counters();
        let lat = h.sh.stats.latency(true);
        let _ = total.add(&lat);
        let d = c1.since(&c0);
        let owed = h.book.owed();
        let shortfall = owed.saturating_sub(c1.in_order + c1.reordered);
        let lost = shortfall.saturating_sub(shortfall_before);
        shortfall_before = shortfall;
        let achieved = attempted as f64 / pub_secs.max(1e-9);
        let check = StepCheck {
            rate,
            count,
            attempted,
            achieved,
            max_wait_us: (!wait.is_empty()).then(|| wait.max()),
            complete,
            lost,
            duplicated: d.duplicated,
            malformed: d.malformed,
            p99_us: (!lat.is_empty()).then(|| lat.value_at_quantile(0.99)),
        };
        let failure = check.failure(a.p99_limit_ms);
        let ok = failure.is_none();
        let mut row = Map::new();
        row.insert("step".into(), json!(step));
        row.insert("rate".into(), json!(round3(rate)));
        row.insert("publish_rate".into(), json!(round3(achieved)));
        row.insert(
            "deliveries_per_s".into(),
            json!(round3(d.deliveries as f64 / cpu_use.seconds)),
        );
        for (k, v) in crate::report::latency_summary(&lat) {
            row.insert(format!("{k}_ms"), v);
        }
        for (k, v) in crate::report::latency_summary(&wait) {
            if matches!(k, "p50" | "p99" | "max") {
                row.insert(format!("publish_wait_{k}_ms"), v);
            }
        }
        row.insert("lost".into(), json!(lost));
        row.insert("duplicated".into(), json!(d.duplicated));
        row.insert("malformed".into(), json!(d.malformed));
        row.insert(
            "disconnects".into(),
            json!(Stats::get(&h.sh.stats.disconnects) - disc0),
        );
        row.insert(
            "server_cpu_cores".into(),
            cpu_use
                .server_cores
                .map_or(Value::Null, |v| json!(round3(v))),
        );
        row.insert(
            "loadtest_cpu_cores".into(),
            cpu_use.own_cores.map_or(Value::Null, |v| json!(round3(v))),
        );
        // Per delivery: what the server and the generator each paid, and what went out.
        let per = |v: Option<f64>| match v {
            Some(v) if d.deliveries > 0 => json!(round3(v / d.deliveries as f64)),
            _ => Value::Null,
        };
        row.insert(
            "server_cpu_us_per_delivery".into(),
            per(cpu_use.server_seconds.map(|s| s * 1e6)),
        );
        row.insert(
            "loadtest_cpu_us_per_delivery".into(),
            per(cpu_use.own_seconds.map(|s| s * 1e6)),
        );
        row.insert(
            "server_written_bytes_per_delivery".into(),
            per(cpu_use.server_written.map(|w| w as f64)),
        );
        let mut info_failed = None;
        if let (Some(n), Some(b)) = (&mut nodes, redis_before) {
            let after = match n.sample().await {
                Ok(after) => after,
                Err(e) => {
                    info_failed = Some(format!("{e:#}"));
                    b.clone()
                }
            };
            let d = n.deltas(&b, &after, cpu_use.seconds);
            let w = cpu_use.seconds.max(1e-9);
            let per = |cpu: f64| json!(round3(cpu * 1e6 / attempted.max(1) as f64));
            row.insert(
                "redis_cpu_cores_primaries".into(),
                json!(round3(d.cpu_primaries / w)),
            );
            row.insert(
                "redis_cpu_cores_replicas".into(),
                json!(round3(d.cpu_replicas / w)),
            );
            row.insert(
                "redis_cpu_us_per_publish_primaries".into(),
                per(d.cpu_primaries),
            );
            row.insert(
                "redis_cpu_us_per_publish_replicas".into(),
                per(d.cpu_replicas),
            );
        }
        row.insert("ok".into(), json!(ok));
        h.report.steps.push(row);
        h.report.series.push((format!("{rate:.0}/s"), lat));
        let ms = |us: Option<u64>| us.map_or(f64::NAN, |us| us as f64 / 1000.0);
        h.progress.say(&format!(
            "step {step}: p99 {:.1} ms, lost {lost}, dup {}, publisher {achieved:.0}/s \
             (wait p99 {:.1} ms, max {:.1} ms) -> {}",
            ms(check.p99_us),
            d.duplicated,
            ms((!wait.is_empty()).then(|| wait.value_at_quantile(0.99))),
            ms(check.max_wait_us),
            failure.map_or("ok".to_owned(), |f| format!("FAIL: {f}"))
        ));
        if let Some(reason) = failure {
            stop_reason = reason;
            break;
        }
        best = Some((rate, d.deliveries as f64 / cpu_use.seconds));
        if let Some(e) = info_failed {
            // The step's deliveries were checked; its Redis figures read as zero.
            h.report.set("redis_info_error", e);
            stop_reason = "Redis INFO failed";
            break;
        }
        rate *= 1.5;
    }
    let cpu_use = whole.finish();
    h.report.set("steps_run", step as u64);
    h.report.set("stop_reason", stop_reason);
    h.report.set_opt("max_ok_rate", best.map(|b| round3(b.0)));
    h.report
        .set_opt("max_ok_deliveries_per_s", best.map(|b| round3(b.1)));
    let fin = h.finish().await;
    h.account(&fin, &cpu_use, cpu_use.seconds);
    h.report.latency = Some(total);
    if let Some(l) = h.report.latency.take() {
        h.report.set_latency("latency", &l);
        h.report.latency = Some(l);
    }
    Ok(h.close())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sustained() -> StepCheck {
        StepCheck {
            rate: 100.0,
            count: 1000,
            attempted: 1000,
            achieved: 99.0,
            max_wait_us: Some(20_000),
            complete: true,
            lost: 0,
            duplicated: 0,
            malformed: 0,
            p99_us: Some(5_000),
        }
    }

    #[test]
    fn a_step_is_sustained_only_when_everything_holds() {
        assert_eq!(sustained().failure(1000.0), None);
        let reason = |f: fn(&mut StepCheck)| {
            let mut c = sustained();
            f(&mut c);
            c.failure(1000.0)
        };
        let behind = Some("publishes fell behind (a publish waited over 1 s)");
        assert_eq!(reason(|c| c.max_wait_us = Some(1_000_001)), behind);
        assert_eq!(reason(|c| c.max_wait_us = Some(1_000_000)), None);
        assert_eq!(reason(|c| c.max_wait_us = None), behind);
        let slow = Some("publish rate not reached (one publish in flight per channel)");
        assert_eq!(reason(|c| c.achieved = 80.0), slow);
        assert_eq!(reason(|c| c.attempted = 999), slow);
        assert_eq!(reason(|c| c.lost = 1), Some("loss"));
        assert_eq!(reason(|c| c.complete = false), Some("loss"));
        assert_eq!(reason(|c| c.duplicated = 1), Some("duplicates"));
        assert_eq!(reason(|c| c.malformed = 1), Some("malformed messages"));
        assert_eq!(
            reason(|c| c.p99_us = Some(1_000_001)),
            Some("p99 over the limit")
        );
        assert_eq!(reason(|c| c.p99_us = None), Some("p99 over the limit"));
        // The publisher is blamed first: its lateness makes the deliveries late too.
        assert_eq!(
            reason(|c| {
                c.max_wait_us = Some(3_000_000);
                c.p99_us = Some(3_000_000);
            }),
            behind
        );
    }
}
