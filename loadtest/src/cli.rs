//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::conn::Transport;

/// Load generator for the push gateway (and, through URL templates, other push servers).
/// Loopback targets only; every run is bounded and stops by itself (10 minutes at most).
#[derive(Parser, Debug)]
#[command(name = "loadtest", version)]
pub struct Cli {
    /// The scenario.
    #[command(subcommand)]
    pub command: Command,
}

/// Scenarios.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Connect N subscribers, hold them, report memory per connection and that all survived;
    /// then publish one event per channel and check every subscriber gets it.
    Idle(IdleArgs),
    /// N subscribers of one channel; publish at a fixed rate.
    Fanout(FanoutArgs),
    /// N subscribers over K channels (subscriber i watches channel i mod K); the total rate is
    /// spread over the channels.
    Channels(ChannelsArgs),
    /// Fan-out at increasing rates (x1.5 per step) until p99 exceeds the limit or anything is
    /// lost; reports every step and the highest rate that met both.
    Saturate(SaturateArgs),
    /// Reconnect storm: N subscribers on --url receive some events, all disconnect at once,
    /// --behind more are published, all reconnect at once to --storm-url with their last ids;
    /// measures the time until every one has exactly the missed events.
    Storm(StormArgs),
    /// Raw publish throughput and latency (no subscribers).
    Publish(PublishArgs),
    /// Primary failover under load: subscribers over many channels, a steady publish rate,
    /// SIGKILL of one Redis Cluster primary mid-run; latency of the events published after the
    /// kill, for channels on the killed shard and on the others.
    Failover(FailoverArgs),
    /// Merge the JSON lines of several loadtest processes (files, or stdin) into one.
    Combine(CombineArgs),
    /// Write a self-signed certificate for localhost, 127.0.0.1 and ::1 (cert.pem, key.pem) for
    /// a TLS server under test; clients trust it with --ca DIR/cert.pem.
    GenCert(GenCertArgs),
}

/// Options every scenario has.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Gateway base URL (repeatable: several instances, connections spread round-robin).
    /// Subscribers use /sse?channel=C or /ws; HTTP publishing goes to the first one.
    /// https:// speaks TLS (wss:// for --transport ws), with --ca or --insecure.
    #[arg(
        long = "url",
        value_name = "URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub urls: Vec<String>,
    /// Server PID to measure (RSS, CPU); repeatable (several instances, nginx workers + redis).
    #[arg(long = "server-pid", value_name = "PID")]
    pub server_pids: Vec<u32>,
    /// No progress bar and no phase messages (the Markdown table is still printed to stderr).
    #[arg(long)]
    pub quiet: bool,
    /// Also write summary.json, summary.md and latency.svg into this directory.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Runtime worker threads of the load generator (1: a single-threaded runtime, the
    /// cheapest; raise it only when the generator itself is the bottleneck).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Channel name prefix (default: lt-<pid>-<random>-, so runs never see each other's
    /// history); channels are <prefix>0, <prefix>1, ...
    #[arg(long)]
    pub channel_prefix: Option<String>,
    /// For https:// targets: trust the certificates in this PEM file (the server's self-signed
    /// certificate, e.g. from `loadtest gen-cert`, or its CA).
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// For https:// targets: accept any certificate (handshake signatures are still checked).
    /// Targets are loopback only.
    #[arg(long, conflicts_with = "ca")]
    pub insecure: bool,
}

