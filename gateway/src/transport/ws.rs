//! `GET /ws`: the WebSocket transport. One connection, many channels; JSON text commands and
//! replies, binary frames for binary payloads (layouts in `shared::ws`).
//!
//! Backpressure rule: the session task is the only writer. It drains the connection's queue
//! (filled by fan-out without waiting) and writes frames; a queue overflow, or a write that makes
//! no progress within the heartbeat timeout, ends the connection as a slow consumer (close 4000),
//! and the client resumes from history. Work that waits on Redis (resume, publish) runs in side
//! tasks that report back through a bounded channel, so the session never stops reading,
//! heartbeating or draining because Redis is slow.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{HOST, HeaderMap, ORIGIN, SEC_WEBSOCKET_KEY};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason as WsClose};
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::FutureExt;
use futures_util::future::OptionFuture;
use serde_json::Value;
use shared::ws::{BinaryFrame, ClientMessage, ServerMessage, close};
use shared::{ChannelName, EventName, PayloadKind, Position};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::ws_io::{MessageStream, RawReader, RawWriter, Session};
use crate::auth::Grant;
use crate::engine::PublishRequest;
use crate::error::ApiError;
use crate::front::head::RequestHead;
use crate::hub::queue::{CloseReason, Drained, Item, Queue};
use crate::hub::{Announce, HubError, Membership, StartError};
use crate::publish::{self, PublishBody};
use crate::state::{AppState, ConnectionGuard};

/// The `GET /ws` handler: checks origin, token and capacity before upgrading.
pub async fn handler(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let metrics = &state.metrics;
    let origin = req.headers().get(ORIGIN).and_then(|v| v.to_str().ok());
    let host = req.headers().get(HOST).and_then(|v| v.to_str().ok());
    if !origin_allowed(origin, host, &state.settings.cors.allow_origins) {
        metrics.rejected.with_label_values(&["origin"]).inc();
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            format!(
                "origin {} may not open WebSockets here",
                origin.unwrap_or("")
            ),
        ));
    }
    let grant = match state.auth.authenticate(req.headers(), req.query_string()) {
        Ok(grant) => grant,
        // Browsers cannot read the status of a refused upgrade (they only see 1006 and would
        // retry forever), so an auth failure is told with close code 4500 after the upgrade.
        Err(e) => {
            metrics.rejected.with_label_values(&["unauthorized"]).inc();
            let (response, session, _stream) = actix_ws::handle(&req, body)
                .map_err(|e| ApiError::bad_request("not_websocket", e.to_string()))?;
            let reason = format!("unauthorized: {}", e.detail());
            actix_web::rt::spawn(async move {
                let close = WsClose {
                    code: CloseCode::from(close::UNAUTHORIZED),
                    description: Some(reason.chars().take(120).collect()),
                };
                let _ = session.close(Some(close)).await;
            });
            return Ok(response);
        }
    };
    let Some(guard) = state.limiter.try_acquire(metrics, "ws") else {
        metrics
            .rejected
            .with_label_values(&["connection_limit"])
            .inc();
        return Err(ApiError::unavailable(
            "connection_limit",
            "this instance is at its connection limit",
            1,
        ));
    };
    let (response, session, stream) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::bad_request("not_websocket", e.to_string()))?;
    let limit = state.settings.ws.max_message_bytes;
    let stream = stream
        .max_frame_size(limit)
        .aggregate_continuations()
        .max_continuation_size(limit);
    let connection = Running::new(state.get_ref().clone(), grant, guard);
    actix_web::rt::spawn(connection.run(
        Session::Actix(session),
        MessageStream::Actix(Box::new(stream)),
    ));
    Ok(response)
}

/// Serves a WebSocket whose upgrade request the front door read from the raw socket: the same
/// checks and outcomes as [`handler`], then the session on the socket itself, so an idle
/// connection holds no HTTP dispatcher or buffers. Completes when the connection ends.
pub fn serve_raw(
    state: AppState,
    head: RequestHead,
    stream: TcpStream,
) -> impl Future<Output = ()> {
    // The handshake runs boxed and is freed when done, and the session future then takes its
    // place: written as an `async` block, the head, the socket and the admitted parts would
    // each keep a slot in the task for the connection's whole life.
    // The session is awaited, not spawned: the front door's task lives as long as the
    // connection, so graceful shutdown waits for it.
    Box::pin(admit(state, head, stream))
        .then(|admitted| OptionFuture::from(admitted.map(|(c, s, m)| c.run(s, m))))
        .map(|_: Option<()>| ())
}

