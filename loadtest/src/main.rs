//! `loadtest`: drives a gateway from outside and checks every event.
//!
//! `fanout` opens N SSE subscribers on one channel, publishes a fixed number of events at a fixed
//! rate through the HTTP API, and has every subscriber verify every event: publish→receive
//! latency (HdrHistogram), and per subscriber the lost, duplicated and out-of-order sequence
//! numbers. It only talks to loopback addresses, is bounded in count and time, and stops by
//! itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use shared::sse::SseDecoder;
use tokio::sync::Mutex;

#[derive(Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Load generator for the push gateway (loopback targets only)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Many SSE subscribers of one channel, one publisher at a fixed rate.
    Fanout(FanoutArgs),
}

#[derive(Args, Clone)]
struct FanoutArgs {
    /// Gateway base URL for subscribers.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Gateway base URL for publishing (default: --url).
    #[arg(long)]
    publish_url: Option<String>,
    /// Subscribers.
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Channel name (a random suffix is added so runs don't see each other's history).
    #[arg(long, default_value = "bench")]
    channel: String,
    /// Events per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Events to publish.
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Approximate payload size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Gateway process id, to report its CPU use.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Fanout(args) => fanout(args).await,
    }
}

/// Refuses anything but loopback targets: load is only ever sent to this machine.
fn check_loopback(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("http://")
        .context("only http:// URLs are supported")?;
    let host = rest.split(['/', ':']).next().unwrap_or("");
    if host == "localhost" || host.starts_with("127.") || host == "[::1]" {
        Ok(())
    } else {
        bail!("refusing to load {host}: loadtest only targets loopback addresses")
    }
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

#[derive(Default)]
struct Totals {
    received: AtomicU64,
    lost: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    done: AtomicU64,
    ready: AtomicU64,
}

async fn fanout(args: FanoutArgs) -> anyhow::Result<()> {
    check_loopback(&args.url)?;
    let publish_url = args.publish_url.clone().unwrap_or_else(|| args.url.clone());
    check_loopback(&publish_url)?;
    let channel = format!("{}-{}", args.channel, std::process::id());
    let totals = Arc::new(Totals::default());
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;

    eprintln!("connecting {} subscribers to {channel} ...", args.conns);
    let mut subscribers = Vec::with_capacity(args.conns);
    for _ in 0..args.conns {
        let url = format!("{}/sse?channel={channel}", args.url);
        let (client, totals, latency, count) =
            (client.clone(), totals.clone(), latency.clone(), args.count);
        subscribers.push(tokio::spawn(async move {
            subscriber(client, url, count, totals, latency).await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while totals.ready.load(Ordering::Relaxed) < args.conns as u64 {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} subscribers connected",
                totals.ready.load(Ordering::Relaxed),
                args.conns
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "all connected; publishing {} events at {}/s",
        args.count, args.rate
    );

    let server_cpu0 = args.server_pid.and_then(|p| cpu_seconds(&p.to_string()));
    let own_cpu0 = cpu_seconds("self");
    let started = Instant::now();
    let publisher = tokio::spawn(publish_all(
        client.clone(),
        publish_url,
        channel.clone(),
        args.clone(),
    ));
    let limit = Duration::from_secs_f64(args.count as f64 / args.rate) + Duration::from_secs(30);
    while totals.done.load(Ordering::Relaxed) < args.conns as u64 && started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    publisher.await??;
    for s in &subscribers {
        s.abort();
    }
    let server_cpu = args
        .server_pid
        .and_then(|p| Some(cpu_seconds(&p.to_string())? - server_cpu0?));
    let own_cpu = cpu_seconds("self").and_then(|c| Some(c - own_cpu0?));

    let expected = args.count * args.conns as u64;
    let received = totals.received.load(Ordering::Relaxed);
    let h = latency.lock().await;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let report = serde_json::json!({
        "scenario": "fanout",
        "subscribers": args.conns,
        "events": args.count,
        "rate_per_s": args.rate,
        "payload_bytes": args.size,
        "seconds": elapsed.as_secs_f64(),
        "deliveries": received,
        "deliveries_per_s": received as f64 / elapsed.as_secs_f64(),
        "lost": totals.lost.load(Ordering::Relaxed) + expected.saturating_sub(received + totals.duplicated.load(Ordering::Relaxed)),
        "duplicated": totals.duplicated.load(Ordering::Relaxed),
        "reordered": totals.reordered.load(Ordering::Relaxed),
        "latency_ms": { "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": h.max() as f64 / 1000.0 },
        "server_cpu_cores": server_cpu.map(|c| c / elapsed.as_secs_f64()),
        "loadtest_cpu_cores": own_cpu.map(|c| c / elapsed.as_secs_f64()),
    });
    println!("{report}");
    Ok(())
}

async fn publish_all(
    client: reqwest::Client,
    base: String,
    channel: String,
    args: FanoutArgs,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let pad = "x".repeat(args.size.saturating_sub(40));
    // Publishes run concurrently so one slow response doesn't lower the rate. The gateway
    // assigns offsets in arrival order, so subscribers check order by offset (the SSE id), and
    // sequence numbers only serve loss and duplicate accounting.
    let inflight = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(args.count as usize);
    for seq in 0..args.count {
        tick.tick().await;
        let permit = inflight.clone().acquire_owned().await?;
        let body = serde_json::json!({ "channel": channel, "data": { "seq": seq, "ts": unix_micros(), "pad": pad } });
        let req = client.post(format!("{base}/publish")).json(&body);
        tasks.push(tokio::spawn(async move {
            let res = req.send().await;
            drop(permit);
            match res {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(anyhow::anyhow!("publish answered {}", r.status())),
                Err(e) => Err(anyhow::anyhow!("publish failed: {e}")),
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn subscriber(
    client: reqwest::Client,
    url: String,
    count: u64,
    totals: Arc<Totals>,
    latency: Arc<Mutex<Histogram<u64>>>,
) -> anyhow::Result<()> {
    let res = client.get(&url).send().await?;
    if !res.status().is_success() {
        bail!("subscribe answered {}", res.status());
    }
    let mut stream = res.bytes_stream();
    let mut decoder = SseDecoder::new();
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut seen = vec![false; count as usize];
    let mut last_offset: Option<u64> = None;
    let mut announced = false;
    let mut got = 0u64;
    while let Some(chunk) = stream.next().await {
        decoder.feed(&chunk?);
        if !announced && decoder.retry().is_some() {
            announced = true;
            totals.ready.fetch_add(1, Ordering::Relaxed);
        }
        while let Some(event) = decoder.next_event() {
            let now = unix_micros();
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&event.data) else {
                continue;
            };
            let (Some(seq), Some(ts)) = (v["seq"].as_u64(), v["ts"].as_u64()) else {
                continue;
            };
            totals.received.fetch_add(1, Ordering::Relaxed);
            let _ = local.record(now.saturating_sub(ts).max(1));
            match seen.get_mut(seq as usize) {
                Some(s) if *s => {
                    totals.duplicated.fetch_add(1, Ordering::Relaxed);
                }
                Some(s) => {
                    *s = true;
                    got += 1;
                }
                None => {}
            }
            // Order is the gateway's promise per channel: offsets strictly increase.
            if let Ok(position) = event.id.parse::<shared::Position>() {
                if last_offset.is_some_and(|o| position.offset <= o) {
                    totals.reordered.fetch_add(1, Ordering::Relaxed);
                }
                last_offset = Some(position.offset);
            }
            if got == count {
                latency.lock().await.add(&local)?;
                totals.done.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
    }
    latency.lock().await.add(&local)?;
    totals.lost.fetch_add(count - got, Ordering::Relaxed);
    Ok(())
}
