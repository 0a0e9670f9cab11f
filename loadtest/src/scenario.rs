//! The scenarios: connect, publish, drain, measure, report.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;

use crate::cli::{
    Amount, ChannelsArgs, Common, FanoutArgs, IdleArgs, PubOpts, PublishArgs, PublishVia,
    SaturateArgs, StormArgs, SubOpts,
};
use crate::conn::{Phase, Shared, SubPlan, SubResult, Transport, subscribers};
use crate::net::TlsClient;
use crate::phase::PhaseTx;
use crate::procfs::{CpuUse, CpuWindow, rss_kib, rss_sum};
use crate::publish::{self, Book, PubRun, PubStats, PubTarget};
use crate::redis_nodes::{self, RedisNodes};
use crate::report::{Report, round3};
use crate::stats::{Counters, Stats, lock};
use crate::target::{Url, parse_sources, parse_url};

/// Longest a run may last; the watchdog in `main` enforces it, scenarios plan within it.
pub const MAX_RUN: Duration = Duration::from_secs(600);
/// Planned phases must fit in this, leaving room for connecting and reporting.
const PLAN_BUDGET: f64 = 560.0;

/// Progress on stderr: a bar while connecting, a status line while publishing. Hidden when
/// stderr is not a terminal or with `--quiet`.
pub struct Progress {
    bar: ProgressBar,
    quiet: bool,
}

impl Progress {
    /// A progress display.
    pub fn new(quiet: bool) -> Self {
        let bar = if quiet || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            let b = ProgressBar::new(0);
            b.set_draw_target(ProgressDrawTarget::stderr_with_hz(5));
            b
        };
        Self { bar, quiet }
    }

    fn counting(&self, len: u64, what: &str) {
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} {elapsed:>4} {bar:30} {pos}/{len} {msg}")
        {
            self.bar.set_style(style);
        }
        self.bar.set_length(len);
        self.bar.set_position(0);
        self.bar.set_message(what.to_owned());
    }

    fn status(&self, msg: String) {
        if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}") {
            self.bar.set_style(style);
        }
        self.bar.set_message(msg);
    }

    /// A phase message (suppressed by `--quiet`).
    pub fn say(&self, msg: &str) {
        if !self.quiet {
            self.bar.suspend(|| eprintln!("{msg}"));
        }
    }

    fn done(&self) {
        self.bar.finish_and_clear();
    }
}

/// A finished subscriber population, accounted.
pub(crate) struct Finish {
    lost: u64,
    /// Lost events per channel.
    pub(crate) lost_by_channel: Vec<u64>,
    subscribers: u64,
    missing_overflow: u64,
    incomplete: u64,
}

/// Everything a scenario drives.
pub(crate) struct Harness {
    pub(crate) sh: Arc<Shared>,
    phase: PhaseTx,
    /// Subscriber tasks: one per subscriber, or with HTTP/2 one per connection.
    tasks: Vec<JoinHandle<Vec<SubResult>>>,
    pub(crate) progress: Progress,
    pub(crate) pids: Vec<u32>,
    target: Arc<PubTarget>,
    pub(crate) pstats: Arc<PubStats>,
    pub(crate) book: Arc<Book>,
    size: usize,
    realistic: bool,
    workers: usize,
    start_at: Option<u64>,
    pub(crate) drain: Duration,
    threads: usize,
    pub(crate) report: Report,
    started: Instant,
    rss_before: Option<u64>,
}

fn channel_prefix(common: &Common) -> String {
    common
        .channel_prefix
        .clone()
        .unwrap_or_else(|| format!("lt-{}-{:04x}-", std::process::id(), fastrand::u16(..)))
}

/// The TLS client, built when any URL of the run is `https://` (one configuration for all).
fn tls_client(
    common: &Common,
    subs: Option<&SubOpts>,
    p: &PubOpts,
    storm: &[String],
) -> anyhow::Result<Option<TlsClient>> {
    let any_tls = common
        .urls
        .iter()
        .chain(&p.publish_url)
        .chain(subs.and_then(|s| s.sub_url.as_ref()))
        .chain(storm)
        .any(|u| parse_url(u).is_ok_and(|u| u.is_tls()));
    if !any_tls {
        return Ok(None);
    }
    Ok(Some(TlsClient::new(common.ca.as_deref(), common.insecure)?))
}

fn tls_for(url: &Url, tls: Option<&TlsClient>) -> anyhow::Result<Option<TlsClient>> {
    if !url.is_tls() {
        return Ok(None);
    }
    tls.cloned()
        .map(Some)
        .context("https:// needs --ca or --insecure")
}

