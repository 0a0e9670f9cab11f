//! Test harness: real servers on free loopback ports, cleaned up on drop.
//!
//! - [`Redis`]: a private `redis-server` (no persistence unless asked) in a temp directory.
//! - [`Gateway`]: the real `gateway` binary as a child process (for kill/restart tests).
//! - [`InProcess`]: `gateway::run` on its own thread and actix system (for race hooks).
//! - [`Sse`]: an SSE client built on the shared decoder, as strict as a browser.
//! - [`arrival`]: the ways a request can arrive (plain, keep-alive, TLS, HTTP/2, h2c), with
//!   clients for each, for the arrival matrix (`matrix`).
#![allow(dead_code)]

pub mod arrival;
pub mod exactly_once;
pub mod follow;
pub mod jwt;
pub mod nginx;
pub mod prometheus;
pub mod proxy;
pub mod raw;
pub mod redis_cluster;
pub mod relay;
pub mod sentinel;
pub mod test_ca;

pub use raw::{after_one_request, head_of, read_until};

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use shared::sse::{SseDecoder, SseEvent};

/// Default time a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(10);

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique name for channels, prefixes and directories within this test process.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

fn redis_server_binary() -> PathBuf {
    for candidate in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] {
        let p = PathBuf::from(candidate);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("redis-server")
}

/// A private redis-server.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    persistent: bool,
    /// More `redis-server` arguments (e.g. `--replicaof`).
    extra: Vec<String>,
}

impl Redis {
    /// Starts a server without persistence.
    pub fn start() -> Self {
        Self::start_with(false, None)
    }

    /// Starts a server that keeps its data across restarts ([`Redis::restart`]).
    pub fn start_persistent() -> Self {
        Self::start_with(true, None)
    }

    /// Starts a server without persistence and with more arguments.
    pub fn start_args(extra: &[&str]) -> Self {
        Self::start_full(false, None, extra)
    }

    fn start_with(persistent: bool, port: Option<u16>) -> Self {
        Self::start_full(persistent, port, &[])
    }

    fn start_full(persistent: bool, port: Option<u16>, extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(unique("gw-redis-"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut redis = Self {
            child: None,
            port: port.unwrap_or_else(free_port),
            dir,
            persistent,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(redis_server_binary());
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--daemonize")
            .arg("no")
            .arg("--loglevel")
            .arg("warning");
        if self.persistent {
            cmd.args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ]);
        } else {
            cmd.args(["--appendonly", "no", "--save", ""]);
        }
        cmd.args(&self.extra);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.write_all(b"PING\r\n");
                let mut buf = [0u8; 7];
                if s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n" {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A fresh async connection for test commands.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis")
    }

