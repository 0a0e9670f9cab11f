//! The `presence` command: who is subscribed to a channel, answered with a `presence` message
//! shaped like the body of `GET /presence`. The token must allow subscribing to the channel.
//! The read runs in a side task, so the connection keeps delivering meanwhile.

use serde_json::Value;
use shared::ErrorCode;
use shared::ws::ServerMessage;

use super::commands::{Refused, channel_of};
use super::connection::Connection;
use super::inbox::Report;

impl Connection {
    /// Checks a `presence` command and starts its read.
    pub(super) fn presence(&mut self, channel: &str, req: Option<Value>) -> Result<(), Refused> {
        let name = channel_of(channel, &req)?;
        if !self.grant.may_subscribe(&name) {
            let message = format!("the token does not allow channel {name}");
            return Err(Refused::new(ErrorCode::Forbidden, message, req).on(&name));
        }
        let presence = self.state.hub.presence().clone();
        let reports = self.reports.clone();
        actix_rt::spawn(async move {
            let msg = match presence.roster(&name, presence.max_entries()).await {
                Ok(Some(roster)) => ServerMessage::Presence {
                    channel: name.to_string(),
                    count: roster.count,
                    clients: roster.clients,
                    req,
                },
                result => {
                    let e = match result {
                        Err(e) => crate::error::ApiError::from(e),
                        Ok(_) => crate::transport::presence::off(&name),
                    };
                    ServerMessage::Error {
                        code: e.code().as_str().to_owned(),
                        message: e.to_string(),
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
