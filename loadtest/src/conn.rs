//! Subscriber connections: raw TCP from a chosen loopback source address (TLS on top for
//! `https://` targets), SSE over HTTP/1.1 spoken by hand (request, response head, chunked or
//! identity body, [`SseParser`]), WebSocket through tokio-tungstenite, and SSE over HTTP/2 by
//! hand too ([`crate::h2`]): one task per connection carries the streams of several
//! subscribers and feeds each DATA payload straight to that stream's [`SseParser`]. Every event
//! is accounted on arrival ([`Acct`]) and flushed into the shared [`Stats`] once per socket read.
//!
//! Reads go into one buffer per runtime thread, borrowed only for the duration of one poll, so
//! an idle connection costs its parser state (a few hundred bytes) rather than a read buffer
//! (plus, over TLS, rustls' connection state).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::account::{IdTracker, SeqOutcome, SeqTracker, parse_position};
use crate::h2;
use crate::http::{BodyKind, ChunkedDecoder, parse_head};
use crate::net::{Alpn, Stream, TlsClient};
use crate::payload::{Stamp, WsMsg, parse_ws};
use crate::phase::PhaseRx;
use crate::publish::Book;
use crate::sse::{SseItem, SseParser};
use crate::stats::{Batch, Stats};
use crate::target::{Url, fill};

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
    /// SSE over HTTP/1.1: ask for gzip and inflate.
    pub compressed: bool,
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

/// Why a session ended.
#[derive(Debug)]
enum End {
    /// TCP connect failed.
    Connect(io::Error),
    /// The TLS handshake failed (or ALPN did not agree).
    Tls(io::Error),
    /// HTTP/2 failed: handshake, request, or the stream (reset, GOAWAY, connection error).
    Http2(String),
    /// Connect, head or handshake took too long.
    Timeout,
    /// The response was not 200 (or the upgrade was refused with this status).
    Status(u16),
    /// The server broke the protocol.
    Protocol(String),
    /// The WebSocket subscribe was refused.
    WsError(String),
    /// A socket error after connecting.
    Io(io::Error),
    /// The server ended the stream.
    Closed,
}

impl End {
    fn reason(&self) -> String {
        match self {
            Self::Connect(e) => format!("connect_{:?}", e.kind()).to_ascii_lowercase(),
            Self::Tls(e) => format!(
                "tls: {}",
                e.to_string().chars().take(60).collect::<String>()
            ),
            Self::Http2(m) => format!("http2: {}", m.chars().take(60).collect::<String>()),
            Self::Timeout => "timeout".into(),
            Self::Status(s) => format!("status_{s}"),
            Self::Protocol(m) => format!("protocol: {}", m.chars().take(60).collect::<String>()),
            Self::WsError(code) => format!("ws_error_{code}"),
            Self::Io(e) => format!("io_{:?}", e.kind()).to_ascii_lowercase(),
            Self::Closed => "closed".into(),
        }
    }
}

/// Per-subscriber accounting, independent of the transport.
struct Acct {
    shard: usize,
    channel: usize,
    seq: SeqTracker,
    ids: IdTracker,
    check_ids: bool,
    batch: Batch,
    /// Set while a storm reconnect is under way: (reconnect start, completion recorded).
    storm: Option<(Instant, bool)>,
}

impl Acct {
    #[inline]
    fn on_data(&mut self, stamp: Stamp, now_us: u64, sh: &Shared) {
        let (Some(seq), Some(ts)) = (stamp.seq, stamp.ts) else {
            self.batch.c.malformed += 1;
            return;
        };
        let c = &mut self.batch.c;
        c.deliveries += 1;
        let outcome = self.seq.on_seq(seq);
        if let Some(w) = sh.watch.get() {
            w.event(self.channel, ts, now_us, &outcome);
        }
        match outcome {
            SeqOutcome::InOrder => c.in_order += 1,
            SeqOutcome::Jump(n) => {
                c.in_order += 1;
                c.lost = c.lost.saturating_add(n);
            }
            SeqOutcome::Duplicate => c.duplicated += 1,
            SeqOutcome::Late => c.reordered += 1,
        }
        if self.batch.latency(now_us.saturating_sub(ts)) {
            sh.stats.flush(self.shard, &mut self.batch);
        }
        if self.storm.is_some() {
            self.check_storm(sh);
        }
    }

    /// Records the time to completion once this subscriber has every event after a storm.
    fn check_storm(&mut self, sh: &Shared) {
        let Some((start, done)) = &mut self.storm else {
            return;
        };
        if *done || !self.seq.complete(sh.book.expected(self.channel)) {
            return;
        }
        *done = true;
        let us = start.elapsed().as_micros() as u64;
        crate::stats::lock(&sh.stats.storm_latency).saturating_record(us.max(1));
        Stats::bump(&sh.stats.storm_complete);
    }

    fn on_sse(&mut self, item: SseItem<'_>, now_us: u64, sh: &Shared) {
        match item {
            SseItem::Marker { id } => {
                if self.check_ids {
                    self.ids.marker(id);
                }
            }
            SseItem::Event {
                id,
                id_in_block,
                name,
                stamp,
            } => match name {
                b"" | b"message" => {
                    self.on_data(stamp, now_us, sh);
                    if self.check_ids && id_in_block {
                        let before = self.ids.jumps;
                        self.ids.event(id);
                        self.batch.c.id_jumps += self.ids.jumps - before;
                    }
                }
                b"gap" => {
                    self.batch.c.gaps += 1;
                    if let Some(w) = sh.watch.get() {
                        w.gap(self.channel);
                    }
                    if self.check_ids {
                        self.ids.marker(id);
                    }
                }
                _ => self.batch.c.other_events += 1,
            },
        }
    }

