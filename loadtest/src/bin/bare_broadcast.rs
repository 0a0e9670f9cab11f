//! `bare_broadcast`: the "bare tokio broadcast server" benchmark peer.
//!
//! What a minimal server achieves when all it does is fan events out: no Redis, no history, no
//! resume, no auth, no heartbeats, no limits beyond a fixed per-channel ring. It speaks the
//! gateway's wire API — `GET /sse`, `GET /ws`, `POST /publish` — so the same load generator
//! drives both, and it is the ceiling the gateway's rates are compared against.
//!
//! - One `tokio::sync::broadcast` per channel. Each event is encoded once (an SSE frame and a
//!   WebSocket JSON text, both `Bytes`) and the encoding is shared by every subscriber.
//! - Each connection task waits for one event, then drains every event already queued for it
//!   (`try_recv`) into ONE write: one chunk of the chunked SSE body, or one flush of WS frames.
//! - A subscriber that falls more than `--capacity` events behind is disconnected (SSE: the
//!   connection is closed; WS: close code 4000). There is no resume: ids are `0:<n>`, n counting
//!   the channel's events from 1 since the process started; `since` and `Last-Event-ID` are
//!   ignored and every subscription starts at the head.
//! - Channels live as long as the process (each keeps its last `--capacity` events in the ring).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use shared::ws::{ClientMessage, ServerMessage, close};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::broadcast::{self, Receiver, error::TryRecvError};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, coding::CloseCode};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

#[derive(Parser)]
#[command(
    name = "bare_broadcast",
    about = "Minimal broadcast server with the gateway's wire API (benchmark reference)."
)]
struct Cli {
    /// Listen address; loopback only.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Worker threads (0: one per core, like the gateway's default).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Per-channel ring size: how far a subscriber may fall behind before it is disconnected.
    #[arg(long, default_value_t = 1024)]
    capacity: usize,
    /// Set TCP_NODELAY on every connection (the gateway leaves Nagle's algorithm on).
    #[arg(long)]
    nodelay: bool,
}

const MAX_HEAD: usize = 16 * 1024;
/// Largest publish body, as the gateway's `publish.max_bytes` default.
const MAX_BODY: usize = 64 * 1024;
/// Channels per connection, as the gateway's `limits.max_channels` default.
const MAX_CHANNELS: usize = 32;
const RETRY_MS: u64 = 2000;

/// One published event, encoded once per transport and shared by every subscriber.
struct Event {
    sse: Bytes,
    ws: Utf8Bytes,
}

struct Channel {
    /// Last id handed out. Publishing holds this lock while sending, so ids reach the ring in
    /// order and a subscriber that reads the head under it misses nothing after that head.
    head: Mutex<u64>,
    tx: broadcast::Sender<Arc<Event>>,
}

struct Hub {
    channels: Mutex<HashMap<String, Arc<Channel>>>,
    capacity: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    fn channel(&self, name: &str) -> Arc<Channel> {
        let mut map = lock(&self.channels);
        if let Some(c) = map.get(name) {
            return c.clone();
        }
        let c = Arc::new(Channel {
            head: Mutex::new(0),
            tx: broadcast::channel(self.capacity).0,
        });
        map.insert(name.to_owned(), c.clone());
        c
    }

    /// Joins a channel at its head: returns the head id and a receiver of every later event.
    fn subscribe(&self, name: &str) -> (u64, Receiver<Arc<Event>>) {
        let channel = self.channel(name);
        let head = lock(&channel.head);
        (*head, channel.tx.subscribe())
    }

    /// Assigns the next id, encodes the event once and hands it to every receiver.
    fn publish(&self, name: &str, event: Option<&str>, data: Value) -> u64 {
        let channel = self.channel(name);
        let mut head = lock(&channel.head);
        *head += 1;
        // `send` fails only when nobody listens, which is fine: there is no history.
        let _ = channel.tx.send(Arc::new(encode(name, *head, event, data)));
        *head
    }
}

