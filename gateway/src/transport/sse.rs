//! `GET /sse?channel=A&channel=B`: Server-Sent Events.
//!
//! The request is validated and every channel attached (its head known on this instance) before
//! the response starts, so bad input and an unreachable store get a proper HTTP error. The
//! stream then opens with `retry:` and an `id:` carrying the starting cursor — a frame without
//! data, which sets the browser's last event id without firing an event — so even a client that
//! receives nothing resumes exactly. Resume (history, then live) runs in a task that fills the
//! connection's queue; the response body drains the queue, coalescing whatever is queued into
//! one chunk per wake-up.
//!
//! The `id:` of each event is the connection's cursor: one position per channel, in sorted
//! channel order, so any instance can resume every channel of the connection from it.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::Response;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use shared::{Cursor, Position};
use shared::{Disconnect, ErrorCode};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::compression::SseEncoding;
use crate::error::ApiError;
use crate::hub::direct::{Direct, Form, Link, Parking};
use crate::hub::queue::{Arm, CloseReason, Drained, Item, Queue};
use crate::hub::{Announce, HubError, Membership, Start};
use crate::metrics::Metrics;
use crate::response::Body;
use crate::session::{self, Transport};
use crate::state::{AppState, ConnectionGuard};
use crate::transport::request;

mod compress;

/// The headers of every SSE response, whichever path serves it: the type, no caching, and no
/// buffering by nginx (which would hold events back).
pub const STREAM_HEADERS: [(&str, &str); 3] = [
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
];

/// The `GET /sse` handler for requests hyper serves (HTTP/1.1 keep-alive, HTTP/2, TLS): the
/// stream [`open`] starts, as a streaming body, or the refusal.
pub async fn respond(
    state: &AppState,
    query: &str,
    headers: &HeaderMap,
    peer: IpAddr,
) -> Response<Body> {
    match open(state, query, headers, peer).await {
        Ok(stream) => {
            let names = stream.headers(state.settings.compression.sse);
            let names: Vec<_> = names.collect();
            let body = StreamBody::new(stream.map(|chunk| chunk.map(Frame::data)));
            let mut res = Response::new(body.boxed_unsync());
            let headers = res.headers_mut();
            for (name, value) in names {
                headers.insert(
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                );
            }
            res
        }
        Err(e) => e.into_response(),
    }
}

/// Validates, admits and authorizes a stream, attaches its channels and starts their resume:
/// everything before the first byte of the response, so each failure is a proper HTTP error.
pub async fn open(
    state: &AppState,
    query: &str,
    headers: &HeaderMap,
    peer: IpAddr,
) -> Result<SseStream, ApiError> {
    let metrics = &state.metrics;
    let request = request::parse(state, query, headers)?;
    let session::Opened {
        grant,
        guard,
        queue,
        members,
        starts,
    } = session::open(
        state,
        Transport::Sse,
        headers,
        query,
        peer,
        &request.channels,
        &request.wants(),
    )
    .await?;
    // The cursor starts at what was asked for: a client that reconnects before its gap notice
    // arrived is then told again.
    let positions: Vec<Position> = starts.iter().map(|s| s.requested).collect();
    spawn_resume(
        state,
        members.clone(),
        starts.clone(),
        request.cursor.is_some(),
        queue.clone(),
    );

    let roster = state.hub.presence();
    // No id, and nothing kept, unless one of the channels is tracked.
    let presence = if request.channels.iter().any(|c| roster.tracks(c)) {
        let conn = roster.connection_id();
        crate::presence::Tracks::new(
            (request.channels.iter())
                .filter_map(|c| roster.track(c, &conn, &grant))
                .collect(),
        )
    } else {
        None
    };

    let settings = &state.settings;
    let encoding = compress::choose(&settings.compression, headers);
    let mut prelude = Vec::new();
    shared::sse::write_field(
        &mut prelude,
        b"retry",
        settings.sse.retry_ms.to_string().as_bytes(),
    );
    prelude.extend_from_slice(b"id: ");
    Cursor::write_to(&positions, &mut prelude);
    prelude.extend_from_slice(b"\n\n");

    Ok(SseStream::new(SseParts {
        queue,
        members,
        positions,
        prelude: compress::preamble(encoding, &prelude),
        encoding,
        level: settings.compression.level as u8,
        heartbeat: settings.heartbeat(),
        retry_ms: settings.sse.retry_ms,
        metrics: metrics.clone(),
        expires: grant.expires().and_then(instant_of),
        guard,
        presence,
    }))
}

