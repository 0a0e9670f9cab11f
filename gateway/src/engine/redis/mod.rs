//! The Redis engine: history in one capped, expiring Stream per channel, offsets and epochs in a
//! small hash, live delivery over pub/sub, and all writes through one server-side function so
//! history and live push can never disagree. Commands run on multiplexed connections, one per
//! worker thread plus a few shared ones (see `conns`); pub/sub uses one dedicated connection
//! per instance (see `pubsub`). Both are opened through `dial` (single URL, TLS, or the primary
//! found through Sentinel).

mod batch;
mod conn;
mod conns;
mod dial;
pub mod keys;
pub mod library;
pub mod presence;
mod pubsub;
mod shards;
pub mod wire;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::{FromRedisValue, Value};
use shared::{ChannelName, Position};
use tokio::sync::{mpsc, oneshot, watch};

use self::conn::Conn;
use self::conns::Connections;
use self::dial::Dialer;
use self::keys::Keys;
use self::pubsub::{Command, Probe, PubsubTask};
use self::shards::ShardsTask;
use super::{EngineError, HistoryPage, Listener, PublishRequest};
use crate::config::Settings;
use crate::metrics::Metrics;

/// Handle to the Redis engine; clones share the pool and the pub/sub task.
#[derive(Clone)]
pub struct RedisEngine {
    inner: Arc<Inner>,
}

struct Inner {
    dialer: Dialer,
    /// Command connections: per worker thread, else shared (see `conns`).
    conns: Connections,
    keys: Keys,
    maxlen: String,
    ttl_ms: String,
    library: String,
    timeout: Duration,
    probe_interval: Duration,
    commands: mpsc::UnboundedSender<Command>,
    pending: parking_lot::Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
    stop: watch::Sender<bool>,
    listener: OnceLock<Arc<dyn Listener>>,
    metrics: Metrics,
}

impl RedisEngine {
    /// Builds the engine without touching the network: the gateway starts even while Redis is
    /// down and reports not-ready until it is reachable.
    pub fn new(settings: &Settings, metrics: Metrics) -> Result<Self, EngineError> {
        if !settings.redis.enabled() {
            return Err(EngineError::Refused(
                "no Redis URL or sentinels configured".into(),
            ));
        }
        let dialer =
            Dialer::new(&settings.redis).map_err(|e| EngineError::Refused(e.to_string()))?;
        let timeout = Duration::from_secs(settings.redis.timeout_seconds);
        let (commands, pending) = mpsc::unbounded_channel();
        Ok(Self {
            inner: Arc::new(Inner {
                conns: Connections::new(dialer.clone(), settings.redis.pool_size),
                dialer,
                keys: Keys::new(&settings.redis.key_prefix),
                maxlen: settings.history.size.to_string(),
                ttl_ms: settings.history_ttl().as_millis().to_string(),
                library: library::source(library::Flavour::of(settings)),
                timeout,
                probe_interval: Duration::from_secs(settings.redis.probe_seconds),
                commands,
                pending: parking_lot::Mutex::new(Some(pending)),
                stop: watch::channel(false).0,
                listener: OnceLock::new(),
                metrics,
            }),
        })
    }

    /// Starts the live-delivery task (pub/sub, or sharded pub/sub on a cluster), which also
    /// checks the function library on every connect.
    pub fn start(&self, listener: Arc<dyn Listener>) {
        let Some(commands) = self.inner.pending.lock().take() else {
            return;
        };
        let _ = self.inner.listener.set(listener.clone());
        let instance = format!("{:016x}", fastrand::u64(..));
        if self.inner.dialer.is_cluster() {
            let task = ShardsTask {
                dialer: self.inner.dialer.clone(),
                keys: self.inner.keys.clone(),
                listener,
                commands,
                stop: self.inner.stop.subscribe(),
                timeout: self.inner.timeout,
                instance,
                probe_interval: self.inner.probe_interval,
                library: self.inner.library.clone(),
                conns: self.inner.conns.clone(),
                metrics: self.inner.metrics.clone(),
            };
            tokio::spawn(task.run());
            return;
        }
        let task = PubsubTask {
            dialer: self.inner.dialer.clone(),
            keys: self.inner.keys.clone(),
            listener,
            commands,
            stop: self.inner.stop.subscribe(),
            timeout: self.inner.timeout,
            probe: Probe {
                conns: self.inner.conns.clone(),
                channel: self.inner.keys.control(&instance),
                interval: self.inner.probe_interval,
            },
            library: self.inner.library.clone(),
            commands_cache: self.inner.conns.clone(),
            metrics: self.inner.metrics.clone(),
        };
        tokio::spawn(task.run());
    }

