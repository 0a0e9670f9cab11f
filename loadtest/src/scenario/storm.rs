//! `storm`: everyone disconnects, then resumes at once.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::ensure;

use super::redis_window::sample;
use super::{Harness, check_budget};
use crate::cli::StormArgs;
use crate::conn::Phase;
use crate::procfs::CpuWindow;
use crate::redis_nodes::RedisNodes;
use crate::report::Report;
use crate::stats::{Stats, lock};

/// `storm`.
pub async fn storm(a: StormArgs) -> anyhow::Result<Report> {
    ensure!(a.rate > 0.0, "--rate must be positive");
    ensure!(a.resume_timeout > 0.0, "--resume-timeout must be positive");
    ensure!(
        !a.subs.http2,
        "storm disconnects every connection; --http2 is not supported here"
    );
    check_budget(
        "this run",
        a.conns as f64 / a.subs.ramp + a.count as f64 / a.rate + a.subs.drain + a.resume_timeout,
    )?;
    let mut h = Harness::new(
        "storm",
        &a.common,
        Some(&a.subs),
        &a.publish,
        1,
        &a.storm_url,
    )?;
    ensure!(
        !h.sh.plan.template,
        "storm measures gateway resume; --sub-url is not supported here"
    );
    h.report.set("conns", a.conns as u64);
    h.report.set("channels", 1u64);
    h.report.set("count", a.count);
    h.report.set("behind", a.behind);
    // Every node of a cluster (commands summed over primaries), or the one --redis-url.
    let mut nodes =
        RedisNodes::from_opts(&a.publish.redis_cluster, a.publish.redis_url.as_ref()).await?;
    h.connect(a.conns, a.subs.ramp).await?;
    let subscribers = Stats::get(&h.sh.stats.established);
    let first_publish = Instant::now();
    if a.count > 0 {
        h.publish(
            a.count,
            Some(a.rate),
            Duration::from_secs_f64(a.count as f64 / a.rate + 10.0),
        )
        .await;
        let before = h.drain(h.drain).await;
        h.report.set("complete_before_disconnect", before);
    }
    // Everyone disconnects at once.
    h.phase.set(Phase::Disconnect);
    let t = Instant::now();
    while h.sh.stats.live.load(Ordering::Relaxed) > 0 && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.progress.say(&format!(
        "all {subscribers} disconnected; publishing {} while they are away",
        a.behind
    ));
    if a.behind > 0 {
        h.publish(a.behind, None, Duration::from_secs(30)).await;
    }
    let redis_before = sample(&mut nodes).await?;
    // Everyone reconnects at once, to the other instance, with their last ids.
    let cpu = CpuWindow::start(&h.pids);
    let t0 = Instant::now();
    let _ = h.sh.storm_start.set(t0);
    h.phase.set(Phase::Reconnect);
    let timeout = Duration::from_secs_f64(a.resume_timeout);
    loop {
        let done = Stats::get(&h.sh.stats.storm_complete);
        if done >= subscribers || t0.elapsed() >= timeout {
            break;
        }
        h.progress.status(format!(
            "resuming: {} reconnected, {done} of {subscribers} complete",
            Stats::get(&h.sh.stats.resumed)
        ));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let all_s = t0.elapsed().as_secs_f64();
    let redis_after = sample(&mut nodes).await?;
    let redis_window = t0.elapsed().as_secs_f64();
    let cpu_use = cpu.finish();
    let done = Stats::get(&h.sh.stats.storm_complete);
    h.progress.say(&format!(
        "{done} of {subscribers} had every missed event after {:.3} s",
        all_s
    ));
    let resumed = Stats::get(&h.sh.stats.resumed);
    let storm_hist = lock(&h.sh.stats.storm_latency).clone();
    h.report.set("resumed", resumed);
    h.report.set("resume_complete", done);
    h.report.set(
        "resume_all_ms",
        if done >= subscribers {
            storm_hist.max() as f64 / 1000.0
        } else {
            f64::NAN
        },
    );
    h.report.set_latency("resume", &storm_hist);
    if let (Some(n), Some(b), Some(a2)) = (&nodes, redis_before, redis_after) {
        let d = n.deltas(&b, &a2, redis_window);
        d.write(&mut h.report);
        let total = d.commands_primaries;
        let fcall = d.calls_primaries.get("fcall").copied().unwrap_or(0);
        let r = &mut h.report;
        r.set("redis_commands", total);
        r.set(
            "redis_commands_per_client",
            total as f64 / resumed.max(1) as f64,
        );
        r.set("redis_fcall", fcall);
        r.set(
            "redis_fcall_per_client",
            fcall as f64 / resumed.max(1) as f64,
        );
        r.set(
            "redis_cpu_us_per_client_primaries",
            d.cpu_primaries * 1e6 / resumed.max(1) as f64,
        );
    }
    let complete = h.drain(Duration::from_secs(2)).await;
    h.report.set("all_received", complete);
    let fin = h.finish().await;
    // CPU is measured over the reconnect; deliveries per second over the whole run.
    h.account(&fin, &cpu_use, first_publish.elapsed().as_secs_f64());
    Ok(h.close())
}