/// The checks of [`handler`] and the upgrade, on a raw socket; `None` when the connection was
/// refused (and answered).
async fn admit(
    state: AppState,
    head: RequestHead,
    stream: TcpStream,
) -> Option<(Running, Session, MessageStream)> {
    let metrics = &state.metrics;
    let RequestHead { query, headers, .. } = head;
    let origin = headers.get(ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(HOST).and_then(|v| v.to_str().ok());
    if !origin_allowed(origin, host, &state.settings.cors.allow_origins) {
        metrics.rejected.with_label_values(&["origin"]).inc();
        let e = ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            format!(
                "origin {} may not open WebSockets here",
                origin.unwrap_or("")
            ),
        );
        let _ = crate::front::write_all(&stream, &e.to_http1("")).await;
        return None;
    }
    let limit = state.settings.ws.max_message_bytes;
    let grant = match state.auth.authenticate(&headers, &query) {
        Ok(grant) => grant,
        // As in `handler`: upgrade, then tell with close code 4500.
        Err(e) => {
            metrics.rejected.with_label_values(&["unauthorized"]).inc();
            if !upgrade(&stream, headers).await {
                return None;
            }
            let reason = format!("unauthorized: {}", e.detail());
            let (read, write) = stream.into_split();
            let mut reader = MessageStream::Raw(RawReader::new(read, limit));
            let session = Session::Raw(RawWriter::new(write));
            let reason = reason.chars().take(120).collect();
            close_with(session, &mut reader, close::UNAUTHORIZED, reason).await;
            return None;
        }
    };
    let Some(guard) = state.limiter.try_acquire(metrics, "ws") else {
        metrics
            .rejected
            .with_label_values(&["connection_limit"])
            .inc();
        let e = ApiError::unavailable(
            "connection_limit",
            "this instance is at its connection limit",
            1,
        );
        let _ = crate::front::write_all(&stream, &e.to_http1("")).await;
        return None;
    };
    if !upgrade(&stream, headers).await {
        return None;
    }
    let (read, write) = stream.into_split();
    Some((
        Running::new(state, grant, guard),
        Session::Raw(RawWriter::new(write)),
        MessageStream::Raw(RawReader::new(read, limit)),
    ))
}

/// Validates an RFC 6455 upgrade as `actix_ws::handle` does and answers 101, or 400
/// `not_websocket`; `false` when the connection is done.
async fn upgrade(stream: &TcpStream, headers: HeaderMap) -> bool {
    let mut req = actix_http::RequestHead::default();
    req.method = Method::GET;
    req.headers = headers;
    let accept = actix_http::ws::verify_handshake(&req).and_then(|()| {
        req.headers
            .get(SEC_WEBSOCKET_KEY)
            .map(|key| actix_http::ws::hash_key(key.as_bytes()))
            .ok_or(actix_http::ws::HandshakeError::BadWebsocketKey)
    });
    drop(req);
    let response = match &accept {
        Ok(accept) => {
            // Base64, so always ASCII.
            let accept = std::str::from_utf8(accept).unwrap_or_default();
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
            )
            .into_bytes()
        }
        Err(e) => ApiError::bad_request("not_websocket", e.to_string()).to_http1(""),
    };
    crate::front::write_all(stream, &response).await.is_ok() && accept.is_ok()
}

/// Cross-site WebSocket hijacking defence: a browser always sends `Origin`; it must be listed,
/// or be the gateway's own origin. Non-browser clients send none.
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else { return true };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let authority = origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'));
    matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
}

/// Error codes that count toward `ws.max_protocol_errors`.
const COUNTED: &[&str] = &[
    "bad_json",
    "missing_type",
    "unknown_type",
    "invalid_message",
    "bad_binary",
    "rate_limited",
];

/// The `req` of a command, for replies that refuse it.
fn req_of(cmd: &ClientMessage) -> Option<Value> {
    match cmd {
        ClientMessage::Subscribe { req, .. }
        | ClientMessage::Unsubscribe { req, .. }
        | ClientMessage::Publish { req, .. }
        | ClientMessage::Ping { req } => req.clone(),
    }
}

