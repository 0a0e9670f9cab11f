//! The publisher: events at a controlled total rate, spread over the channels round-robin, at
//! most one request in flight per channel (so each channel's events are stored in `seq` order),
//! over keep-alive HTTP/1.1 connections (a small raw client, over TLS for `https://` targets),
//! or `FCALL gw_publish` to Redis. With `--publish-batch N` each gateway request carries N
//! events (a JSON array), sent when the last of them is due.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::net::{Alpn, Stream, TlsClient};

use crate::conn::unix_micros;
use crate::http::{BodyKind, ChunkedDecoder, parse_head};
use crate::payload::write_payload;
use crate::stats::{lock, new_histogram};
use crate::target::{Url, fill};

/// Longest a publish may take before it counts as failed.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// The channels of a run and, per channel, what was published.
pub struct Book {
    /// Channel names.
    pub names: Vec<String>,
    /// Publish attempts per channel: the next `seq`.
    pub attempted: Vec<AtomicU64>,
    /// Established subscribers per channel.
    pub subscribers: Vec<AtomicU64>,
    /// `(channel, seq)` of publishes that failed (and so may never have been stored).
    failed: Mutex<Vec<(usize, u64)>>,
}

impl Book {
    /// Channels `<prefix>0`, `<prefix>1`, ...
    pub fn new(prefix: &str, channels: usize) -> Self {
        Self {
            names: (0..channels).map(|i| format!("{prefix}{i}")).collect(),
            attempted: (0..channels).map(|_| AtomicU64::new(0)).collect(),
            subscribers: (0..channels).map(|_| AtomicU64::new(0)).collect(),
            failed: Mutex::new(Vec::new()),
        }
    }

    /// Events a subscriber of `channel` should have by now.
    pub fn expected(&self, channel: usize) -> u64 {
        self.attempted[channel].load(Ordering::Relaxed)
    }

    /// Failed sequence numbers of `channel`, sorted.
    pub fn failed_of(&self, channel: usize) -> Vec<u64> {
        let mut v: Vec<u64> = lock(&self.failed)
            .iter()
            .filter(|(c, _)| *c == channel)
            .map(|&(_, s)| s)
            .collect();
        v.sort_unstable();
        v
    }

    /// Deliveries owed to the established subscribers: every successful publish, once per
    /// subscriber of its channel.
    pub fn owed(&self) -> u64 {
        let failed = lock(&self.failed);
        (0..self.names.len())
            .map(|c| {
                let f = failed.iter().filter(|(fc, _)| *fc == c).count() as u64;
                let ok = self.attempted[c].load(Ordering::Relaxed).saturating_sub(f);
                ok * self.subscribers[c].load(Ordering::Relaxed)
            })
            .sum()
    }

    /// Total publish attempts.
    pub fn total_attempted(&self) -> u64 {
        self.attempted
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .sum()
    }
}

/// Where events go.
pub enum PubTarget {
    /// The gateway's `POST /publish` with `{"channel":C,"data":<payload>}`, or with a JSON
    /// array of `batch` of them (`--publish-batch`).
    Gateway {
        /// Base URL.
        url: Url,
        /// TLS client for an `https://` URL.
        tls: Option<TlsClient>,
        /// Events per request (1: one object, more: an array).
        batch: usize,
    },
    /// Another server: `POST` to a URL template with a body template (`{payload}`,
    /// `{channel}`).
    Template {
        /// URL whose path contains `{channel}`.
        url: Url,
        /// Body template.
        body: String,
        /// TLS client for an `https://` URL.
        tls: Option<TlsClient>,
    },
    /// `FCALL gw_publish 2 <prefix>{C}:stream <prefix>{C}:meta <payload> "" json`.
    Redis {
        /// `redis://` URL.
        url: String,
        /// Key prefix.
        prefix: String,
    },
    /// The same `FCALL` through a Redis Cluster client, which sends it to the primary owning
    /// the channel's slot (the keys share the `{C}` hash tag).
    RedisCluster {
        /// Seed nodes.
        nodes: Vec<String>,
        /// Key prefix.
        prefix: String,
    },
}

impl PubTarget {
    /// Events per request: more than one only for a gateway target with `--publish-batch`.
    pub fn batch(&self) -> usize {
        match self {
            Self::Gateway { batch, .. } => (*batch).max(1),
            _ => 1,
        }
    }