    fn on_ws(&mut self, msg: WsMsg<'_>, now_us: u64, sh: &Shared) -> Option<Result<(), String>> {
        match msg {
            WsMsg::Event { id, name, stamp } => {
                match name {
                    None | Some(b"message") => {
                        self.on_data(stamp, now_us, sh);
                        if self.check_ids {
                            let before = self.ids.jumps;
                            self.ids.event(id.unwrap_or(b""));
                            self.batch.c.id_jumps += self.ids.jumps - before;
                        }
                    }
                    Some(_) => self.batch.c.other_events += 1,
                }
                None
            }
            WsMsg::Subscribed { position } => {
                if self.check_ids {
                    self.ids.marker(position.unwrap_or(b""));
                }
                Some(Ok(()))
            }
            WsMsg::Gap { first_available } => {
                self.batch.c.gaps += 1;
                if self.check_ids {
                    let prev = first_available
                        .and_then(parse_position)
                        .map(|p| shared::Position::new(p.epoch, p.offset.saturating_sub(1)));
                    self.ids.set(prev);
                }
                None
            }
            WsMsg::Error { code } => {
                self.batch.c.ws_errors += 1;
                Some(Err(
                    String::from_utf8_lossy(code.unwrap_or(b"unknown")).into_owned()
                ))
            }
            WsMsg::Other => None,
        }
    }
}

/// Transport state of one subscriber, kept across its sessions.
struct Sub {
    source: Ipv4Addr,
    acct: Acct,
    /// SSE parser; its last id survives reconnects (sent as `Last-Event-ID`).
    sse: SseParser,
    /// Last WebSocket event id (sent as `since`).
    ws_last_id: Vec<u8>,
    /// Whether the current session got established.
    up: bool,
    /// Whether any session got established.
    ever_up: bool,
    /// The current session's gzip decoder (`--compressed`).
    gzip: Option<Box<crate::inflate::GzipStream>>,
}

/// Keeps the `live` gauge right however a session ends (including being dropped).
struct LiveGuard<'a> {
    stats: &'a Stats,
    up: bool,
}