/// Subscriber options.
#[derive(Args, Debug, Clone)]
pub struct SubOpts {
    /// Subscriber protocol (ws: gateway only).
    #[arg(long, value_enum, default_value_t = Transport::Sse)]
    pub transport: Transport,
    /// Subscribe to another server instead of the gateway: an SSE URL template with
    /// {channel}, e.g. 'http://127.0.0.1:8090/sub/{channel}' (no gateway id checks; ready
    /// on the 200 head).
    #[arg(long, value_name = "TEMPLATE")]
    pub sub_url: Option<String>,
    /// Local source addresses, round-robin per connection (ranges and comma lists, 127.0.0.0/8
    /// only): each address has its own ephemeral port space.
    #[arg(long, default_value = "127.0.0.1-127.0.0.50")]
    pub source_ips: String,
    /// New connections per second while ramping up.
    #[arg(long, default_value_t = 2000.0)]
    pub ramp: f64,
    /// Seconds to wait after the last publish for deliveries to arrive.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Don't reconnect after an unexpected disconnect (default: reconnect after 1-2 s and
    /// resume from the last id, as browsers do).
    #[arg(long)]
    pub no_reconnect: bool,
    /// Start publishing at this Unix time (seconds), to line up several processes.
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub start_at: Option<u64>,
    /// SSE over HTTP/2: h2 via ALPN for https:// targets, cleartext h2 with prior knowledge
    /// (h2c) for http:// ones. Subscribers share connections (--streams-per-conn).
    #[arg(long)]
    pub http2: bool,
    /// With --http2: subscribers (streams) per connection; subscriber i uses connection
    /// i / N, from source address (i / N) mod (number of --source-ips).
    #[arg(long, default_value_t = 1, requires = "http2", value_name = "N")]
    pub streams_per_conn: usize,
    /// Ask for compression and inflate what arrives: SSE over HTTP/1.1 asks for a gzip stream
    /// (`Accept-Encoding: gzip`; gateway with `compression.sse` on), WebSocket offers
    /// `permessage-deflate` as Chromium does (`client_max_window_bits`: the server may keep its
    /// compression context) and fails the connection if it is declined (gateway with
    /// `compression.ws` on).
    #[arg(long)]
    pub compressed: bool,
    /// With --compressed: inflate each distinct compressed WebSocket message, or each piece of
    /// a gzip SSE stream (up to a `00 00 ff ff` sync flush), once per thread, keyed by its
    /// bytes and the text of the connection's previous one (the window it may refer back into),
    /// so the generator costs about what plain parsing costs and a saturate run measures the
    /// server rather than the generator's inflating. Exact for a server whose messages or
    /// pieces refer back at most into the previous one (the gateway's do); anything else
    /// inflates wrong or fails, which the run reports (`malformed`, loss).
    #[arg(long)]
    pub inflate_once: bool,
    /// With --compressed WebSocket: offer `permessage-deflate; client_no_context_takeover;
    /// server_no_context_takeover` (every message self-contained, inflated from an empty
    /// window) instead of a browser's offer; a server that answers without
    /// `server_no_context_takeover` then fails the connection.
    #[arg(long)]
    pub ws_no_server_context: bool,
}

/// How events are published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PublishVia {
    /// POST <first --url>/publish (or --publish-url).
    Http,
    /// FCALL gw_publish on --redis-url.
    Redis,
}

/// Publisher options.
#[derive(Args, Debug, Clone)]
pub struct PubOpts {
    /// Publish through the gateway's HTTP API or straight into Redis.
    #[arg(long, value_enum, default_value_t = PublishVia::Http)]
    pub publish: PublishVia,
    /// Redis URL: for --publish redis (default redis://127.0.0.1:6379/), and for storm's
    /// command counts.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Redis Cluster nodes (comma-separated or repeated `redis://host:port`): --publish redis
    /// then goes through a cluster client (`FCALL` routed by the channel's key to its primary),
    /// and every node listed (primaries and replicas) is sampled for CPU and command counts.
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    pub redis_cluster: Vec<String>,
    /// Redis key prefix of the gateway (redis.key_prefix).
    #[arg(long, default_value = "gw:")]
    pub key_prefix: String,
    /// Publish to another server: a URL template with {channel}, e.g.
    /// 'http://127.0.0.1:8090/pub/{channel}' (POST).
    #[arg(long, value_name = "TEMPLATE")]
    pub publish_url: Option<String>,
    /// Body template for --publish-url: {payload} and {channel} are replaced.
    #[arg(long, default_value = "{payload}")]
    pub publish_body: String,
    /// Payload size in bytes ({"seq":N,"ts":MICROS,"p":"xx.."} padded).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Fill the payload with rows resembling quote updates (symbols, prices, sizes, venues)
    /// instead of x's, so it compresses like real events.
    #[arg(long)]
    pub realistic: bool,
    /// Publisher connections (each owns a share of the channels; one request in flight per
    /// connection, so never more than one per channel).
    #[arg(long, default_value_t = 32)]
    pub publish_conns: usize,
    /// Events per `POST /publish` (a JSON array when more than 1), for --publish http to the
    /// gateway; at most the gateway's publish.max_batch, and each body within its max_bytes.
    /// Events are stamped when their request is sent, so delivery latency starts there; the
    /// time an event waits for its batch to fill shows in the publish wait.
    #[arg(long, default_value_t = 1, value_name = "N", conflicts_with = "publish_url",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub publish_batch: u16,
}

