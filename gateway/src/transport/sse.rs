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
use shared::{ChannelName, Cursor, Position};
use shared::{Disconnect, ErrorCode};
use tokio::time::{Instant, Sleep};

use crate::compression::SseEncoding;
use crate::error::ApiError;
use crate::hub::queue::{CloseReason, Drained, Item, Queue};
use crate::hub::{Announce, HubError, Membership, Start};
use crate::metrics::Metrics;
use crate::response::Body;
use crate::session::{self, Admitted, Refusal, Transport};
use crate::state::{AppState, ConnectionGuard};

mod compress;

/// A validated SSE request.
#[derive(Debug, PartialEq, Eq)]
pub struct SseRequest {
    /// Distinct channels, sorted (the cursor's order).
    pub channels: Vec<ChannelName>,
    /// Where to resume, if the client sent a cursor.
    pub cursor: Option<Cursor>,
}

/// Parses the query string and headers of an SSE request.
pub fn parse_request(
    query: &str,
    headers: &HeaderMap,
    max_channels: usize,
) -> Result<SseRequest, ApiError> {
    let mut channels: Vec<ChannelName> = Vec::new();
    let mut query_cursor = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "channel" => {
                for name in value.split(',').filter(|n| !n.is_empty()) {
                    let channel = ChannelName::new(name).map_err(|e| {
                        ApiError::bad_request(ErrorCode::InvalidChannel, e.to_string())
                    })?;
                    if !channels.contains(&channel) {
                        if channels.len() == max_channels {
                            return Err(ApiError::bad_request(
                                ErrorCode::TooManyChannels,
                                format!("at most {max_channels} channels per connection"),
                            ));
                        }
                        channels.push(channel);
                    }
                }
            }
            "lastEventId" | "lastEventID" | "last-event-id" => {
                query_cursor = Some(value.into_owned())
            }
            _ => {}
        }
    }
    if channels.is_empty() {
        return Err(ApiError::bad_request(
            ErrorCode::MissingChannel,
            "name at least one channel: /sse?channel=<name>",
        ));
    }
    channels.sort();
    let header_cursor = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::bad_request(
                        ErrorCode::BadCursor,
                        "Last-Event-ID is not visible ASCII",
                    )
                })?
                .to_owned(),
        ),
        None => None,
    };
    let cursor = header_cursor
        .or(query_cursor)
        .filter(|c| !c.trim().is_empty())
        .map(|text| Cursor::parse(&text, channels.len()))
        .transpose()
        .map_err(|e| ApiError::bad_request(ErrorCode::BadCursor, e.to_string()))?;
    Ok(SseRequest { channels, cursor })
}

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
    let request =
        parse_request(query, headers, state.settings.limits.max_channels).inspect_err(|e| {
            if e.code() == ErrorCode::BadCursor {
                metrics.resume(crate::metrics::labels::ResumeOutcome::BadCursor);
            }
            metrics.rejected.with_label_values(&[e.code()]).inc();
        })?;
    let Admitted { grant, guard, .. } = session::admit(
        state,
        Transport::Sse,
        headers,
        query,
        &request.channels,
        peer,
    )
    .await
    .map_err(Refusal::into_error)?;
    if let Some(denied) = request.channels.iter().find(|c| !grant.may_subscribe(c)) {
        return Err(ApiError::new(
            http::StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!("the token does not allow channel {denied}"),
        ));
    }
    let queue = state.hub.new_queue();
    let attached =
        futures_util::future::join_all(request.channels.iter().enumerate().map(|(i, channel)| {
            let wanted = request.cursor.as_ref().map(|c| c.0[i]);
            session::attach(state, channel.clone(), queue.clone(), i as u32, wanted)
        }))
        .await;
    let mut members = Vec::with_capacity(attached.len());
    let mut starts = Vec::with_capacity(attached.len());
    for result in attached {
        match result {
            Ok(a) => {
                members.push(a.membership);
                starts.push(a.start);
            }
            Err(e) => return Err(e.into()),
        }
    }
    // The cursor starts at what was asked for: a client that reconnects before its gap notice
    // arrived is then told again.
    let positions: Vec<Position> = starts.iter().map(|s| s.requested).collect();
    let members: Arc<[Membership]> = members.into();
    spawn_resume(
        state,
        members.clone(),
        starts.clone(),
        request.cursor.is_some(),
        queue.clone(),
    );

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
    /// The stream's content coding (`compression.sse` and `Accept-Encoding`), and its level.
    encoding: Option<SseEncoding>,
    level: u8,
    retry_ms: u64,
    batch: Vec<Item>,
    metrics: Metrics,
    expires: Option<Instant>,
    _guard: ConnectionGuard,
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
            encoding: p.encoding,
            level: p.level,
            retry_ms: p.retry_ms,
            batch: Vec::new(),
            metrics: p.metrics,
            expires: p.expires,
            _guard: p.guard,
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
                    self.positions[slot as usize] = message.position();
                    let level = u32::from(self.level);
                    if !multi {
                        return Some(match self.encoding {
                            None => message.sse_frame().clone(),
                            Some(_) => message.sse_frame_deflated(level),
                        });
                    }
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
            }
        }
        None
    }

    fn count(&self, events: u64, oldest_live_ms: Option<u64>) {
        if events > 0 {
            self.metrics.hot.delivered_sse.inc_by(events);
        }
        if let Some(ms) = oldest_live_ms {
            let now = crate::engine::memory::unix_millis();
            self.metrics
                .delivery_latency
                .observe(now.saturating_sub(ms) as f64 / 1000.0);
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
        shared::sse::write_retry(&mut out, self.retry_ms);
        reason.count(&self.metrics);
        Bytes::from(compress::own(self.encoding, &out))
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
                return Poll::Ready(Some(Ok(compress::ping(this.encoding))));
            }
            this.idle_timer.as_mut().reset(earliest(due, this.expires));
        }
        Poll::Pending
    }
}