/// How a session ends: with a close frame (code, reason) or silently (client gone).
type End = Option<(u16, &'static str)>;

/// What side tasks report to the session.
enum Report {
    Joined {
        slot: u32,
        membership: Membership,
    },
    SubscribeFailed {
        slot: u32,
        code: &'static str,
        message: String,
    },
    Send(Box<ServerMessage>),
}

struct Slot {
    id: u32,
    channel: ChannelName,
    req: Option<Value>,
    membership: Option<Membership>,
    task: Option<JoinHandle<()>>,
}

struct Connection {
    state: AppState,
    grant: Grant,
    queue: Arc<Queue>,
    slots: Slots,
    next_slot: u32,
    errors: u32,
    tokens: f64,
    refilled: Instant,
    last_seen: Instant,
    reports: Arc<Inbox>,
    _guard: ConnectionGuard,
}

/// Reports from side tasks to the session. Allocates nothing until the first report (a tokio
/// mpsc would preallocate room for 32 messages on every connection); bounded in practice, as
/// there is at most one report per command and commands are rate-limited.
#[derive(Default)]
struct Inbox {
    items: parking_lot::Mutex<VecDeque<Report>>,
    ready: Notify,
}

impl Inbox {
    fn send(&self, report: Report) {
        self.items.lock().push_back(report);
        // Stores a permit when the session is not waiting, so no report is missed.
        self.ready.notify_one();
    }

    async fn recv(&self) -> Report {
        loop {
            if let Some(report) = self.pop() {
                return report;
            }
            self.ready.notified().await;
        }
    }

    fn pop(&self) -> Option<Report> {
        let mut items = self.items.lock();
        let report = items.pop_front();
        if report.is_some() && items.is_empty() {
            // Reports are rare; an idle connection should not keep room for four.
            *items = VecDeque::new();
        }
        report
    }
}

impl Running {
    fn new(state: AppState, grant: Grant, guard: ConnectionGuard) -> Self {
        let reports = Arc::new(Inbox::default());
        let inbox = reports.clone();
        let queue = state.hub.new_queue();
        let burst = f64::from(state.settings.ws.commands_per_second) * 2.0;
        let now = Instant::now();
        let conn = Connection {
            state,
            grant,
            queue,
            slots: Slots::default(),
            next_slot: 0,
            errors: 0,
            tokens: burst,
            refilled: now,
            last_seen: now,
            reports,
            _guard: guard,
        };
        Running { conn, inbox }
    }
}

/// A connection's subscriptions: a few at most (`limits.max_channels`), so a small vector
/// searched linearly beats two hash maps, and allocates nothing until the first subscribe.
#[derive(Default)]
struct Slots(Vec<Slot>);

impl Slots {
    fn get(&self, id: u32) -> Option<&Slot> {
        self.0.iter().find(|s| s.id == id)
    }

    fn get_mut(&mut self, id: u32) -> Option<&mut Slot> {
        self.0.iter_mut().find(|s| s.id == id)
    }

    fn find(&self, channel: &ChannelName) -> Option<u32> {
        self.0.iter().find(|s| &s.channel == channel).map(|s| s.id)
    }

    fn remove(&mut self, id: u32) -> Option<Slot> {
        let index = self.0.iter().position(|s| s.id == id)?;
        Some(self.0.swap_remove(index))
    }
}

/// The connection together with the receiving end of its report channel.
struct Running {
    conn: Connection,
    inbox: Arc<Inbox>,
}

impl Running {
    async fn run(self, mut session: Session, mut stream: MessageStream) {
        let Running { mut conn, inbox } = self;
        let settings = conn.state.settings.clone();
        let queue = conn.queue.clone();
        let mut shutdown = conn.state.hub.shutdown_signal();
        let mut ping = tokio::time::interval(Duration::from_secs(settings.ws.ping_seconds));
        ping.tick().await;
        let timeout = Duration::from_secs(settings.ws.timeout_seconds);
        let mut batch = Vec::new();
        let end: End = loop {
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|down| *down) => break Some((close::GOING_AWAY, "server shutting down")),
                drained = queue.drain(&mut batch) => match drained {
                    Drained::Items => {
                        // Boxed too: it holds a write timeout, which would otherwise sit in every
                        // idle connection's task.
                        if let Err(end) = Box::pin(conn.write_batch(&mut session, &mut batch, timeout)).await {
                            break end;
                        }
                    }
                    Drained::Closed(reason) => break close_for(reason),
                },
                report = inbox.recv() => {
                    // Boxed: rare branches must not grow every connection's task.
                    if let Err(end) = Box::pin(conn.on_report(report, &mut session, timeout)).await {
                        break end;
                    }
                }
                msg = stream.recv() => match msg {
                    None => break None,
                    Some(Err(e)) => break Some(protocol_error_close(&e)),
                    Some(Ok(msg)) => {
                        conn.last_seen = Instant::now();
                        if let Err(end) = Box::pin(conn.on_client(msg, &mut session, timeout)).await {
                            break end;
                        }
                    }
                },
                _ = ping.tick() => {
                    if conn.last_seen.elapsed() > timeout {
                        break Some((close::HEARTBEAT_TIMEOUT, "no pong within the heartbeat timeout"));
                    }
                    // Timed like every write: a peer that takes no ping is a slow consumer.
                    if let Err(end) = Box::pin(conn.timed(session.ping(b""), timeout)).await {
                        break end;
                    }
                }
            }
        };
        conn.queue.close(CloseReason::Gone);
        for slot in conn.slots.0.iter_mut() {
            if let Some(task) = slot.task.take() {
                task.abort();
            }
        }
        let metrics = &conn.state.metrics;
        match end {
            Some((code, reason)) => {
                metrics
                    .ws_closes
                    .with_label_values(&[&code.to_string()])
                    .inc();
                Box::pin(close_with(session, &mut stream, code, reason.to_owned())).await;
            }
            None => metrics.ws_closes.with_label_values(&["client"]).inc(),
        }
    }
}