/// Encodes an event as the gateway does: a string is delivered as-is, any other JSON value as
/// compact JSON text (SSE) or as the JSON value itself (WebSocket `data`).
fn encode(channel: &str, seq: u64, event: Option<&str>, data: Value) -> Event {
    let id = format!("0:{seq}");
    let json_text;
    let text = match &data {
        Value::String(s) => s.as_bytes(),
        other => {
            json_text = other.to_string();
            json_text.as_bytes()
        }
    };
    let mut sse = Vec::with_capacity(text.len() + id.len() + 16);
    shared::sse::write_event(&mut sse, Some(&id), event, text);
    let ws = to_json(&ServerMessage::Event {
        channel: channel.to_owned(),
        id,
        event: event.map(str::to_owned),
        data,
    });
    Event {
        sse: sse.into(),
        ws: ws.into(),
    }
}

fn to_json(message: &ServerMessage) -> String {
    serde_json::to_string(message).unwrap_or_default()
}

/// The parts of a request head this server looks at.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    method: String,
    path: String,
    query: String,
    keep_alive: bool,
    content_length: usize,
    /// Any `Transfer-Encoding` on a request (refused: publishers send `Content-Length`).
    transfer_encoding: bool,
    websocket_key: Option<String>,
}

/// Parses a request head: everything before the blank line, lines ending in CRLF.
fn parse_head(head: &[u8]) -> Result<Head, &'static str> {
    let text = std::str::from_utf8(head).map_err(|_| "the request head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line");
    };
    let keep_alive = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err("unsupported HTTP version"),
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut head = Head {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        keep_alive,
        content_length: 0,
        transfer_encoding: false,
        websocket_key: None,
    };
    let mut upgrade = false;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or("malformed header line")?;
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                head.content_length = value.parse().map_err(|_| "bad Content-Length")?;
            }
            "transfer-encoding" => head.transfer_encoding = true,
            "connection" => {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        head.keep_alive = false;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        head.keep_alive = true;
                    }
                }
            }
            "upgrade" => upgrade = value.eq_ignore_ascii_case("websocket"),
            "sec-websocket-key" => head.websocket_key = Some(value.to_owned()),
            _ => {}
        }
    }
    if !upgrade {
        head.websocket_key = None;
    }
    Ok(head)
}

/// The gateway's channel name rule: 1–128 ASCII letters, digits and `_ - . : @ / =`.
fn valid_channel(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:@/=".contains(&b))
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space, `%XX` a byte).
fn percent_decode(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// The `channel` parameters of an SSE query string (duplicates collapsed), or an error code.
fn sse_channels(query: &str) -> Result<Vec<String>, &'static str> {
    let mut channels = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "channel" {
            let name = percent_decode(value).ok_or("invalid_channel")?;
            if !valid_channel(&name) {
                return Err("invalid_channel");
            }
            if !channels.contains(&name) {
                channels.push(name);
            }
        }
    }
    match channels.len() {
        0 => Err("missing_channel"),
        n if n > MAX_CHANNELS => Err("too_many_channels"),
        _ => Ok(channels),
    }
}

/// A `POST /publish` body, `{"channel", "data", "event"?}`, as channel, event name and data.
fn parse_publish(body: &[u8]) -> Result<(String, Option<String>, Value), &'static str> {
    let Ok(Value::Object(mut object)) = serde_json::from_slice(body) else {
        return Err("invalid_json");
    };
    let Some(Value::String(channel)) = object.remove("channel") else {
        return Err("invalid_json");
    };
    if !valid_channel(&channel) {
        return Err("invalid_channel");
    }
    let data = object.remove("data").ok_or("invalid_json")?;
    let event = match object.remove("event") {
        None | Some(Value::Null) => None,
        Some(Value::String(e)) if e.is_empty() => None,
        Some(Value::String(e)) => Some(e),
        Some(_) => return Err("invalid_event"),
    };
    if !object.is_empty() {
        return Err("invalid_json");
    }
    Ok((channel, event, data))
}

/// Writes a complete response with a JSON (or empty) body.
async fn respond(
    stream: &mut TcpStream,
    status: u16,
    body: &str,
    keep_alive: bool,
) -> anyhow::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let close = if keep_alive {
        ""
    } else {
        "Connection: close\r\n"
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{close}\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    Ok(())
}

fn error_body(code: &str) -> String {
    json!({ "error": code, "detail": code.replace('_', " ") }).to_string()
}

