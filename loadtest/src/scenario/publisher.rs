//! `publish`: the publisher alone, no subscribers.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::ensure;

use super::redis_window::{redis_window, sample};
use super::{Harness, Published, check_budget};
use crate::cli::PublishArgs;
use crate::procfs::CpuWindow;
use crate::redis_nodes::RedisNodes;
use crate::report::Report;
use crate::stats::lock;

/// `publish`.
pub async fn publish_scenario(a: PublishArgs) -> anyhow::Result<Report> {
    ensure!(a.duration > 0.0, "--duration must be positive");
    check_budget("publishing", a.duration)?;
    ensure!(a.concurrency >= 1, "--concurrency must be at least 1");
    if let Some(r) = a.rate {
        ensure!(r > 0.0, "--rate must be positive");
    }
    let mut p = a.publish.clone();
    p.publish_conns = a.concurrency;
    let mut h = Harness::new("publish", &a.common, None, &p, a.channels.max(1), &[])?;
    h.report.set("concurrency", a.concurrency as u64);
    h.report.set("channels", a.channels as u64);
    h.report.set_opt("rate", a.rate);
    h.report.set("duration_s", a.duration);
    let mut nodes = RedisNodes::from_opts(&p.redis_cluster, p.redis_url.as_ref()).await?;
    let redis_before = sample(&mut nodes).await?;
    let cpu = CpuWindow::start(&h.pids);
    let Published {
        secs,
        attempted,
        wait,
    } = h
        .publish(u64::MAX, a.rate, Duration::from_secs_f64(a.duration))
        .await;
    let cpu_use = cpu.finish();
    redis_window(&mut h, &mut nodes, redis_before, cpu_use.seconds).await?;
    h.progress.done();
    let ok = h.pstats.ok.load(Ordering::Relaxed);
    let latency = lock(&h.pstats.latency).clone();
    let r = &mut h.report;
    r.set("published", ok);
    r.set("publish_failed", h.pstats.failed.load(Ordering::Relaxed));
    r.set("attempted", attempted);
    r.set("publishes_per_s", ok as f64 / secs.max(1e-9));
    r.set_latency("publish_latency", &latency);
    r.set_latency("publish_wait", &wait);
    r.set_opt("server_cpu_cores", cpu_use.server_cores);
    r.set_opt("loadtest_cpu_cores", cpu_use.own_cores);
    r.set_opt(
        "loadtest_cpu_us_per_publish",
        cpu_use
            .own_seconds
            .filter(|_| ok > 0)
            .map(|s| s * 1e6 / ok as f64),
    );
    r.set("window_s", cpu_use.seconds);
    h.report
        .series
        .push(("publish request latency".into(), latency));
    Ok(h.close())
}