/// Sends a close frame, then lets the client finish (see [`MessageStream::linger`]); all within
/// one second, as a client that takes nothing more must not hold the connection.
async fn close_with(session: Session, stream: &mut MessageStream, code: u16, reason: String) {
    let close = WsClose {
        code: CloseCode::from(code),
        description: Some(reason),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        if session.close(Some(close)).await.is_ok() {
            stream.linger().await;
        }
    })
    .await;
}

fn close_for(reason: CloseReason) -> End {
    match reason {
        CloseReason::SlowConsumer => {
            Some((close::SLOW_CONSUMER, "slow consumer: reconnect and resume"))
        }
        CloseReason::Shutdown => Some((close::GOING_AWAY, "server shutting down")),
        CloseReason::Unavailable => Some((
            close::UNAVAILABLE,
            "history store unavailable: reconnect later",
        )),
        CloseReason::Gone => None,
    }
}

fn protocol_error_close(e: &actix_ws::ProtocolError) -> (u16, &'static str) {
    match e {
        actix_ws::ProtocolError::Overflow => (close::TOO_BIG, "message too big"),
        _ => (close::PROTOCOL, "protocol error"),
    }
}

impl Connection {
    /// Runs one write, treating a write that makes no progress within `timeout` as a slow
    /// consumer.
    async fn timed(
        &self,
        write: impl Future<Output = Result<(), actix_ws::Closed>>,
        timeout: Duration,
    ) -> Result<(), End> {
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(None),
            Err(_) => {
                self.state.metrics.slow_consumers.inc();
                Err(Some((
                    close::SLOW_CONSUMER,
                    "slow consumer: reconnect and resume",
                )))
            }
        }
    }

    /// Queues one frame (see [`Session::feed_text`]); [`Connection::flush`] writes it.
    async fn feed(
        &self,
        session: &mut Session,
        frame: Frame,
        timeout: Duration,
    ) -> Result<(), End> {
        let write = async {
            match frame {
                Frame::Text(text) => session.feed_text(text).await,
                Frame::Binary(bytes) => session.feed_binary(bytes).await,
            }
        };
        self.timed(write, timeout).await?;
        self.state.metrics.hot.ws_frames_out.inc();
        Ok(())
    }

    async fn flush(&self, session: &mut Session, timeout: Duration) -> Result<(), End> {
        self.timed(session.flush(), timeout).await
    }

    /// Sends one frame now.
    async fn send(
        &self,
        session: &mut Session,
        frame: Frame,
        timeout: Duration,
    ) -> Result<(), End> {
        self.feed(session, frame, timeout).await?;
        self.flush(session, timeout).await
    }

    async fn reply(
        &self,
        session: &mut Session,
        msg: &ServerMessage,
        timeout: Duration,
    ) -> Result<(), End> {
        self.send(session, text_frame(msg), timeout).await
    }

    async fn write_batch(
        &mut self,
        session: &mut Session,
        batch: &mut Vec<Item>,
        timeout: Duration,
    ) -> Result<(), End> {
        let mut delivered = 0u64;
        let mut oldest_live_ms = None;
        for item in batch.drain(..) {
            match item {
                Item::Event {
                    slot,
                    message,
                    live,
                } => {
                    if self.slots.get(slot).is_none() {
                        continue; // unsubscribed meanwhile
                    }
                    let frame = if message.is_binary() {
                        Frame::Binary(message.ws_binary())
                    } else {
                        Frame::Text(message.ws_text())
                    };
                    self.feed(session, frame, timeout).await?;
                    delivered += 1;
                    if live && oldest_live_ms.is_none() {
                        oldest_live_ms = Some(message.event.published_ms);
                    }
                }
                Item::Gap {
                    slot,
                    first_available,
                } => {
                    let Some(s) = self.slots.get(slot) else {
                        continue;
                    };
                    let msg = ServerMessage::Gap {
                        channel: s.channel.to_string(),
                        first_available: first_available.to_string(),
                    };
                    self.feed(session, text_frame(&msg), timeout).await?;
                }
                Item::Subscribed {
                    slot,
                    position,
                    recovered,
                } => {
                    let Some(s) = self.slots.get_mut(slot) else {
                        continue;
                    };
                    let msg = ServerMessage::Subscribed {
                        channel: s.channel.to_string(),
                        position: position.to_string(),
                        recovered,
                        req: s.req.take(),
                    };
                    self.feed(session, text_frame(&msg), timeout).await?;
                }
            }
        }
        // The whole batch in one write on a raw socket.
        self.flush(session, timeout).await?;
        let metrics = &self.state.metrics;
        if delivered > 0 {
            metrics.hot.delivered_ws.inc_by(delivered);
        }
        if let Some(ms) = oldest_live_ms {
            let now = crate::engine::memory::unix_millis();
            metrics
                .delivery_latency
                .observe(now.saturating_sub(ms) as f64 / 1000.0);
        }
        Ok(())
    }

    async fn on_report(
        &mut self,
        report: Report,
        session: &mut Session,
        timeout: Duration,
    ) -> Result<(), End> {
        match report {
            Report::Joined { slot, membership } => {
                if let Some(s) = self.slots.get_mut(slot) {
                    s.membership = Some(membership);
                    s.task = None;
                }
                // Otherwise the client unsubscribed meanwhile; dropping the membership detaches.
                Ok(())
            }
            Report::SubscribeFailed {
                slot,
                code,
                message,
            } => {
                let Some(s) = self.slots.remove(slot) else {
                    return Ok(());
                };
                // A store failure ends the connection, as on SSE: the client reconnects with
                // backoff and resumes every channel, instead of holding one it never gets.
                match code {
                    "unavailable" => {
                        let why = "history store unavailable: reconnect later";
                        return Err(Some((close::UNAVAILABLE, why)));
                    }
                    "shutting_down" => {
                        return Err(Some((close::GOING_AWAY, "server shutting down")));
                    }
                    _ => {}
                }
                let msg = ServerMessage::Error {
                    code: code.to_owned(),
                    message,
                    channel: Some(s.channel.to_string()),
                    req: s.req,
                };
                self.reply(session, &msg, timeout).await
            }
            Report::Send(msg) => self.reply(session, &msg, timeout).await,
        }
    }

    async fn on_client(
        &mut self,
        msg: AggregatedMessage,
        session: &mut Session,
        timeout: Duration,
    ) -> Result<(), End> {
        match msg {
            AggregatedMessage::Text(text) => {
                self.state.metrics.hot.ws_frames_in.inc();
                let parsed = shared::ws::parse_client(&text);
                if !self.take_token() {
                    let req = match &parsed {
                        Ok(cmd) => req_of(cmd),
                        Err((_, req)) => req.clone(),
                    };
                    let message = "too many commands; slow down".to_owned();
                    return self
                        .refuse(session, "rate_limited", message, None, req, timeout)
                        .await;
                }
                match parsed {
                    Ok(cmd) => self.on_command(cmd, session, timeout).await,
                    Err((e, req)) => {
                        self.refuse(session, e.code(), e.to_string(), None, req, timeout)
                            .await
                    }
                }
            }
            AggregatedMessage::Binary(bytes) => {
                self.state.metrics.hot.ws_frames_in.inc();
                if !self.take_token() {
                    let req = match shared::ws::decode_binary(&bytes) {
                        Ok(BinaryFrame::Publish { req: Some(r), .. }) => {
                            Some(Value::String(r.to_owned()))
                        }
                        _ => None,
                    };
                    let message = "too many commands; slow down".to_owned();
                    return self
                        .refuse(session, "rate_limited", message, None, req, timeout)
                        .await;
                }
                self.on_binary(&bytes, session, timeout).await
            }
            AggregatedMessage::Ping(payload) => self.timed(session.pong(&payload), timeout).await,
            AggregatedMessage::Pong(_) => Ok(()),
            AggregatedMessage::Close(_) => Err(Some((close::NORMAL, "bye"))),
        }
    }

    /// A token-bucket check for command floods.
    fn take_token(&mut self) -> bool {
        let rate = f64::from(self.state.settings.ws.commands_per_second);
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.refilled).as_secs_f64() * rate).min(rate * 2.0);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Replies with an error; past the configured number of errors the connection is closed.
    async fn refuse(
        &mut self,
        session: &mut Session,
        code: &'static str,
        message: String,
        channel: Option<&ChannelName>,
        req: Option<Value>,
        timeout: Duration,
    ) -> Result<(), End> {
        // Only misuse counts toward the budget: malformed input and floods. Refusals of
        // well-formed commands (forbidden, not subscribed, ...) are the app's business and must
        // not end a connection that the client would then not be allowed to re-open.
        if COUNTED.contains(&code) {
            self.errors += 1;
        }
        self.state.metrics.rejected.with_label_values(&[code]).inc();
        let msg = ServerMessage::Error {
            code: code.to_owned(),
            message,
            channel: channel.map(ToString::to_string),
            req,
        };
        self.reply(session, &msg, timeout).await?;
        if self.errors > self.state.settings.ws.max_protocol_errors {
            return Err(Some((
                close::POLICY,
                "too many malformed commands or too fast",
            )));
        }
        Ok(())
    }

    async fn on_command(
        &mut self,
        cmd: ClientMessage,
        session: &mut Session,
        timeout: Duration,
    ) -> Result<(), End> {
        match cmd {
            ClientMessage::Ping { req } => {
                self.reply(session, &ServerMessage::Pong { req }, timeout)
                    .await
            }
            ClientMessage::Subscribe {
                channel,
                since,
                req,
            } => self.subscribe(channel, since, req, session, timeout).await,
            ClientMessage::Unsubscribe { channel, req } => {
                let name = match ChannelName::new(&channel) {
                    Ok(n) => n,
                    Err(e) => {
                        return self
                            .refuse(
                                session,
                                "invalid_channel",
                                e.to_string(),
                                None,
                                req,
                                timeout,
                            )
                            .await;
                    }
                };
                let Some(slot) = self.slots.find(&name) else {
                    return self
                        .refuse(
                            session,
                            "not_subscribed",
                            format!("not subscribed to {name}"),
                            Some(&name),
                            req,
                            timeout,
                        )
                        .await;
                };
                if let Some(mut s) = self.slots.remove(slot)
                    && let Some(task) = s.task.take()
                {
                    task.abort();
                }
                self.reply(
                    session,
                    &ServerMessage::Unsubscribed { channel, req },
                    timeout,
                )
                .await
            }
            ClientMessage::Publish {
                channel,
                data,
                event,
                req,
            } => {
                let body = PublishBody {
                    channel,
                    data,
                    event,
                };
                match publish::validate(body) {
                    Ok(request) => self.publish(request, req, session, timeout).await,
                    Err(e) => {
                        self.refuse(session, e.code(), e.detail().to_owned(), None, req, timeout)
                            .await
                    }
                }
            }
        }
    }

    async fn subscribe(
        &mut self,
        channel: String,
        since: Option<String>,
        req: Option<Value>,
        session: &mut Session,
        timeout: Duration,
    ) -> Result<(), End> {
        let name = match ChannelName::new(&channel) {
            Ok(n) => n,
            Err(e) => {
                return self
                    .refuse(
                        session,
                        "invalid_channel",
                        e.to_string(),
                        None,
                        req,
                        timeout,
                    )
                    .await;
            }
        };
        if !self.grant.may_subscribe(&name) {
            let message = format!("the token does not allow channel {name}");
            return self
                .refuse(session, "forbidden", message, Some(&name), req, timeout)
                .await;
        }
        if self.slots.find(&name).is_some() {
            let message = format!("already subscribed to {name}");
            return self
                .refuse(
                    session,
                    "already_subscribed",
                    message,
                    Some(&name),
                    req,
                    timeout,
                )
                .await;
        }
        if self.slots.0.len() >= self.state.settings.limits.max_channels {
            let message = format!(
                "at most {} channels per connection",
                self.state.settings.limits.max_channels
            );
            return self
                .refuse(
                    session,
                    "too_many_channels",
                    message,
                    Some(&name),
                    req,
                    timeout,
                )
                .await;
        }
        let since = match since
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(str::parse::<Position>)
            .transpose()
        {
            Ok(s) => s,
            Err(e) => {
                self.state
                    .metrics
                    .resumes
                    .with_label_values(&["bad_cursor"])
                    .inc();
                let message = format!("since is not a position: {e}");
                return self
                    .refuse(session, "bad_position", message, Some(&name), req, timeout)
                    .await;
            }
        };
        let slot = self.next_slot;
        self.next_slot += 1;
        let task = actix_web::rt::spawn(resume(
            self.state.clone(),
            self.queue.clone(),
            slot,
            name.clone(),
            since,
            self.reports.clone(),
        ));
        self.slots.0.push(Slot {
            id: slot,
            channel: name,
            req,
            membership: None,
            task: Some(task),
        });
        Ok(())
    }

    async fn on_binary(
        &mut self,
        bytes: &Bytes,
        session: &mut Session,
        timeout: Duration,
    ) -> Result<(), End> {
        let (channel, event, req, data) = match shared::ws::decode_binary(bytes) {
            Ok(BinaryFrame::Publish {
                channel,
                event,
                req,
                data,
            }) => (channel, event, req, data),
            Ok(BinaryFrame::Event { .. }) => {
                let message = "clients may only send binary publish frames (kind 2)".to_owned();
                return self
                    .refuse(session, "bad_binary", message, None, None, timeout)
                    .await;
            }
            Err(e) => {
                return self
                    .refuse(session, "bad_binary", e.to_string(), None, None, timeout)
                    .await;
            }
        };
        let req = req.map(|r| Value::String(r.to_owned()));
        let channel = match ChannelName::new(channel) {
            Ok(c) => c,
            Err(e) => {
                return self
                    .refuse(
                        session,
                        "invalid_channel",
                        e.to_string(),
                        None,
                        req,
                        timeout,
                    )
                    .await;
            }
        };
        let name = match event.map(EventName::new).transpose() {
            Ok(n) => n,
            Err(e) => {
                return self
                    .refuse(
                        session,
                        "invalid_event",
                        e.to_string(),
                        Some(&channel),
                        req,
                        timeout,
                    )
                    .await;
            }
        };
        let request = PublishRequest {
            channel,
            name,
            kind: PayloadKind::Binary,
            data: Bytes::copy_from_slice(data),
        };
        self.publish(request, req, session, timeout).await
    }

    async fn publish(
        &mut self,
        request: PublishRequest,
        req: Option<Value>,
        session: &mut Session,
        timeout: Duration,
    ) -> Result<(), End> {
        let channel = request.channel.clone();
        let limit = self.state.settings.publish.max_bytes;
        if request.data.len() > limit {
            let message = format!("the payload exceeds publish.max_bytes ({limit} bytes)");
            return self
                .refuse(session, "too_large", message, Some(&channel), req, timeout)
                .await;
        }
        if !self.state.settings.ws.allow_publish || !self.grant.may_publish(&channel) {
            let message = "client publishing is not allowed here".to_owned();
            return self
                .refuse(
                    session,
                    "publish_forbidden",
                    message,
                    Some(&channel),
                    req,
                    timeout,
                )
                .await;
        }
        let state = self.state.clone();
        let reports = self.reports.clone();
        actix_web::rt::spawn(async move {
            let msg = match state.hub.engine().publish(request).await {
                Ok(id) => {
                    state.metrics.published.with_label_values(&["ws"]).inc();
                    ServerMessage::Published {
                        channel: channel.to_string(),
                        id: id.to_string(),
                        req,
                    }
                }
                Err(e) => ServerMessage::Error {
                    code: "publish_failed".into(),
                    message: e.to_string(),
                    channel: Some(channel.to_string()),
                    req,
                },
            };
            reports.send(Report::Send(Box::new(msg)));
        });
        Ok(())
    }
}