/// One connection: keep-alive requests until it becomes an SSE or WebSocket stream.
async fn serve(mut stream: TcpStream, hub: Arc<Hub>) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let end = loop {
            if let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                break i;
            }
            if buf.len() > MAX_HEAD {
                return respond(&mut stream, 431, &error_body("head_too_large"), false).await;
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = match parse_head(&buf[..end]) {
            Ok(head) => head,
            Err(_) => return respond(&mut stream, 400, &error_body("bad_request"), false).await,
        };
        buf.drain(..end + 4);
        match (head.method.as_str(), head.path.as_str()) {
            ("GET", "/sse") => return sse(stream, &hub, &head).await,
            ("GET", "/ws") => return websocket(stream, buf, &hub, &head).await,
            ("POST", "/publish") => {
                if head.transfer_encoding {
                    return respond(&mut stream, 411, &error_body("length_required"), false).await;
                }
                if head.content_length > MAX_BODY {
                    return respond(&mut stream, 413, &error_body("body_too_large"), false).await;
                }
                while buf.len() < head.content_length {
                    if stream.read_buf(&mut buf).await? == 0 {
                        return Ok(());
                    }
                }
                let (status, body) = match parse_publish(&buf[..head.content_length]) {
                    Ok((channel, event, data)) => {
                        let id = hub.publish(&channel, event.as_deref(), data);
                        (200, json!({ "id": format!("0:{id}") }).to_string())
                    }
                    Err(code) => (400, error_body(code)),
                };
                buf.drain(..head.content_length);
                respond(&mut stream, status, &body, head.keep_alive).await?;
            }
            ("GET", "/healthz") => respond(&mut stream, 200, "{}", head.keep_alive).await?,
            (_, "/sse" | "/ws" | "/publish" | "/healthz") => {
                return respond(&mut stream, 405, &error_body("method_not_allowed"), false).await;
            }
            _ => return respond(&mut stream, 404, &error_body("not_found"), false).await,
        }
        if !head.keep_alive {
            return Ok(());
        }
    }
}

/// Waits for the next event of any receiver (forever when there are none).
async fn recv_any(
    rxs: &mut [Receiver<Arc<Event>>],
) -> Result<Arc<Event>, broadcast::error::RecvError> {
    match rxs {
        [] => std::future::pending().await,
        [rx] => rx.recv().await,
        _ => {
            let all = rxs.iter_mut().map(|rx| Box::pin(rx.recv()));
            futures_util::future::select_all(all).await.0
        }
    }
}

