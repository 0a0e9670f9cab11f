//! The harness every scenario drives: connect, publish, drain.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::ensure;
use hdrhistogram::Histogram;
use tokio::task::JoinHandle;

use super::Progress;
use super::setup::{channel_prefix, pub_target, sub_plan, tls_client};
use crate::cli::{Common, PubOpts, SubOpts};
use crate::conn::{Phase, Shared, SubPlan, SubResult, Transport, subscribers};
use crate::phase::PhaseTx;
use crate::procfs::{rss_kib, rss_sum};
use crate::publish::{self, Book, PubRun, PubStats, PubTarget};
use crate::report::Report;
use crate::stats::{Counters, Stats};
use crate::target::parse_sources;

/// What one [`Harness::publish`] did.
pub(crate) struct Published {
    /// Seconds from the start of the run to the last answer.
    pub(crate) secs: f64,
    /// Publishes attempted (failed ones included).
    pub(crate) attempted: u64,
    /// Publish wait of this run (due to answered), µs.
    pub(crate) wait: Histogram<u64>,
}

/// Everything a scenario drives.
pub(crate) struct Harness {
    pub(crate) sh: Arc<Shared>,
    pub(super) phase: PhaseTx,
    /// Subscriber tasks: one per subscriber, or with HTTP/2 one per connection.
    pub(super) tasks: Vec<JoinHandle<Vec<SubResult>>>,
    pub(crate) progress: Progress,
    pub(crate) pids: Vec<u32>,
    pub(super) target: Arc<PubTarget>,
    pub(crate) pstats: Arc<PubStats>,
    pub(crate) book: Arc<Book>,
    pub(super) size: usize,
    realistic: bool,
    pub(super) workers: usize,
    pub(super) start_at: Option<u64>,
    pub(crate) drain: Duration,
    pub(super) threads: usize,
    pub(crate) report: Report,
    pub(super) started: Instant,
    pub(super) rss_before: Option<u64>,
}