/// How much to publish.
#[derive(Args, Debug, Clone)]
pub struct Amount {
    /// Total events per second (over all channels).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Events to publish (default: rate x duration).
    #[arg(long, conflicts_with = "duration")]
    pub count: Option<u64>,
    /// Seconds to publish (default 10 when --count is not given).
    #[arg(long)]
    pub duration: Option<f64>,
}

/// `idle`.
#[derive(Args, Debug)]
pub struct IdleArgs {
    /// Subscribers.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Channels (subscriber i watches channel i mod K).
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Seconds to hold the connections.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub subs: SubOpts,
    #[command(flatten)]
    pub publish: PubOpts,
}

/// `fanout`.
#[derive(Args, Debug)]
pub struct FanoutArgs {
    /// Subscribers.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    #[command(flatten)]
    pub amount: Amount,
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub subs: SubOpts,
    #[command(flatten)]
    pub publish: PubOpts,
}

/// `channels`.
#[derive(Args, Debug)]
pub struct ChannelsArgs {
    /// Subscribers.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Channels.
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    #[command(flatten)]
    pub amount: Amount,
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub subs: SubOpts,
    #[command(flatten)]
    pub publish: PubOpts,
}

/// `saturate`.
#[derive(Args, Debug)]
pub struct SaturateArgs {
    /// Subscribers (of one channel).
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Rate of the first step, events per second.
    #[arg(long, default_value_t = 50.0)]
    pub start_rate: f64,
    /// Seconds per step.
    #[arg(long, default_value_t = 10.0)]
    pub step_seconds: f64,
    /// Stop at this rate even if every step passes.
    #[arg(long)]
    pub max_rate: Option<f64>,
    /// A step fails when its p99 exceeds this, milliseconds.
    #[arg(long, default_value_t = 1000.0)]
    pub p99_limit_ms: f64,
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub subs: SubOpts,
    #[command(flatten)]
    pub publish: PubOpts,
}

/// `storm`.
#[derive(Args, Debug)]
pub struct StormArgs {
    /// Subscribers (of one channel).
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Where everyone reconnects (repeatable); the other gateway instance.
    #[arg(long, value_name = "URL", required = true)]
    pub storm_url: Vec<String>,
    /// Events published while everyone is disconnected.
    #[arg(long, default_value_t = 10)]
    pub behind: u64,
    /// Events published before the disconnect.
    #[arg(long, default_value_t = 10)]
    pub count: u64,
    /// Rate of the events before the disconnect.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds to wait for everyone to have every event after the reconnect.
    #[arg(long, default_value_t = 60.0)]
    pub resume_timeout: f64,
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub subs: SubOpts,
    #[command(flatten)]
    pub publish: PubOpts,
}

/// `publish`.
#[derive(Args, Debug)]
pub struct PublishArgs {
    /// Seconds to publish.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Publishes in flight (one connection each).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Channels to spread over (each stays in order; many keep ordering from limiting).
    #[arg(long, default_value_t = 1000)]
    pub channels: usize,
    /// Cap on the total rate, events per second (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub publish: PubOpts,
}

/// `failover`.
#[derive(Args, Debug)]
pub struct FailoverArgs {
    /// Subscribers (subscriber i watches channel i mod K).
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Channels (spread over every shard by their hash slots).
    #[arg(long, default_value_t = 64)]
    pub channels: usize,
    /// Total events per second over all channels.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Seconds to publish (long enough for the failover and the recovery after it).
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// The primary to kill (`redis://127.0.0.1:PORT`, loopback only): its pid comes from its
    /// `INFO server`, its slots from `CLUSTER NODES`.
    #[arg(long, value_name = "URL")]
    pub kill_node: String,
    /// Seconds after publishing starts to SIGKILL it.
    #[arg(long, default_value_t = 5.0)]
    pub kill_after: f64,
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub subs: SubOpts,
    #[command(flatten)]
    pub publish: PubOpts,
}

/// `gen-cert`.
#[derive(Args, Debug)]
pub struct GenCertArgs {
    /// Directory to write cert.pem and key.pem into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// `combine`.
#[derive(Args, Debug)]
pub struct CombineArgs {
    /// Files with one JSON line each (or several lines); none: read stdin.
    pub files: Vec<PathBuf>,
}