    /// Stops background tasks.
    pub fn stop(&self) {
        let _ = self.inner.stop.send(true);
    }

    /// The key layout, for tests and tools that inspect Redis.
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// Loads the function library wherever Redis lacks this exact code (on every primary of a
    /// cluster); `true` when it had to be loaded somewhere. Called at start and whenever a
    /// function call is refused (e.g. after a restart without persistence).
    pub async fn load_library(&self) -> Result<bool, EngineError> {
        let code = self.inner.library.clone();
        self.run(|conn| async move {
            match conn {
                Conn::Cluster(mut c) => library::ensure_cluster(&mut c, &code).await,
                mut node => library::ensure(&mut node, &code).await,
            }
        })
        .await
    }

    /// Publishes through `gw_publish`.
    pub async fn publish(&self, req: PublishRequest) -> Result<Position, EngineError> {
        let id: String = self.query(&self.publish_cmd(&req)).await?;
        parse_id(&id)
    }

    /// The `FCALL gw_publish` of one request.
    fn publish_cmd(&self, req: &PublishRequest) -> redis::Cmd {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("gw_publish")
            .arg(2)
            .arg(self.inner.keys.stream(&req.channel))
            .arg(self.inner.keys.meta(&req.channel))
            .arg(&req.data[..])
            .arg(req.name.as_ref().map_or("", |n| n.as_str()))
            .arg(req.kind.as_str())
            .arg(&self.inner.maxlen)
            .arg(&self.inner.ttl_ms);
        cmd
    }

    /// Reads history through `gw_read`.
    pub async fn read(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: usize,
    ) -> Result<HistoryPage, EngineError> {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("gw_read")
            .arg(2)
            .arg(self.inner.keys.stream(channel))
            .arg(self.inner.keys.meta(channel))
            .arg(after)
            .arg(limit)
            .arg(&self.inner.ttl_ms);
        let reply: Value = self.query_idempotent(&cmd).await?;
        self.inner.metrics.history_reads.inc();
        wire::parse_page(channel, reply)
    }

    /// Moves the channel to a new epoch through `gw_fence` if `seen` is beyond its head.
    pub async fn fence(&self, channel: &ChannelName, seen: Position) -> Result<(), EngineError> {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("gw_fence")
            .arg(2)
            .arg(self.inner.keys.stream(channel))
            .arg(self.inner.keys.meta(channel))
            .arg(seen.epoch.to_string())
            .arg(seen.offset)
            .arg(&self.inner.ttl_ms);
        let _epoch: String = self.query_idempotent(&cmd).await?;
        Ok(())
    }

    /// Heads of many channels with one pipelined round trip.
    pub async fn heads(
        &self,
        channels: &[ChannelName],
    ) -> Result<Vec<Option<Position>>, EngineError> {
        if channels.is_empty() {
            return Ok(Vec::new());
        }
        let head = |c: &ChannelName| {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(self.inner.keys.meta(c)).arg("epoch").arg("offset");
            cmd
        };
        let replies: Vec<(Option<String>, Option<String>)> = if self.inner.dialer.is_cluster() {
            // A cluster pipeline must stay in one slot: one command each, all in flight at
            // once on the multiplexed connections to the primaries.
            let reads = channels.iter().map(|c| {
                let cmd = head(c);
                async move { self.query_once(&cmd).await }
            });
            futures_util::future::try_join_all(reads).await?
        } else {
            let mut pipe = redis::pipe();
            for c in channels {
                pipe.add_command(head(c));
            }
            self.run(|mut conn| async move { pipe.query_async(&mut conn).await })
                .await?
        };
        Ok(replies
            .into_iter()
            .map(|(epoch, offset)| {
                let epoch = epoch?.parse().ok()?;
                let offset = offset?.parse().ok()?;
                Some(Position::new(epoch, offset))
            })
            .collect())
    }

