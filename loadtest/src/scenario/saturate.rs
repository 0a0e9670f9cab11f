//! `saturate`: raise the rate step by step to the highest sustained one.

use std::time::{Duration, Instant};

use anyhow::ensure;
use serde_json::{Map, Value, json};

use super::redis_window::sample;
use super::{Harness, PLAN_BUDGET, check_budget};
use crate::cli::SaturateArgs;
use crate::procfs::CpuWindow;
use crate::redis_nodes::RedisNodes;
use crate::report::{Report, round3};
use crate::stats::Stats;

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
        let redis_before = sample(&mut nodes).await?;
        let cpu = CpuWindow::start(&h.pids);
        let (pub_secs, attempted) = h
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
        let p99_us = if lat.is_empty() {
            u64::MAX
        } else {
            lat.value_at_quantile(0.99)
        };
        let achieved = attempted as f64 / pub_secs.max(1e-9);
        let publisher_limited = achieved < rate * 0.9;
        let ok = complete
            && lost == 0
            && d.duplicated == 0
            && (p99_us as f64) <= a.p99_limit_ms * 1000.0
            && !publisher_limited;
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
        row.insert("lost".into(), json!(lost));
        row.insert("duplicated".into(), json!(d.duplicated));
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
        if let (Some(n), Some(b)) = (&mut nodes, redis_before) {
            let after = n.sample().await?;
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
        h.progress.say(&format!(
            "step {step}: p99 {:.1} ms, lost {lost}, dup {}, publisher {achieved:.0}/s -> {}",
            p99_us as f64 / 1000.0,
            d.duplicated,
            if ok { "ok" } else { "FAIL" }
        ));
        if !ok {
            stop_reason = if publisher_limited {
                "publish rate not reached (one publish in flight per channel)"
            } else if lost > 0 || !complete {
                "loss"
            } else if d.duplicated > 0 {
                "duplicates"
            } else {
                "p99 over the limit"
            };
            break;
        }
        best = Some((rate, d.deliveries as f64 / cpu_use.seconds));
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