impl Drop for SseStream {
    fn drop(&mut self) {
        // The client is gone (or the stream ended): stop fan-out to it and end its resume task.
        self.queue.close(CloseReason::Gone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str, last_event_id: Option<&str>) -> Result<SseRequest, ApiError> {
        let mut headers = HeaderMap::new();
        if let Some(v) = last_event_id {
            headers.insert(
                HeaderName::from_static("last-event-id"),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        parse_request(query, &headers, 3)
    }

    #[test]
    fn channels_are_deduplicated_and_sorted() {
        let r = parse("channel=b&channel=a,c&channel=b", None).unwrap();
        let names: Vec<_> = r.channels.iter().map(|c| c.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(r.cursor, None);
    }

    #[test]
    fn header_cursor_wins_over_query() {
        let r = parse("channel=a&lastEventId=1:5", Some("2:7")).unwrap();
        assert_eq!(r.cursor.unwrap().to_string(), "2:7");
        let r = parse("channel=a&lastEventId=1:5", None).unwrap();
        assert_eq!(r.cursor.unwrap().to_string(), "1:5");
    }

    #[test]
    fn bad_requests_have_codes() {
        let code = |q: &str, h: Option<&str>| parse(q, h).unwrap_err().code();
        assert_eq!(code("", None), ErrorCode::MissingChannel);
        assert_eq!(code("channel=a%7Bb", None), ErrorCode::InvalidChannel);
        assert_eq!(
            code("channel=a&channel=b&channel=c&channel=d", None),
            ErrorCode::TooManyChannels
        );
        assert_eq!(
            code("channel=a&channel=b", Some("1:1")),
            ErrorCode::BadCursor
        );
        assert_eq!(code("channel=a", Some("garbage")), ErrorCode::BadCursor);
        assert_eq!(
            code("channel=a&lastEventId=1:-1", None),
            ErrorCode::BadCursor
        );
        assert_eq!(code("channel=%FF", None), ErrorCode::InvalidChannel);
    }
}