enum Frame {
    Text(ByteString),
    Binary(Bytes),
}

fn text_frame(msg: &ServerMessage) -> Frame {
    // Serialising these plain structs cannot fail.
    let text = serde_json::to_string(msg).unwrap_or_default();
    Frame::Text(ByteString::from(text))
}

/// Attaches and resumes one channel of a connection; reports the result to the session.
async fn resume(
    state: AppState,
    queue: Arc<Queue>,
    slot: u32,
    channel: ChannelName,
    since: Option<Position>,
    reports: Arc<Inbox>,
) {
    let hub = &state.hub;
    let result: Result<Membership, (&'static str, String)> = async {
        let (membership, head) = hub
            .attach(channel.clone(), queue, slot)
            .await
            .map_err(hub_failure)?;
        let start = match hub.start_position(&membership, head, since).await {
            Ok(start) => start,
            Err(StartError::Ahead { wanted, head }) => {
                state
                    .metrics
                    .resumes
                    .with_label_values(&["bad_cursor"])
                    .inc();
                return Err((
                    "bad_position",
                    format!("position {wanted} is beyond the channel's newest event {head}"),
                ));
            }
            Err(StartError::Hub(e)) => return Err(hub_failure(e)),
        };
        let announce = if since.is_some() {
            Announce::Resume
        } else {
            Announce::Fresh
        };
        let outcome = hub
            .join(&membership, start, announce)
            .await
            .map_err(hub_failure)?;
        let label = match (since.is_some(), outcome.recovered) {
            (false, _) => "fresh",
            (true, true) => "recovered",
            (true, false) => "gap",
        };
        state.metrics.resumes.with_label_values(&[label]).inc();
        Ok(membership)
    }
    .await;
    let report = match result {
        Ok(membership) => Report::Joined { slot, membership },
        Err((code, message)) => Report::SubscribeFailed {
            slot,
            code,
            message,
        },
    };
    reports.send(report);
}

