//! Subscriber connections: raw TCP from a chosen loopback source address (TLS on top for
//! `https://` targets), SSE over HTTP/1.1 spoken by hand (request, response head, chunked or
//! identity body, [`crate::sse::SseParser`]), WebSocket through tokio-tungstenite (by hand with
//! `permessage-deflate`: [`crate::ws_wire`]), and SSE over
//! HTTP/2 by hand too ([`crate::h2`]): one task per connection carries the streams of several
//! subscribers and feeds each DATA payload straight to that stream's [`crate::sse::SseParser`].
//! Every event is accounted on arrival ([`acct::Acct`]) and flushed into the shared [`Stats`]
//! once per socket read.
//!
//! Reads go into one buffer per runtime thread, borrowed only for the duration of one poll, so
//! an idle connection costs its parser state (a few hundred bytes) rather than a read buffer
//! (plus, over TLS, rustls' connection state).

mod acct;
#[cfg(test)]
mod compressed_tests;
mod h2_group;
mod http1;
mod sub;
#[cfg(test)]
mod tests;
mod ws;
mod ws_deflate;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpSocket, TcpStream};

use crate::account::SeqTracker;
use crate::net::{Alpn, Stream, TlsClient};
use crate::phase::PhaseRx;
use crate::publish::Book;
use crate::stats::Stats;
use crate::target::Url;
use acct::End;
use h2_group::h2_group;
use http1::sse_session;
use sub::{LiveGuard, Sub};
use ws::ws_session;
use ws_deflate::ws_deflate_session;

/// Time allowed for connecting, and for the response head / WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Size of the per-thread read buffer shared by all SSE connections of a thread.
const READ_BUF: usize = 64 * 1024;

/// Which protocol subscribers speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// Server-Sent Events.
    Sse,
    /// WebSocket (gateway protocol).
    Ws,
}

impl Transport {
    /// Name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sse => "sse",
            Self::Ws => "ws",
        }
    }
}

/// What every subscriber task is told by the scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Connect to the primary targets and receive.
    Run,
    /// Drop the connection now (storm) and wait.
    Disconnect,
    /// Reconnect to the storm targets, resuming from the last id.
    Reconnect,
    /// Finish and report.
    Stop,
}

/// How subscribers connect.
#[derive(Debug)]
pub struct SubPlan {
    /// Protocol.
    pub transport: Transport,
    /// Primary targets (`--url` gateways, or the `--sub-url` template); round-robin.
    pub targets: Vec<Url>,
    /// Storm reconnect targets (`--storm-url`).
    pub storm_targets: Vec<Url>,
    /// Whether targets are `--sub-url` templates of another server (no gateway checks).
    pub template: bool,
    /// Source addresses, round-robin.
    pub sources: Vec<Ipv4Addr>,
    /// Whether to reconnect (and resume) after an unexpected disconnect.
    pub reconnect: bool,
    /// TLS client, when any target is `https://`.
    pub tls: Option<TlsClient>,
    /// SSE over HTTP/2 (h2 for `https://`, h2c with prior knowledge for `http://`).
    pub http2: bool,
    /// With `http2`: subscribers per connection (subscriber i uses connection i / N).
    pub streams_per_conn: usize,
    /// Ask for compression and inflate: gzip for SSE over HTTP/1.1, `permessage-deflate` for
    /// WebSocket.
    pub compressed: bool,
    /// With `compressed`: inflate each distinct message (WebSocket) or piece (SSE) once per
    /// thread.
    pub inflate_once: bool,
    /// With `compressed` WebSocket: ask for `server_no_context_takeover` instead of offering
    /// what browsers do.
    pub ws_no_server_context: bool,
}

/// State shared by all subscriber tasks.
pub struct Shared {
    /// Connection plan.
    pub plan: SubPlan,
    /// Counters and histograms.
    pub stats: Stats,
    /// Channels and what was published to them.
    pub book: Arc<Book>,
    /// When the storm's reconnect was ordered (per-client resume times count from it).
    pub storm_start: std::sync::OnceLock<Instant>,
    /// Set by the `failover` scenario: per-channel-class latency around a primary's kill.
    pub watch: std::sync::OnceLock<Arc<crate::failover::Watch>>,
}

/// What a subscriber hands back at the end.
pub struct SubResult {
    /// Channel index.
    pub channel: usize,
    /// Its sequence accounting.
    pub seq: SeqTracker,
}

/// Microseconds since the Unix epoch.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// When to try again after a connection ended: 1-2 s later, as browsers do.
fn retry_time() -> tokio::time::Instant {
    let jitter = Duration::from_millis(fastrand::u64(0..1000));
    tokio::time::Instant::now() + Duration::from_secs(1) + jitter
}

