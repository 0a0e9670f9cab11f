//! `failover`: how long delivery stalls when a Redis Cluster primary dies under load.
//!
//! Subscribers watch many channels, spread over every shard by their hash slots; events are
//! published at a steady total rate; after `--kill-after` seconds the primary given by
//! `--kill-node` is sent SIGKILL. Every delivered event's latency (publish → arrival) is
//! recorded by the class of its channel (on the killed shard or not) and by whether it was
//! published before or after the kill, so the report shows the stall of the killed shard and
//! whether the others were disturbed. Loss, duplicates and gap notices are counted per class.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::account::SeqOutcome;
use crate::cli::FailoverArgs;
use crate::conn::unix_micros;
use crate::procfs::CpuWindow;
use crate::redis_nodes::{self, RedisNodes, connect_node, own_slots, parse_node_info};
use crate::report::Report;
use crate::scenario::{Harness, Published, check_budget};
use crate::stats::{lock, new_histogram};

/// Channel classes.
const OTHER: usize = 0;
const KILLED: usize = 1;
const CLASS_NAMES: [&str; 2] = ["other_shards", "killed_shard"];

/// Per-class accounting around the kill, fed by every subscriber.
pub struct Watch {
    /// Per channel: `KILLED` when its slot is on the killed primary, else `OTHER`.
    class: Vec<u8>,
    /// When the kill was sent, µs since the epoch (0: not yet).
    kill_us: AtomicU64,
    /// Latency, `[published before the kill, after it][class]`.
    hist: [[Mutex<Histogram<u64>>; 2]; 2],
    duplicated: [AtomicU64; 2],
    /// Events skipped on arrival (a later one came first); final loss is in the report.
    skipped: [AtomicU64; 2],
    gaps: [AtomicU64; 2],
    /// Last arrival of any event of the class, µs since the epoch.
    last_arrival: [AtomicU64; 2],
    /// Longest time without any arrival in the class after the kill, µs: the delivery outage,
    /// which per-event latency cannot show while publishing to a dead shard fails.
    silence_after_kill: [AtomicU64; 2],
}

impl Watch {
    /// A watch over channels of the given classes (true: on the shard to be killed).
    pub fn new(killed: &[bool]) -> Self {
        let h = || Mutex::new(new_histogram());
        Self {
            class: killed.iter().map(|&k| u8::from(k)).collect(),
            kill_us: AtomicU64::new(0),
            hist: [[h(), h()], [h(), h()]],
            duplicated: Default::default(),
            skipped: Default::default(),
            gaps: Default::default(),
            last_arrival: Default::default(),
            silence_after_kill: Default::default(),
        }
    }

    fn class_of(&self, channel: usize) -> usize {
        usize::from(self.class.get(channel).copied().unwrap_or(0))
    }

    /// One delivered event of `channel`, published at `ts`, arrived at `now_us`.
    pub fn event(&self, channel: usize, ts: u64, now_us: u64, outcome: &SeqOutcome) {
        let k = self.class_of(channel);
        let kill = self.kill_us.load(Ordering::Relaxed);
        let after = usize::from(kill != 0 && ts >= kill);
        lock(&self.hist[after][k]).saturating_record(now_us.saturating_sub(ts).max(1));
        let last = self.last_arrival[k].fetch_max(now_us, Ordering::Relaxed);
        if kill != 0 && last != 0 {
            // Silence counts from the kill at the earliest.
            let silent = now_us.saturating_sub(last.max(kill));
            self.silence_after_kill[k].fetch_max(silent, Ordering::Relaxed);
        }
        match outcome {
            SeqOutcome::Duplicate => {
                self.duplicated[k].fetch_add(1, Ordering::Relaxed);
            }
            SeqOutcome::Jump(n) => {
                self.skipped[k].fetch_add(*n, Ordering::Relaxed);
            }
            SeqOutcome::InOrder | SeqOutcome::Late => {}
        }
    }

    /// A gap notice on `channel`.
    pub fn gap(&self, channel: usize) {
        self.gaps[self.class_of(channel)].fetch_add(1, Ordering::Relaxed);
    }

    fn mark_kill(&self) {
        self.kill_us.store(unix_micros(), Ordering::Relaxed);
    }
}

/// Whether a slot lies in any of the ranges.
fn in_ranges(slot: u16, ranges: &[(u16, u16)]) -> bool {
    ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&slot))
}

/// The killed node, as found before the kill.
struct Victim {
    pid: u32,
    slots: Vec<(u16, u16)>,
    /// `redis://` URLs of its replicas.
    replicas: Vec<String>,
}

