//! WebSocket subscribers through tokio-tungstenite (`--compressed` ones: [`super::ws_deflate`]).

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::acct::End;
use super::sub::{LiveGuard, Sub};
use super::{CONNECT_TIMEOUT, Shared, establish, unix_micros};
use crate::net::Stream;
use crate::payload::{WsMsg, parse_ws};
use crate::target::Url;

/// One WebSocket session: handshake, subscribe (resuming with `since`), then account events.
pub(super) async fn ws_session(
    sh: &Shared,
    sub: &mut Sub,
    url: &Url,
    stream: Stream,
    storm: bool,
    live: &mut LiveGuard<'_>,
) -> End {
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let request = format!(
        "{}://{}/ws",
        if url.is_tls() { "wss" } else { "ws" },
        url.host
    );
    let handshake = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)),
    )
    .await;
    let mut ws = match handshake {
        Err(_) => return End::Timeout,
        Ok(Err(tungstenite::Error::Http(resp))) => return End::Status(resp.status().as_u16()),
        Ok(Err(e)) => return End::Protocol(e.to_string()),
        Ok(Ok((ws, _))) => ws,
    };
    let cmd = subscribe_command(sh, sub);
    if let Err(e) = ws.send(tungstenite::Message::text(cmd)).await {
        return End::Protocol(e.to_string());
    }
    loop {
        let first = ws.next().await;
        let now = unix_micros();
        if let Some(end) = handle_ws(sh, sub, first, now, storm, live) {
            return end;
        }
        sub.acct.batch.c.reads += 1;
        // Take whatever else is already buffered before flushing the batch.
        while let Some(next) = ws.next().now_or_never() {
            if let Some(end) = handle_ws(sh, sub, next, now, storm, live) {
                return end;
            }
        }
        sh.stats.flush(sub.acct.shard, &mut sub.acct.batch);
    }
}

pub(super) fn handle_ws(
    sh: &Shared,
    sub: &mut Sub,
    msg: Option<Result<tungstenite::Message, tungstenite::Error>>,
    now: u64,
    storm: bool,
    live: &mut LiveGuard<'_>,
) -> Option<End> {
    let text = match msg {
        None => return Some(End::Closed),
        Some(Err(tungstenite::Error::Io(e))) => return Some(End::Io(e)),
        Some(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => {
            return Some(End::Closed);
        }
        Some(Err(e)) => return Some(End::Protocol(e.to_string())),
        Some(Ok(tungstenite::Message::Text(t))) => t,
        Some(Ok(tungstenite::Message::Close(_))) => return Some(End::Closed),
        Some(Ok(tungstenite::Message::Binary(_))) => {
            sub.acct.batch.c.other_events += 1;
            return None;
        }
        Some(Ok(_)) => return None,
    };
    handle_text(sh, sub, text.as_bytes(), now, storm, live)
}

/// Accounts one WebSocket text message (however it arrived); `Some` ends the session.
pub(super) fn handle_text(
    sh: &Shared,
    sub: &mut Sub,
    text: &[u8],
    now: u64,
    storm: bool,
    live: &mut LiveGuard<'_>,
) -> Option<End> {
    let msg = parse_ws(text);
    // Resume from the last event, or from the start position when none came yet.
    if let WsMsg::Event { id: Some(id), .. } | WsMsg::Subscribed { position: Some(id) } = msg {
        sub.ws_last_id.clear();
        sub.ws_last_id.extend_from_slice(id);
    }
    match sub.acct.on_ws(msg, now, sh) {
        Some(Ok(())) => {
            establish(sh, sub, storm, live);
            None
        }
        // An error before the subscription is active refuses the connection; later ones
        // (none expected) are only counted.
        Some(Err(code)) if !sub.up => Some(End::WsError(code)),
        _ => None,
    }
}

/// The `subscribe` command of a subscriber, resuming from its last id when it has one.
pub(super) fn subscribe_command(sh: &Shared, sub: &Sub) -> String {
    let channel = &sh.book.names[sub.acct.channel];
    let mut cmd = format!(r#"{{"type":"subscribe","channel":"{channel}""#);
    if !sub.ws_last_id.is_empty() {
        cmd.push_str(r#","since":""#);
        cmd.push_str(&String::from_utf8_lossy(&sub.ws_last_id));
        cmd.push('"');
    }
    cmd.push('}');
    cmd
}