fn pub_target(common: &Common, p: &PubOpts, tls: Option<&TlsClient>) -> anyhow::Result<PubTarget> {
    if let Some(t) = &p.publish_url {
        ensure!(
            p.publish == PublishVia::Http,
            "--publish-url is an HTTP template; it cannot be combined with --publish redis"
        );
        let url = parse_url(t)?;
        ensure!(url.is_http(), "--publish-url must be http:// or https://");
        return Ok(PubTarget::Template {
            tls: tls_for(&url, tls)?,
            url,
            body: p.publish_body.clone(),
        });
    }
    match p.publish {
        PublishVia::Redis if !p.redis_cluster.is_empty() => {
            for u in &p.redis_cluster {
                ensure!(
                    parse_url(u)?.scheme == "redis",
                    "--redis-cluster nodes must be redis://"
                );
            }
            Ok(PubTarget::RedisCluster {
                nodes: p.redis_cluster.clone(),
                prefix: p.key_prefix.clone(),
            })
        }
        PublishVia::Redis => {
            let url = p
                .redis_url
                .clone()
                .unwrap_or_else(|| "redis://127.0.0.1:6379/".into());
            ensure!(
                parse_url(&url)?.scheme == "redis",
                "--redis-url must be redis://"
            );
            Ok(PubTarget::Redis {
                url,
                prefix: p.key_prefix.clone(),
            })
        }
        PublishVia::Http => {
            let first = common.urls.first().context("no --url")?;
            let url = parse_url(first)?;
            ensure!(url.is_http(), "--url must be http:// or https://");
            Ok(PubTarget::Gateway {
                tls: tls_for(&url, tls)?,
                url,
            })
        }
    }
}

fn sub_plan(
    common: &Common,
    s: &SubOpts,
    storm: &[String],
    tls: Option<&TlsClient>,
) -> anyhow::Result<SubPlan> {
    let template = s.sub_url.is_some();
    ensure!(
        !s.http2 || s.transport == Transport::Sse,
        "--http2 is for SSE subscribers (the gateway's WebSocket is HTTP/1.1 only)"
    );
    ensure!(
        s.streams_per_conn >= 1,
        "--streams-per-conn must be at least 1"
    );
    let targets = match &s.sub_url {
        Some(t) => {
            ensure!(
                s.transport == Transport::Sse,
                "--sub-url subscribes over SSE; --transport ws needs the gateway (--url)"
            );
            ensure!(
                t.contains("{channel}"),
                "--sub-url needs a {{channel}} placeholder"
            );
            vec![parse_url(t)?]
        }
        None => common
            .urls
            .iter()
            .map(|u| parse_url(u))
            .collect::<anyhow::Result<_>>()?,
    };
    let storm_targets = storm
        .iter()
        .map(|u| parse_url(u))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut any_tls = false;
    for u in targets.iter().chain(&storm_targets) {
        ensure!(
            u.is_http(),
            "subscriber URLs must be http:// or https:// ({})",
            u.host
        );
        any_tls |= u.is_tls();
    }
    ensure!(
        !s.compressed || (s.transport == Transport::Sse && !s.http2),
        "--compressed is for SSE over HTTP/1.1"
    );
    Ok(SubPlan {
        transport: s.transport,
        targets,
        storm_targets,
        template,
        sources: parse_sources(&s.source_ips)?,
        reconnect: !s.no_reconnect,
        tls: if any_tls {
            Some(tls.cloned().context("https:// needs --ca or --insecure")?)
        } else {
            None
        },
        http2: s.http2,
        streams_per_conn: s.streams_per_conn,
        compressed: s.compressed,
    })
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
        if plan.compressed {
            report.set("compressed", "gzip");
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

    fn counters(&self) -> Counters {
        self.sh.stats.counters()
    }

    fn status_line(&self) -> String {
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
    async fn ready(&mut self) {
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

    /// Publishes `count` events at `rate`; returns (seconds, attempted).
    pub(crate) async fn publish(
        &mut self,
        count: u64,
        rate: Option<f64>,
        max: Duration,
    ) -> (f64, u64) {
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
        loop {
            tokio::select! {
                _ = &mut run => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    self.progress.status(self.status_line());
                }
            }
        }
        (
            t0.elapsed().as_secs_f64(),
            self.book.total_attempted() - before,
        )
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

    fn set_cpu(&mut self, cpu: &CpuUse, deliveries: u64) {
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
    let (pub_secs, attempted) = h
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

/// Samples every measured Redis node, when there are any.
async fn sample(nodes: &mut Option<RedisNodes>) -> anyhow::Result<Option<redis_nodes::Sample>> {
    match nodes {
        Some(n) => Ok(Some(n.sample().await?)),
        None => Ok(None),
    }
}

/// Closes a Redis measurement window: per node and per role figures, and Redis CPU and commands
/// per successful publish.
async fn redis_window(
    h: &mut Harness,
    nodes: &mut Option<RedisNodes>,
    before: Option<redis_nodes::Sample>,
    window_s: f64,
) -> anyhow::Result<()> {
    if let (Some(n), Some(b)) = (nodes, before) {
        let after = n.sample().await?;
        let d = n.deltas(&b, &after, window_s);
        d.write(&mut h.report);
        d.per_unit(
            &mut h.report,
            "publish",
            h.pstats.ok.load(Ordering::Relaxed),
        );
    }
    Ok(())
}

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
    let (secs, attempted) = h
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

/// `combine`: reads JSON lines and prints the merged one.
pub fn combine(files: &[std::path::PathBuf]) -> anyhow::Result<Value> {
    let mut text = String::new();
    if files.is_empty() {
        use std::io::Read;
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        for f in files {
            text.push_str(
                &std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
            );
            text.push('\n');
        }
    }
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("every line must be a loadtest JSON line")?;
    if lines.is_empty() {
        bail!("no JSON lines to combine");
    }
    Ok(crate::report::combine(&lines))
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