async fn find_victim(con: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<Victim> {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .arg("replication")
        .query_async(con)
        .await
        .context("INFO on --kill-node")?;
    let info = parse_node_info(&info);
    ensure!(info.role == "master", "--kill-node must be a primary");
    let pid = info.pid.context("--kill-node: no process_id in INFO")?;
    // Loopback only, and only a Redis server: never signal anything else.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    ensure!(
        comm.trim().starts_with("redis"),
        "--kill-node: process {pid} is not a local redis-server ({})",
        comm.trim()
    );
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(con)
        .await
        .context("CLUSTER NODES on --kill-node")?;
    let slots = own_slots(&nodes);
    ensure!(!slots.is_empty(), "--kill-node owns no slots");
    let replicas = redis_nodes::replicas_of_self(&nodes)
        .into_iter()
        .map(|a| format!("redis://{a}"))
        .collect();
    Ok(Victim {
        pid,
        slots,
        replicas,
    })
}

/// Polls the replicas until one reports `role:master`; returns the seconds since `t0`.
async fn wait_promotion(
    replicas: Vec<redis::aio::MultiplexedConnection>,
    t0: Instant,
    max: Duration,
) -> Option<f64> {
    let mut replicas = replicas;
    while t0.elapsed() < max {
        for con in &mut replicas {
            let got = tokio::time::timeout(
                Duration::from_millis(500),
                redis::cmd("INFO")
                    .arg("replication")
                    .query_async::<String>(con),
            )
            .await;
            if let Ok(Ok(text)) = got
                && parse_node_info(&text).role == "master"
            {
                return Some(t0.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// `failover`.
pub async fn failover(a: FailoverArgs) -> anyhow::Result<Report> {
    ensure!(
        a.rate > 0.0 && a.duration > 0.0,
        "--rate and --duration must be positive"
    );
    ensure!(
        a.kill_after >= 0.0 && a.kill_after < a.duration,
        "--kill-after must fall within --duration"
    );
    check_budget(
        "this run",
        a.conns as f64 / a.subs.ramp + a.duration + a.subs.drain,
    )?;
    let mut kill_con = connect_node(&a.kill_node).await?;
    let victim = find_victim(&mut kill_con).await?;
    let mut replica_cons = Vec::new();
    for r in &victim.replicas {
        replica_cons.push(connect_node(r).await?);
    }
    let mut h = Harness::new(
        "failover",
        &a.common,
        Some(&a.subs),
        &a.publish,
        a.channels,
        &[],
    )?;
    ensure!(
        !h.sh.plan.template,
        "failover measures the gateway; --sub-url is not supported here"
    );
    // Classify every channel by the slot of its keys (what the gateway's names hash to).
    let mut killed = Vec::with_capacity(a.channels);
    for name in &h.book.names {
        let key = format!("{}{{{name}}}:stream", a.publish.key_prefix);
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query_async(&mut kill_con)
            .await
            .context("CLUSTER KEYSLOT")?;
        killed.push(in_ranges(slot, &victim.slots));
    }
    let on_killed = killed.iter().filter(|&&k| k).count();
    ensure!(
        on_killed > 0 && on_killed < killed.len(),
        "need channels on the killed shard and on others ({on_killed} of {} on it): use more --channels",
        killed.len()
    );
    let watch = Arc::new(Watch::new(&killed));
    let _ = h.sh.watch.set(watch.clone());
    let count = (a.rate * a.duration).round().max(1.0) as u64;
    let r = &mut h.report;
    r.set("conns", a.conns as u64);
    r.set("channels", a.channels as u64);
    r.set("channels_on_killed_shard", on_killed as u64);
    r.set("rate", a.rate);
    r.set("count", count);
    r.set("kill_after_s", a.kill_after);
    r.set("killed_pid", u64::from(victim.pid));
    let mut nodes = if a.publish.redis_cluster.is_empty() {
        None
    } else {
        Some(RedisNodes::connect(&a.publish.redis_cluster).await?)
    };
    h.connect(a.conns, a.subs.ramp).await?;
    let redis_before = match &mut nodes {
        Some(n) => Some(n.sample().await?),
        None => None,
    };
    h.progress.say(&format!(
        "publishing {count} events at {}/s over {} channels ({on_killed} on the shard of pid {}); kill after {} s",
        a.rate, a.channels, victim.pid, a.kill_after
    ));
    let cpu = CpuWindow::start(&h.pids);
    let pid = victim.pid;
    let kill_after = Duration::from_secs_f64(a.kill_after);
    let promote_max = Duration::from_secs_f64(a.duration - a.kill_after + 30.0);
    let w = watch.clone();
    let killer = async move {
        tokio::time::sleep(kill_after).await;
        w.mark_kill();
        let t0 = Instant::now();
        let sent = std::process::Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status()
            .is_ok_and(|s| s.success());
        let promoted = wait_promotion(replica_cons, t0, promote_max).await;
        (sent, promoted)
    };
    let max = Duration::from_secs_f64(a.duration + 10.0);
    let (
        Published {
            secs: pub_secs,
            attempted,
            ..
        },
        (sent, promoted),
    ) = tokio::join!(h.publish(count, Some(a.rate), max), killer);
    ensure!(sent, "kill -KILL {pid} failed");
    let complete = h.drain(h.drain).await;
    let cpu_use = cpu.finish();
    if let (Some(n), Some(b)) = (&mut nodes, redis_before) {
        let after = n.sample_lenient(&b).await;
        let d = n.deltas(&b, &after, cpu_use.seconds);
        d.write(&mut h.report);
    }
    h.progress.say(&format!(
        "published {attempted} in {pub_secs:.2} s; replica promoted after {}; {}",
        promoted.map_or("(never)".to_owned(), |s| format!("{s:.2} s")),
        if complete {
            "every subscriber has every event"
        } else {
            "NOT every event arrived"
        }
    ));
    h.report
        .set("publish_rate", attempted as f64 / pub_secs.max(1e-9));
    h.report.set_opt("promoted_after_s", promoted);
    let fin = h.finish().await;
    h.account(&fin, &cpu_use, cpu_use.seconds);
    // Per class: final loss, failed publishes, duplicates, gaps, latency before/after the kill.
    let mut lost = [0u64; 2];
    let mut failed = [0u64; 2];
    for (c, &k) in killed.iter().enumerate() {
        let k = usize::from(k);
        lost[k] += fin.lost_by_channel.get(c).copied().unwrap_or(0);
        failed[k] += h.book.failed_of(c).len() as u64;
    }
    for k in [OTHER, KILLED] {
        let name = CLASS_NAMES[k];
        let before = lock(&watch.hist[0][k]).clone();
        let after = lock(&watch.hist[1][k]).clone();
        let r = &mut h.report;
        r.set(&format!("{name}_lost"), lost[k]);
        r.set(&format!("{name}_publish_failed"), failed[k]);
        r.set(
            &format!("{name}_duplicated"),
            watch.duplicated[k].load(Ordering::Relaxed),
        );
        r.set(
            &format!("{name}_skipped_on_arrival"),
            watch.skipped[k].load(Ordering::Relaxed),
        );
        r.set(
            &format!("{name}_gaps"),
            watch.gaps[k].load(Ordering::Relaxed),
        );
        r.set(
            &format!("{name}_longest_silence_after_kill_ms"),
            watch.silence_after_kill[k].load(Ordering::Relaxed) as f64 / 1000.0,
        );
        r.set(&format!("{name}_events_before_kill"), before.len());
        r.set(&format!("{name}_events_after_kill"), after.len());
        r.set_latency(&format!("{name}_before_kill_latency"), &before);
        r.set_latency(&format!("{name}_after_kill_latency"), &after);
        h.report
            .series
            .push((format!("{name}, published after the kill"), after));
    }
    h.report.set("killed", json!(true));
    Ok(h.close())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_by_class_and_kill_time() {
        let w = Watch::new(&[false, true]);
        w.event(0, 100, 1100, &SeqOutcome::InOrder);
        w.event(1, 100, 5100, &SeqOutcome::Duplicate);
        w.mark_kill();
        let now = unix_micros();
        w.event(1, now, now + 2_000_000, &SeqOutcome::Jump(3));
        w.event(1, 100, now, &SeqOutcome::Late);
        w.gap(1);
        assert_eq!(lock(&w.hist[0][OTHER]).len(), 1);
        assert_eq!(
            lock(&w.hist[0][KILLED]).len(),
            2,
            "published before the kill"
        );
        assert_eq!(lock(&w.hist[1][KILLED]).len(), 1);
        assert!(lock(&w.hist[1][KILLED]).max() >= 1_999_000);
        assert_eq!(w.duplicated[KILLED].load(Ordering::Relaxed), 1);
        assert_eq!(w.skipped[KILLED].load(Ordering::Relaxed), 3);
        assert_eq!(w.gaps[KILLED].load(Ordering::Relaxed), 1);
        assert_eq!(w.gaps[OTHER].load(Ordering::Relaxed), 0);
        // Nothing arrived on the killed shard from `now` (its last arrival) to `now` + 2 s.
        let silence = w.silence_after_kill[KILLED].load(Ordering::Relaxed);
        assert!(silence >= 1_999_000, "{silence}");
    }

    #[test]
    fn slot_ranges() {
        assert!(in_ranges(0, &[(0, 5460)]));
        assert!(in_ranges(5460, &[(0, 5460)]));
        assert!(!in_ranges(5461, &[(0, 5460)]));
        assert!(in_ranges(7, &[(1, 2), (7, 7)]));
    }
}