impl LiveGuard<'_> {
    fn set(&mut self) {
        if !self.up {
            self.up = true;
            self.stats.live.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn clear(&mut self) {
        if self.up {
            self.up = false;
            self.stats.live.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        if self.up {
            self.stats.live.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Sub {
    /// Subscriber `idx`'s state before its first connection.
    fn new(idx: usize, sh: &Shared) -> Self {
        let plan = &sh.plan;
        Self {
            source: plan.sources[idx % plan.sources.len()],
            acct: Acct {
                shard: idx,
                channel: idx % sh.book.names.len(),
                seq: SeqTracker::default(),
                ids: IdTracker::default(),
                check_ids: !plan.template,
                batch: Batch::default(),
                storm: None,
            },
            sse: SseParser::new(),
            gzip: None,
            ws_last_id: Vec::new(),
            up: false,
            ever_up: false,
        }
    }

    /// Accounts the end of a session (or of an HTTP/2 stream): flushes, counts the disconnect
    /// or the failure. Returns false when the subscriber is finished: it never got established
    /// (a failed connection), or must not reconnect.
    fn ended(&mut self, sh: &Shared, end: &End, storm: bool) -> bool {
        sh.stats.flush(self.acct.shard, &mut self.acct.batch);
        if self.up {
            Stats::bump(&sh.stats.disconnects);
        } else if !self.ever_up && !storm {
            sh.stats.fail(&end.reason());
            Stats::bump(&sh.stats.failed);
            return false;
        } else {
            Stats::bump(&sh.stats.reconnect_failures);
            sh.stats.fail(&format!("reconnect_{}", end.reason()));
        }
        self.up = false;
        sh.plan.reconnect
    }

    fn result(mut self, sh: &Shared) -> Option<SubResult> {
        sh.stats.flush(self.acct.shard, &mut self.acct.batch);
        self.ever_up.then_some(SubResult {
            channel: self.acct.channel,
            seq: self.acct.seq,
        })
    }
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

/// The body framing state of one SSE response.
enum Body {
    Chunked(ChunkedDecoder),
    Length(u64),
    UntilClose,
}

thread_local! {
    static READ_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_BUF].into_boxed_slice());
}

/// Waits for data and hands it to `f` within the same poll, in the thread's shared buffer.
/// `Ok(None)` is end of stream.
async fn read_shared<R>(
    stream: &mut Stream,
    mut f: impl FnMut(&[u8]) -> R,
) -> io::Result<Option<R>> {
    std::future::poll_fn(|cx| {
        let shared = READ_BUFFER.try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => poll_into(stream, cx, &mut buf, &mut f),
            Err(_) => poll_into(stream, cx, &mut [0u8; 4096], &mut f),
        });
        match shared {
            Ok(poll) => poll,
            Err(_) => poll_into(stream, cx, &mut [0u8; 4096], &mut f),
        }
    })
    .await
}

fn poll_into<R>(
    stream: &mut Stream,
    cx: &mut Context<'_>,
    buf: &mut [u8],
    f: &mut impl FnMut(&[u8]) -> R,
) -> Poll<io::Result<Option<R>>> {
    let mut rb = ReadBuf::new(buf);
    match Pin::new(stream).poll_read(cx, &mut rb) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready(Ok(None)),
        Poll::Ready(Ok(())) => Poll::Ready(Ok(Some(f(rb.filled())))),
    }
}

async fn sse_session(
    sh: &Shared,
    sub: &mut Sub,
    url: &Url,
    mut stream: Stream,
    storm: bool,
    live: &mut LiveGuard<'_>,
) -> End {
    let path = sse_path(sh, sub, url);
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n",
        url.host
    );
    if sh.plan.compressed {
        req.push_str("Accept-Encoding: gzip\r\n");
    }
    let last_id = sub.sse.last_id();
    if !last_id.is_empty() {
        req.push_str("Last-Event-ID: ");
        req.push_str(&String::from_utf8_lossy(last_id));
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let head = tokio::time::timeout(CONNECT_TIMEOUT, async {
        stream.write_all(req.as_bytes()).await.map_err(End::Io)?;
        // TLS: make sure the record left rustls' buffer.
        stream.flush().await.map_err(End::Io)?;
        read_head(&mut stream).await
    })
    .await;
    let (head, rest) = match head {
        Err(_) => return End::Timeout,
        Ok(Err(e)) => return e,
        Ok(Ok(h)) => h,
    };
    if head.status != 200 {
        return End::Status(head.status);
    }
    let mut body = match head.body {
        BodyKind::Chunked => Body::Chunked(ChunkedDecoder::new()),
        BodyKind::Length(n) => Body::Length(n),
        BodyKind::UntilClose => Body::UntilClose,
    };
    // A new stream: keep the last id, drop any partial line of the old one.
    sub.sse = SseParser::with_last_id(sub.sse.last_id());
    sub.gzip = sh.plan.compressed.then(Box::default);
    if sh.plan.template {
        establish(sh, sub, storm, live);
    }
    if !rest.is_empty() {
        match process_sse(sh, sub, &mut body, &rest, storm, live) {
            Ok(true) => return End::Closed,
            Ok(false) => {}
            Err(e) => return e,
        }
    }
    loop {
        let read = read_shared(&mut stream, |bytes| {
            process_sse(sh, sub, &mut body, bytes, storm, live)
        })
        .await;
        match read {
            Ok(Some(Ok(false))) => {}
            Ok(Some(Ok(true))) | Ok(None) => return End::Closed,
            Ok(Some(Err(e))) => return e,
            Err(e) => return End::Io(e),
        }
    }
}

/// Handles one read of an SSE response body; returns whether the body is complete.
fn process_sse(
    sh: &Shared,
    sub: &mut Sub,
    body: &mut Body,
    bytes: &[u8],
    storm: bool,
    live: &mut LiveGuard<'_>,
) -> Result<bool, End> {
    let now = unix_micros();
    let mut any = false;
    let Sub {
        sse, acct, gzip, ..
    } = sub;
    acct.batch.c.reads += 1;
    let mut sink = |item: SseItem<'_>| acct.on_sse(item, now, sh);
    let mut bad_gzip = None;
    // The body's bytes, inflated first on a compressed stream.
    let mut feed = |data: &[u8]| match gzip {
        Some(z) => {
            if let Err(e) = z.feed(data, &mut |plain| sse.feed(plain, &mut sink)) {
                bad_gzip = Some(e);
            }
        }
        None => sse.feed(data, &mut sink),
    };
    let done = match body {
        Body::Chunked(d) => d
            .feed(bytes, |data| {
                any = true;
                feed(data);
            })
            .map_err(|e| End::Protocol(e.to_string())),
        Body::Length(left) => {
            let n = bytes
                .len()
                .min(usize::try_from(*left).unwrap_or(usize::MAX));
            any = n > 0;
            feed(&bytes[..n]);
            *left -= n as u64;
            Ok(*left == 0)
        }
        Body::UntilClose => {
            any = true;
            feed(bytes);
            Ok(false)
        }
    };
    if let Some(e) = bad_gzip {
        return Err(End::Protocol(e));
    }
    sh.stats.flush(sub.acct.shard, &mut sub.acct.batch);
    // Established by any body byte, even if garbage follows in the same read.
    if any && !sub.up {
        establish(sh, sub, storm, live);
    }
    done
}

async fn read_head(stream: &mut Stream) -> Result<(crate::http::ResponseHead, Vec<u8>), End> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.reserve(1024);
        let n = stream.read_buf(&mut buf).await.map_err(End::Io)?;
        if n == 0 {
            return Err(End::Closed);
        }
        match parse_head(&buf) {
            Ok(Some(head)) => {
                let rest = buf.split_off(head.len);
                return Ok((head, rest));
            }
            Ok(None) => {}
            Err(e) => return Err(End::Protocol(e.to_string())),
        }
    }
}

/// The SSE request path of a subscriber (gateway `/sse?channel=C`, or the `--sub-url` template).
fn sse_path(sh: &Shared, sub: &Sub, url: &Url) -> String {
    let channel = &sh.book.names[sub.acct.channel];
    if sh.plan.template {
        fill(&url.path, channel)
    } else {
        format!("/sse?channel={channel}")
    }
}

