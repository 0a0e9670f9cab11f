//! Subscriber connections: raw TCP from a chosen loopback source address, SSE spoken by hand
//! (request, response head, chunked or identity body, [`SseParser`]), WebSocket through
//! tokio-tungstenite. Every event is accounted on arrival ([`Acct`]) and flushed into the shared
//! [`Stats`] once per socket read.
//!
//! SSE reads go into one buffer per runtime thread, borrowed only for the duration of one poll,
//! so an idle connection costs its parser state (a few hundred bytes) rather than a read buffer.

use std::cell::RefCell;
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
use crate::http::{BodyKind, ChunkedDecoder, parse_head};
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
        match self.seq.on_seq(seq) {
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
}

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        if self.up {
            self.stats.live.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One subscriber, from its first connect to the `Stop` phase. Returns `None` when it never
/// got established (it then counts as a failed connection, with the reason).
pub async fn subscriber(idx: usize, sh: Arc<Shared>, mut phase: PhaseRx) -> Option<SubResult> {
    let plan = &sh.plan;
    let channel = idx % sh.book.names.len();
    let mut sub = Sub {
        source: plan.sources[idx % plan.sources.len()],
        acct: Acct {
            shard: idx,
            channel,
            seq: SeqTracker::default(),
            ids: IdTracker::default(),
            check_ids: !plan.template,
            batch: Batch::default(),
            storm: None,
        },
        sse: SseParser::new(),
        ws_last_id: Vec::new(),
        up: false,
        ever_up: false,
    };
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
        sh.stats.flush(sub.acct.shard, &mut sub.acct.batch);
        if sub.up {
            Stats::bump(&sh.stats.disconnects);
        } else if !sub.ever_up && !storm {
            sh.stats.fail(&end.reason());
            Stats::bump(&sh.stats.failed);
            return None;
        } else {
            Stats::bump(&sh.stats.reconnect_failures);
            sh.stats.fail(&format!("reconnect_{}", end.reason()));
        }
        if !plan.reconnect {
            // Wait for the end of the run without reconnecting.
            while phase.current() != Phase::Stop {
                phase.changed().await;
            }
            break;
        }
        let jitter = Duration::from_millis(fastrand::u64(0..1000));
        retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(1) + jitter);
    }
    sh.stats.flush(sub.acct.shard, &mut sub.acct.batch);
    sub.ever_up.then_some(SubResult {
        channel,
        seq: sub.acct.seq,
    })
}

async fn session(sh: &Shared, sub: &mut Sub, url: &Url, storm: bool) -> End {
    let mut live = LiveGuard {
        stats: &sh.stats,
        up: false,
    };
    let stream = match connect(sub.source, url.addr).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    match sh.plan.transport {
        Transport::Sse => sse_session(sh, sub, url, stream, storm, &mut live).await,
        Transport::Ws => ws_session(sh, sub, url, stream, storm, &mut live).await,
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
    stream: &mut TcpStream,
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
    stream: &mut TcpStream,
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
    mut stream: TcpStream,
    storm: bool,
    live: &mut LiveGuard<'_>,
) -> End {
    let channel = &sh.book.names[sub.acct.channel];
    let path = if sh.plan.template {
        fill(&url.path, channel)
    } else {
        format!("/sse?channel={channel}")
    };
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n",
        url.host
    );
    let last_id = sub.sse.last_id();
    if !last_id.is_empty() {
        req.push_str("Last-Event-ID: ");
        req.push_str(&String::from_utf8_lossy(last_id));
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let head = tokio::time::timeout(CONNECT_TIMEOUT, async {
        stream.write_all(req.as_bytes()).await.map_err(End::Io)?;
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
    let Sub { sse, acct, .. } = sub;
    acct.batch.c.reads += 1;
    let mut sink = |item: SseItem<'_>| acct.on_sse(item, now, sh);
    let done = match body {
        Body::Chunked(d) => d
            .feed(bytes, |data| {
                any = true;
                sse.feed(data, &mut sink);
            })
            .map_err(|e| End::Protocol(e.to_string())),
        Body::Length(left) => {
            let n = bytes
                .len()
                .min(usize::try_from(*left).unwrap_or(usize::MAX));
            any = n > 0;
            sse.feed(&bytes[..n], &mut sink);
            *left -= n as u64;
            Ok(*left == 0)
        }
        Body::UntilClose => {
            any = true;
            sse.feed(bytes, &mut sink);
            Ok(false)
        }
    };
    sh.stats.flush(sub.acct.shard, &mut sub.acct.batch);
    // Established by any body byte, even if garbage follows in the same read.
    if any && !sub.up {
        establish(sh, sub, storm, live);
    }
    done
}

async fn read_head(stream: &mut TcpStream) -> Result<(crate::http::ResponseHead, Vec<u8>), End> {
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

async fn ws_session(
    sh: &Shared,
    sub: &mut Sub,
    url: &Url,
    stream: TcpStream,
    storm: bool,
    live: &mut LiveGuard<'_>,
) -> End {
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let request = format!("ws://{}/ws", url.host);
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
            },
            stats: Stats::new(),
            book,
            storm_start: std::sync::OnceLock::new(),
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
