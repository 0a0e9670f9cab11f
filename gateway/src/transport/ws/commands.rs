//! What the client asks for: subscribe, unsubscribe, publish, ping, and binary publishes; the
//! reports side tasks send back; and refusals, counted against the connection's budget.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use shared::ws::{BinaryFrame, ClientMessage, ServerMessage};
use shared::{ChannelName, Disconnect, ErrorCode, EventName, PayloadKind, Position};

use super::End;
use super::connection::{Connection, Slot};
use super::inbox::{Inbox, Report};
use super::io::{Message, Session};
use super::token::TokenClock;
use crate::engine::PublishRequest;
use crate::hub::queue::Queue;
use crate::hub::{Announce, HubError, Membership};
use crate::publish::{self, PublishBody};
use crate::session::{self, Want};
use crate::state::AppState;

/// A command the gateway will not carry out: answered with an `error` reply.
pub(super) struct Refused {
    code: ErrorCode,
    message: String,
    channel: Option<ChannelName>,
    req: Option<Value>,
}

impl Refused {
    pub(super) fn new(code: ErrorCode, message: impl Into<String>, req: Option<Value>) -> Self {
        Self {
            code,
            message: message.into(),
            channel: None,
            req,
        }
    }

    pub(super) fn on(mut self, channel: &ChannelName) -> Self {
        self.channel = Some(channel.clone());
        self
    }
}

/// What handling a command came to: done, refused (reply and go on), or the end.
enum Outcome {
    Refused(Refused),
    End(End),
}

impl From<Refused> for Outcome {
    fn from(r: Refused) -> Self {
        Self::Refused(r)
    }
}

/// The `req` of a command, for replies that refuse it.
fn req_of(cmd: &ClientMessage) -> Option<Value> {
    match cmd {
        ClientMessage::Subscribe { req, .. }
        | ClientMessage::Unsubscribe { req, .. }
        | ClientMessage::Publish { req, .. }
        | ClientMessage::History { req, .. }
        | ClientMessage::Presence { req, .. }
        | ClientMessage::Ping { req }
        | ClientMessage::Auth { req, .. } => req.clone(),
    }
}

/// A channel name from a command, or its refusal.
pub(super) fn channel_of(name: &str, req: &Option<Value>) -> Result<ChannelName, Refused> {
    ChannelName::new(name)
        .map_err(|e| Refused::new(ErrorCode::InvalidChannel, e.to_string(), req.clone()))
}

fn too_fast(req: Option<Value>) -> Refused {
    Refused::new(ErrorCode::RateLimited, "too many commands; slow down", req)
}