/// The instant of Unix second `exp` (now, when it is past; none when it is beyond what the
/// clock can represent, i.e. never).
fn instant_of(exp: u64) -> Option<Instant> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Instant::now().checked_add(Duration::from_secs(exp).saturating_sub(now))
}

/// `at`, or `other` when that is earlier.
fn earliest(at: Instant, other: Option<Instant>) -> Instant {
    other.map_or(at, |o| o.min(at))
}

/// Runs every channel's resume concurrently; a failure ends the connection so the client
/// retries (and resumes) instead of silently missing a channel.
fn spawn_resume(
    state: &AppState,
    members: Arc<[Membership]>,
    starts: Vec<Start>,
    resumed: bool,
    queue: Arc<Queue>,
) {
    let state = state.clone();
    actix_rt::spawn(async move {
        let joins = members
            .iter()
            .zip(&starts)
            .map(|(m, from)| session::join(&state, m, *from, resumed, Announce::Silent));
        for result in futures_util::future::join_all(joins).await {
            match result {
                Ok(()) | Err(HubError::Closed) => {}
                Err(HubError::ShuttingDown) => queue.close(CloseReason::Shutdown),
                Err(e) => {
                    tracing::warn!(error = %e, "resume failed; closing the stream so the client retries");
                    queue.close(CloseReason::Unavailable);
                }
            }
        }
    });
}

struct SseParts {
    queue: Arc<Queue>,
    members: Arc<[Membership]>,
    positions: Vec<Position>,
    prelude: Bytes,
    encoding: Option<SseEncoding>,
    level: u8,
    heartbeat: Duration,
    retry_ms: u64,
    metrics: Metrics,
    /// When the token expires: the stream ends there with an `error` event.
    expires: Option<Instant>,
    guard: ConnectionGuard,
    presence: Option<crate::presence::Tracks>,
}

/// The response body: drains the queue into SSE frames, with heartbeats when idle.
pub struct SseStream {
    queue: Arc<Queue>,
    members: Arc<[Membership]>,
    positions: Vec<Position>,
    prelude: Option<Bytes>,
    heartbeat: Duration,
    /// Fires at most once per heartbeat period; on firing it checks `last_write` and either
    /// sends a ping or re-arms for `last_write + heartbeat`, so busy streams never touch the
    /// timer on the write path.
    idle_timer: Pin<Box<Sleep>>,
    last_write: Instant,
    finished: bool,
    /// The output so far ends with the frame of the event at `positions[0]` (a single-channel
    /// stream): a compressed stream's next piece may refer back into it (`Form::frame_after`).
    chained: bool,
    /// The stream's content coding (`compression.sse` and `Accept-Encoding`), and its level.
    encoding: Option<SseEncoding>,
    level: u8,
    retry_ms: u32,
    batch: Vec<Item>,
    metrics: Metrics,
    expires: Option<Instant>,
    _guard: ConnectionGuard,
    /// The stream's presence entries, removed when it ends.
    _presence: Option<crate::presence::Tracks>,
}

impl SseStream {
    fn new(p: SseParts) -> Self {
        let now = Instant::now();
        Self {
            queue: p.queue,
            members: p.members,
            positions: p.positions,
            prelude: Some(p.prelude),
            heartbeat: p.heartbeat,
            idle_timer: Box::pin(tokio::time::sleep_until(earliest(
                now + p.heartbeat,
                p.expires,
            ))),
            last_write: now,
            finished: false,
            chained: false,
            encoding: p.encoding,
            level: p.level,
            // 32 bits pack with the one-byte fields: this struct sits in every idle stream.
            retry_ms: u32::try_from(p.retry_ms).unwrap_or(u32::MAX),
            batch: Vec::new(),
            metrics: p.metrics,
            expires: p.expires,
            _guard: p.guard,
            _presence: p.presence,
        }
    }