/// One subscriber's stream on a shared HTTP/2 connection.
struct Slot<'a> {
    sub: Sub,
    live: LiveGuard<'a>,
    /// Its stream on the current connection (0: none).
    stream: u32,
    /// When the stream was requested (its response head is due within [`CONNECT_TIMEOUT`]).
    requested: tokio::time::Instant,
    /// Whether the response head said 200 (its body is the event stream).
    ok: bool,
    /// DATA received since this stream's window was last topped up.
    unacked: u32,
    /// When to request a stream again (`None`: at the next connection).
    retry_at: Option<tokio::time::Instant>,
    /// Finished: failed before ever being established, or ended with --no-reconnect.
    done: bool,
    /// Got data in the current read (to be flushed once).
    touched: bool,
}

impl Slot<'_> {
    /// Accounts the end of this slot's stream (or of its attempt to get one).
    fn ended(&mut self, sh: &Shared, end: &End) {
        self.stream = 0;
        self.ok = false;
        self.unacked = 0;
        self.live.clear();
        if self.sub.ended(sh, end, false) {
            self.retry_at = Some(retry_time());
        } else {
            self.done = true;
        }
    }

    fn due(&self, now: tokio::time::Instant) -> bool {
        !self.done && self.stream == 0 && self.retry_at.is_none_or(|t| t <= now)
    }
}

/// The protocol state of one HTTP/2 connection.
struct H2Conn {
    reader: h2::FrameReader,
    /// Stream id -> slot index.
    by_id: HashMap<u32, usize>,
    next_id: u32,
    /// DATA received since the connection window was last topped up.
    unacked: u32,
    /// Set when the server sent GOAWAY or broke the protocol: the connection is over.
    over: Option<End>,
    /// Streams that got data in the current read (kept to reuse its allocation).
    touched: Vec<u32>,
}

/// Subscribers `first .. first + n` as streams of one HTTP/2 connection (h2 over TLS, or h2c
/// with prior knowledge), to the `Stop` phase. A stream that ends is requested again 1-2 s
/// later on the same connection (with `Last-Event-ID`); when the connection ends, every stream
/// on it ends, and a new connection is opened for them 1-2 s later.
async fn h2_group(first: usize, n: usize, sh: &Shared, mut phase: PhaseRx) -> Vec<SubResult> {
    let plan = &sh.plan;
    let group = first / plan.streams_per_conn.max(1);
    let source = plan.sources[group % plan.sources.len()];
    let Some(url) = plan.targets.get(group % plan.targets.len().max(1)) else {
        return Vec::new();
    };
    let mut slots: Vec<Slot<'_>> = (first..first + n)
        .map(|idx| Slot {
            sub: Sub::new(idx, sh),
            live: LiveGuard {
                stats: &sh.stats,
                up: false,
            },
            stream: 0,
            requested: tokio::time::Instant::now(),
            ok: false,
            unacked: 0,
            retry_at: None,
            done: false,
            touched: false,
        })
        .collect();
    loop {
        if phase.current() == Phase::Stop {
            break;
        }
        // The next connection when the first stream wants one.
        let Some(at) = slots
            .iter()
            .filter(|s| !s.done)
            .map(|s| s.retry_at.unwrap_or_else(tokio::time::Instant::now))
            .min()
        else {
            // Nothing left to connect: wait for the end of the run.
            phase.changed().await;
            continue;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = phase.changed() => continue,
        }
        let end = tokio::select! {
            biased;
            _ = wait_stop(&mut phase) => break,
            end = h2_connection(sh, url, source, &mut slots) => end,
        };
        for s in slots.iter_mut().filter(|s| s.stream != 0) {
            s.ended(sh, &end);
        }
    }
    slots
        .into_iter()
        .filter_map(|s| {
            drop(s.live);
            s.sub.result(sh)
        })
        .collect()
}

async fn wait_stop(phase: &mut PhaseRx) {
    while phase.current() != Phase::Stop {
        phase.changed().await;
    }
}