    /// Short name for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Gateway { tls: None, .. } => "http",
            Self::Gateway { tls: Some(_), .. } => "https",
            Self::Template { .. } => "template",
            Self::Redis { .. } => "redis",
            Self::RedisCluster { .. } => "redis-cluster",
        }
    }
}

/// Publish outcomes, shared by the workers.
pub struct PubStats {
    /// Successful publishes.
    pub ok: AtomicU64,
    /// Failed publishes.
    pub failed: AtomicU64,
    /// Failure reasons (`status_503`, `timeout`, ...).
    pub failures: Mutex<BTreeMap<String, u64>>,
    /// Publish request latency, µs: from sending the request to its answer.
    pub latency: Mutex<Histogram<u64>>,
    /// Publish wait, µs: from the moment a publish was due (by the rate schedule) to its
    /// answer, so a publisher falling behind shows even when each request is fast.
    pub wait: Mutex<Histogram<u64>>,
}

impl Default for PubStats {
    fn default() -> Self {
        Self {
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            failures: Mutex::new(BTreeMap::new()),
            latency: Mutex::new(new_histogram()),
            wait: Mutex::new(new_histogram()),
        }
    }
}

/// One publishing run.
#[derive(Clone, Copy, Debug)]
pub struct PubRun {
    /// Events to publish in this run (over all channels).
    pub count: u64,
    /// Total events per second; `None` publishes as fast as the workers go.
    pub rate: Option<f64>,
    /// Longest the run may take.
    pub max: Duration,
    /// Payload size.
    pub size: usize,
    /// Rows resembling quote updates instead of x's ([`crate::payload::write_rows`]).
    pub realistic: bool,
    /// Publisher connections (each owns a share of the channels).
    pub workers: usize,
}

/// Publishes one run on a thread of its own (its own single-threaded runtime), so that the
/// subscribers' work can neither delay publishes nor disturb the rate; returns when every
/// worker is done, with this run's publish wait (also added to `stats.wait`).
pub async fn run(
    target: Arc<PubTarget>,
    book: Arc<Book>,
    stats: Arc<PubStats>,
    run: PubRun,
) -> Histogram<u64> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Histogram<u64>>();
    let spawned = std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || {
            let wait = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(run_here(target, book, stats, run)),
                Err(e) => {
                    *lock(&stats.failures)
                        .entry(format!("runtime: {e}"))
                        .or_default() += 1;
                    new_histogram()
                }
            };
            let _ = done_tx.send(wait);
        });
    match spawned {
        Ok(_) => done_rx.await.unwrap_or_else(|_| new_histogram()),
        Err(e) => {
            eprintln!("loadtest: cannot start the publisher thread: {e}");
            new_histogram()
        }
    }
}

async fn run_here(
    target: Arc<PubTarget>,
    book: Arc<Book>,
    stats: Arc<PubStats>,
    run: PubRun,
) -> Histogram<u64> {
    let k = book.names.len();
    let workers = run.workers.clamp(1, k.max(1));
    let start = Instant::now();
    let deadline = start + run.max;
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let (target, book, stats) = (target.clone(), book.clone(), stats.clone());
        tasks.push(tokio::spawn(async move {
            worker(w, workers, &target, &book, &stats, run, start, deadline).await
        }));
    }
    let mut wait = new_histogram();
    for t in tasks {
        if let Ok(h) = t.await {
            let _ = wait.add(&h);
        }
    }
    let _ = lock(&stats.wait).add(&wait);
    wait
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    w: usize,
    workers: usize,
    target: &PubTarget,
    book: &Book,
    stats: &PubStats,
    run: PubRun,
    start: Instant,
    deadline: Instant,
) -> Histogram<u64> {
    let k = book.names.len() as u64;
    let owned: Vec<usize> = (w..book.names.len()).step_by(workers).collect();
    let mut client = match Client::new(target, book, &owned).await {
        Ok(c) => c,
        Err(reason) => {
            // Without a connection nothing can be published by this worker.
            *lock(&stats.failures).entry(reason).or_default() += 1;
            return new_histogram();
        }
    };
    let mut hist = new_histogram();
    let mut wait = new_histogram();
    let batch = target.batch();
    // The request being assembled: (channel, seq, when it was due) of its events, and their
    // payloads in buffers reused from request to request.
    let mut pending: Vec<(usize, u64, Instant)> = Vec::with_capacity(batch);
    let mut payloads: Vec<Vec<u8>> = (0..batch)
        .map(|_| Vec::with_capacity(run.size + 64))
        .collect();
    let mut j = 0u64;
    'run: loop {
        for &c in &owned {
            let i = j * k + c as u64;
            if i >= run.count {
                break 'run;
            }
            // When this publish is due: by the schedule, or (unpaced) when the worker gets to it.
            let due = if let Some(rate) = run.rate {
                let at = start + Duration::from_secs_f64(i as f64 / rate);
                if at >= deadline {
                    break 'run;
                }
                tokio::time::sleep_until(at).await;
                at
            } else {
                let now = Instant::now();
                if now >= deadline {
                    break 'run;
                }
                now
            };
            let seq = book.attempted[c].load(Ordering::Relaxed);
            book.attempted[c].store(seq + 1, Ordering::Relaxed);
            pending.push((c, seq, due));
            // A batch goes out when full, at the time its last event is due.
            if pending.len() >= batch {
                write_payloads(&pending, &mut payloads, run);
                let timings = (&mut hist, &mut wait);
                send(&mut client, &mut pending, &payloads, book, stats, timings).await;
            }
        }
        j += 1;
        if owned.is_empty() {
            break;
        }
    }
    if !pending.is_empty() {
        write_payloads(&pending, &mut payloads, run);
        let timings = (&mut hist, &mut wait);
        send(&mut client, &mut pending, &payloads, book, stats, timings).await;
    }
    let _ = lock(&stats.latency).add(&hist);
    wait
}