    /// Turns the drained batch into one chunk, updating the cursor as it goes.
    /// Counts a freshly drained batch (stored newest first) for the metrics.
    fn count_batch(&self) {
        let mut events = 0u64;
        let mut oldest_live_ms = None;
        for item in self.batch.iter().rev() {
            if let Item::Event { message, live, .. } = item {
                events += 1;
                if *live && oldest_live_ms.is_none() {
                    oldest_live_ms = Some(message.event.published_ms);
                }
            }
        }
        self.count(events, oldest_live_ms);
    }

    /// The next chunk of the drained batch. A single-channel event is its shared, already
    /// encoded frame (no copy here; the raw pump writes it as is, and drains
    /// every ready chunk into one write).
    fn next_chunk(&mut self) -> Option<Bytes> {
        let multi = self.positions.len() > 1;
        while let Some(item) = self.batch.pop() {
            match item {
                Item::Event { slot, message, .. } => {
                    if !multi {
                        let after = self.chained.then(|| self.positions[0]);
                        self.positions[0] = message.position();
                        self.chained = true;
                        // As fan-out writes it itself (`hub::direct`).
                        return Some(self.form().frame_after(&message, after).clone());
                    }
                    self.positions[slot as usize] = message.position();
                    let level = u32::from(self.level);
                    let mut id = Vec::with_capacity(8 + 16 * self.positions.len());
                    id.extend_from_slice(b"id: ");
                    Cursor::write_to(&self.positions, &mut id);
                    id.push(b'\n');
                    // The cursor line is this connection's own; the body is shared.
                    let body = match self.encoding {
                        None => message.sse_body(),
                        Some(_) => message.sse_body_deflated(level),
                    };
                    let mut out = compress::own(self.encoding, &id);
                    out.extend_from_slice(&body);
                    return Some(Bytes::from(out));
                }
                Item::Gap {
                    slot,
                    first_available,
                } => {
                    self.chained = false;
                    self.positions[slot as usize] = Position::new(
                        first_available.epoch,
                        first_available.offset.saturating_sub(1),
                    );
                    let channel = self
                        .members
                        .get(slot as usize)
                        .map(|m| m.channel().as_str())
                        .unwrap_or("");
                    let data = serde_json::json!({
                        "channel": channel,
                        "first_available": first_available.to_string(),
                    });
                    let mut id = Vec::new();
                    Cursor::write_to(&self.positions, &mut id);
                    let id = String::from_utf8_lossy(&id);
                    let mut out = Vec::new();
                    shared::sse::write_event(
                        &mut out,
                        Some(&id),
                        Some("gap"),
                        data.to_string().as_bytes(),
                    );
                    return Some(Bytes::from(compress::own(self.encoding, &out)));
                }
                Item::Subscribed { .. } => {}
                // The rest of a frame fan-out began writing itself (`hub::direct`).
                Item::Tail(rest) => return Some(rest),
            }
        }
        None
    }

    fn count(&self, events: u64, oldest_live_ms: Option<u64>) {
        if events > 0 {
            self.metrics.hot.delivered_sse.inc_by(events);
        }
        if let Some(ms) = oldest_live_ms {
            self.metrics.observe_delivery(ms);
        }
    }

    /// The stream's last frame when its token expires: an `error` event without `id:` (the
    /// browser keeps its last event id to resume with a fresh token), then the closing comment.
    fn expired_frame(&self) -> Bytes {
        let disconnect = Disconnect::TokenExpired;
        let data = serde_json::json!({
            "code": ErrorCode::TokenExpired.as_str(),
            "detail": disconnect.reason(),
        });
        let mut out = Vec::new();
        shared::sse::write_event(&mut out, None, Some("error"), data.to_string().as_bytes());
        shared::sse::write_comment(&mut out, &format!("closing: {}", disconnect.label()));
        self.metrics
            .disconnects
            .with_label_values(&[disconnect.label()])
            .inc();
        Bytes::from(compress::own(self.encoding, &out))
    }

