//! The session loop: one task per connection that drains the queue into frames, reads and
//! handles the client's messages, heartbeats, and ends the connection with a close code from the
//! disconnect table.

use std::sync::Arc;
use std::time::Duration;

use actix_http::ws::{CloseCode, CloseReason as WsClose, ProtocolError};
use shared::Disconnect;
use tokio::time::Instant;

use super::End;
use super::connection::{Connection, Slots};
use super::inbox::Inbox;
use super::io::{MessageStream, Session};
use super::limits::Budget;
use super::token::{Due, TokenClock};
use crate::hub::queue::{CloseReason, Drained};
use crate::session::Admitted;
use crate::state::AppState;
use shared::ws::ServerMessage;

/// The connection together with the receiving end of its report channel.
pub(super) struct Running {
    conn: Connection,
    inbox: Arc<Inbox>,
}

impl Running {
    /// Serves the connection until it ends, then closes it with the reason.
    pub(super) async fn run(self, mut session: Session, mut stream: MessageStream) {
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
                _ = shutdown.wait_for(|down| *down) => break Some(Disconnect::Shutdown),
                drained = queue.drain(&mut batch) => match drained {
                    Drained::Items => {
                        // Boxed too: it holds a write timeout, which would otherwise sit in every
                        // idle connection's task.
                        if let Err(end) = Box::pin(conn.write_batch(&mut session, &mut batch, timeout)).await {
                            break end;
                        }
                    }
                    Drained::Closed(reason) => {
                        reason.count(&conn.state.metrics);
                        break reason.disconnect();
                    }
                },
                report = inbox.recv() => {
                    // Boxed: rare branches must not grow every connection's task.
                    if let Err(end) = Box::pin(conn.on_report(report, &mut session, timeout)).await {
                        break end;
                    }
                }
                msg = stream.recv() => match msg {
                    None => break None,
                    Some(Err(e)) => {
                        crate::telemetry::malformed("websocket", &e);
                        break Some(protocol_error_close(&e));
                    }
                    Some(Ok(msg)) => {
                        conn.last_seen = Instant::now();
                        if let Err(end) = Box::pin(conn.on_client(msg, &mut session, timeout)).await {
                            break end;
                        }
                    }
                },
                due = conn.clock.fire() => match due {
                    Due::NoToken => break Some(Disconnect::Unauthorized),
                    Due::Expired => break Some(Disconnect::TokenExpired),
                    Due::Warn { exp } => {
                        let msg = ServerMessage::TokenExpiring { exp };
                        if let Err(end) = Box::pin(conn.reply(&mut session, &msg, timeout)).await {
                            break end;
                        }
                    }
                },
                _ = ping.tick() => {
                    if conn.last_seen.elapsed() > timeout {
                        break Some(Disconnect::HeartbeatTimeout);
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
            Some(disconnect) => {
                metrics
                    .ws_closes
                    .with_label_values(&[&disconnect.code().to_string()])
                    .inc();
                Box::pin(close_with(session, &mut stream, disconnect, None)).await;
            }
            None => metrics
                .ws_closes
                .with_label_values(&[crate::metrics::WS_CLOSE_BY_CLIENT])
                .inc(),
        }
    }
}

/// Sends a close frame with `disconnect`'s code and reason (or `reason`, when there is more to
/// say), then lets the client finish (see [`MessageStream::linger`]); all within one second, as
/// a client that takes nothing more must not hold the connection.
pub(super) async fn close_with(
    session: Session,
    stream: &mut MessageStream,
    disconnect: Disconnect,
    reason: Option<String>,
) {
    let close = WsClose {
        code: CloseCode::from(disconnect.code()),
        description: Some(reason.unwrap_or_else(|| disconnect.reason().to_owned())),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        if session.close(Some(close)).await.is_ok() {
            stream.linger().await;
        }
    })
    .await;
}

/// What a framing error ends the connection with.
fn protocol_error_close(e: &ProtocolError) -> Disconnect {
    match e {
        ProtocolError::Overflow => Disconnect::TooBig,
        _ => Disconnect::Protocol,
    }
}

impl Running {
    /// The state of an admitted connection.
    pub(super) fn new(state: AppState, admitted: Admitted) -> Self {
        let reports = Arc::new(Inbox::default());
        let inbox = reports.clone();
        let queue = state.hub.new_queue();
        let ws = &state.settings.ws;
        let budget = Budget::new(ws.commands_per_second, ws.max_protocol_errors);
        let clock = if admitted.awaiting_token {
            TokenClock::awaiting(Duration::from_secs(ws.auth_timeout_seconds))
        } else {
            TokenClock::for_grant(
                &admitted.grant,
                Duration::from_secs(ws.token_warning_seconds),
            )
        };
        let conn = Connection {
            conn_id: None,
            state,
            grant: admitted.grant,
            queue,
            slots: Slots::default(),
            next_slot: 0,
            budget,
            last_seen: Instant::now(),
            reports,
            clock,
            _guard: admitted.guard,
        };
        Running { conn, inbox }
    }
}