    /// Stops the server abruptly.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's process id (to pause it with SIGSTOP, say).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts it again on the same port (with its data when persistent, or with the snapshot
    /// last written by `SAVE`).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Publishes through Redis the way any backend would: one `FCALL gw_publish`.
pub async fn fcall_publish(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    channel: &str,
    data: &str,
) -> String {
    redis::cmd("FCALL")
        .arg("gw_publish")
        .arg(2)
        .arg(format!("{prefix}{{{channel}}}:stream"))
        .arg(format!("{prefix}{{{channel}}}:meta"))
        .arg(data)
        .query_async(conn)
        .await
        .expect("FCALL gw_publish")
}

/// A gateway child process.
pub struct Gateway {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// `http`, or `https` when started with `GATEWAY__SERVER__TLS_CERT`/`TLS_KEY`.
    pub scheme: &'static str,
}

/// A pseudo-variable for [`Gateway::spawn`]: the gateway's stderr (its logs) goes to this file.
pub const LOG_CAPTURE_FILE: &str = "LOG_CAPTURE_FILE";

impl Gateway {
    /// Starts the binary with `GATEWAY__...` variables; waits for the "listening" line in its
    /// `server.address_file` (the gateway's terminal output is all log lines).
    pub fn spawn(env: &[(&str, &str)]) -> Self {
        let address_file = std::env::temp_dir().join(unique("gw-address-"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("GATEWAY__SERVER__LISTEN", "127.0.0.1:0")
            .env("GATEWAY__SERVER__WORKERS", "2")
            .env("GATEWAY__SERVER__SHUTDOWN_TIMEOUT_SECONDS", "3")
            .env("GATEWAY__SERVER__ADDRESS_FILE", &address_file)
            .env(
                "RUST_LOG",
                std::env::var("TEST_GATEWAY_LOG").unwrap_or_else(|_| "warn".into()),
            );
        // `LOG_CAPTURE_FILE` is the test's, not the gateway's: its logs go to that file.
        let mut stderr = Stdio::inherit();
        for (k, v) in env {
            if *k == LOG_CAPTURE_FILE {
                stderr = Stdio::from(std::fs::File::create(v).expect("log capture file"));
            } else {
                cmd.env(k, v);
            }
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn gateway");
        let deadline = Instant::now() + WAIT * 3;
        let line = loop {
            if let Ok(line) = std::fs::read_to_string(&address_file) {
                let _ = std::fs::remove_file(&address_file);
                break line;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("gateway exited before listening: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "gateway wrote no address file within {:?}",
                WAIT * 3
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let rest = line.trim().strip_prefix("listening on ");
        let (scheme, rest) = match rest.and_then(|r| r.strip_prefix("https://")) {
            Some(r) => ("https", Some(r)),
            None => ("http", rest.and_then(|r| r.strip_prefix("http://"))),
        };
        let addr = rest
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from gateway: {line:?}"));
        Self {
            child: Some(child),
            addr,
            scheme,
        }
    }

    /// A gateway on `redis` with history/ttl defaults and the given key prefix.
    pub fn on_redis(redis: &Redis, prefix: &str, extra: &[(&str, &str)]) -> Self {
        let url = redis.url();
        let mut env = vec![
            ("GATEWAY__REDIS__URL", url.as_str()),
            ("GATEWAY__REDIS__KEY_PREFIX", prefix),
        ];
        env.extend_from_slice(extra);
        let gw = Self::spawn(&env);
        gw.wait_ready();
        gw
    }

    /// Blocks until `/readyz` answers 200 (Redis reachable, library loaded, pub/sub up).
    pub fn wait_ready(&self) {
        use std::io::{Read, Write};
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(self.addr) {
                let _ =
                    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut reply = String::new();
                let _ = s.read_to_string(&mut reply);
                if reply.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "gateway at {} never became ready",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `<scheme>://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    /// Whether the gateway serves TLS (HTTPS and `wss://`) itself.
    pub fn is_tls(&self) -> bool {
        self.scheme == "https"
    }

    /// The process id (for /proc measurements).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL: the instance dies without any goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for the process to exit; returns its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A gateway running in this test process, for tests that need hooks.
pub struct InProcess {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcess {
    /// Runs `gateway::run` with `settings` (its listen address is ignored) and `options`.
    pub fn start(settings: gateway::config::Settings, options: gateway::RunOptions) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let shutdown = async move {
                let _ = stopped.await;
            };
            actix_rt::System::new()
                .block_on(gateway::run(settings, listener, shutdown, options))
                .expect("gateway run");
        });
        Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Settings for an in-process gateway; `redis` selects the engine.
pub fn settings(redis: Option<(&Redis, &str)>, env: &[(&str, &str)]) -> gateway::config::Settings {
    let mut vars: std::collections::HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    vars.insert("GATEWAY__SERVER__WORKERS".into(), "2".into());
    vars.insert(
        "GATEWAY__SERVER__SHUTDOWN_TIMEOUT_SECONDS".into(),
        "2".into(),
    );
    if let Some((redis, prefix)) = redis {
        vars.insert("GATEWAY__REDIS__URL".into(), redis.url());
        vars.insert("GATEWAY__REDIS__KEY_PREFIX".into(), prefix.into());
    }
    gateway::config::Settings::load_with_env(None, Some(vars)).expect("test settings")
}

/// An HTTP client for tests.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("http client")
}

/// `POST /publish`; returns the event id.
pub async fn publish(base: &str, channel: &str, data: &str) -> String {
    let res = http()
        .post(format!("{base}/publish"))
        .json(&serde_json::json!({ "channel": channel, "data": data }))
        .send()
        .await
        .expect("publish request");
    let status = res.status();
    let body: serde_json::Value = res.json().await.expect("publish body");
    assert_eq!(status, 200, "publish failed: {body}");
    body["id"].as_str().expect("id").to_owned()
}

/// Checks an SSE gap frame for `channel` and returns its `first_available` position.
pub fn assert_gap(event: &shared::sse::SseEvent, channel: &str) -> shared::Position {
    assert_eq!(event.event, "gap", "expected a gap, got {event:?}");
    let body: serde_json::Value = serde_json::from_str(&event.data).expect("gap data is JSON");
    assert_eq!(body["channel"], channel);
    body["first_available"]
        .as_str()
        .expect("first_available")
        .parse()
        .expect("a position")
}

/// A streaming SSE connection.
pub struct Sse {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    decoder: SseDecoder,
    pub status: u16,
}

impl Sse {
    /// `GET <url>` with an optional `Last-Event-ID`; panics unless the answer is a 200 stream.
    pub async fn connect(url: &str, last_event_id: Option<&str>) -> Self {
        let mut req = http_streaming().get(url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let res = req.send().await.expect("sse request");
        let status = res.status().as_u16();
        assert_eq!(
            status,
            200,
            "SSE connect to {url} failed: {}",
            res.text().await.unwrap_or_default()
        );
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        assert_eq!(content_type, "text/event-stream");
        Self {
            stream: res.bytes_stream().boxed(),
            decoder: SseDecoder::new(),
            status,
        }
    }

    /// The next event, or `None` if none arrives within `wait` (or the stream ends).
    pub async fn next_within(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(e) = self.decoder.next_event() {
                return Some(e);
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(chunk))) => self.decoder.feed(&chunk),
                _ => return None,
            }
        }
    }

    /// The next event; panics if none arrives within [`WAIT`].
    pub async fn next(&mut self) -> SseEvent {
        self.next_within(WAIT).await.expect("expected an SSE event")
    }

    /// Exactly `n` events (panics on timeout).
    pub async fn take(&mut self, n: usize) -> Vec<SseEvent> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }

    /// Asserts nothing else arrives for `wait`.
    pub async fn assert_quiet(&mut self, wait: Duration) {
        if let Some(e) = self.next_within(wait).await {
            panic!("unexpected event {e:?}");
        }
    }

    /// Reads until the server ends the stream (or `wait` passes); returns events seen meanwhile.
    pub async fn read_to_end(&mut self, wait: Duration) -> (Vec<SseEvent>, bool) {
        let deadline = tokio::time::Instant::now() + wait;
        let mut events = Vec::new();
        loop {
            while let Some(e) = self.decoder.next_event() {
                events.push(e);
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(chunk))) => self.decoder.feed(&chunk),
                Ok(None) | Ok(Some(Err(_))) => return (events, true),
                Err(_) => return (events, false),
            }
        }
    }

    /// What a browser would send as `Last-Event-ID` if it reconnected now.
    pub fn last_event_id(&self) -> String {
        self.decoder.last_event_id().to_owned()
    }

    /// Waits until the prelude (retry + starting id) has been read.
    pub async fn ready(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.decoder.retry().is_none() {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(chunk))) => self.decoder.feed(&chunk),
                _ => panic!("SSE prelude not received"),
            }
        }
    }

