//! Logging setup: `tracing` to stderr, text or JSON, filter from `RUST_LOG` or settings; the
//! start-up banner; and the rate-limited account of malformed input.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

use crate::config::LogSettings;

/// Installs the global subscriber; a second call is a no-op (tests embed several gateways).
pub fn init(log: &LogSettings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if log.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Routes panic messages through `tracing` too (an ERROR line in the configured format instead
/// of plain text on stderr). Only for the binary: a test process keeps its own panic output.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            backtrace = %std::backtrace::Backtrace::capture(),
            "{info}"
        );
    }));
}

/// Logs the start-up banner (`listening on <scheme>://<address> (engine: <engine>)`, with the
/// version and commit) and, when `address_file` is set, writes the same line to that file: a
/// temporary file renamed into place, so a reader never sees half a line.
pub fn banner(
    scheme: &str,
    address: &str,
    engine: &str,
    address_file: Option<&str>,
) -> std::io::Result<()> {
    let line = format!("listening on {scheme}://{address} (engine: {engine})");
    tracing::info!(
        address,
        engine,
        version = crate::metrics::VERSION,
        commit = crate::metrics::COMMIT,
        "{line}"
    );
    if let Some(path) = address_file {
        let tmp = format!("{path}.tmp.{}", std::process::id());
        std::fs::write(&tmp, format!("{line}\n"))?;
        std::fs::rename(&tmp, path)?;
    }
    Ok(())
}

/// How often at most the summary of malformed input is logged at WARN.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Malformed input since the last summary, and when that was (ms since `START`).
static MALFORMED: AtomicU64 = AtomicU64::new(0);
static LAST_SUMMARY_MS: AtomicU64 = AtomicU64::new(0);
static START: OnceLock<Instant> = OnceLock::new();

/// Notes input the gateway refused as malformed (a broken request head, a failed TLS
/// handshake, invalid WebSocket framing): the detail goes to DEBUG, and at most once a minute
/// a WARN line says how many there were, so a flood of garbage cannot flood the logs.
pub fn malformed(what: &'static str, detail: &dyn std::fmt::Display) {
    tracing::debug!(what, detail = %detail, "refused malformed input");
    let count = MALFORMED.fetch_add(1, Ordering::Relaxed) + 1;
    let start = *START.get_or_init(Instant::now);
    let now_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    let last = LAST_SUMMARY_MS.load(Ordering::Relaxed);
    let due = last == 0 || now_ms.saturating_sub(last) >= SUMMARY_EVERY.as_millis() as u64;
    if due
        && LAST_SUMMARY_MS
            .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let total = MALFORMED.swap(0, Ordering::Relaxed).max(count.min(1));
        // (`count` keeps the line truthful if another thread swapped in between.)
        tracing::warn!(
            count = total,
            latest = what,
            "refused malformed input (details at DEBUG; at most one such line a minute)"
        );
    }
}

/// The access-log line of one request (`log.access`): the path without its query string, which
/// may carry a token; the time is to the response head (a stream goes on after it).
pub fn access(
    method: &http::Method,
    path: &str,
    status: http::StatusCode,
    started: Instant,
    client: std::net::IpAddr,
) {
    tracing::info!(
        target: "gateway::access",
        method = %method,
        path,
        status = status.as_u16(),
        ms = started.elapsed().as_secs_f64() * 1000.0,
        %client,
    );
}
