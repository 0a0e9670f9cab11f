//! Settings: read once at start-up from built-in defaults, an optional TOML file and
//! `GATEWAY__<SECTION>__<KEY>` environment variables (in that order of precedence), then
//! validated as a whole. A bad value stops start-up with a message naming the key.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

mod admin;
mod auth;
mod compression;
mod poll;
mod publish;
mod redis_password;
mod redis_topology;
mod secret;

pub use admin::AdminSettings;
pub use auth::{AuthSettings, PublicKeySettings};
pub use compression::CompressionSettings;
pub use poll::PollSettings;
pub use publish::{ApiKeySettings, PublishSettings};
pub use secret::Secret;

/// Why the settings could not be used; `main` prints it and exits with code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read or did not match the schema.
    #[error("configuration error: {0}")]
    Source(#[from] config::ConfigError),
    /// A value was readable but not acceptable.
    #[error("configuration error: {key}: {problem}")]
    Invalid {
        /// Dotted key, e.g. `history.size` (env: `GATEWAY__HISTORY__SIZE`).
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// All gateway settings; every field has a default so an empty environment runs a dev server.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// HTTP listener and process behaviour.
    pub server: ServerSettings,
    /// Redis engine; absent URL selects the in-memory engine.
    pub redis: RedisSettings,
    /// Per-channel history kept for resume.
    pub history: HistorySettings,
    /// HTTP publish API.
    pub publish: PublishSettings,
    /// Server-Sent Events transport.
    pub sse: SseSettings,
    /// WebSocket transport.
    pub ws: WsSettings,
    /// Optional token authentication of subscribers.
    pub auth: AuthSettings,
    /// Per-connection and per-request bounds.
    pub limits: LimitSettings,
    /// Cross-origin access for browsers.
    pub cors: CorsSettings,
    /// Logging.
    pub log: LogSettings,
    /// The operators' status page (`/admin`), off by default.
    pub admin: AdminSettings,
    /// Long-poll fallback (`GET /poll`).
    pub poll: PollSettings,
    /// Compressed SSE streams and WebSocket messages, off by default.
    pub compression: CompressionSettings,
    /// Who is subscribed to each channel (`GET /presence`).
    pub presence: PresenceSettings,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address to listen on (`GATEWAY__SERVER__LISTEN`).
    pub listen: String,
    /// A file the gateway writes, once listening, the line `listening on <scheme>://<address>
    /// (engine: <engine>)` to (replaced atomically): how scripts and tests started on port 0
    /// learn the port, since every line on the terminal is a log line in `log.format`.
    pub address_file: Option<String>,
    /// Worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// Seconds to drain connections after SIGTERM before closing them hard.
    pub shutdown_timeout_seconds: u64,
    /// Most concurrent connections per instance; further ones get 503 with `Retry-After`.
    pub max_connections: usize,
    /// Pacing of fan-out rounds: after a worker's delivery round that took T, its next round
    /// starts no sooner than `delivery_pace` × T after it ended, so under load each write
    /// carries several events (fewer system calls, less CPU per delivery); 0 writes rounds
    /// back to back. From 0 to 4.
    pub delivery_pace: f64,
    /// Kernel timeout for unacknowledged writes (stuck peers), seconds; 0 disables.
    pub tcp_user_timeout_seconds: u64,
    /// Seconds a client has to send its request headers (slowloris defence).
    pub request_timeout_seconds: u64,
    /// Pending-connection queue of the listening socket (capped by `net.core.somaxconn`).
    pub backlog: u32,
    /// PEM certificate chain: with `tls_key`, the gateway serves HTTPS and `wss://` itself
    /// (re-read on SIGHUP).
    pub tls_cert: Option<String>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<String>,
    /// Offer HTTP/2: ALPN `h2` over TLS, and cleartext h2c with prior knowledge.
    pub http2: bool,
    /// Most concurrent streams (e.g. SSE subscriptions) on one HTTP/2 connection.
    pub http2_max_streams: u32,
    /// Host names (`gw.example.com`, `*.example.com`, `host:port`) the gateway answers to;
    /// other `Host`s get 403 (DNS rebinding defence). Empty: any Host, and only loopback names
    /// count as the gateway's own origin. In the environment, a comma-separated list.
    #[serde(deserialize_with = "string_or_list")]
    pub allowed_hosts: Vec<String>,
    /// Load balancers and proxies (CIDRs or addresses) whose word about the client's address
    /// is taken: their `X-Forwarded-For` / `Forwarded`, or PROXY protocol header. Empty: every
    /// peer is the client. In the environment, a comma-separated list.
    #[serde(deserialize_with = "string_or_list")]
    pub trusted_proxies: Vec<String>,
    /// Take a PROXY protocol v1 or v2 header (HAProxy `send-proxy-v2`) that a connection from a
    /// trusted proxy starts with as naming the client. Needs `trusted_proxies`.
    pub proxy_protocol: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            address_file: None,
            workers: 0,
            shutdown_timeout_seconds: 10,
            max_connections: 20_000,
            delivery_pace: 0.5,
            tcp_user_timeout_seconds: 60,
            request_timeout_seconds: 5,
            backlog: 4096,
            tls_cert: None,
            tls_key: None,
            http2: true,
            http2_max_streams: 256,
            allowed_hosts: Vec::new(),
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
        }
    }
}