    /// The `retry:` value received, if any.
    pub fn retry(&self) -> Option<u64> {
        self.decoder.retry()
    }
}

fn http_streaming() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(WAIT)
        .build()
        .expect("http client")
}

/// Data of events, for compact assertions.
pub fn data(events: &[SseEvent]) -> Vec<String> {
    events.iter().map(|e| e.data.clone()).collect()
}

/// Polls `f` until it returns true or [`WAIT`] passes.
pub async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Sse {
    /// Comment lines (heartbeats) received so far.
    pub fn comments(&self) -> u64 {
        self.decoder.comments()
    }
}

/// The `/metrics` text of the gateway at `base` (`http://addr`).
pub async fn metrics_text(base: &str) -> String {
    let res = http()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(res.status(), 200);
    res.text().await.expect("metrics body")
}

/// The value of one series (name with labels, exactly as exposed) in a `/metrics` text.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("series {series} missing from /metrics:\n{text}"))
}

/// Kills every pub/sub connection of a test Redis, as a network fault would; returns how many.
pub async fn kill_pubsub(conn: &mut redis::aio::MultiplexedConnection) -> i64 {
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(conn)
        .await
        .expect("CLIENT KILL TYPE pubsub")
}

/// What a WebSocket test client received.
#[derive(Debug)]
pub enum WsItem {
    /// A JSON text message.
    Json(serde_json::Value),
    /// A binary frame.
    Binary(Vec<u8>),
    /// The server closed: code and reason (None: no close frame, connection just ended).
    Closed(Option<(u16, String)>),
}

type WsStream = tokio_tungstenite::WebSocketStream<arrival::BoxIo>;

/// A WebSocket test client speaking the gateway's protocol.
pub struct Ws {
    stream: WsStream,
}

impl Ws {
    /// Connects to `url` (`ws://addr/ws...`); panics on failure.
    pub async fn connect(url: &str) -> Self {
        Self::try_connect(url, &[])
            .await
            .unwrap_or_else(|e| panic!("WS connect to {url}: {e}"))
    }