    fn closing_frame(&self, reason: CloseReason) -> Bytes {
        let mut out = Vec::new();
        shared::sse::write_comment(&mut out, &format!("closing: {}", reason.as_str()));
        shared::sse::write_retry(&mut out, u64::from(self.retry_ms));
        reason.count(&self.metrics);
        Bytes::from(compress::own(self.encoding, &out))
    }

    /// Which of an event's shared frames a single-channel stream writes.
    fn form(&self) -> Form {
        Form::sse(self.encoding.map(|_| u32::from(self.level)))
    }

    /// Lets fan-out write events straight to `socket` while the stream is idle (`hub::direct`):
    /// a stream of one channel only, as a stream of several writes its own cursor with each.
    pub fn write_through(&self, socket: Arc<TcpStream>) {
        if self.positions.len() == 1 {
            self.queue.set_direct(Direct::new(socket, self.form()));
        }
    }

    /// The response headers: [`STREAM_HEADERS`], and with `compression.sse` on the content
    /// coding and `Vary: Accept-Encoding`, the same whichever path serves the stream.
    pub fn headers(&self, compression: bool) -> impl Iterator<Item = (&'static str, &'static str)> {
        let vary = compression.then_some(("vary", "accept-encoding"));
        let coding = self.encoding.map(|e| ("content-encoding", e.name()));
        STREAM_HEADERS.into_iter().chain(vary).chain(coding)
    }
}

impl Stream for SseStream {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(prelude) = this.prelude.take() {
            this.last_write = Instant::now();
            return Poll::Ready(Some(Ok(prelude)));
        }
        if this.finished {
            return Poll::Ready(None);
        }
        loop {
            if let Some(chunk) = this.next_chunk() {
                this.last_write = Instant::now();
                return Poll::Ready(Some(Ok(chunk)));
            }
            match this.queue.poll_drain(cx, &mut this.batch) {
                Poll::Ready(Drained::Items) => {
                    // Served from the end, oldest first.
                    this.batch.reverse();
                    this.count_batch();
                }
                Poll::Ready(Drained::Closed(reason)) => {
                    this.finished = true;
                    return Poll::Ready(Some(Ok(this.closing_frame(reason))));
                }
                Poll::Pending => break,
            }
        }
        // One timer for heartbeats and the token's expiry, whichever is first.
        while this.idle_timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if this.expires.is_some_and(|at| now >= at) {
                this.finished = true;
                return Poll::Ready(Some(Ok(this.expired_frame())));
            }
            let due = this.last_write + this.heartbeat;
            if now >= due {
                this.last_write = now;
                let next = earliest(now + this.heartbeat, this.expires);
                this.idle_timer.as_mut().reset(next);
                this.chained = false;
                return Poll::Ready(Some(Ok(compress::ping(this.encoding))));
            }
            this.idle_timer.as_mut().reset(earliest(due, this.expires));
        }
        Poll::Pending
    }
}

impl Parking for SseStream {
    fn arm(&mut self) -> Arm {
        let after = (self.chained && self.positions.len() == 1).then(|| Link {
            slot: 0,
            position: self.positions[0],
        });
        self.queue.arm(after)
    }

    fn disarm(&mut self) {
        // Fan-out's writes count as the stream's own: a busy stream gets no heartbeat, and its
        // output now ends with the last event fan-out wrote.
        if let Some(wrote) = self.queue.disarm() {
            self.last_write = self.last_write.max(wrote.at);
            if let (Some(position), Some(last)) = (self.positions.first_mut(), wrote.last) {
                *position = last.position;
                self.chained = true;
            }
        }
    }
}

impl Drop for SseStream {
    fn drop(&mut self) {
        // The client is gone (or the stream ended): stop fan-out to it and end its resume task.
        self.queue.close(CloseReason::Gone);
    }
}