/// Writes the payloads of the events about to be sent, stamped with the time they are sent: a
/// subscriber's latency is measured from the request that carries the event, so an event that
/// waited for its batch to fill does not count that wait as delivery latency (the publish wait
/// reports it).
fn write_payloads(pending: &[(usize, u64, Instant)], payloads: &mut [Vec<u8>], run: PubRun) {
    let now = unix_micros();
    for (&(_, seq, _), payload) in pending.iter().zip(payloads.iter_mut()) {
        payload.clear();
        if run.realistic {
            crate::payload::write_rows(payload, seq, now, run.size);
        } else {
            write_payload(payload, seq, now, run.size);
        }
    }
}

/// Sends the pending events in one request and counts the outcome for each of them (a failed
/// batch counts every event as failed: it may not have been stored). `timings` gets the
/// request's latency (sent to answered, once) and each event's wait (due to answered).
async fn send(
    client: &mut Client,
    pending: &mut Vec<(usize, u64, Instant)>,
    payloads: &[Vec<u8>],
    book: &Book,
    stats: &PubStats,
    timings: (&mut Histogram<u64>, &mut Histogram<u64>),
) {
    let (hist, wait) = timings;
    let events: Vec<(usize, &[u8])> = (pending.iter().zip(payloads))
        .map(|(&(c, _, _), p)| (c, &p[..]))
        .collect();
    let t0 = Instant::now();
    let result = tokio::time::timeout(PUBLISH_TIMEOUT, client.publish(&events))
        .await
        .unwrap_or_else(|_| {
            client.reset();
            Err("timeout".into())
        });
    let answered = Instant::now();
    hist.saturating_record((answered.duration_since(t0).as_micros() as u64).max(1));
    for &(_, _, due) in pending.iter() {
        wait.saturating_record((answered.duration_since(due).as_micros() as u64).max(1));
    }
    let n = pending.len() as u64;
    match result {
        Ok(()) => {
            stats.ok.fetch_add(n, Ordering::Relaxed);
        }
        Err(reason) => {
            stats.failed.fetch_add(n, Ordering::Relaxed);
            lock(&book.failed).extend(pending.iter().map(|&(c, seq, _)| (c, seq)));
            *lock(&stats.failures).entry(reason).or_default() += n;
        }
    }
    pending.clear();
}

/// A worker's connection.
enum Client {
    Http {
        conn: HttpConn,
        /// Per owned channel (indexed by channel): request path, and body before/after the
        /// payload.
        requests: BTreeMap<usize, (String, Vec<u8>, Vec<u8>)>,
        host: String,
    },
    Redis {
        con: RedisCon,
        keys: BTreeMap<usize, (String, String)>,
    },
}

