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

use actix_http::ws::{CloseCode, CloseReason as WsClose, ProtocolError};
use bytes::Bytes;
use bytestring::ByteString;
use serde_json::Value;
use shared::ws::{BinaryFrame, ClientMessage, ServerMessage, close};
use shared::{ChannelName, EventName, PayloadKind, Position};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::auth::Grant;
use crate::engine::PublishRequest;
use crate::hub::queue::{CloseReason, Drained, Item, Queue};
use crate::hub::{Announce, HubError, Membership, StartError};
use crate::publish::{self, PublishBody};
use crate::state::{AppState, ConnectionGuard};

mod accept;
pub mod io;

pub use accept::{Accepted, Upgrade, origin_allowed, respond};
use io::{Closed, Message, MessageStream, Session};

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

fn protocol_error_close(e: &ProtocolError) -> (u16, &'static str) {
    match e {
        ProtocolError::Overflow => (close::TOO_BIG, "message too big"),
        _ => (close::PROTOCOL, "protocol error"),
    }
}

impl Connection {
    /// Runs one write, treating a write that makes no progress within `timeout` as a slow
    /// consumer.
    async fn timed(
        &self,
        write: impl Future<Output = Result<(), Closed>>,
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
        msg: Message,
        session: &mut Session,
        timeout: Duration,
    ) -> Result<(), End> {
        match msg {
            Message::Text(text) => {
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
            Message::Binary(bytes) => {
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
            Message::Ping(payload) => self.timed(session.pong(&payload), timeout).await,
            Message::Pong(_) => Ok(()),
            Message::Close(_) => Err(Some((close::NORMAL, "bye"))),
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
        let task = actix_rt::spawn(resume(
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
        actix_rt::spawn(async move {
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