fn hub_failure(e: HubError) -> (&'static str, String) {
    let code = match e {
        HubError::ShuttingDown => "shutting_down",
        HubError::Closed => "closed",
        HubError::Timeout | HubError::Engine(_) => "unavailable",
    };
    (code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let allowed = vec!["https://app.example".to_owned()];
        assert!(
            origin_allowed(None, Some("gw:8080"), &allowed),
            "non-browser clients"
        );
        assert!(origin_allowed(
            Some("https://app.example"),
            Some("gw:8080"),
            &allowed
        ));
        assert!(
            origin_allowed(Some("http://gw:8080"), Some("gw:8080"), &allowed),
            "same origin"
        );
        assert!(!origin_allowed(
            Some("https://evil.example"),
            Some("gw:8080"),
            &allowed
        ));
        assert!(!origin_allowed(Some("null"), Some("gw:8080"), &allowed));
        assert!(origin_allowed(
            Some("https://evil.example"),
            None,
            &["*".to_owned()]
        ));
    }

    /// What `upgrade` answers to these request headers.
    async fn upgrade_reply(headers: &[(&str, &str)]) -> (bool, String) {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(name.parse().unwrap(), value.parse().unwrap());
        }
        let upgraded = upgrade(&server, map).await;
        drop(server);
        let mut reply = String::new();
        client.read_to_string(&mut reply).await.unwrap();
        (upgraded, reply)
    }

    /// A tripwire for per-connection memory: the whole state of a raw WebSocket connection's
    /// task, bar heap allocations, is this future (it was 1.8 KiB before the handshake moved out
    /// of it). Raise the bound only knowingly.
    #[test]
    fn the_raw_session_future_stays_small() {
        fn size_of_output<A, B, C, F>(_: fn(A, B, C) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let size = size_of_output::<AppState, RequestHead, TcpStream, _>(serve_raw);
        assert!(size <= 1280, "serve_raw's future is {size} bytes");
    }

    #[tokio::test]
    async fn raw_upgrades_are_checked_like_actix_ws() {
        let valid = [
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            // The example of RFC 6455 §1.3.
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        let (upgraded, reply) = upgrade_reply(&valid).await;
        assert!(upgraded);
        assert!(
            reply.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{reply}"
        );
        assert!(reply.contains("\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(reply.ends_with("\r\n\r\n"));

        for broken in 0..valid.len() {
            let headers: Vec<_> = valid
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != broken)
                .map(|(_, h)| *h)
                .collect();
            let (upgraded, reply) = upgrade_reply(&headers).await;
            assert!(!upgraded);
            assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
            assert!(reply.contains(r#""error":"not_websocket""#), "{reply}");
        }
        let mut old = valid;
        old[2].1 = "8";
        assert!(!upgrade_reply(&old).await.0, "only version 13");
        let mut closing = valid;
        closing[1].1 = "upgrade, close";
        assert!(!upgrade_reply(&closing).await.0);
    }
}