/// A publishing connection to one Redis server or to a cluster.
enum RedisCon {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl RedisCon {
    async fn query(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        match self {
            Self::Single(c) => cmd.query_async(c).await,
            Self::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

/// The `{C}:stream` and `{C}:meta` keys of each owned channel.
fn fcall_keys(book: &Book, owned: &[usize], prefix: &str) -> BTreeMap<usize, (String, String)> {
    owned
        .iter()
        .map(|&c| {
            let n = &book.names[c];
            (
                c,
                (
                    format!("{prefix}{{{n}}}:stream"),
                    format!("{prefix}{{{n}}}:meta"),
                ),
            )
        })
        .collect()
}

impl Client {
    async fn new(target: &PubTarget, book: &Book, owned: &[usize]) -> Result<Self, String> {
        match target {
            PubTarget::Gateway { url, tls, .. } => Ok(Self::Http {
                conn: HttpConn::new(url.clone(), tls.clone()),
                requests: owned
                    .iter()
                    .map(|&c| {
                        let before = format!(r#"{{"channel":"{}","data":"#, book.names[c]);
                        (
                            c,
                            ("/publish".to_owned(), before.into_bytes(), b"}".to_vec()),
                        )
                    })
                    .collect(),
                host: url.host.clone(),
            }),
            PubTarget::Template { url, body, tls } => Ok(Self::Http {
                conn: HttpConn::new(url.clone(), tls.clone()),
                requests: owned
                    .iter()
                    .map(|&c| {
                        let name = &book.names[c];
                        let body = fill(body, name);
                        let (before, after) =
                            body.split_once("{payload}").unwrap_or((body.as_str(), ""));
                        (
                            c,
                            (
                                fill(&url.path, name),
                                before.as_bytes().to_vec(),
                                after.as_bytes().to_vec(),
                            ),
                        )
                    })
                    .collect(),
                host: url.host.clone(),
            }),
            PubTarget::Redis { url, prefix } => {
                let client =
                    redis::Client::open(url.as_str()).map_err(|e| format!("redis: {e}"))?;
                let con = tokio::time::timeout(
                    PUBLISH_TIMEOUT,
                    client.get_multiplexed_async_connection(),
                )
                .await
                .map_err(|_| "redis_connect_timeout".to_owned())?
                .map_err(|e| format!("redis_connect: {}", e.kind_str()))?;
                Ok(Self::Redis {
                    con: RedisCon::Single(con),
                    keys: fcall_keys(book, owned, prefix),
                })
            }
            PubTarget::RedisCluster { nodes, prefix } => {
                // Short timeouts and few retries: during a failover a publish should fail and
                // be counted, not hang the worker (and every channel it owns) for minutes.
                let client = redis::cluster::ClusterClient::builder(nodes.clone())
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(Duration::from_secs(5))
                    .retries(3)
                    .build()
                    .map_err(|e| format!("redis: {e}"))?;
                let con = tokio::time::timeout(PUBLISH_TIMEOUT, client.get_async_connection())
                    .await
                    .map_err(|_| "redis_connect_timeout".to_owned())?
                    .map_err(|e| format!("redis_connect: {}", e.kind_str()))?;
                Ok(Self::Redis {
                    con: RedisCon::Cluster(con),
                    keys: fcall_keys(book, owned, prefix),
                })
            }
        }
    }

    fn reset(&mut self) {
        if let Self::Http { conn, .. } = self {
            conn.stream = None;
        }
    }

    /// One request: one event, or (gateway targets with `--publish-batch`) a JSON array.
    async fn publish(&mut self, events: &[(usize, &[u8])]) -> Result<(), String> {
        match self {
            Self::Http {
                conn,
                requests,
                host,
            } => {
                let mut parts = Vec::with_capacity(events.len());
                for &(channel, payload) in events {
                    let Some((path, before, after)) = requests.get(&channel) else {
                        return Err("unowned_channel".into());
                    };
                    parts.push((path, before, payload, after));
                }
                let Some(&(path, ..)) = parts.first() else {
                    return Ok(());
                };
                let array = parts.len() > 1;
                let len = parts
                    .iter()
                    .map(|(_, before, payload, after)| before.len() + payload.len() + after.len())
                    .sum::<usize>()
                    + if array { parts.len() + 1 } else { 0 };
                let req = &mut conn.req;
                req.clear();
                req.extend_from_slice(b"POST ");
                req.extend_from_slice(path.as_bytes());
                req.extend_from_slice(b" HTTP/1.1\r\nHost: ");
                req.extend_from_slice(host.as_bytes());
                req.extend_from_slice(
                    b"\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: ",
                );
                req.extend_from_slice(len.to_string().as_bytes());
                req.extend_from_slice(b"\r\n\r\n");
                if array {
                    req.push(b'[');
                }
                for (n, (_, before, payload, after)) in parts.iter().enumerate() {
                    if n > 0 {
                        req.push(b',');
                    }
                    req.extend_from_slice(before);
                    req.extend_from_slice(payload);
                    req.extend_from_slice(after);
                }
                if array {
                    req.push(b']');
                }
                let status = conn.send().await?;
                if (200..300).contains(&status) {
                    Ok(())
                } else {
                    Err(format!("status_{status}"))
                }
            }
            Self::Redis { con, keys } => {
                let [(channel, payload)] = events else {
                    return Err("redis_batch_unsupported".into());
                };
                let Some((stream, meta)) = keys.get(channel) else {
                    return Err("unowned_channel".into());
                };
                let mut cmd = redis::cmd("FCALL");
                cmd.arg("gw_publish")
                    .arg(2)
                    .arg(stream)
                    .arg(meta)
                    .arg(*payload)
                    .arg("")
                    .arg("json");
                con.query(&cmd)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("redis_{}", e.kind_str()))
            }
        }
    }
}

trait KindStr {
    fn kind_str(&self) -> String;
}

impl KindStr for redis::RedisError {
    fn kind_str(&self) -> String {
        format!("{:?}", self.kind())
            .to_ascii_lowercase()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(40)
            .collect()
    }
}

/// A keep-alive HTTP/1.1 connection sending one request at a time.
pub struct HttpConn {
    url: Url,
    tls: Option<TlsClient>,
    stream: Option<Stream>,
    /// The request to send (built by the caller).
    pub req: Vec<u8>,
    buf: Vec<u8>,
}

impl HttpConn {
    /// A connection to `url` (TLS with `tls`), opened on first use.
    pub fn new(url: Url, tls: Option<TlsClient>) -> Self {
        Self {
            url,
            tls,
            stream: None,
            req: Vec::new(),
            buf: Vec::with_capacity(4096),
        }
    }

    /// Sends `self.req` and reads the response; returns its status. A reused connection that
    /// the server closed before answering is retried once on a new one.
    pub async fn send(&mut self) -> Result<u16, String> {
        for attempt in 0..2 {
            let reused = self.stream.is_some();
            let stream = match &mut self.stream {
                Some(s) => s,
                None => {
                    let s = TcpStream::connect(self.url.addr)
                        .await
                        .map_err(|e| format!("connect_{:?}", e.kind()).to_ascii_lowercase())?;
                    let _ = s.set_nodelay(true);
                    let s = match &self.tls {
                        None => Stream::Plain(s),
                        Some(tls) => tls
                            .connect(s, &self.url, Alpn::Http1)
                            .await
                            .map_err(|e| format!("tls_{:?}", e.kind()).to_ascii_lowercase())?,
                    };
                    self.stream.insert(s)
                }
            };
            let written = match stream.write_all(&self.req).await {
                // TLS: make sure the record left rustls' buffer.
                Ok(()) => stream.flush().await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                self.stream = None;
                if reused && attempt == 0 {
                    continue;
                }
                return Err(format!("io_{:?}", e.kind()).to_ascii_lowercase());
            }
            match read_response(stream, &mut self.buf).await {
                Ok((status, close)) => {
                    if close {
                        self.stream = None;
                    }
                    return Ok(status);
                }
                Err(Fail::ClosedEarly) if reused && attempt == 0 => {
                    self.stream = None;
                }
                Err(e) => {
                    self.stream = None;
                    return Err(e.reason());
                }
            }
        }
        Err("closed".into())
    }
}

enum Fail {
    /// The connection closed before any byte of the response.
    ClosedEarly,
    Closed,
    Io(std::io::Error),
    Protocol,
}

impl Fail {
    fn reason(&self) -> String {
        match self {
            Self::ClosedEarly | Self::Closed => "closed".into(),
            Self::Io(e) => format!("io_{:?}", e.kind()).to_ascii_lowercase(),
            Self::Protocol => "protocol".into(),
        }
    }
}

/// Largest publish response body read; a server sending more is misbehaving.
const MAX_RESPONSE_BODY: u64 = 1 << 20;

/// Reads one response (the body is discarded as it arrives); returns its status and whether
/// the connection must be closed.
async fn read_response(stream: &mut Stream, buf: &mut Vec<u8>) -> Result<(u16, bool), Fail> {
    buf.clear();
    let head = loop {
        buf.reserve(2048);
        let n = stream.read_buf(buf).await.map_err(Fail::Io)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                Fail::ClosedEarly
            } else {
                Fail::Closed
            });
        }
        if let Some(h) = parse_head(buf).map_err(|_| Fail::Protocol)? {
            break h;
        }
    };
    buf.drain(..head.len);
    let mut body = 0u64;
    match head.body {
        BodyKind::Length(n) => {
            if n > MAX_RESPONSE_BODY {
                return Err(Fail::Protocol);
            }
            body += buf.len() as u64;
            while body < n {
                buf.clear();
                buf.reserve(4096);
                let got = stream.read_buf(buf).await.map_err(Fail::Io)?;
                if got == 0 {
                    return Err(Fail::Closed);
                }
                body += got as u64;
            }
        }
        BodyKind::Chunked => {
            let mut d = ChunkedDecoder::new();
            loop {
                body += buf.len() as u64;
                if body > MAX_RESPONSE_BODY + 4096 {
                    return Err(Fail::Protocol);
                }
                if d.feed(buf, |_| {}).map_err(|_| Fail::Protocol)? {
                    break;
                }
                buf.clear();
                buf.reserve(4096);
                if stream.read_buf(buf).await.map_err(Fail::Io)? == 0 {
                    return Err(Fail::Closed);
                }
            }
        }
        BodyKind::UntilClose => loop {
            buf.clear();
            buf.reserve(4096);
            let got = stream.read_buf(buf).await.map_err(Fail::Io)?;
            if got == 0 {
                break;
            }
            body += got as u64;
            if body > MAX_RESPONSE_BODY {
                return Err(Fail::Protocol);
            }
        },
    }
    Ok((head.status, head.close))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn book_counts_owed_deliveries() {
        let book = Book::new("c", 2);
        book.attempted[0].store(10, Ordering::Relaxed);
        book.attempted[1].store(5, Ordering::Relaxed);
        book.subscribers[0].store(3, Ordering::Relaxed);
        book.subscribers[1].store(2, Ordering::Relaxed);
        lock(&book.failed).push((1, 4));
        assert_eq!(book.owed(), 10 * 3 + 4 * 2);
        assert_eq!(book.failed_of(1), vec![4]);
        assert_eq!(book.total_attempted(), 15);
    }