/// Moves every event already queued on any receiver into `batch`; fails when a receiver lagged
/// (it missed events: the subscriber is too slow and gets disconnected) or its channel closed.
fn drain(
    rxs: &mut [Receiver<Arc<Event>>],
    batch: &mut Vec<Arc<Event>>,
) -> Result<(), TryRecvError> {
    for rx in rxs {
        loop {
            match rx.try_recv() {
                Ok(event) => batch.push(event),
                Err(TryRecvError::Empty) => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Appends one chunk of a chunked HTTP body holding all of `frames`.
fn push_chunk<'a>(out: &mut Vec<u8>, frames: impl Iterator<Item = &'a [u8]> + Clone) {
    let len: usize = frames.clone().map(<[u8]>::len).sum();
    out.extend_from_slice(format!("{len:x}\r\n").as_bytes());
    frames.for_each(|f| out.extend_from_slice(f));
    out.extend_from_slice(b"\r\n");
}

/// `GET /sse?channel=C[&channel=D...]`: a chunked `text/event-stream` until the client leaves.
async fn sse(mut stream: TcpStream, hub: &Hub, head: &Head) -> anyhow::Result<()> {
    let channels = match sse_channels(&head.query) {
        Ok(channels) => channels,
        Err(code) => return respond(&mut stream, 400, &error_body(code), false).await,
    };
    let (heads, mut rxs): (Vec<String>, Vec<_>) = channels
        .iter()
        .map(|c| {
            let (head, rx) = hub.subscribe(c);
            (format!("0:{head}"), rx)
        })
        .unzip();
    // Like the gateway: `retry:` and the starting id, in a frame that dispatches no event.
    let mut out =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
        X-Accel-Buffering: no\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    let opening = format!("retry: {RETRY_MS}\nid: {}\n\n", heads.join(","));
    push_chunk(&mut out, std::iter::once(opening.as_bytes()));
    stream.write_all(&out).await?;

    let (mut reader, mut writer) = stream.split();
    let mut scratch = [0u8; 256];
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            event = recv_any(&mut rxs) => match event {
                Ok(event) => batch.push(event),
                Err(_) => return Ok(()), // lagged: too slow, disconnect (no resume here)
            },
            // Clients send nothing after the request; a read ending is the client leaving.
            read = reader.read(&mut scratch) => {
                if read? == 0 {
                    return Ok(());
                }
                continue;
            }
        }
        if drain(&mut rxs, &mut batch).is_err() {
            return Ok(());
        }
        out.clear();
        push_chunk(&mut out, batch.iter().map(|e| &e.sse[..]));
        batch.clear();
        writer.write_all(&out).await?;
    }
}

/// `GET /ws`: the gateway's JSON protocol (subscribe, unsubscribe, ping; no publish, no resume).
async fn websocket(
    mut stream: TcpStream,
    leftover: Vec<u8>,
    hub: &Hub,
    head: &Head,
) -> anyhow::Result<()> {
    let Some(key) = &head.websocket_key else {
        return respond(
            &mut stream,
            400,
            &error_body("websocket_upgrade_expected"),
            false,
        )
        .await;
    };
    let accept = derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(response.as_bytes()).await?;
    // tungstenite reads into a 128 KiB buffer per connection by default, which would make this
    // "bare" peer look ten times heavier than a server needs to be; 4 KiB is plenty for commands.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let mut ws =
        WebSocketStream::from_partially_read(stream, leftover, Role::Server, Some(config)).await;
    let mut names: Vec<String> = Vec::new();
    let mut rxs: Vec<Receiver<Arc<Event>>> = Vec::new();
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            event = recv_any(&mut rxs) => {
                let lagged = match event {
                    Ok(event) => {
                        batch.push(event);
                        drain(&mut rxs, &mut batch).is_err()
                    }
                    Err(_) => true,
                };
                if lagged {
                    let frame = CloseFrame { code: CloseCode::from(close::SLOW_CONSUMER), reason: "slow consumer".into() };
                    let _ = ws.close(Some(frame)).await;
                    return Ok(());
                }
                // Frames go into tungstenite's write buffer; one flush writes them together.
                for event in batch.drain(..) {
                    ws.feed(Message::Text(event.ws.clone())).await?;
                }
                ws.flush().await?;
            }
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let reply = command(hub, &text, &mut names, &mut rxs);
                    ws.send(Message::text(reply)).await?;
                }
                // Pings are answered by tungstenite itself; binary frames are ignored.
                Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => {
                    let _ = ws.flush().await; // sends tungstenite's close reply
                    return Ok(());
                }
                Some(Err(e)) => return Err(e.into()),
            },
        }
    }
}

