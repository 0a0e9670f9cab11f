//! `idle`: hold connections, then check they still deliver.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::ensure;

use super::{Harness, check_budget};
use crate::cli::IdleArgs;
use crate::procfs::CpuWindow;
use crate::report::Report;
use crate::stats::Stats;

/// `idle`.
pub async fn idle(a: IdleArgs) -> anyhow::Result<Report> {
    ensure!(a.hold >= 0.0, "--hold must not be negative");
    ensure!(
        a.channels >= 1 && a.channels <= a.conns,
        "--channels must be between 1 and --conns"
    );
    check_budget(
        "this run",
        a.conns as f64 / a.subs.ramp + a.hold + a.subs.drain,
    )?;
    let mut h = Harness::new(
        "idle",
        &a.common,
        Some(&a.subs),
        &a.publish,
        a.channels,
        &[],
    )?;
    h.report.set("conns", a.conns as u64);
    h.report.set("channels", a.channels as u64);
    h.report.set("hold_s", a.hold);
    h.connect(a.conns, a.subs.ramp).await?;
    let established = Stats::get(&h.sh.stats.established);
    h.progress.say(&format!(
        "holding {established} connections for {} s",
        a.hold
    ));
    let cpu = CpuWindow::start(&h.pids);
    let hold_end = Instant::now() + Duration::from_secs_f64(a.hold);
    while Instant::now() < hold_end {
        h.progress.status(format!(
            "holding: live {} of {established}, disconnects {}",
            h.sh.stats.live.load(Ordering::Relaxed),
            Stats::get(&h.sh.stats.disconnects)
        ));
        tokio::time::sleep(Duration::from_millis(200).min(hold_end - Instant::now())).await;
    }
    let idle_cpu = cpu.finish();
    let alive = h.sh.stats.live.load(Ordering::Relaxed).max(0) as u64;
    let disconnects = Stats::get(&h.sh.stats.disconnects);
    h.progress.say(&format!(
        "after {} s: {alive} of {established} alive, {disconnects} disconnects; publishing 1 event per channel",
        a.hold
    ));
    h.report.set("alive_after_hold", alive);
    h.report.set("disconnects_during_hold", disconnects);
    h.report
        .set_opt("server_cpu_cores_idle", idle_cpu.server_cores);
    h.report
        .set_opt("loadtest_cpu_cores_idle", idle_cpu.own_cores);
    let cpu = CpuWindow::start(&h.pids);
    h.publish(a.channels as u64, None, Duration::from_secs(30))
        .await;
    let complete = h.drain(h.drain).await;
    let cpu_use = cpu.finish();
    h.report.set("all_received", complete);
    let fin = h.finish().await;
    h.account(&fin, &cpu_use, cpu_use.seconds);
    Ok(h.close())
}