    /// Connects with extra request headers; returns the HTTP status on a refused upgrade.
    pub async fn try_connect(url: &str, headers: &[(&str, &str)]) -> Result<Self, String> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request().map_err(|e| e.to_string())?;
        for (k, v) in headers {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let host = request.uri().authority().map(|a| a.to_string());
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(host.unwrap_or_default())
                .await
                .map_err(tokio_tungstenite::tungstenite::Error::Io)?;
            let io: arrival::BoxIo = Box::new(tcp);
            tokio_tungstenite::client_async(request, io).await
        };
        match tokio::time::timeout(WAIT, connect).await {
            Ok(Ok((stream, _))) => Ok(Self { stream }),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(res))) => {
                Err(format!("HTTP {}", res.status().as_u16()))
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connect timed out".into()),
        }
    }

    /// A client on a WebSocket opened some other way (TLS, a keep-alive connection).
    pub fn from_stream(stream: WsStream) -> Self {
        Self { stream }
    }

    /// Sends a JSON command.
    pub async fn send(&mut self, value: serde_json::Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: &str) {
        use futures_util::SinkExt;
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .expect("ws send");
    }

    /// Sends a raw binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        use futures_util::SinkExt;
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::binary(bytes))
            .await
            .expect("ws send");
    }

    /// Closes from the client side with `code`.
    pub async fn close(&mut self, code: u16) {
        use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};
        let _ = self
            .stream
            .close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: "bye".into(),
            }))
            .await;
    }

    /// The next message within `wait` (pings are answered by the library and skipped).
    pub async fn recv_within(&mut self, wait: Duration) -> Option<WsItem> {
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => return Some(WsItem::Closed(None)),
                Ok(Some(Ok(msg))) => msg,
            };
            return Some(match msg {
                Message::Text(t) => {
                    WsItem::Json(serde_json::from_str(t.as_str()).expect("server sent JSON"))
                }
                Message::Binary(b) => WsItem::Binary(b.to_vec()),
                Message::Close(frame) => {
                    WsItem::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            });
        }
    }

    /// The next message; panics after [`WAIT`].
    pub async fn recv(&mut self) -> WsItem {
        self.recv_within(WAIT)
            .await
            .expect("expected a WebSocket message")
    }

    /// The next JSON message, which must have `"type": kind`.
    pub async fn expect(&mut self, kind: &str) -> serde_json::Value {
        match self.recv().await {
            WsItem::Json(v) if v["type"] == kind => v,
            other => panic!("expected a {kind} message, got {other:?}"),
        }
    }

    /// `n` event messages' data, as strings (text payloads) or JSON text (others).
    pub async fn event_data(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let v = self.expect("event").await;
            out.push(match &v["data"] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            });
        }
        out
    }

    /// Subscribes and waits for `subscribed`; returns it.
    pub async fn subscribe(&mut self, channel: &str, since: Option<&str>) -> serde_json::Value {
        let mut cmd = serde_json::json!({"type": "subscribe", "channel": channel});
        if let Some(since) = since {
            cmd["since"] = since.into();
        }
        self.send(cmd).await;
        self.expect("subscribed").await
    }

    /// Waits for the server to close; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match self.recv().await {
                WsItem::Closed(frame) => return frame.map(|(code, _)| code),
                _ => continue,
            }
        }
    }

    /// Asserts nothing arrives for `wait`.
    pub async fn assert_quiet(&mut self, wait: Duration) {
        if let Some(item) = self.recv_within(wait).await {
            panic!("unexpected WebSocket message {item:?}");
        }
    }
}

/// `ws://<addr>/ws`.
pub fn ws_url(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws")
}

/// CPU seconds (user + system) process `pid` has used.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat format") + 2..]
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Resident memory of process `pid`, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Appends an event to a channel's history exactly as `gw_publish` would, but without its live
/// message: what the gateway sees when a pub/sub message is lost in transit.
pub async fn publish_without_live_message(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    channel: &str,
    data: &str,
) -> u64 {
    const SCRIPT: &str = r#"
        local offset = redis.call('HINCRBY', KEYS[2], 'offset', 1)
        redis.call('XADD', KEYS[1], offset .. '-0', 'd', ARGV[1], 't', '0')
        return offset"#;
    redis::cmd("EVAL")
        .arg(SCRIPT)
        .arg(2)
        .arg(format!("{prefix}{{{channel}}}:stream"))
        .arg(format!("{prefix}{{{channel}}}:meta"))
        .arg(data)
        .query_async(conn)
        .await
        .expect("silent publish")
}
