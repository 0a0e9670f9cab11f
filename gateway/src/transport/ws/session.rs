//! The session loop: one task per connection that drains the queue into frames, reads and
//! handles the client's messages, heartbeats, and ends the connection with a close code from the
//! disconnect table.

use std::sync::Arc;
use std::time::Duration;

use actix_http::ws::{CloseCode, CloseReason as WsClose, ProtocolError};
use shared::Disconnect;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::End;
use super::connection::{Connection, Slots};
use super::inbox::{Inbox, Report};
use super::io::{MessageStream, Session};
use super::limits::Budget;
use super::token::{Due, TokenClock};
use crate::hub::direct::Direct;
use crate::hub::queue::{Arm, CloseReason, Drained};
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
        // With a plain socket, fan-out writes events itself while the session is parked
        // (`hub::direct`): armed before each wait, disarmed on whatever wakes it.
        let direct = queue.has_direct();
        // A close the queue carried was counted where it was decided (see `CloseReason::count`).
        let mut counted = false;
        let end: End = loop {
            let armed = direct && session.is_idle() && queue.arm(conn.seen) == Arm::Armed;
            let woke = tokio::select! {
                biased;
                _ = shutdown.wait_for(|down| *down) => Woke::Shutdown,
                drained = queue.drain(&mut batch) => Woke::Drained(drained),
                report = inbox.recv() => Woke::Report(report),
                msg = stream.recv() => Woke::Client(msg),
                due = conn.clock.fire() => Woke::Due(due),
                _ = ping.tick() => Woke::Ping,
            };
            if armed && let Some(wrote) = queue.disarm() {
                // What fan-out wrote meanwhile may have moved the client's window on.
                conn.seen = wrote.last;
            }
            match woke {
                Woke::Shutdown => break Some(Disconnect::Shutdown),
                Woke::Drained(Drained::Items) => {
                    // Boxed too: it holds a write timeout, which would otherwise sit in every
                    // idle connection's task.
                    if let Err(end) =
                        Box::pin(conn.write_batch(&mut session, &mut batch, timeout)).await
                    {
                        break end;
                    }
                }
                Woke::Drained(Drained::Closed(reason)) => {
                    reason.count(&conn.state.metrics);
                    counted = true;
                    break reason.disconnect();
                }
                Woke::Report(report) => {
                    // Boxed: rare branches must not grow every connection's task.
                    if let Err(end) = Box::pin(conn.on_report(report, &mut session, timeout)).await
                    {
                        break end;
                    }
                }
                Woke::Client(None) => break None,
                Woke::Client(Some(Err(e))) => {
                    crate::telemetry::malformed("websocket", &e);
                    break Some(protocol_error_close(&e));
                }
                Woke::Client(Some(Ok(msg))) => {
                    conn.last_seen = Instant::now();
                    if let Err(end) = Box::pin(conn.on_client(msg, &mut session, timeout)).await {
                        break end;
                    }
                }
                Woke::Due(Due::NoToken) => break Some(Disconnect::Unauthorized),
                Woke::Due(Due::Expired) => break Some(Disconnect::TokenExpired),
                Woke::Due(Due::Warn { exp }) => {
                    let msg = ServerMessage::TokenExpiring { exp };
                    if let Err(end) = Box::pin(conn.reply(&mut session, &msg, timeout)).await {
                        break end;
                    }
                }
                Woke::Ping => {
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
                // `Normal` answers the client's own close: not the gateway's doing.
                if !counted && disconnect != Disconnect::Normal {
                    metrics
                        .disconnects
                        .with_label_values(&[disconnect.label()])
                        .inc();
                }
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

/// What woke the session loop.
enum Woke {
    Shutdown,
    Drained(Drained),
    Report(Report),
    Client(Option<Result<super::io::Message, ProtocolError>>),
    Due(Due),
    Ping,
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
    /// Lets fan-out write events straight to `socket` while the session is idle
    /// (`hub::direct`), in the form `session` negotiated.
    pub(super) fn write_through(&self, socket: Arc<TcpStream>, session: &Session) {
        let form = self.conn.form(session);
        self.conn.queue.set_direct(Direct::new(socket, form));
    }

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
            seen: None,
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