    /// Asks the pub/sub task to subscribe and waits for Redis to confirm.
    pub async fn subscribe(&self, channel: &ChannelName) -> Result<(), EngineError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Subscribe(self.inner.keys.live(channel), tx))
            .map_err(|_| EngineError::Unavailable("engine stopped".into()))?;
        match tokio::time::timeout(self.inner.timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(EngineError::Unavailable("engine stopped".into())),
            Err(_) => Err(EngineError::Unavailable("subscribe timed out".into())),
        }
    }

    /// Tells the pub/sub task the channel is no longer watched.
    pub fn unsubscribe(&self, channel: &ChannelName) {
        let _ = self
            .inner
            .commands
            .send(Command::Unsubscribe(self.inner.keys.live(channel)));
    }

    /// One PING through the command pool.
    pub async fn ping(&self) -> Result<(), EngineError> {
        let _: String = self.query_once(&redis::cmd("PING")).await?;
        Ok(())
    }

    /// Runs an idempotent command, once more on a fresh connection if the first one was broken.
    async fn query_idempotent<T: FromRedisValue + Send + 'static>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, EngineError> {
        match self.query(cmd).await {
            Err(EngineError::Unavailable(_)) => self.query(cmd).await,
            other => other,
        }
    }

    /// Runs a command, reloading the function library once if Redis has lost it.
    async fn query<T: FromRedisValue + Send + 'static>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, EngineError> {
        match self.query_once(cmd).await {
            // A plain error reply from Redis (`ERR`, not the library's own `GATEWAY` errors)
            // means the function did not run: the node lacks the library (restarted empty, a
            // primary added by resharding, or an instance publishing before its own load
            // finished). Make sure it is there and call once more.
            Err(refused @ EngineError::Refused(_)) => match self.load_library().await {
                Ok(loaded) => {
                    if loaded {
                        tracing::info!("Redis lacked the function library; loaded it");
                    }
                    self.query_once(cmd).await
                }
                Err(_) => Err(refused),
            },
            other => other,
        }
    }

    async fn query_once<T: FromRedisValue + Send + 'static>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, EngineError> {
        let cmd = cmd.clone();
        self.run(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
    }

    /// Checks out a pooled connection and runs `f` under the configured timeout, mapping every
    /// failure to an [`EngineError`].
    async fn run<T, F, Fut>(&self, f: F) -> Result<T, EngineError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let mut slot = None;
        let work = async {
            let (used, conn) = self.inner.conns.get().await?;
            slot = Some(used);
            f(conn).await.map_err(|e| {
                // A demoted primary: every cached connection points at it; find the new one.
                if demoted(&e) {
                    self.inner.conns.forget();
                }
                classify(e)
            })
        };
        let result = match tokio::time::timeout(self.inner.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(EngineError::Unavailable(
                "Redis did not answer in time".into(),
            )),
        };
        if let Err(e) = &result {
            let kind = match e {
                EngineError::Unavailable(_) => crate::metrics::labels::EngineErrorKind::Unavailable,
                EngineError::Protocol(_) => crate::metrics::labels::EngineErrorKind::Protocol,
                EngineError::Refused(_) => crate::metrics::labels::EngineErrorKind::Refused,
                EngineError::Rejected(_) => crate::metrics::labels::EngineErrorKind::Rejected,
            };
            self.inner.metrics.engine_error(kind);
            // A broken connection is forgotten; the next command opens or takes a healthy one.
            if let (EngineError::Unavailable(_), Some(used)) = (e, slot) {
                self.inner.conns.drop_broken(used);
            }
        }
        result
    }
}

/// Whether the node answered as a replica (or one cut off from its primary): the connection
/// must move to the current primary, and the request may be retried there.
fn demoted(e: &redis::RedisError) -> bool {
    use redis::ServerErrorKind::{MasterDown, ReadOnly};
    matches!(e.kind(), redis::ErrorKind::Server(ReadOnly | MasterDown))
}

/// The position `gw_publish` answered.
fn parse_id(id: &str) -> Result<Position, EngineError> {
    id.parse()
        .map_err(|e| EngineError::Protocol(format!("gw_publish returned {id:?}: {e}")))
}

fn classify(e: redis::RedisError) -> EngineError {
    if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || demoted(&e)
    {
        EngineError::Unavailable(e.to_string())
    } else if matches!(
        e.kind(),
        redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType
    ) {
        EngineError::Protocol(e.to_string())
    } else if e.code() == Some("GATEWAY") {
        EngineError::Rejected(e.to_string())
    } else {
        EngineError::Refused(e.to_string())
    }
}
