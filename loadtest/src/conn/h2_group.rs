//! SSE over HTTP/2: several subscribers as streams of one connection.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::acct::End;
use super::http1::{read_shared, sse_path};
use super::sub::{LiveGuard, Sub};
use super::{CONNECT_TIMEOUT, Phase, Shared, SubResult, establish, open, retry_time, unix_micros};
use crate::h2;
use crate::net::Alpn;
use crate::phase::PhaseRx;
use crate::sse::SseParser;
use crate::target::Url;

/// One subscriber's stream on a shared HTTP/2 connection.
pub(super) struct Slot<'a> {
    pub(super) sub: Sub,
    pub(super) live: LiveGuard<'a>,
    /// Its stream on the current connection (0: none).
    pub(super) stream: u32,
    /// When the stream was requested (its response head is due within [`CONNECT_TIMEOUT`]).
    pub(super) requested: tokio::time::Instant,
    /// Whether the response head said 200 (its body is the event stream).
    pub(super) ok: bool,
    /// DATA received since this stream's window was last topped up.
    pub(super) unacked: u32,
    /// When to request a stream again (`None`: at the next connection).
    pub(super) retry_at: Option<tokio::time::Instant>,
    /// Finished: failed before ever being established, or ended with --no-reconnect.
    pub(super) done: bool,
    /// Got data in the current read (to be flushed once).
    pub(super) touched: bool,
}

impl Slot<'_> {
    /// Accounts the end of this slot's stream (or of its attempt to get one).
    pub(super) fn ended(&mut self, sh: &Shared, end: &End) {
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

    pub(super) fn due(&self, now: tokio::time::Instant) -> bool {
        !self.done && self.stream == 0 && self.retry_at.is_none_or(|t| t <= now)
    }
}

/// The protocol state of one HTTP/2 connection.
pub(super) struct H2Conn {
    pub(super) reader: h2::FrameReader,
    /// Stream id -> slot index.
    pub(super) by_id: HashMap<u32, usize>,
    pub(super) next_id: u32,
    /// DATA received since the connection window was last topped up.
    pub(super) unacked: u32,
    /// Set when the server sent GOAWAY or broke the protocol: the connection is over.
    pub(super) over: Option<End>,
    /// Streams that got data in the current read (kept to reuse its allocation).
    pub(super) touched: Vec<u32>,
}

/// Subscribers `first .. first + n` as streams of one HTTP/2 connection (h2 over TLS, or h2c
/// with prior knowledge), to the `Stop` phase. A stream that ends is requested again 1-2 s
/// later on the same connection (with `Last-Event-ID`); when the connection ends, every stream
/// on it ends, and a new connection is opened for them 1-2 s later.
pub(super) async fn h2_group(
    first: usize,
    n: usize,
    sh: &Shared,
    mut phase: PhaseRx,
) -> Vec<SubResult> {
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

pub(super) async fn wait_stop(phase: &mut PhaseRx) {
    while phase.current() != Phase::Stop {
        phase.changed().await;
    }
}

/// One HTTP/2 connection, until it ends; returns why. Streams are requested for every slot that
/// is due, now and whenever another one becomes due.
pub(super) async fn h2_connection(
    sh: &Shared,
    url: &Url,
    source: Ipv4Addr,
    slots: &mut [Slot<'_>],
) -> End {
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
pub(super) const MAX_IDLE_WAKE: Duration = Duration::from_secs(3600);

/// Writes a request for every slot that is due.
pub(super) fn request_due(
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
pub(super) fn on_h2_bytes(
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
pub(super) fn flush_slot(sh: &Shared, s: &mut Slot<'_>) {
    if s.touched {
        s.touched = false;
        s.sub.acct.batch.c.reads += 1;
    }
    sh.stats.flush(s.sub.acct.shard, &mut s.sub.acct.batch);
}