/// Runs one client command and returns the reply.
fn command(
    hub: &Hub,
    text: &str,
    names: &mut Vec<String>,
    rxs: &mut Vec<Receiver<Arc<Event>>>,
) -> String {
    let error = |code: &str, channel, req| ServerMessage::Error {
        code: code.to_owned(),
        message: code.replace('_', " "),
        channel: Some(channel),
        req,
    };
    let reply = match shared::ws::parse_client(text) {
        Ok(ClientMessage::Subscribe { channel, req, .. }) => {
            if !valid_channel(&channel) {
                error("invalid_channel", channel, req)
            } else if names.contains(&channel) {
                error("already_subscribed", channel, req)
            } else if names.len() >= MAX_CHANNELS {
                error("too_many_channels", channel, req)
            } else {
                let (head, rx) = hub.subscribe(&channel);
                names.push(channel.clone());
                rxs.push(rx);
                let position = format!("0:{head}");
                ServerMessage::Subscribed {
                    channel,
                    position,
                    recovered: false,
                    req,
                }
            }
        }
        Ok(ClientMessage::Unsubscribe { channel, req }) => {
            match names.iter().position(|n| *n == channel) {
                Some(i) => {
                    names.remove(i);
                    rxs.remove(i);
                    ServerMessage::Unsubscribed {
                        channel,
                        reason: None,
                        req,
                    }
                }
                None => error("not_subscribed", channel, req),
            }
        }
        Ok(ClientMessage::Ping { req }) => ServerMessage::Pong { req },
        // No tokens here.
        Ok(ClientMessage::Auth { req, .. }) => error("unknown_type", String::new(), req),
        // No history here.
        Ok(ClientMessage::History { req, .. }) => error("unknown_type", String::new(), req),
        // No presence here.
        Ok(ClientMessage::Presence { req, .. }) => error("unknown_type", String::new(), req),
        // Like the gateway's default (`ws.allow_publish` off).
        Ok(ClientMessage::Publish { channel, req, .. }) => error("publish_forbidden", channel, req),
        Err((e, req)) => ServerMessage::Error {
            code: e.code().as_str().to_owned(),
            message: e.to_string(),
            channel: None,
            req,
        },
    };
    to_json(&reply)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !cli.listen.ip().is_loopback() {
        bail!(
            "refusing to listen on {}: loopback addresses only",
            cli.listen
        );
    }
    if cli.capacity == 0 {
        bail!("--capacity must be at least 1");
    }
    // Every subscriber is a file descriptor; raise the soft limit to the hard one.
    rlimit::increase_nofile_limit(u64::MAX).context("raising the open files limit")?;
    let workers = match cli.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let socket = if cli.listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(cli.listen)
        .with_context(|| format!("binding {}", cli.listen))?;
    // The gateway's backlog, so connection storms meet the same queue.
    let listener = socket.listen(4096)?;
    println!("listening on http://{}", listener.local_addr()?);
    let hub = Arc::new(Hub {
        channels: Mutex::default(),
        capacity: cli.capacity,
    });
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                eprintln!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if cli.nodelay {
            stream.set_nodelay(true)?;
        }
        // Errors end only their own connection (resets are routine under load).
        tokio::spawn(serve(stream, hub.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_parse() {
        let head = parse_head(
            b"POST /publish?x=1 HTTP/1.1\r\nHost: a\r\ncontent-length: 12\r\nConnection: close",
        )
        .unwrap();
        assert_eq!(
            head,
            Head {
                method: "POST".into(),
                path: "/publish".into(),
                query: "x=1".into(),
                keep_alive: false,
                content_length: 12,
                transfer_encoding: false,
                websocket_key: None,
            }
        );
        let head = parse_head(
            b"GET /ws HTTP/1.1\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: abc==",
        )
        .unwrap();
        assert!(head.keep_alive);
        assert_eq!(head.websocket_key.as_deref(), Some("abc=="));
        // A key without `Upgrade: websocket` is no upgrade.
        let head = parse_head(b"GET /ws HTTP/1.1\r\nSec-WebSocket-Key: abc==").unwrap();
        assert_eq!(head.websocket_key, None);
        assert!(!parse_head(b"GET / HTTP/1.0").unwrap().keep_alive);
        assert!(
            parse_head(b"GET / HTTP/1.0\r\nConnection: keep-alive")
                .unwrap()
                .keep_alive
        );
        assert!(
            parse_head(b"POST /publish HTTP/1.1\r\nTransfer-Encoding: chunked")
                .unwrap()
                .transfer_encoding
        );
    }

    #[test]
    fn malformed_heads_are_refused() {
        assert!(parse_head(b"GET /\r\nHost: a").is_err());
        assert!(parse_head(b"GET / HTTP/2").is_err());
        assert!(parse_head(b"GET / HTTP/1.1 extra").is_err());
        assert!(parse_head(b"GET / HTTP/1.1\r\nno colon").is_err());
        assert!(parse_head(b"POST / HTTP/1.1\r\nContent-Length: -1").is_err());
        assert!(parse_head(b"GET / HTTP/1.1\r\nX: \xff").is_err());
    }

    #[test]
    fn sse_query_names_channels() {
        assert_eq!(
            sse_channels("channel=a&channel=b%3A1&x=y&channel=a").unwrap(),
            ["a", "b:1"]
        );
        assert_eq!(
            sse_channels("channel=chat%2Froom-1").unwrap(),
            ["chat/room-1"]
        );
        assert_eq!(sse_channels("lastEventId=1"), Err("missing_channel"));
        assert_eq!(sse_channels(""), Err("missing_channel"));
        assert_eq!(sse_channels("channel="), Err("invalid_channel"));
        assert_eq!(sse_channels("channel=a+b"), Err("invalid_channel"));
        assert_eq!(sse_channels("channel=%zz"), Err("invalid_channel"));
        assert_eq!(sse_channels("channel=%4"), Err("invalid_channel"));
        let many: Vec<String> = (0..=MAX_CHANNELS)
            .map(|i| format!("channel=c{i}"))
            .collect();
        assert_eq!(sse_channels(&many.join("&")), Err("too_many_channels"));
    }

    #[test]
    fn publish_bodies_parse_like_the_gateway() {
        let (channel, event, data) = parse_publish(br#"{"channel":"a","data":"hi"}"#).unwrap();
        assert_eq!((channel.as_str(), event, data), ("a", None, json!("hi")));
        let (_, event, data) =
            parse_publish(br#"{"channel":"a","data":{"x":[1, 2]},"event":"up"}"#).unwrap();
        assert_eq!((event.as_deref(), data), (Some("up"), json!({"x": [1, 2]})));
        assert_eq!(parse_publish(b"[1]"), Err("invalid_json"));
        assert_eq!(parse_publish(br#"{"channel":"a"}"#), Err("invalid_json"));
        assert_eq!(
            parse_publish(br#"{"channel":"a","data":1,"extra":1}"#),
            Err("invalid_json")
        );
        assert_eq!(
            parse_publish(br#"{"channel":"a b","data":1}"#),
            Err("invalid_channel")
        );
        assert_eq!(
            parse_publish(br#"{"channel":"a","data":1,"event":3}"#),
            Err("invalid_event")
        );
    }

    #[test]
    fn events_are_encoded_once_per_transport() {
        let e = encode("a", 7, None, json!("one\ntwo"));
        assert_eq!(&e.sse[..], b"id: 0:7\ndata: one\ndata: two\n\n");
        assert_eq!(
            e.ws.as_str(),
            r#"{"type":"event","channel":"a","id":"0:7","data":"one\ntwo"}"#
        );
        let e = encode("a", 8, Some("up"), json!({"x": 1}));
        assert_eq!(&e.sse[..], b"id: 0:8\nevent: up\ndata: {\"x\":1}\n\n");
        assert_eq!(
            e.ws.as_str(),
            r#"{"type":"event","channel":"a","id":"0:8","event":"up","data":{"x":1}}"#
        );
    }

    #[test]
    fn chunks_frame_all_events() {
        let mut out = Vec::new();
        push_chunk(
            &mut out,
            [&b"abc"[..], &b"0123456789abcdef"[..]].into_iter(),
        );
        assert_eq!(out, b"13\r\nabc0123456789abcdef\r\n");
    }

    #[tokio::test]
    async fn subscribers_get_every_later_event_and_lag_is_detected() {
        let hub = Hub {
            channels: Mutex::default(),
            capacity: 2,
        };
        hub.publish("a", None, json!("before"));
        let (head, rx) = hub.subscribe("a");
        assert_eq!(head, 1);
        let mut rxs = vec![rx];
        assert_eq!(hub.publish("a", None, json!("x")), 2);
        let mut batch = Vec::new();
        drain(&mut rxs, &mut batch).unwrap();
        assert_eq!(batch.len(), 1);
        assert!(batch[0].sse.starts_with(b"id: 0:2\n"));
        for _ in 0..3 {
            hub.publish("a", None, json!("x"));
        }
        assert_eq!(drain(&mut rxs, &mut batch), Err(TryRecvError::Lagged(1)));
    }

    #[test]
    fn websocket_commands_reply_like_the_gateway() {
        let hub = Hub {
            channels: Mutex::default(),
            capacity: 4,
        };
        let (mut names, mut rxs) = (Vec::new(), Vec::new());
        let mut run = |text: &str| -> Value {
            serde_json::from_str(&command(&hub, text, &mut names, &mut rxs)).unwrap()
        };
        assert_eq!(
            run(r#"{"type":"subscribe","channel":"c","req":1}"#),
            json!({"type":"subscribed","channel":"c","position":"0:0","recovered":false,"req":1})
        );
        assert_eq!(
            run(r#"{"type":"subscribe","channel":"c"}"#)["code"],
            "already_subscribed"
        );
        assert_eq!(run(r#"{"type":"ping"}"#), json!({"type":"pong"}));
        assert_eq!(run("{")["code"], "bad_json");
        assert_eq!(
            run(r#"{"type":"unsubscribe","channel":"c"}"#)["type"],
            "unsubscribed"
        );
        assert_eq!(
            run(r#"{"type":"unsubscribe","channel":"c"}"#)["code"],
            "not_subscribed"
        );
    }
}