/// `[redis]` (its `Debug`, in `redis_topology`, hides URL passwords)
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// `redis://host:port/db` (or `rediss://` for TLS); unset (and no `sentinels`) runs the
    /// single-instance in-memory engine.
    #[serde(serialize_with = "redis_topology::serialize_redacted")]
    pub url: Option<String>,
    /// Sentinel URLs (`redis://host:26379`, or `rediss://` for TLS to sentinels and data nodes);
    /// instead of `url`, the primary is found through them and followed across failovers. In the
    /// environment, a comma-separated list.
    #[serde(
        deserialize_with = "string_or_list",
        serialize_with = "redis_topology::serialize_redacted_list"
    )]
    pub sentinels: Vec<String>,
    /// Name of the monitored primary the sentinels are asked about (`sentinel monitor <name>`).
    pub sentinel_master: Option<String>,
    /// Redis Cluster seed nodes (`redis://host:7000`, ...); instead of `url` and `sentinels`,
    /// the cluster's primaries are discovered from them and followed across failovers and
    /// resharding. In the environment, a comma-separated list.
    #[serde(
        deserialize_with = "string_or_list",
        serialize_with = "redis_topology::serialize_redacted_list"
    )]
    pub cluster_nodes: Vec<String>,
    /// A file holding the Redis password (Kubernetes/Docker secrets), for URLs without one.
    pub password_file: Option<String>,
    /// PEM file of the CA that signs the Redis servers' certificates (`rediss://` only); unset:
    /// the public web roots.
    pub tls_ca: Option<String>,
    /// PEM client certificate (chain) presented to Redis (`rediss://` only); with `tls_key`.
    pub tls_cert: Option<String>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<String>,
    /// Prefix of every key and pub/sub channel the gateway touches.
    pub key_prefix: String,
    /// Command connections shared by background tasks (each worker thread also has its own).
    pub pool_size: usize,
    /// Seconds to wait for Redis before a request fails with 503.
    pub timeout_seconds: u64,
    /// Seconds between liveness probes of the pub/sub path (a probe not back by the next one
    /// replaces the connection).
    pub probe_seconds: u64,
    /// Seconds between checks of every watched channel's head in one pipelined round trip, to
    /// find events whose live message was lost on a channel that has gone quiet; 0 disables.
    pub head_check_seconds: u64,
    /// Redis keeps every acknowledged write across restarts and failovers (`appendfsync
    /// always`, and no failover to a replica that may lag). Then a change of Redis server costs
    /// clients nothing; otherwise (the default) continuity across it cannot be proven and
    /// clients get a gap there. Every instance on one Redis must use the same value.
    pub durable: bool,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: None,
            sentinels: Vec::new(),
            sentinel_master: None,
            cluster_nodes: Vec::new(),
            password_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            key_prefix: "gw:".into(),
            pool_size: 8,
            timeout_seconds: 5,
            probe_seconds: 5,
            head_check_seconds: 10,
            durable: false,
        }
    }
}

impl RedisSettings {
    /// Whether Redis is configured at all (a URL, sentinels or cluster nodes): selects the
    /// Redis engine.
    pub fn enabled(&self) -> bool {
        self.url.is_some() || !self.sentinels.is_empty() || !self.cluster_nodes.is_empty()
    }

    /// Whether the gateway talks TLS to Redis (`rediss://` URL, sentinels or cluster nodes).
    pub fn uses_tls(&self) -> bool {
        self.url
            .iter()
            .chain(&self.sentinels)
            .chain(&self.cluster_nodes)
            .any(|u| u.starts_with("rediss://"))
    }
}