/// One HTTP/2 connection, until it ends; returns why. Streams are requested for every slot that
/// is due, now and whenever another one becomes due.
async fn h2_connection(sh: &Shared, url: &Url, source: Ipv4Addr, slots: &mut [Slot<'_>]) -> End {
    let now = tokio::time::Instant::now();
    let mut stream = match open(sh, source, url, Alpn::H2).await {
        Ok(s) => s,
        Err(e) => {
            // Every stream that was due failed with the connection.
            for s in slots.iter_mut().filter(|s| s.due(now)) {
                s.ended(sh, &e);
            }
            return End::Closed;
        }
    };
    let mut conn = H2Conn {
        reader: h2::FrameReader::new(),
        by_id: HashMap::new(),
        next_id: 1,
        unacked: 0,
        over: None,
        touched: Vec::new(),
    };
    let mut out = Vec::with_capacity(4096);
    h2::write_preface(&mut out);
    loop {
        let now = tokio::time::Instant::now();
        request_due(sh, url, &mut conn, slots, now, &mut out);
        if !out.is_empty() {
            let written = tokio::time::timeout(CONNECT_TIMEOUT, async {
                stream.write_all(&out).await?;
                stream.flush().await
            })
            .await;
            out.clear();
            match written {
                Err(_) => return End::Timeout,
                Ok(Err(e)) => return End::Io(e),
                Ok(Ok(())) => {}
            }
        }
        // Wake for the next retry, or the first response head that is overdue.
        let wake = slots
            .iter()
            .filter_map(|s| match (s.done, s.stream, s.ok) {
                (true, _, _) | (false, _, true) => None,
                (false, 0, false) => s.retry_at,
                (false, _, false) => Some(s.requested + CONNECT_TIMEOUT),
            })
            .min();
        let read = tokio::select! {
            biased;
            read = read_shared(&mut stream, |bytes| {
                on_h2_bytes(sh, &mut conn, slots, bytes, &mut out)
            }) => Some(read),
            _ = tokio::time::sleep_until(wake.unwrap_or(now + MAX_IDLE_WAKE)) => None,
        };
        match read {
            Some(Ok(Some(()))) => {}
            Some(Ok(None)) => return End::Closed,
            Some(Err(e)) => return End::Io(e),
            None => {
                let now = tokio::time::Instant::now();
                for s in slots.iter_mut() {
                    if s.stream != 0 && !s.ok && s.requested + CONNECT_TIMEOUT <= now {
                        h2::write_cancel(&mut out, s.stream);
                        conn.by_id.remove(&s.stream);
                        s.ended(sh, &End::Timeout);
                    }
                }
            }
        }
        if let Some(end) = conn.over.take() {
            return end;
        }
    }
}

/// Longest sleep between checks of a connection's timers when none is due.
const MAX_IDLE_WAKE: Duration = Duration::from_secs(3600);

/// Writes a request for every slot that is due.
fn request_due(
    sh: &Shared,
    url: &Url,
    conn: &mut H2Conn,
    slots: &mut [Slot<'_>],
    now: tokio::time::Instant,
    out: &mut Vec<u8>,
) {
    for (i, s) in slots.iter_mut().enumerate() {
        if !s.due(now) {
            continue;
        }
        let id = conn.next_id;
        conn.next_id += 2;
        let path = sse_path(sh, &s.sub, url);
        let last_id = s.sub.sse.last_id();
        let mut headers: Vec<(&[u8], &[u8])> = vec![
            (b"accept", b"text/event-stream"),
            (b"cache-control", b"no-cache"),
        ];
        if !last_id.is_empty() {
            headers.push((b"last-event-id", last_id));
        }
        h2::write_get(out, id, url.is_tls(), &url.host, &path, &headers);
        conn.by_id.insert(id, i);
        s.stream = id;
        s.requested = now;
        s.retry_at = None;
        s.sub.up = false;
    }
}

/// Handles one read of an HTTP/2 connection: every stream's data goes through its own SSE
/// parser and accounting; control frames are answered into `out`.
fn on_h2_bytes(
    sh: &Shared,
    conn: &mut H2Conn,
    slots: &mut [Slot<'_>],
    bytes: &[u8],
    out: &mut Vec<u8>,
) {
    let now_us = unix_micros();
    let H2Conn {
        reader,
        by_id,
        unacked,
        over,
        touched,
        ..
    } = conn;
    let fed = reader.feed(bytes, &mut |event| match event {
        h2::Event::Data { stream, data } => {
            let Some(s) = by_id.get(&stream).map(|&i| &mut slots[i]) else {
                return;
            };
            if !s.ok {
                return;
            }
            let Slot { sub, live, .. } = s;
            let Sub { sse, acct, .. } = sub;
            sse.feed(data, &mut |item| acct.on_sse(item, now_us, sh));
            // Established by any body byte, even if garbage follows.
            if !sub.up {
                establish(sh, sub, false, live);
            }
            if !s.touched {
                s.touched = true;
                touched.push(stream);
            }
        }
        h2::Event::DataEnd {
            stream,
            flow,
            end_stream,
        } => {
            *unacked += flow;
            if *unacked >= h2::REPLENISH {
                h2::write_window_update(out, 0, *unacked);
                *unacked = 0;
            }
            let Some(&i) = by_id.get(&stream) else {
                return;
            };
            let s = &mut slots[i];
            s.unacked += flow;
            if end_stream {
                by_id.remove(&stream);
                flush_slot(sh, s);
                s.ended(sh, &End::Closed);
            } else if s.unacked >= h2::REPLENISH {
                h2::write_window_update(out, stream, s.unacked);
                s.unacked = 0;
            }
        }
        h2::Event::Headers {
            stream,
            block,
            end_stream,
        } => {
            let Some(&i) = by_id.get(&stream) else {
                return;
            };
            let s = &mut slots[i];
            let end = if s.ok {
                // Trailers.
                end_stream.then_some(End::Closed)
            } else {
                match h2::status(block) {
                    Some(200) => {
                        s.ok = true;
                        // A new stream: keep the last id, drop any partial line of the old one.
                        s.sub.sse = SseParser::with_last_id(s.sub.sse.last_id());
                        if sh.plan.template {
                            establish(sh, &mut s.sub, false, &mut s.live);
                        }
                        end_stream.then_some(End::Closed)
                    }
                    Some(code) => Some(End::Status(code)),
                    None => Some(End::Http2("unreadable response head".into())),
                }
            };
            if let Some(end) = end {
                if !end_stream {
                    h2::write_cancel(out, stream);
                }
                by_id.remove(&stream);
                flush_slot(sh, s);
                s.ended(sh, &end);
            }
        }
        h2::Event::Reset { stream, code } => {
            if let Some(i) = by_id.remove(&stream) {
                let s = &mut slots[i];
                flush_slot(sh, s);
                s.ended(sh, &End::Http2(format!("reset {}", h2::error_name(code))));
            }
        }
        h2::Event::Settings => h2::write_settings_ack(out),
        h2::Event::Ping(payload) => h2::write_ping_ack(out, &payload),
        h2::Event::GoAway { code, .. } => {
            // Streams the server did not take are refused; the others end with the connection.
            // Either way the subscribers come back on a new connection.
            *over = Some(End::Http2(format!("goaway {}", h2::error_name(code))));
        }
    });
    if let Err(e) = fed {
        *over = Some(End::Http2(e.to_string()));
    }
    for stream in touched.drain(..) {
        if let Some(&i) = by_id.get(&stream) {
            flush_slot(sh, &mut slots[i]);
        }
    }
}

/// Counts one read for a stream that got data in it, and flushes its batch.
fn flush_slot(sh: &Shared, s: &mut Slot<'_>) {
    if s.touched {
        s.touched = false;
        s.sub.acct.batch.c.reads += 1;
    }
    sh.stats.flush(s.sub.acct.shard, &mut s.sub.acct.batch);
}

async fn ws_session(
    sh: &Shared,
    sub: &mut Sub,
    url: &Url,
    stream: Stream,
    storm: bool,
    live: &mut LiveGuard<'_>,
) -> End {
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let request = format!(
        "{}://{}/ws",
        if url.is_tls() { "wss" } else { "ws" },
        url.host
    );
    let handshake = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)),
    )
    .await;
    let mut ws = match handshake {
        Err(_) => return End::Timeout,
        Ok(Err(tungstenite::Error::Http(resp))) => return End::Status(resp.status().as_u16()),
        Ok(Err(e)) => return End::Protocol(e.to_string()),
        Ok(Ok((ws, _))) => ws,
    };
    let channel = &sh.book.names[sub.acct.channel];
    let mut cmd = format!(r#"{{"type":"subscribe","channel":"{channel}""#);
    if !sub.ws_last_id.is_empty() {
        cmd.push_str(r#","since":""#);
        cmd.push_str(&String::from_utf8_lossy(&sub.ws_last_id));
        cmd.push('"');
    }
    cmd.push('}');
    if let Err(e) = ws.send(tungstenite::Message::text(cmd)).await {
        return End::Protocol(e.to_string());
    }
    loop {
        let first = ws.next().await;
        let now = unix_micros();
        if let Some(end) = handle_ws(sh, sub, first, now, storm, live) {
            return end;
        }
        sub.acct.batch.c.reads += 1;
        // Take whatever else is already buffered before flushing the batch.
        while let Some(next) = ws.next().now_or_never() {
            if let Some(end) = handle_ws(sh, sub, next, now, storm, live) {
                return end;
            }
        }
        sh.stats.flush(sub.acct.shard, &mut sub.acct.batch);
    }
}

fn handle_ws(
    sh: &Shared,
    sub: &mut Sub,
    msg: Option<Result<tungstenite::Message, tungstenite::Error>>,
    now: u64,
    storm: bool,
    live: &mut LiveGuard<'_>,
) -> Option<End> {
    let text = match msg {
        None => return Some(End::Closed),
        Some(Err(tungstenite::Error::Io(e))) => return Some(End::Io(e)),
        Some(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => {
            return Some(End::Closed);
        }
        Some(Err(e)) => return Some(End::Protocol(e.to_string())),
        Some(Ok(tungstenite::Message::Text(t))) => t,
        Some(Ok(tungstenite::Message::Close(_))) => return Some(End::Closed),
        Some(Ok(tungstenite::Message::Binary(_))) => {
            sub.acct.batch.c.other_events += 1;
            return None;
        }
        Some(Ok(_)) => return None,
    };
    let msg = parse_ws(text.as_bytes());
    // Resume from the last event, or from the start position when none came yet.
    if let WsMsg::Event { id: Some(id), .. } | WsMsg::Subscribed { position: Some(id) } = msg {
        sub.ws_last_id.clear();
        sub.ws_last_id.extend_from_slice(id);
    }
    match sub.acct.on_ws(msg, now, sh) {
        Some(Ok(())) => {
            establish(sh, sub, storm, live);
            None
        }
        // An error before the subscription is active refuses the connection; later ones
        // (none expected) are only counted.
        Some(Err(code)) if !sub.up => Some(End::WsError(code)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phase::PhaseTx;
    use tokio::io::AsyncWriteExt;

    fn chunk(out: &mut Vec<u8>, data: &[u8]) {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }

    /// A fake gateway: one SSE response with a start frame, events 0, 1, 3 (2 skipped), 3
    /// again, each in its own chunk, then a malformed chunk; the subscriber must account all of
    /// it and survive the garbage.
    #[tokio::test]
    async fn sse_subscriber_accounts_a_misbehaving_stream() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = vec![0u8; 1024];
            let n = s.read(&mut req).await.unwrap();
            assert!(req[..n].starts_with(b"GET /sse?channel=c0 HTTP/1.1\r\n"));
            let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            chunk(&mut out, b"retry: 2000\nid: ab:0\n\n");
            for (seq, offset) in [(0u64, 1u64), (1, 2), (3, 4), (3, 4)] {
                let mut frame = Vec::new();
                let mut payload = Vec::new();
                crate::payload::write_payload(&mut payload, seq, unix_micros(), 80);
                shared::sse::write_event(&mut frame, Some(&format!("ab:{offset}")), None, &payload);
                chunk(&mut out, &frame);
            }
            out.extend_from_slice(b"zz\r\n");
            s.write_all(&out).await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let book = Arc::new(Book::new("c", 1));
        book.attempted[0].store(4, Ordering::Relaxed);
        let sh = Arc::new(Shared {
            plan: SubPlan {
                transport: Transport::Sse,
                targets: vec![crate::target::parse_url(&format!("http://{addr}")).unwrap()],
                storm_targets: Vec::new(),
                template: false,
                sources: vec![Ipv4Addr::LOCALHOST],
                reconnect: false,
                tls: None,
                http2: false,
                streams_per_conn: 1,
                compressed: false,
            },
            stats: Stats::new(),
            book,
            storm_start: std::sync::OnceLock::new(),
            watch: std::sync::OnceLock::new(),
        });
        let phase = PhaseTx::new(Phase::Run);
        let task = tokio::spawn(subscriber(0, sh.clone(), phase.subscribe()));
        for _ in 0..200 {
            if Stats::get(&sh.stats.disconnects) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        phase.set(Phase::Stop);
        let result = task.await.unwrap().expect("established");
        let c = sh.stats.counters();
        assert_eq!(c.deliveries, 4);
        assert_eq!((c.in_order, c.lost, c.duplicated), (3, 1, 1));
        assert_eq!(c.id_jumps, 2, "offset 2 -> 4, then 4 again");
        assert_eq!(result.seq.final_lost(4, &[]), 1);
        assert_eq!(Stats::get(&sh.stats.established), 1);
        assert_eq!(
            Stats::get(&sh.stats.disconnects),
            1,
            "the bad chunk ends the session"
        );
        assert_eq!(sh.stats.latency(false).len(), 4);
    }

    /// SSE over HTTP/2 on TLS (ALPN h2) against hyper's server: three subscribers with
    /// `--streams-per-conn 3` share one connection. The streams of channel c0 carry a start
    /// frame and events 0, 1, 3, 3 split across DATA frames at odd places, then end; both
    /// account exactly as over HTTP/1.1. Channel c1's stream is refused with 503 (HPACK-coded
    /// by hyper), which counts as a failed connection with its status.
    #[tokio::test]
    async fn h2_streams_share_a_tls_connection_and_account_exactly() {
        use bytes::Bytes;
        use http_body_util::StreamBody;
        use hyper::body::Frame;
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use std::convert::Infallible;
        use std::sync::atomic::AtomicUsize;

        let dir = std::env::temp_dir().join(format!("lt-h2-test-{}", std::process::id()));
        crate::net::gen_cert(&dir).unwrap();
        let chain = rustls::pki_types::pem::PemObject::pem_file_iter(dir.join("cert.pem"))
            .unwrap()
            .collect::<Result<Vec<rustls::pki_types::CertificateDer<'static>>, _>>()
            .unwrap();
        let key: rustls::pki_types::PrivateKeyDer<'static> =
            rustls::pki_types::pem::PemObject::from_pem_file(dir.join("key.pem")).unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::Relaxed);
                let tls = acceptor.accept(tcp).await.unwrap();
                let service = hyper::service::service_fn(|req: hyper::Request<_>| async move {
                    assert_eq!(req.uri().path(), "/sse");
                    assert_eq!(req.headers()["accept"], "text/event-stream");
                    if req.uri().query() == Some("channel=c1") {
                        let mut refused = hyper::Response::new(StreamBody::new(
                            futures_util::stream::iter(Vec::new()),
                        ));
                        *refused.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                        return Ok::<_, Infallible>(refused);
                    }
                    assert_eq!(req.uri().query(), Some("channel=c0"));
                    let mut all = b"retry: 2000\nid: ab:0\n\n".to_vec();
                    for (seq, offset) in [(0u64, 1u64), (1, 2), (3, 4), (3, 4)] {
                        let mut payload = Vec::new();
                        crate::payload::write_payload(&mut payload, seq, unix_micros(), 80);
                        let id = format!("ab:{offset}");
                        shared::sse::write_event(&mut all, Some(&id), None, &payload);
                    }
                    let frames: Vec<Result<Frame<Bytes>, Infallible>> = all
                        .chunks(37)
                        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                        .collect();
                    let body = StreamBody::new(futures_util::stream::iter(frames));
                    Ok(hyper::Response::new(body))
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service),
                );
            }
        });
        let book = Arc::new(Book::new("c", 2));
        book.attempted[0].store(4, Ordering::Relaxed);
        let sh = Arc::new(Shared {
            plan: SubPlan {
                transport: Transport::Sse,
                targets: vec![crate::target::parse_url(&format!("https://{addr}")).unwrap()],
                storm_targets: Vec::new(),
                template: false,
                sources: vec![Ipv4Addr::LOCALHOST],
                reconnect: false,
                tls: Some(TlsClient::new(Some(&dir.join("cert.pem")), false).unwrap()),
                http2: true,
                streams_per_conn: 3,
                compressed: false,
            },
            stats: Stats::new(),
            book,
            storm_start: std::sync::OnceLock::new(),
            watch: std::sync::OnceLock::new(),
        });
        let phase = PhaseTx::new(Phase::Run);
        let task = tokio::spawn(subscribers(0, 3, sh.clone(), phase.subscribe()));
        for _ in 0..500 {
            if Stats::get(&sh.stats.disconnects) >= 2 && Stats::get(&sh.stats.failed) >= 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        phase.set(Phase::Stop);
        let results = task.await.unwrap();
        assert_eq!(results.len(), 2, "the refused stream is not a subscriber");
        for r in &results {
            assert_eq!(r.channel, 0);
            assert_eq!(r.seq.final_lost(4, &[]), 1);
        }
        let c = sh.stats.counters();
        assert_eq!(c.deliveries, 8);
        assert_eq!((c.in_order, c.lost, c.duplicated), (6, 2, 2));
        assert_eq!(c.id_jumps, 4, "offset 2 -> 4, then 4 again, per stream");
        assert_eq!(Stats::get(&sh.stats.established), 2);
        assert_eq!(Stats::get(&sh.stats.failed), 1);
        assert_eq!(
            crate::stats::lock(&sh.stats.failures).get("status_503"),
            Some(&1)
        );
        assert_eq!(Stats::get(&sh.stats.disconnects), 2, "each stream ended");
        assert_eq!(sh.stats.live.load(Ordering::Relaxed), 0);
        assert_eq!(Stats::get(&sh.stats.tcp_connections), 1);
        assert_eq!(accepted.load(Ordering::Relaxed), 1, "one shared connection");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An HTTP/2 stream that the server ends is requested again 1-2 s later on the same
    /// connection, resuming with `Last-Event-ID`; nothing is lost or duplicated.
    #[tokio::test]
    async fn h2_stream_resumes_on_the_same_connection() {
        use bytes::Bytes;
        use futures_util::StreamExt as _;
        use http_body_util::StreamBody;
        use hyper::body::Frame;
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use std::convert::Infallible;
        use std::sync::atomic::AtomicUsize;

        fn events(out: &mut Vec<u8>, seqs: std::ops::Range<u64>) {
            for seq in seqs {
                let mut payload = Vec::new();
                crate::payload::write_payload(&mut payload, seq, unix_micros(), 60);
                let id = format!("ab:{}", seq + 1);
                shared::sse::write_event(out, Some(&id), None, &payload);
            }
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::Relaxed);
                let service = hyper::service::service_fn(|req: hyper::Request<_>| async move {
                    let mut all = Vec::new();
                    let resumed = match req.headers().get("last-event-id") {
                        None => {
                            all.extend_from_slice(b"retry: 2000\nid: ab:0\n\n");
                            events(&mut all, 0..2);
                            false
                        }
                        Some(id) => {
                            assert_eq!(id, "ab:2");
                            events(&mut all, 2..4);
                            true
                        }
                    };
                    let first = futures_util::stream::iter(vec![Ok::<_, Infallible>(Frame::data(
                        Bytes::from(all),
                    ))]);
                    // The first stream ends; the resumed one stays open.
                    let body = if resumed {
                        first.chain(futures_util::stream::pending()).boxed()
                    } else {
                        first.boxed()
                    };
                    Ok::<_, Infallible>(hyper::Response::new(StreamBody::new(body)))
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service),
                );
            }
        });
        let book = Arc::new(Book::new("c", 1));
        book.attempted[0].store(4, Ordering::Relaxed);
        let sh = Arc::new(Shared {
            plan: SubPlan {
                transport: Transport::Sse,
                targets: vec![crate::target::parse_url(&format!("http://{addr}")).unwrap()],
                storm_targets: Vec::new(),
                template: false,
                sources: vec![Ipv4Addr::LOCALHOST],
                reconnect: true,
                tls: None,
                http2: true,
                streams_per_conn: 1,
                compressed: false,
            },
            stats: Stats::new(),
            book,
            storm_start: std::sync::OnceLock::new(),
            watch: std::sync::OnceLock::new(),
        });
        let phase = PhaseTx::new(Phase::Run);
        let task = tokio::spawn(subscribers(0, 1, sh.clone(), phase.subscribe()));
        for _ in 0..400 {
            if sh.stats.counters().deliveries >= 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        phase.set(Phase::Stop);
        let results = task.await.unwrap();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].seq.final_lost(4, &[]), 0);
        let c = sh.stats.counters();
        assert_eq!(
            (c.deliveries, c.in_order, c.lost, c.duplicated),
            (4, 4, 0, 0)
        );
        assert_eq!(c.id_jumps, 0);
        assert_eq!(Stats::get(&sh.stats.disconnects), 1);
        assert_eq!(Stats::get(&sh.stats.reconnects), 1);
        assert_eq!(Stats::get(&sh.stats.tcp_connections), 1);
        assert_eq!(
            accepted.load(Ordering::Relaxed),
            1,
            "resumed on the same connection"
        );
    }

    #[test]
    fn end_reasons_are_short_labels() {
        assert_eq!(End::Status(503).reason(), "status_503");
        assert_eq!(
            End::Connect(io::Error::from(io::ErrorKind::ConnectionRefused)).reason(),
            "connect_connectionrefused"
        );
        assert_eq!(
            End::WsError("bad_position".into()).reason(),
            "ws_error_bad_position"
        );
    }
}