    #[tokio::test]
    async fn a_batch_is_one_request_with_a_json_array() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = vec![0u8; 4096];
            while !got.ends_with(b"]") {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                .await
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let url = crate::target::parse_url(&format!("http://{addr}")).unwrap();
        let target = PubTarget::Gateway {
            url,
            tls: None,
            batch: 3,
        };
        let book = Book::new("c", 2);
        let mut client = Client::new(&target, &book, &[0, 1]).await.unwrap();
        let events: [(usize, &[u8]); 3] = [(0, b"1"), (1, br#"{"a":2}"#), (0, b"3")];
        assert_eq!(client.publish(&events).await, Ok(()));
        let request = server.await.unwrap();
        let (head, body) = request.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        let items: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            items,
            serde_json::json!([
                {"channel": "c0", "data": 1},
                {"channel": "c1", "data": {"a": 2}},
                {"channel": "c0", "data": 3},
            ])
        );
    }

    #[tokio::test]
    async fn raw_client_reads_length_chunked_and_keeps_alive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let answers: [&[u8]; 3] = [
                b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"id\":\"a\"}\n",
                b"HTTP/1.1 503 Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
            ];
            for a in answers {
                let mut got = Vec::new();
                while !got.ends_with(b"}") {
                    let n = s.read(&mut buf).await.unwrap();
                    got.extend_from_slice(&buf[..n]);
                }
                s.write_all(a).await.unwrap();
            }
        });
        let url = crate::target::parse_url(&format!("http://{addr}")).unwrap();
        let mut conn = HttpConn::new(url, None);
        conn.req = b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}".to_vec();
        assert_eq!(conn.send().await, Ok(200));
        assert_eq!(conn.send().await, Ok(503));
        assert_eq!(conn.send().await, Err("protocol".into()));
    }
}