/// `[history]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistorySettings {
    /// Events kept per channel (at least; Redis trims approximately).
    pub size: usize,
    /// Seconds a channel's history lives after its last publish.
    pub ttl_seconds: u64,
    /// Most events one page of `GET /history`, `GET /poll` or the WebSocket `history` command
    /// holds, and the most a `latest=N` subscription replays; larger asks are clamped.
    pub max_page: usize,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self {
            size: 1000,
            ttl_seconds: 3600,
            max_page: 100,
        }
    }
}

/// `[presence]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceSettings {
    /// Seconds an entry outlives its instance's last refresh (refreshed every third of it), so
    /// a killed instance's connections vanish within this.
    pub ttl_seconds: u64,
    /// Most entries `/presence` lists; a channel with more answers its count only.
    pub max_entries: usize,
    /// Channel patterns (`*` globs) whose subscribers are tracked; none by default, as every
    /// subscribe and unsubscribe on a tracked channel costs Redis work. In the environment, a
    /// comma-separated list.
    #[serde(deserialize_with = "string_or_list")]
    pub channels: Vec<String>,
    /// Patterns of tracked channels whose subscribers' comings and goings are published as
    /// `presence.join` / `presence.leave` events. In the environment, a comma-separated list.
    #[serde(deserialize_with = "string_or_list")]
    pub events: Vec<String>,
}

impl Default for PresenceSettings {
    fn default() -> Self {
        Self {
            ttl_seconds: 30,
            max_entries: 1000,
            channels: Vec::new(),
            events: Vec::new(),
        }
    }
}

/// `[sse]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SseSettings {
    /// Reconnect delay advertised to clients with `retry:`, milliseconds.
    pub retry_ms: u64,
    /// Seconds between `: ping` comments on an idle stream (keep below proxy idle timeouts).
    pub heartbeat_seconds: u64,
}

impl Default for SseSettings {
    fn default() -> Self {
        Self {
            retry_ms: 2000,
            heartbeat_seconds: 15,
        }
    }
}

/// `[ws]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsSettings {
    /// Whether WebSocket clients may publish (`publish` command or binary publish frames).
    pub allow_publish: bool,
    /// Largest accepted client frame or message, bytes; bigger ones close with 1009. Client
    /// publishes are further limited by `publish.max_bytes`, with an error reply.
    pub max_message_bytes: usize,
    /// Seconds between server pings.
    pub ping_seconds: u64,
    /// Seconds without any client traffic (pongs included) before the peer counts as dead.
    pub timeout_seconds: u64,
    /// Malformed or refused commands tolerated per connection before it is closed with 1008.
    pub max_protocol_errors: u32,
    /// Sustained commands per second per connection (bursts of twice that are allowed).
    pub commands_per_second: u32,
    /// With authentication on, a WebSocket opened without a token has this many seconds to send
    /// it as its first message (`{"type":"auth","token":...}`) before it is closed with 4500;
    /// 0: a token is required on the upgrade request.
    pub auth_timeout_seconds: u64,
    /// Seconds before a token's `exp` that the client is sent `token_expiring`, time to send
    /// a fresh token with `auth`.
    pub token_warning_seconds: u64,
}

impl Default for WsSettings {
    fn default() -> Self {
        Self {
            allow_publish: false,
            max_message_bytes: 1024 * 1024,
            ping_seconds: 15,
            timeout_seconds: 45,
            max_protocol_errors: 20,
            commands_per_second: 100,
            auth_timeout_seconds: 10,
            token_warning_seconds: 60,
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Channels one connection may watch.
    pub max_channels: usize,
    /// Events queued per connection before it counts as a slow consumer and is disconnected.
    pub queue_size: usize,
    /// Recent events each instance keeps in memory per watched channel, so resumes close to
    /// the head need no Redis read.
    pub channel_cache: usize,
    /// Seconds a new subscription may wait for Redis before the request fails with 503.
    pub subscribe_timeout_seconds: u64,
    /// Streams one client address may hold at once (IPv6: per /64); 0: no limit.
    pub max_connections_per_ip: usize,
    /// New streams one client address may open per second; 0: no limit.
    pub new_connections_per_ip_per_second: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_channels: 32,
            queue_size: 1024,
            channel_cache: 128,
            subscribe_timeout_seconds: 10,
            max_connections_per_ip: 0,
            new_connections_per_ip_per_second: 0,
        }
    }
}

