//! `fanout` and `channels`: a fixed publish rate to every subscriber.

use std::time::Duration;

use anyhow::ensure;

use super::redis_window::{redis_window, sample};
use super::{Harness, Published, amount, check_budget};
use crate::cli::{Amount, ChannelsArgs, Common, FanoutArgs, PubOpts, SubOpts};
use crate::procfs::CpuWindow;
use crate::redis_nodes::RedisNodes;
use crate::report::Report;

/// `fanout` and `channels`.
async fn rate_scenario(
    name: &str,
    conns: usize,
    channels: usize,
    how_much: &Amount,
    common: &Common,
    subs: &SubOpts,
    p: &PubOpts,
) -> anyhow::Result<Report> {
    let rate = how_much.rate;
    let (count, secs) = amount(rate, how_much.count, how_much.duration)?;
    check_budget("this run", conns as f64 / subs.ramp + secs + subs.drain)?;
    let mut h = Harness::new(name, common, Some(subs), p, channels, &[])?;
    h.report.set("conns", conns as u64);
    h.report.set("channels", channels as u64);
    h.report.set("rate", rate);
    h.report.set("count", count);
    let mut nodes = RedisNodes::from_opts(&p.redis_cluster, p.redis_url.as_ref()).await?;
    h.connect(conns, subs.ramp).await?;
    h.progress.say(&format!(
        "publishing {count} events at {rate}/s over {channels} channel(s)"
    ));
    let redis_before = sample(&mut nodes).await?;
    let cpu = CpuWindow::start(&h.pids);
    let Published {
        secs: pub_secs,
        attempted,
        ..
    } = h
        .publish(count, Some(rate), Duration::from_secs_f64(secs + 10.0))
        .await;
    let complete = h.drain(h.drain).await;
    let cpu_use = cpu.finish();
    redis_window(&mut h, &mut nodes, redis_before, cpu_use.seconds).await?;
    h.progress.say(&format!(
        "published {attempted} in {pub_secs:.2} s; {}",
        if complete {
            "every subscriber has every event"
        } else {
            "NOT every event arrived"
        }
    ));
    h.report
        .set("publish_rate", attempted as f64 / pub_secs.max(1e-9));
    let fin = h.finish().await;
    h.account(&fin, &cpu_use, cpu_use.seconds);
    Ok(h.close())
}

/// `fanout`.
pub async fn fanout(a: FanoutArgs) -> anyhow::Result<Report> {
    rate_scenario(
        "fanout", a.conns, 1, &a.amount, &a.common, &a.subs, &a.publish,
    )
    .await
}

/// `channels`.
pub async fn channels(a: ChannelsArgs) -> anyhow::Result<Report> {
    ensure!(
        a.channels >= 1 && a.channels <= a.conns,
        "--channels must be between 1 and --conns"
    );
    rate_scenario(
        "channels", a.conns, a.channels, &a.amount, &a.common, &a.subs, &a.publish,
    )
    .await
}
