//! WebSocket subscribers with `permessage-deflate` (`--compressed`), spoken by hand
//! ([`crate::ws_wire`]): tokio-tungstenite refuses the RSV1 frames compressed messages come in.
//! The upgrade is written and its answer checked here (a server that declines the extension
//! fails the connection, so a figure is never silently uncompressed; whether it keeps its
//! compression context decides how messages are inflated, and is counted for the report);
//! reads go into the thread's shared buffer like SSE ones, and pings are answered after each
//! read. A message that cannot be inflated ends the session and counts as `malformed`.

use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

use super::acct::End;
use super::http1::{read_head_raw, read_shared};
use super::sub::{LiveGuard, Sub};
use super::ws::{handle_text, subscribe_command};
use super::{CONNECT_TIMEOUT, Shared, unix_micros};
use crate::net::Stream;
use crate::stats::Stats;
use crate::target::Url;
use crate::ws_wire::{self, FrameReader, WsItem};

/// One compressed WebSocket session: upgrade offering [`ws_wire::offer`] (a browser's, or
/// `--ws-no-server-context`'s), subscribe (resuming with `since`), then inflate and account
/// every message.
pub(super) async fn ws_deflate_session(
    sh: &Shared,
    sub: &mut Sub,
    url: &Url,
    mut stream: Stream,
    storm: bool,
    live: &mut LiveGuard<'_>,
) -> End {
    let key = generate_key();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Extensions: {}\r\n\r\n",
        url.host,
        ws_wire::offer(sh.plan.ws_no_server_context)
    );
    let head = tokio::time::timeout(CONNECT_TIMEOUT, async {
        stream.write_all(req.as_bytes()).await.map_err(End::Io)?;
        stream.flush().await.map_err(End::Io)?;
        read_head_raw(&mut stream).await
    })
    .await;
    let (head, raw, rest) = match head {
        Err(_) => return End::Timeout,
        Ok(Err(e)) => return e,
        Ok(Ok(h)) => h,
    };
    if head.status != 101 {
        return End::Status(head.status);
    }
    let accept = derive_accept_key(key.as_bytes());
    if !ws_wire::header_values(&raw, b"sec-websocket-accept").any(|v| v == accept.as_bytes()) {
        return End::Protocol("bad Sec-WebSocket-Accept".into());
    }
    let answer = ws_wire::check_answer(
        ws_wire::header_values(&raw, b"sec-websocket-extensions"),
        sh.plan.ws_no_server_context,
    );
    let context = match answer {
        Ok(context) => context,
        Err(e) => return End::Protocol(e),
    };
    Stats::bump(if context {
        &sh.stats.ws_context_answers
    } else {
        &sh.stats.ws_no_context_answers
    });
    let cmd = subscribe_command(sh, sub);
    if let Err(e) = send(&mut stream, &ws_wire::client_text(&cmd)).await {
        return End::Io(e);
    }
    let mut reader = FrameReader::new(sh.plan.inflate_once, context);
    let mut replies = Vec::new();
    let mut pending = (!rest.is_empty()).then_some(rest);
    loop {
        let step = match pending.take() {
            Some(bytes) => Some(on_read(
                sh,
                sub,
                &mut reader,
                &bytes,
                &mut replies,
                storm,
                live,
            )),
            None => match read_shared(&mut stream, |bytes| {
                on_read(sh, sub, &mut reader, bytes, &mut replies, storm, live)
            })
            .await
            {
                Ok(step) => step,
                Err(e) => return End::Io(e),
            },
        };
        match step {
            None => return End::Closed,
            Some(Some(end)) => return end,
            Some(None) => {}
        }
        if !replies.is_empty() {
            if let Err(e) = send(&mut stream, &replies).await {
                return End::Io(e);
            }
            replies.clear();
        }
    }
}

/// Writes `bytes` and flushes them (over TLS, out of rustls' buffer).
async fn send(stream: &mut Stream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Handles the bytes of one read: every message accounted, pongs queued in `replies`. `Some`
/// ends the session.
fn on_read(
    sh: &Shared,
    sub: &mut Sub,
    reader: &mut FrameReader,
    bytes: &[u8],
    replies: &mut Vec<u8>,
    storm: bool,
    live: &mut LiveGuard<'_>,
) -> Option<End> {
    let now = unix_micros();
    let mut end = None;
    sub.acct.batch.c.reads += 1;
    let inflated = reader.inflated;
    let fed = reader.feed(bytes, &mut |item| match item {
        _ if end.is_some() => {}
        WsItem::Text(text) => end = handle_text(sh, sub, text, now, storm, live),
        WsItem::Binary => sub.acct.batch.c.other_events += 1,
        WsItem::Ping(payload) => replies.extend_from_slice(&ws_wire::client_pong(payload)),
        WsItem::Close => end = Some(End::Closed),
    });
    if fed.is_err() {
        // What could not be read counts against the run, not only as a reconnect.
        sub.acct.batch.c.malformed += 1;
    }
    sh.stats.flush(sub.acct.shard, &mut sub.acct.batch);
    if reader.inflated > inflated {
        sh.stats.inflated_messages.fetch_add(
            reader.inflated - inflated,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    match fed {
        Err(e) => Some(End::Protocol(e)),
        Ok(()) => end,
    }
}