/// Subscribers `first .. first + n`, to the `Stop` phase: one (n = 1) on its own connection, or,
/// with HTTP/2, all of them as streams of one connection. Returns those that got established.
pub async fn subscribers(
    first: usize,
    n: usize,
    sh: Arc<Shared>,
    phase: PhaseRx,
) -> Vec<SubResult> {
    if sh.plan.http2 {
        // Boxed: HTTP/1.1 subscribers' tasks should not be sized for a group's state.
        Box::pin(h2_group(first, n, &sh, phase)).await
    } else {
        subscriber(first, sh, phase).await.into_iter().collect()
    }
}

/// One subscriber, from its first connect to the `Stop` phase. Returns `None` when it never
/// got established (it then counts as a failed connection, with the reason).
pub async fn subscriber(idx: usize, sh: Arc<Shared>, mut phase: PhaseRx) -> Option<SubResult> {
    let plan = &sh.plan;
    let mut sub = Sub::new(idx, &sh);
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let now_phase = phase.current();
        match now_phase {
            Phase::Stop => break,
            Phase::Disconnect => {
                phase.changed().await;
                continue;
            }
            Phase::Run | Phase::Reconnect => {}
        }
        if let Some(at) = retry_at.take() {
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = phase.changed() => continue,
            }
        }
        let storm = now_phase == Phase::Reconnect;
        if storm && sub.acct.storm.is_none() {
            let start = sh.storm_start.get().copied().unwrap_or_else(Instant::now);
            sub.acct.storm = Some((start, false));
        }
        let targets = if storm {
            &plan.storm_targets
        } else {
            &plan.targets
        };
        let Some(url) = targets.get(idx % targets.len().max(1)) else {
            break;
        };
        sub.up = false;
        let end = tokio::select! {
            biased;
            _ = phase.changed() => continue,
            end = session(&sh, &mut sub, url, storm) => end,
        };
        if !sub.ended(&sh, &end, storm) {
            if !sub.ever_up {
                return None;
            }
            // Wait for the end of the run without reconnecting.
            while phase.current() != Phase::Stop {
                phase.changed().await;
            }
            break;
        }
        retry_at = Some(retry_time());
    }
    sub.result(&sh)
}

async fn session(sh: &Shared, sub: &mut Sub, url: &Url, storm: bool) -> End {
    let mut live = LiveGuard {
        stats: &sh.stats,
        up: false,
    };
    let stream = match open(sh, sub.source, url, Alpn::Http1).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    match sh.plan.transport {
        Transport::Sse => sse_session(sh, sub, url, stream, storm, &mut live).await,
        Transport::Ws if sh.plan.compressed => {
            ws_deflate_session(sh, sub, url, stream, storm, &mut live).await
        }
        Transport::Ws => ws_session(sh, sub, url, stream, storm, &mut live).await,
    }
}

/// A new connection to `url`: TCP, and the TLS handshake (offering `alpn`) for `https://`.
async fn open(sh: &Shared, source: Ipv4Addr, url: &Url, alpn: Alpn) -> Result<Stream, End> {
    let tcp = connect(source, url.addr).await?;
    Stats::bump(&sh.stats.tcp_connections);
    if !url.is_tls() {
        return Ok(Stream::Plain(tcp));
    }
    let Some(tls) = &sh.plan.tls else {
        return Err(End::Tls(io::Error::other("no TLS configuration")));
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(tcp, url, alpn)).await {
        Err(_) => Err(End::Timeout),
        Ok(Err(e)) => Err(End::Tls(e)),
        Ok(Ok(s)) => Ok(s),
    }
}

async fn connect(source: Ipv4Addr, addr: SocketAddr) -> Result<TcpStream, End> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(End::Connect)?;
    if addr.is_ipv4() {
        socket
            .bind(SocketAddr::new(source.into(), 0))
            .map_err(End::Connect)?;
    }
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr))
        .await
        .map_err(|_| End::Timeout)?
        .map_err(End::Connect)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Marks a session established (first time: a new subscriber; later: a reconnect).
fn establish(sh: &Shared, sub: &mut Sub, storm: bool, live: &mut LiveGuard<'_>) {
    if sub.up {
        return;
    }
    sub.up = true;
    live.set();
    if !sub.ever_up {
        sub.ever_up = true;
        Stats::bump(&sh.stats.established);
        sh.book.subscribers[sub.acct.channel].fetch_add(1, Ordering::Relaxed);
    } else if storm {
        Stats::bump(&sh.stats.resumed);
    } else {
        Stats::bump(&sh.stats.reconnects);
    }
    if storm {
        sub.acct.check_storm(sh);
    }
}
