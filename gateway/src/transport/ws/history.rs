//! The `history` command: one page of a channel's history, answered with a `history` message
//! shaped like the body of `GET /history` (the same read and gap rule, `Hub::range`). The token
//! must allow subscribing to the channel. The read runs in a side task, so the connection keeps
//! delivering meanwhile.

use serde_json::Value;
use shared::ws::ServerMessage;
use shared::{ErrorCode, Position};

use super::commands::{Refused, channel_of, hub_failure};
use super::connection::Connection;
use super::inbox::Report;
use crate::transport::page;

impl Connection {
    /// Checks a `history` command and starts its read.
    pub(super) fn history(
        &mut self,
        channel: &str,
        since: Option<String>,
        limit: Option<u64>,
        req: Option<Value>,
    ) -> Result<(), Refused> {
        let name = channel_of(channel, &req)?;
        if !self.grant.may_subscribe(&name) {
            let message = format!("the token does not allow channel {name}");
            return Err(Refused::new(ErrorCode::Forbidden, message, req).on(&name));
        }
        let since = match since.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(s.parse::<Position>().map_err(|e| {
                let message = format!("since is not a position: {e}");
                Refused::new(ErrorCode::BadPosition, message, req.clone()).on(&name)
            })?),
        };
        let max = self.state.settings.history.max_page;
        let limit = limit.map_or(max, |n| usize::try_from(n).unwrap_or(max).clamp(1, max));
        let state = self.state.clone();
        let reports = self.reports.clone();
        actix_rt::spawn(async move {
            let msg = match state.hub.range(&name, since, limit).await {
                Ok(range) => {
                    let mut body = page::range(&name, &range);
                    let events = match body.remove("events") {
                        Some(Value::Array(events)) => events,
                        _ => Vec::new(),
                    };
                    ServerMessage::History {
                        channel: name.to_string(),
                        events,
                        gap: body.remove("gap"),
                        next: range.next.to_string(),
                        head: range.head.to_string(),
                        more: range.more(),
                        req,
                    }
                }
                Err(e) => {
                    let (code, message) = hub_failure(e);
                    ServerMessage::Error {
                        code: code.as_str().to_owned(),
                        message,
                        channel: Some(name.to_string()),
                        req,
                    }
                }
            };
            reports.send(Report::Send(Box::new(msg)));
        });
        Ok(())
    }
}