/// `[cors]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsSettings {
    /// Origins allowed to call the gateway from a browser; `*` allows any. Empty: same-origin
    /// only. In the environment, a comma-separated list.
    #[serde(deserialize_with = "string_or_list")]
    pub allow_origins: Vec<String>,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `tracing` filter, e.g. `info` or `gateway=debug,actix_web=info`; `RUST_LOG` overrides it.
    pub filter: String,
    /// `text` or `json`.
    pub format: String,
    /// One INFO line per request (target `gateway::access`): method, path without its query,
    /// status, time to the response head, client address.
    pub access: bool,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            filter: "info".into(),
            format: "text".into(),
            access: false,
        }
    }
}

fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Raw::Many(v) => v,
    })
}

impl Settings {
    /// Reads defaults, then `file`, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, None)
    }

    /// Like [`Settings::load`] but with an explicit environment, so tests need not mutate the
    /// process environment.
    pub fn load_with_env(
        file: Option<&Path>,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        let env = config::Environment::with_prefix("GATEWAY")
            .separator("__")
            .ignore_empty(true)
            .source(env);
        let mut settings: Settings = builder.add_source(env).build()?.try_deserialize()?;
        settings.publish.read_secret_files()?;
        settings.redis.read_password_file()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks cross-field rules and ranges that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                problem: problem.into(),
            }
        }
        self.listen_addr()?;
        let pace = self.server.delivery_pace;
        if !(0.0..=4.0).contains(&pace) {
            return Err(invalid("server.delivery_pace", "must be from 0 to 4"));
        }
        if let Some(url) = &self.redis.url {
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("unix://"))
            {
                return Err(invalid(
                    "redis.url",
                    "must start with redis://, rediss:// or unix://",
                ));
            }
            redis::Client::open(url.as_str())
                .map_err(|e| invalid("redis.url", format!("cannot be parsed: {e}")))?;
        }
        if self.presence.ttl_seconds == 0 {
            return Err(invalid("presence.ttl_seconds", "must be at least 1"));
        }
        self.validate_sentinels()?;
        self.validate_cluster()?;
        self.validate_redis_tls()?;
        if self.redis.key_prefix.contains(['{', '}']) {
            return Err(invalid(
                "redis.key_prefix",
                "must not contain { or } (they are the Cluster hash tag)",
            ));
        }
        if self.redis.pool_size == 0 {
            return Err(invalid("redis.pool_size", "must be at least 1"));
        }
        if self.redis.timeout_seconds == 0 {
            return Err(invalid("redis.timeout_seconds", "must be at least 1"));
        }
        if self.redis.probe_seconds == 0 {
            return Err(invalid("redis.probe_seconds", "must be at least 1"));
        }
        if self.history.size == 0 {
            return Err(invalid("history.size", "must be at least 1"));
        }
        if self.history.ttl_seconds == 0 {
            return Err(invalid("history.ttl_seconds", "must be at least 1"));
        }
        if self.sse.heartbeat_seconds == 0 {
            return Err(invalid("sse.heartbeat_seconds", "must be at least 1"));
        }
        if self.ws.max_message_bytes < 256 {
            return Err(invalid("ws.max_message_bytes", "must be at least 256"));
        }
        if self.ws.ping_seconds == 0 {
            return Err(invalid("ws.ping_seconds", "must be at least 1"));
        }
        if self.ws.timeout_seconds <= self.ws.ping_seconds {
            return Err(invalid(
                "ws.timeout_seconds",
                "must be greater than ws.ping_seconds",
            ));
        }
        if self.ws.commands_per_second == 0 {
            return Err(invalid("ws.commands_per_second", "must be at least 1"));
        }
        self.validate_auth()?;
        self.validate_publish()?;
        self.validate_admin()?;
        self.validate_poll()?;
        self.validate_compression()?;
        if self.limits.max_channels == 0 {
            return Err(invalid("limits.max_channels", "must be at least 1"));
        }
        if self.limits.queue_size < 16 {
            return Err(invalid("limits.queue_size", "must be at least 16"));
        }
        if self.limits.subscribe_timeout_seconds == 0 {
            return Err(invalid(
                "limits.subscribe_timeout_seconds",
                "must be at least 1",
            ));
        }
        if self.server.request_timeout_seconds == 0 {
            return Err(invalid(
                "server.request_timeout_seconds",
                "must be at least 1",
            ));
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return Err(invalid(
                "server.tls_cert",
                "set both server.tls_cert and server.tls_key, or neither",
            ));
        }
        crate::client_ip::TrustedProxies::parse(&self.server.trusted_proxies)
            .map_err(|problem| invalid("server.trusted_proxies", problem))?;
        if self.server.proxy_protocol && self.server.trusted_proxies.is_empty() {
            return Err(invalid(
                "server.proxy_protocol",
                "needs server.trusted_proxies: only proxies may name the client",
            ));
        }
        if self.server.http2_max_streams == 0 {
            return Err(invalid("server.http2_max_streams", "must be at least 1"));
        }
        if self.server.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(invalid("log.format", "must be text or json"));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.filter)
            .map_err(|e| invalid("log.filter", e.to_string()))?;
        Ok(())
    }

    /// Whether subscribers must authenticate (then publishing must too, unless allowed).
    pub fn auth_required(&self) -> bool {
        self.auth.enabled() || self.auth.hook_url.is_some()
    }

    /// The listen address, parsed.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server
            .listen
            .parse()
            .map_err(|e| ConfigError::Invalid {
                key: "server.listen",
                problem: format!("{:?} is not host:port ({e})", self.server.listen),
            })
    }

    /// SSE heartbeat period.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.sse.heartbeat_seconds)
    }

    /// History TTL.
    pub fn history_ttl(&self) -> Duration {
        Duration::from_secs(self.history.ttl_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn defaults_run_a_local_memory_gateway() {
        let s = Settings::load_with_env(None, env(&[])).unwrap();
        assert_eq!(s.server.listen, "127.0.0.1:8080");
        assert_eq!(s.redis.url, None);
        assert_eq!(s.history.size, 1000);
        assert_eq!(s.history.ttl_seconds, 3600);
        assert_eq!(s.publish.api_key, None);
    }

    #[test]
    fn environment_names_are_the_documented_ones() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("GATEWAY__SERVER__LISTEN", "0.0.0.0:9000"),
                ("GATEWAY__REDIS__URL", "redis://127.0.0.1:6379/0"),
                ("GATEWAY__HISTORY__SIZE", "50"),
                ("GATEWAY__HISTORY__TTL_SECONDS", "60"),
                ("GATEWAY__PUBLISH__API_KEY", "12345"),
                (
                    "GATEWAY__CORS__ALLOW_ORIGINS",
                    "https://a.example, https://b.example",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(s.listen_addr().unwrap().port(), 9000);
        assert_eq!(s.redis.url.as_deref(), Some("redis://127.0.0.1:6379/0"));
        assert_eq!(s.history.size, 50);
        assert_eq!(s.history.ttl_seconds, 60);
        assert_eq!(
            s.publish.api_key.as_ref().map(Secret::expose),
            Some("12345")
        );
        assert_eq!(
            s.cors.allow_origins,
            ["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn empty_redis_url_means_memory_engine() {
        let s = Settings::load_with_env(None, env(&[("GATEWAY__REDIS__URL", "")])).unwrap();
        assert_eq!(s.redis.url, None);
    }

    #[test]
    fn file_then_environment() {
        let dir = std::env::temp_dir().join(format!("gw-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("g.toml");
        std::fs::write(&path, "[history]\nsize = 7\nttl_seconds = 9\n").unwrap();
        let s =
            Settings::load_with_env(Some(&path), env(&[("GATEWAY__HISTORY__SIZE", "8")])).unwrap();
        assert_eq!((s.history.size, s.history.ttl_seconds), (8, 9));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("GATEWAY__HISTORY__SIZE", "abc", "history.size"),
            ("GATEWAY__HISTORY__SIZE", "0", "history.size"),
            ("GATEWAY__SERVER__LISTEN", "nowhere", "server.listen"),
            ("GATEWAY__REDIS__URL", "http://x", "redis.url"),
            ("GATEWAY__HISTORY__TTLSECONDS", "5", "ttlseconds"),
            ("GATEWAY__LIMITS__QUEUE_SIZE", "-3", "limits.queue_size"),
            ("GATEWAY__REDIS__KEY_PREFIX", "a{b", "redis.key_prefix"),
            (
                "GATEWAY__SERVER__DELIVERY_PACE",
                "5",
                "server.delivery_pace",
            ),
            (
                "GATEWAY__SERVER__DELIVERY_PACE",
                "-1",
                "server.delivery_pace",
            ),
        ];
        for (key, value, expect) in cases {
            let err = Settings::load_with_env(None, env(&[(key, value)])).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(expect), "{key}={value}: {text}");
        }
    }
}