impl Harness {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        scenario: &str,
        common: &Common,
        subs: Option<&SubOpts>,
        p: &PubOpts,
        channels: usize,
        storm: &[String],
    ) -> anyhow::Result<Self> {
        ensure!(channels >= 1, "at least one channel");
        ensure!(common.threads >= 1, "--threads must be at least 1");
        let tls = tls_client(common, subs, p, storm)?;
        let target = pub_target(common, p, tls.as_ref())?;
        if subs.is_some_and(|s| s.sub_url.is_some()) {
            ensure!(
                !matches!(target, PubTarget::Gateway { .. }),
                "with --sub-url (another server), publish with --publish-url (or --publish redis)"
            );
        }
        let plan = match subs {
            Some(s) => sub_plan(common, s, storm, tls.as_ref())?,
            None => SubPlan {
                transport: Transport::Sse,
                targets: Vec::new(),
                storm_targets: Vec::new(),
                template: false,
                sources: parse_sources("127.0.0.1")?,
                reconnect: false,
                tls: None,
                http2: false,
                streams_per_conn: 1,
                compressed: false,
                inflate_once: false,
                ws_no_server_context: false,
            },
        };
        for pid in &common.server_pids {
            ensure!(
                rss_kib(&pid.to_string()).is_some(),
                "--server-pid {pid}: no such process (or /proc/{pid}/status unreadable)"
            );
        }
        let book = Arc::new(Book::new(&channel_prefix(common), channels));
        let mut report = Report::new(scenario);
        report.set("transport", subs.map_or("none", |s| s.transport.as_str()));
        if subs.is_some() {
            report.set("tls", plan.tls.is_some());
            report.set("http", if plan.http2 { "2" } else { "1.1" });
            if plan.http2 {
                report.set("streams_per_conn", plan.streams_per_conn as u64);
            }
        }
        report.set("server", if plan.template { "template" } else { "gateway" });
        report.set("publisher", target.kind());
        report.set("size", p.size as u64);
        if p.realistic {
            report.set("payload", "realistic");
        }
        if plan.inflate_once {
            report.set("inflate_once", true);
        }
        if plan.compressed && plan.transport == Transport::Ws {
            report.set(
                "ws_offer",
                if plan.ws_no_server_context {
                    "no_server_context"
                } else {
                    "browser"
                },
            );
            // What the server answered: filled in at the end (`accounting`).
            report.set("ws_server_context", serde_json::Value::Null);
        }
        if plan.compressed {
            report.set(
                "compressed",
                match plan.transport {
                    Transport::Sse => "gzip",
                    Transport::Ws => "permessage-deflate",
                },
            );
        }
        Ok(Self {
            sh: Arc::new(Shared {
                plan,
                stats: Stats::new(),
                book: book.clone(),
                storm_start: std::sync::OnceLock::new(),
                watch: std::sync::OnceLock::new(),
            }),
            phase: PhaseTx::new(Phase::Run),
            tasks: Vec::new(),
            progress: Progress::new(common.quiet),
            pids: common.server_pids.clone(),
            target: Arc::new(target),
            pstats: Arc::new(PubStats::default()),
            book,
            size: p.size,
            realistic: p.realistic,
            workers: p.publish_conns.max(1),
            start_at: subs.and_then(|s| s.start_at),
            drain: Duration::from_secs_f64(subs.map_or(10.0, |s| s.drain).clamp(0.0, 120.0)),
            threads: common.threads,
            report,
            started: Instant::now(),
            rss_before: None,
        })
    }

    pub(super) fn counters(&self) -> Counters {
        self.sh.stats.counters()
    }

    pub(super) fn status_line(&self) -> String {
        let s = &self.sh.stats;
        let c = self.counters();
        format!(
            "live {} | published {} (failed {}) | delivered {} of {} | lost {} dup {} | reconnects {}",
            s.live.load(Ordering::Relaxed),
            self.pstats.ok.load(Ordering::Relaxed),
            self.pstats.failed.load(Ordering::Relaxed),
            c.in_order + c.reordered,
            self.book.owed(),
            c.lost,
            c.duplicated,
            Stats::get(&s.reconnects),
        )
    }

    /// Connects `n` subscribers at `ramp` per second and waits until each is established or
    /// has failed; measures server RSS before and after.
    pub(crate) async fn connect(&mut self, n: usize, ramp: f64) -> anyhow::Result<()> {
        ensure!(n >= 1, "--conns must be at least 1");
        ensure!(ramp > 0.0, "--ramp must be positive");
        self.rss_before = if self.pids.is_empty() {
            None
        } else {
            rss_sum(&self.pids)
        };
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs_f64(n as f64 / ramp + 30.0);
        self.progress.counting(n as u64, "connecting");
        let stats = &self.sh.stats;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut timed_out = false;
        // With HTTP/2, one task carries a connection's streams, started when its first is due.
        let per_task = if self.sh.plan.http2 {
            self.sh.plan.streams_per_conn.max(1)
        } else {
            1
        };
        let mut spawned = 0;
        loop {
            let due = ((t0.elapsed().as_secs_f64() * ramp) as usize + 1).min(n);
            while spawned < due {
                let rx = self.phase.subscribe();
                let k = per_task.min(n - spawned);
                self.tasks
                    .push(tokio::spawn(subscribers(spawned, k, self.sh.clone(), rx)));
                spawned += k;
            }
            let done = Stats::get(&stats.established) + Stats::get(&stats.failed);
            self.progress.bar.set_position(done);
            if done >= n as u64 {
                break;
            }
            if Instant::now() > deadline {
                timed_out = true;
                break;
            }
            tick.tick().await;
        }
        let secs = t0.elapsed().as_secs_f64();
        let ok = Stats::get(&stats.established);
        let failed = Stats::get(&stats.failed);
        self.progress.say(&format!(
            "connected {ok} of {n} in {secs:.2} s ({failed} failed{})",
            if timed_out {
                ", the rest timed out"
            } else {
                ""
            }
        ));
        let r = &mut self.report;
        r.set("connections_ok", ok);
        r.set("connections_failed", n as u64 - ok);
        r.set("tcp_connections", Stats::get(&stats.tcp_connections));
        r.set("connect_s", secs);
        r.set("connect_per_s", ok as f64 / secs.max(1e-9));
        self.ready().await;
        Ok(())
    }

    /// After connecting: waits for `--start-at` (other processes connecting meanwhile), or
    /// half a second for the server to settle, then reads the server's RSS.
    pub(super) async fn ready(&mut self) {
        match self.start_at.take() {
            Some(at) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                let wait = at as f64 - now;
                if wait > 0.0 {
                    self.progress
                        .say(&format!("waiting {wait:.1} s for --start-at"));
                    tokio::time::sleep(Duration::from_secs_f64(wait.min(300.0))).await;
                } else {
                    self.progress.say("--start-at is already past; going on");
                }
            }
            None => tokio::time::sleep(Duration::from_millis(500)).await,
        }
        let rss_after = if self.pids.is_empty() {
            None
        } else {
            rss_sum(&self.pids)
        };
        let ok = Stats::get(&self.sh.stats.established);
        let r = &mut self.report;
        r.set_opt("server_rss_kib_before", self.rss_before.map(|v| v as f64));
        r.set_opt("server_rss_kib_after", rss_after.map(|v| v as f64));
        r.set_opt(
            "server_rss_kib_per_conn",
            match (self.rss_before, rss_after) {
                (Some(a), Some(b)) if ok > 0 => Some((b as f64 - a as f64) / ok as f64),
                _ => None,
            },
        );
    }

    /// Publishes `count` events at `rate`; returns how long it took, how many were attempted,
    /// and how long they waited.
    pub(crate) async fn publish(
        &mut self,
        count: u64,
        rate: Option<f64>,
        max: Duration,
    ) -> Published {
        let before = self.book.total_attempted();
        let t0 = Instant::now();
        let run = publish::run(
            self.target.clone(),
            self.book.clone(),
            self.pstats.clone(),
            PubRun {
                count,
                rate,
                max,
                size: self.size,
                realistic: self.realistic,
                workers: self.workers,
            },
        );
        tokio::pin!(run);
        self.progress.status(self.status_line());
        let wait = loop {
            tokio::select! {
                wait = &mut run => break wait,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    self.progress.status(self.status_line());
                }
            }
        };
        Published {
            secs: t0.elapsed().as_secs_f64(),
            attempted: self.book.total_attempted() - before,
            wait,
        }
    }

    /// Waits until every subscriber has every published event, `max` passes, or nothing
    /// arrives for 5 s. Returns whether everything arrived.
    pub(crate) async fn drain(&self, max: Duration) -> bool {
        let t0 = Instant::now();
        let mut last = u64::MAX;
        let mut last_change = Instant::now();
        loop {
            let c = self.counters();
            let distinct = c.in_order + c.reordered;
            if distinct >= self.book.owed() {
                return true;
            }
            if t0.elapsed() >= max || last_change.elapsed() >= Duration::from_secs(5) {
                return false;
            }
            if distinct != last {
                last = distinct;
                last_change = Instant::now();
            }
            self.progress.status(self.status_line());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