impl Connection {
    /// Handles a side task's report.
    pub(super) async fn on_report(
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
                    ErrorCode::Unavailable => return Err(Some(Disconnect::Unavailable)),
                    ErrorCode::ShuttingDown => return Err(Some(Disconnect::Shutdown)),
                    _ => {}
                }
                let msg = ServerMessage::Error {
                    code: code.as_str().to_owned(),
                    message,
                    channel: Some(s.channel.to_string()),
                    req: s.req,
                };
                self.reply(session, &msg, timeout).await
            }
            Report::Send(msg) => self.reply(session, &msg, timeout).await,
        }
    }

    /// Handles one message from the client.
    pub(super) async fn on_client(
        &mut self,
        msg: Message,
        session: &mut Session,
        timeout: Duration,
    ) -> Result<(), End> {
        let outcome = match msg {
            Message::Text(text) => {
                self.state.metrics.hot.ws_frames_in.inc();
                match shared::ws::parse_client(&text) {
                    Ok(cmd) if !self.budget.take() => Err(too_fast(req_of(&cmd)).into()),
                    Err((_, req)) if !self.budget.take() => Err(too_fast(req).into()),
                    Ok(cmd) => self.on_command(cmd, session, timeout).await,
                    Err((e, req)) => Err(Refused::new(e.code(), e.to_string(), req).into()),
                }
            }
            Message::Binary(bytes) => {
                self.state.metrics.hot.ws_frames_in.inc();
                if self.budget.take() {
                    self.on_binary(&bytes)
                } else {
                    let req = match shared::ws::decode_binary(&bytes) {
                        Ok(BinaryFrame::Publish { req: Some(r), .. }) => {
                            Some(Value::String(r.to_owned()))
                        }
                        _ => None,
                    };
                    Err(too_fast(req).into())
                }
            }
            Message::Ping(payload) => return self.timed(session.pong(&payload), timeout).await,
            Message::Pong(_) => return Ok(()),
            Message::Close(_) => return Err(Some(Disconnect::Normal)),
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(Outcome::End(end)) => Err(end),
            Err(Outcome::Refused(refused)) => self.refuse(session, refused, timeout).await,
        }
    }

    /// Replies with an error; past the budget of misuse the connection is closed.
    async fn refuse(
        &mut self,
        session: &mut Session,
        refused: Refused,
        timeout: Duration,
    ) -> Result<(), End> {
        let spent = self.budget.refused(refused.code);
        self.state
            .metrics
            .rejected
            .with_label_values(&[refused.code])
            .inc();
        let msg = ServerMessage::Error {
            code: refused.code.as_str().to_owned(),
            message: refused.message,
            channel: refused.channel.map(|c| c.to_string()),
            req: refused.req,
        };
        self.reply(session, &msg, timeout).await?;
        if spent {
            return Err(Some(Disconnect::Policy));
        }
        Ok(())
    }

    async fn on_command(
        &mut self,
        cmd: ClientMessage,
        session: &mut Session,
        timeout: Duration,
    ) -> Result<(), Outcome> {
        if self.clock.awaiting_token() && !matches!(cmd, ClientMessage::Auth { .. }) {
            let message = "send the token first: {\"type\":\"auth\",\"token\":...}";
            return Err(Refused::new(ErrorCode::Unauthorized, message, req_of(&cmd)).into());
        }
        match cmd {
            ClientMessage::Auth { token, req } => {
                self.authenticate(&token, req, session, timeout).await
            }
            ClientMessage::Ping { req } => self
                .reply(session, &ServerMessage::Pong { req }, timeout)
                .await
                .map_err(Outcome::End),
            ClientMessage::Subscribe {
                channel,
                since,
                latest,
                req,
            } => Ok(self.subscribe(&channel, since, latest, req)?),
            ClientMessage::History {
                channel,
                since,
                limit,
                req,
            } => Ok(self.history(&channel, since, limit, req)?),
            ClientMessage::Presence { channel, req } => Ok(self.presence(&channel, req)?),
            ClientMessage::Unsubscribe { channel, req } => {
                let name = channel_of(&channel, &req)?;
                let Some(slot) = self.slots.find(&name) else {
                    let message = format!("not subscribed to {name}");
                    return Err(Refused::new(ErrorCode::NotSubscribed, message, req)
                        .on(&name)
                        .into());
                };
                if let Some(mut s) = self.slots.remove(slot)
                    && let Some(task) = s.task.take()
                {
                    task.abort();
                }
                let reply = ServerMessage::Unsubscribed {
                    channel,
                    reason: None,
                    req,
                };
                self.reply(session, &reply, timeout)
                    .await
                    .map_err(Outcome::End)
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
                    Ok(request) => Ok(self.publish(request, req)?),
                    Err(e) => Err(Refused::new(e.code(), e.detail(), req).into()),
                }
            }
        }
    }

    /// A token sent as a message: the first one of a connection opened without, or a fresh one
    /// before the current expires. Channels the new token does not cover are unsubscribed
    /// (`unsubscribed` with reason `forbidden`); the rest go on untouched, so nothing is lost
    /// or repeated across a refresh. A refused first token ends the connection (4500); a
    /// refused refresh leaves the current token in force until it expires.
    async fn authenticate(
        &mut self,
        token: &str,
        req: Option<Value>,
        session: &mut Session,
        timeout: Duration,
    ) -> Result<(), Outcome> {
        if !self.state.auth.required() {
            let message = "this gateway does not use tokens";
            return Err(Refused::new(ErrorCode::Unauthorized, message, req).into());
        }
        let grant = match self.state.auth.verify(token) {
            Ok(grant) => grant,
            Err(_) if self.clock.awaiting_token() => {
                return Err(Outcome::End(Some(Disconnect::Unauthorized)));
            }
            Err(e) => return Err(Refused::new(e.code(), e.detail(), req).into()),
        };
        let dropped: Vec<u32> = (self.slots.0.iter())
            .filter(|s| !grant.may_subscribe(&s.channel))
            .map(|s| s.id)
            .collect();
        for id in dropped {
            let Some(mut slot) = self.slots.remove(id) else {
                continue;
            };
            if let Some(task) = slot.task.take() {
                task.abort();
            }
            let reply = ServerMessage::Unsubscribed {
                channel: slot.channel.to_string(),
                reason: Some(ErrorCode::Forbidden.as_str().to_owned()),
                req: None,
            };
            self.reply(session, &reply, timeout)
                .await
                .map_err(Outcome::End)?;
        }
        let warning = Duration::from_secs(self.state.settings.ws.token_warning_seconds);
        self.clock = TokenClock::for_grant(&grant, warning);
        let exp = grant.expires().unwrap_or_default();
        self.grant = grant;
        let reply = ServerMessage::Authenticated { exp, req };
        self.reply(session, &reply, timeout)
            .await
            .map_err(Outcome::End)
    }

    /// Checks a subscribe and starts its resume in a side task, which reports back.
    fn subscribe(
        &mut self,
        channel: &str,
        since: Option<String>,
        latest: Option<u64>,
        req: Option<Value>,
    ) -> Result<(), Refused> {
        let name = channel_of(channel, &req)?;
        let refuse = |code, message: String| Refused::new(code, message, req.clone()).on(&name);
        if !self.grant.may_subscribe(&name) {
            let message = format!("the token does not allow channel {name}");
            return Err(refuse(ErrorCode::Forbidden, message));
        }
        if self.slots.find(&name).is_some() {
            let message = format!("already subscribed to {name}");
            return Err(refuse(ErrorCode::AlreadySubscribed, message));
        }
        let max = self.state.settings.limits.max_channels;
        if self.slots.0.len() >= max {
            let message = format!("at most {max} channels per connection");
            return Err(refuse(ErrorCode::TooManyChannels, message));
        }
        let max_latest = self.state.settings.history.max_page as u64;
        let want = match since.as_deref().filter(|s| !s.is_empty()) {
            Some("latest") => Want::Latest(latest.unwrap_or(1).min(max_latest)),
            Some(since) => match since.parse::<Position>() {
                Ok(p) => Want::After(p),
                Err(e) => {
                    self.state
                        .metrics
                        .resume(crate::metrics::labels::ResumeOutcome::BadCursor);
                    let message = format!("since is not a position: {e}");
                    return Err(refuse(ErrorCode::BadPosition, message));
                }
            },
            None => latest.map_or(Want::Head, |n| Want::Latest(n.min(max_latest))),
        };
        let slot = self.next_slot;
        self.next_slot += 1;
        let task = actix_rt::spawn(resume(
            self.state.clone(),
            self.queue.clone(),
            slot,
            name.clone(),
            want,
            self.reports.clone(),
        ));
        let presence = self.state.hub.presence();
        // The id exists only once a tracked channel needs it: most connections never do.
        let tracked = presence.tracks(&name).then(|| {
            let id = self.conn_id.get_or_insert_with(|| presence.connection_id());
            presence.track(&name, id, &self.grant).map(Box::new)
        });
        self.slots.0.push(Slot {
            id: slot,
            _presence: tracked.flatten(),
            channel: name,
            req,
            membership: None,
            task: Some(task),
        });
        Ok(())
    }

    /// A binary publish frame (kind 2): channel, event and `req` in the header, raw payload.
    fn on_binary(&mut self, bytes: &Bytes) -> Result<(), Outcome> {
        let (channel, event, req, data) = match shared::ws::decode_binary(bytes) {
            Ok(BinaryFrame::Publish {
                channel,
                event,
                req,
                data,
            }) => (channel, event, req, data),
            Ok(BinaryFrame::Event { .. }) => {
                let message = "clients may only send binary publish frames (kind 2)";
                return Err(Refused::new(ErrorCode::BadBinary, message, None).into());
            }
            Err(e) => return Err(Refused::new(ErrorCode::BadBinary, e.to_string(), None).into()),
        };
        let req = req.map(|r| Value::String(r.to_owned()));
        let channel = channel_of(channel, &req)?;
        let name = event.map(EventName::new).transpose().map_err(|e| {
            Refused::new(ErrorCode::InvalidEvent, e.to_string(), req.clone()).on(&channel)
        })?;
        let request = PublishRequest {
            channel,
            name,
            kind: PayloadKind::Binary,
            data: Bytes::copy_from_slice(data),
        };
        Ok(self.publish(request, req)?)
    }

    /// Checks a client publish and runs it in a side task, which reports the outcome.
    fn publish(&mut self, request: PublishRequest, req: Option<Value>) -> Result<(), Refused> {
        let channel = request.channel.clone();
        let limit = self.state.settings.publish.max_bytes;
        if request.data.len() > limit {
            let message = format!("the payload exceeds publish.max_bytes ({limit} bytes)");
            return Err(Refused::new(ErrorCode::TooLarge, message, req).on(&channel));
        }
        if !self.state.settings.ws.allow_publish || !self.grant.may_publish(&channel) {
            let message = "client publishing is not allowed here";
            return Err(Refused::new(ErrorCode::PublishForbidden, message, req).on(&channel));
        }
        let state = self.state.clone();
        let reports = self.reports.clone();
        actix_rt::spawn(async move {
            let counted = Some((&state.metrics, "ws"));
            let msg = match publish::publish(state.hub.engine(), request, counted).await {
                Ok(id) => ServerMessage::Published {
                    channel: channel.to_string(),
                    id: id.to_string(),
                    req,
                },
                Err(e) => ServerMessage::Error {
                    code: ErrorCode::PublishFailed.as_str().to_owned(),
                    message: e.detail().to_owned(),
                    channel: Some(channel.to_string()),
                    req,
                },
            };
            reports.send(Report::Send(Box::new(msg)));
        });
        Ok(())
    }
}

/// Subscribes one channel of a connection (the session core's attach and join); reports the
/// result to the session.
async fn resume(
    state: AppState,
    queue: Arc<Queue>,
    slot: u32,
    channel: ChannelName,
    want: Want,
    reports: Arc<Inbox>,
) {
    let result: Result<Membership, (ErrorCode, String)> = async {
        let attached = session::attach(&state, channel, queue, slot, want)
            .await
            .map_err(hub_failure)?;
        let announce = if want.resumes() {
            Announce::Resume
        } else {
            Announce::Fresh
        };
        session::join(
            &state,
            &attached.membership,
            attached.start,
            want.resumes(),
            announce,
        )
        .await
        .map_err(hub_failure)?;
        Ok(attached.membership)
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

/// The error code and message of a hub failure, for `error` replies.
pub(super) fn hub_failure(e: HubError) -> (ErrorCode, String) {
    let code = match e {
        HubError::ShuttingDown => ErrorCode::ShuttingDown,
        HubError::Closed => ErrorCode::Closed,
        HubError::Timeout | HubError::Engine(_) => ErrorCode::Unavailable,
    };
    (code, e.to_string())
}
