//! The end of a run: stopping subscribers, counting loss, filling in the report.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use super::Harness;
use crate::conn::Phase;
use crate::procfs::{CpuUse, rss_kib};
use crate::report::Report;
use crate::stats::{Stats, lock};

/// A finished subscriber population, accounted.
pub(crate) struct Finish {
    pub(super) lost: u64,
    /// Lost events per channel.
    pub(crate) lost_by_channel: Vec<u64>,
    pub(super) subscribers: u64,
    pub(super) missing_overflow: u64,
    pub(super) incomplete: u64,
}

impl Harness {
    /// Stops every subscriber and does the final accounting.
    pub(crate) async fn finish(&mut self) -> Finish {
        let alive = self.sh.stats.live.load(Ordering::Relaxed).max(0) as u64;
        self.report.set("alive", alive);
        self.phase.set(Phase::Stop);
        let failed: Vec<Vec<u64>> = (0..self.book.names.len())
            .map(|c| self.book.failed_of(c))
            .collect();
        let mut f = Finish {
            lost: 0,
            lost_by_channel: vec![0; self.book.names.len()],
            subscribers: 0,
            missing_overflow: 0,
            incomplete: 0,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for t in self.tasks.drain(..) {
            let abort = t.abort_handle();
            let results = match tokio::time::timeout_at(deadline, t).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Vec::new(),
                Err(_) => {
                    abort.abort();
                    Vec::new()
                }
            };
            for r in results {
                let published = self.book.expected(r.channel);
                f.subscribers += 1;
                let failed = &failed[r.channel];
                let lost = r.seq.final_lost(published, failed);
                f.lost = f.lost.saturating_add(lost);
                if let Some(l) = f.lost_by_channel.get_mut(r.channel) {
                    *l = l.saturating_add(lost);
                }
                f.missing_overflow += u64::from(r.seq.missing_overflow);
                f.incomplete += u64::from(r.seq.unreceived(published, failed) > 0);
            }
        }
        self.progress.done();
        f
    }

    /// Fills in the delivery, loss, latency and CPU fields.
    pub(crate) fn account(&mut self, fin: &Finish, cpu: &CpuUse, window: f64) {
        let c = self.counters();
        let stats = &self.sh.stats;
        let latency = stats.latency(false);
        let owed = self.book.owed();
        let r = &mut self.report;
        r.set("disconnects", Stats::get(&stats.disconnects));
        r.set("reconnects", Stats::get(&stats.reconnects));
        r.set("reconnect_failures", Stats::get(&stats.reconnect_failures));
        r.set("published", self.pstats.ok.load(Ordering::Relaxed));
        r.set("publish_failed", self.pstats.failed.load(Ordering::Relaxed));
        r.set_latency("publish_latency", &lock(&self.pstats.latency));
        r.set_latency("publish_wait", &lock(&self.pstats.wait));
        r.set("deliveries", c.deliveries);
        r.set("expected_deliveries", owed);
        r.set("deliveries_per_s", c.deliveries as f64 / window.max(1e-9));
        r.set("complete", fin.subscribers > 0 && fin.incomplete == 0);
        r.set("subscribers_incomplete", fin.incomplete);
        r.set("lost", fin.lost);
        r.set("duplicated", c.duplicated);
        r.set("reordered", c.reordered);
        r.set("id_jumps", c.id_jumps);
        r.set("gaps", c.gaps);
        r.set("malformed", c.malformed);
        r.set("other_events", c.other_events);
        r.set("ws_errors", c.ws_errors);
        if self.sh.plan.compressed && self.sh.plan.transport == crate::conn::Transport::Ws {
            r.set("ws_inflated_messages", Stats::get(&stats.inflated_messages));
            r.set(
                "ws_server_context",
                server_context(
                    Stats::get(&stats.ws_context_answers),
                    Stats::get(&stats.ws_no_context_answers),
                ),
            );
        }
        r.set(
            "events_per_read",
            c.deliveries as f64 / c.reads.max(1) as f64,
        );
        if fin.missing_overflow > 0 {
            r.set("subscribers_with_forgotten_gaps", fin.missing_overflow);
        }
        r.set_latency("latency", &latency);
        self.set_cpu(cpu, c.deliveries);
        self.report.latency = Some(latency);
    }

    pub(super) fn set_cpu(&mut self, cpu: &CpuUse, deliveries: u64) {
        let threads = self.threads;
        let r = &mut self.report;
        r.set_opt("server_cpu_cores", cpu.server_cores);
        r.set_opt("loadtest_cpu_cores", cpu.own_cores);
        r.set("loadtest_threads", threads as u64);
        // The subscribers' runtime has `threads` threads (the publisher one more): near that
        // much CPU, the generator's own queueing is part of the measured latency.
        let saturated = cpu.own_cores.is_some_and(|c| c >= 0.85 * threads as f64);
        r.set("loadtest_saturated", saturated);
        if saturated {
            self.progress.say(&format!(
                "note: the load generator used {:.2} cores with {threads} runtime thread(s): it may be \
                 the bottleneck, and its own queueing is part of the latencies (try --threads 2, or \
                 split the load over several processes)",
                cpu.own_cores.unwrap_or(0.0)
            ));
        }
        r.set_opt(
            "loadtest_cpu_us_per_delivery",
            cpu.own_seconds
                .filter(|_| deliveries > 0)
                .map(|s| s * 1e6 / deliveries as f64),
        );
        r.set("window_s", cpu.seconds);
        let per_delivery = |v: f64| (deliveries > 0).then(|| v / deliveries as f64);
        r.set_opt(
            "server_cpu_us_per_delivery",
            cpu.server_seconds.and_then(|s| per_delivery(s * 1e6)),
        );
        if let Some(w) = cpu.server_written {
            r.set("server_written_bytes", w);
            r.set_opt("server_written_bytes_per_delivery", per_delivery(w as f64));
        }
    }

    pub(crate) fn close(mut self) -> Report {
        let fails = lock(&self.sh.stats.failures).clone();
        let pfails = lock(&self.pstats.failures).clone();
        let r = &mut self.report;
        r.set_opt("loadtest_rss_kib", rss_kib("self").map(|v| v as f64));
        r.set("wall_s", self.started.elapsed().as_secs_f64());
        r.set("connect_failures", json!(fails));
        r.set("publish_failures", json!(pfails));
        self.report
    }
}

/// The report's `ws_server_context`: whether the server kept its compression context, from
/// the upgrades' answers (`null` when none was answered, `"mixed"` when they differed).
fn server_context(kept: u64, not_kept: u64) -> serde_json::Value {
    match (kept, not_kept) {
        (0, 0) => serde_json::Value::Null,
        (_, 0) => json!(true),
        (0, _) => json!(false),
        _ => json!("mixed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_context_field_says_what_the_answers_said() {
        assert_eq!(server_context(0, 0), serde_json::Value::Null);
        assert_eq!(server_context(3, 0), json!(true));
        assert_eq!(server_context(0, 3), json!(false));
        assert_eq!(server_context(1, 2), json!("mixed"));
    }
}
