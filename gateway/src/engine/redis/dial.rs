//! Where and how to connect: every Redis connection the engine opens (command connections and
//! the pub/sub connection) is dialled here, so TLS, Sentinel discovery and Cluster live in one
//! place.
//!
//! - **Cluster**: seed URLs; redis-rs's cluster client discovers the primaries, routes by slot
//!   and follows failovers and resharding. Commands share one cluster connection; live delivery
//!   uses another, speaking RESP3 so sharded pub/sub messages arrive as pushes.
//! - **Single**: one `redis://` / `rediss://` / `unix://` URL, optionally with a CA to trust
//!   and a client certificate.
//! - **Sentinel**: nothing is cached between dials. Every dial asks the sentinels in turn
//!   (starting with the one that answered last) `SENTINEL get-master-addr-by-name`, connects to
//!   the address named and keeps the connection only if that node answers `ROLE` as `master`.
//!   A stale sentinel, a dead old primary (refused connection) or a demoted node are skipped,
//!   and the next dial starts over, so a reconnect can never stick to a node that is gone.
//!
//! Data nodes are dialled like the sentinels: TLS when the sentinel URLs are `rediss://`, with
//! the URLs' database, username and password. Sentinels get the same credentials, or none when
//! they refuse them (a sentinel without `requirepass`).
//!
//! Nothing logged or returned here contains a password or key material: addresses are shown as
//! `host:port` only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{MultiplexedConnection, PubSub};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, RedisConnectionInfo};

use super::conn::Conn;
use crate::config::RedisSettings;

/// Longest time one sentinel, or one candidate primary, gets to answer during discovery, so a
/// blackholed sentinel delays the next one instead of stalling the dial.
const STEP: Duration = Duration::from_secs(2);

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    /// The settings cannot be turned into a client (a bad URL, an unreadable TLS file).
    #[error("{0}")]
    Config(String),
    /// Redis refused or dropped the connection, or the TLS handshake failed.
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    /// No sentinel named a node that is reachable and answers as the primary.
    #[error("no primary for {master} found through the sentinels ({tried})")]
    NoPrimary {
        /// The monitored name asked for.
        master: String,
        /// What each sentinel said, for the log and `/readyz`.
        tried: String,
    },
}

/// Opens connections to the current primary; cheap to share.
#[derive(Clone)]
pub(crate) struct Dialer {
    target: Arc<Target>,
}

enum Target {
    /// A fixed address.
    Single(redis::Client),
    /// Found through sentinels on every dial.
    Sentinel(Sentinels),
    /// A Redis Cluster: seed nodes and TLS material for the cluster clients.
    Cluster {
        seeds: Vec<ConnectionInfo>,
        certs: Option<redis::TlsCertificates>,
        timeout: Duration,
    },
}

impl Dialer {
    /// Reads the TLS files and parses the URLs; does no I/O on the network.
    pub(crate) fn new(settings: &RedisSettings) -> Result<Self, DialError> {
        let certs = tls_certificates(settings)?;
        if settings.uses_tls() {
            // redis-rs builds its rustls configs from the process default provider; make it the
            // ring one the rest of the gateway uses (a no-op when one is already installed).
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let target = if let Some(url) = &settings.url {
            Target::Single(open(parse("redis.url", url)?, certs.as_ref())?)
        } else if !settings.cluster_nodes.is_empty() {
            let seeds = settings
                .cluster_nodes
                .iter()
                .enumerate()
                .map(|(i, url)| parse(&format!("redis.cluster_nodes entry {}", i + 1), url))
                .collect::<Result<Vec<_>, _>>()?;
            Target::Cluster {
                seeds,
                certs,
                timeout: Duration::from_secs(settings.timeout_seconds),
            }
        } else {
            Target::Sentinel(Sentinels::new(settings, certs)?)
        };
        Ok(Self {
            target: Arc::new(target),
        })
    }

    /// Whether this is a Redis Cluster (live delivery then uses sharded pub/sub).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(&*self.target, Target::Cluster { .. })
    }

    /// A multiplexed command connection to the current primary (or the cluster).
    pub(crate) async fn command_connection(&self) -> Result<Conn, DialError> {
        match &*self.target {
            Target::Single(client) => {
                Ok(Conn::Node(client.get_multiplexed_async_connection().await?))
            }
            Target::Sentinel(s) => Ok(Conn::Node(s.primary().await?.1)),
            Target::Cluster { .. } => Ok(Conn::Cluster(
                self.cluster_client(None)?.get_async_connection().await?,
            )),
        }
    }

    /// A pub/sub connection to the current primary (not for a cluster: see
    /// [`Dialer::cluster_pubsub`]).
    pub(crate) async fn pubsub(&self) -> Result<PubSub, DialError> {
        let client = match &*self.target {
            Target::Single(client) => client.clone(),
            Target::Sentinel(s) => s.primary().await?.0,
            Target::Cluster { .. } => {
                return Err(DialError::Config(
                    "a cluster has no single pub/sub connection".into(),
                ));
            }
        };
        Ok(client.get_async_pubsub().await?)
    }

    /// A cluster connection for sharded pub/sub: RESP3, with every push (messages,
    /// subscription confirmations, disconnections) sent to `pushes`.
    pub(crate) async fn cluster_pubsub(
        &self,
        pushes: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
    ) -> Result<ClusterConnection, DialError> {
        Ok(self
            .cluster_client(Some(pushes))?
            .get_async_connection()
            .await?)
    }

    /// A cluster client for the seeds; with `pushes`, a RESP3 one that reports pushes there.
    fn cluster_client(
        &self,
        pushes: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
    ) -> Result<ClusterClient, DialError> {
        let Target::Cluster {
            seeds,
            certs,
            timeout,
        } = &*self.target
        else {
            return Err(DialError::Config("not a cluster".into()));
        };
        let mut builder = ClusterClientBuilder::new(seeds.clone())
            .connection_timeout(*timeout)
            .response_timeout(*timeout);
        if let Some(certs) = certs {
            builder = builder.certs(certs.clone());
        }
        if let Some(pushes) = pushes {
            builder = builder
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(pushes);
        }
        Ok(builder.build()?)
    }
}

/// Parses the URL of setting `key`; the error names the key, never the URL (it may hold a
/// password).
fn parse(key: &str, url: &str) -> Result<ConnectionInfo, DialError> {
    redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(|e| DialError::Config(format!("{key}: {e}")))
}

/// A client for `info`, with the configured CA and client certificate when it is TLS.
fn open(
    info: ConnectionInfo,
    certs: Option<&redis::TlsCertificates>,
) -> Result<redis::Client, DialError> {
    let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    Ok(match certs {
        Some(certs) if tls => redis::Client::build_with_tls(info, certs.clone())?,
        _ => redis::Client::open(info)?,
    })
}

/// The CA and client certificate from the settings, read once at start-up.
fn tls_certificates(settings: &RedisSettings) -> Result<Option<redis::TlsCertificates>, DialError> {
    let read = |key: &str, path: &str| {
        std::fs::read(path)
            .map_err(|e| DialError::Config(format!("{key}: cannot read {path}: {e}")))
    };
    let root_cert = match &settings.tls_ca {
        Some(path) => Some(read("redis.tls_ca", path)?),
        None => None,
    };
    let client_tls = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("redis.tls_cert", cert)?,
            client_key: read("redis.tls_key", key)?,
        }),
        _ => None,
    };
    if root_cert.is_none() && client_tls.is_none() {
        return Ok(None);
    }
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// The sentinels and how to reach the nodes they name.
struct Sentinels {
    master: String,
    sentinels: Vec<Sentinel>,
    /// Connection settings of the data nodes: the first URL's, without its address.
    node: ConnectionInfo,
    /// Whether data nodes are reached over TLS (the sentinel URLs are `rediss://`).
    tls: bool,
    certs: Option<redis::TlsCertificates>,
    /// The sentinel that answered last; the next dial asks it first.
    preferred: AtomicUsize,
    /// The primary found last, to log changes once.
    current: parking_lot::Mutex<Option<String>>,
}

/// One sentinel: with the URL's credentials, and without them for sentinels that have none.
struct Sentinel {
    label: String,
    with_credentials: redis::Client,
    anonymous: redis::Client,
    /// Set once the sentinel refused the credentials.
    refuses_credentials: AtomicBool,
}

impl Sentinels {
    fn new(
        settings: &RedisSettings,
        certs: Option<redis::TlsCertificates>,
    ) -> Result<Self, DialError> {
        let master = settings
            .sentinel_master
            .clone()
            .ok_or_else(|| DialError::Config("redis.sentinel_master is not set".into()))?;
        let mut sentinels = Vec::with_capacity(settings.sentinels.len());
        let mut node = None;
        for (i, url) in settings.sentinels.iter().enumerate() {
            let info = parse(&format!("redis.sentinels entry {}", i + 1), url)?;
            node.get_or_insert_with(|| info.clone());
            // Sentinels have no databases: never SELECT there.
            let redis_settings = info.redis_settings().clone().set_db(0);
            let anonymous = RedisConnectionInfo::default().set_protocol(redis_settings.protocol());
            sentinels.push(Sentinel {
                // `host:port` only: the URL may hold a password.
                label: info.addr().to_string(),
                with_credentials: open(
                    info.clone().set_redis_settings(redis_settings),
                    certs.as_ref(),
                )?,
                anonymous: open(info.set_redis_settings(anonymous), certs.as_ref())?,
                refuses_credentials: AtomicBool::new(false),
            });
        }
        let node = node.ok_or_else(|| DialError::Config("redis.sentinels is empty".into()))?;
        Ok(Self {
            master,
            tls: matches!(node.addr(), ConnectionAddr::TcpTls { .. }),
            sentinels,
            node,
            certs,
            preferred: AtomicUsize::new(0),
            current: parking_lot::Mutex::new(None),
        })
    }

    /// Asks each sentinel in turn and returns a client for, and a verified connection to, the
    /// first node named that answers `ROLE` as the primary.
    async fn primary(&self) -> Result<(redis::Client, MultiplexedConnection), DialError> {
        let count = self.sentinels.len();
        let first = self.preferred.load(Ordering::Relaxed) % count.max(1);
        let mut tried: Vec<(String, u16)> = Vec::new();
        let mut report: Vec<String> = Vec::new();
        for i in 0..count {
            let index = (first + i) % count;
            let sentinel = &self.sentinels[index];
            let (host, port) = match self.ask(sentinel).await {
                Ok(Some(addr)) => addr,
                Ok(None) => {
                    report.push(format!("{}: unknown name", sentinel.label));
                    continue;
                }
                Err(e) => {
                    report.push(format!("{}: {e}", sentinel.label));
                    continue;
                }
            };
            if tried.iter().any(|(h, p)| *h == host && *p == port) {
                continue;
            }
            tried.push((host.clone(), port));
            match self.verify(&host, port).await {
                Ok(Some(found)) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    self.note(&host, port, &sentinel.label);
                    return Ok(found);
                }
                Ok(None) => report.push(format!(
                    "{} named {host}:{port}, which is not a primary",
                    sentinel.label
                )),
                Err(e) => report.push(format!("{} named {host}:{port}: {e}", sentinel.label)),
            }
        }
        Err(DialError::NoPrimary {
            master: self.master.clone(),
            tried: report.join("; "),
        })
    }

    /// `SENTINEL get-master-addr-by-name` on one sentinel: `None` when it does not know the name.
    async fn ask(&self, sentinel: &Sentinel) -> Result<Option<(String, u16)>, String> {
        let reply = if sentinel.refuses_credentials.load(Ordering::Relaxed) {
            self.query(&sentinel.anonymous).await
        } else {
            match self.query(&sentinel.with_credentials).await {
                Err(e) if e.kind() == redis::ErrorKind::AuthenticationFailed => {
                    sentinel.refuses_credentials.store(true, Ordering::Relaxed);
                    self.query(&sentinel.anonymous).await
                }
                other => other,
            }
        };
        match reply {
            Ok(Some((host, port))) => port
                .parse()
                .map(|port| Some((host, port)))
                .map_err(|_| format!("answered port {port:?}")),
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// One `SENTINEL get-master-addr-by-name` round trip on a fresh connection, within [`STEP`].
    async fn query(&self, client: &redis::Client) -> redis::RedisResult<Option<(String, String)>> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(STEP))
            .set_response_timeout(Some(STEP));
        let round_trip = async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&self.master)
                .query_async(&mut conn)
                .await
        };
        tokio::time::timeout(STEP, round_trip)
            .await
            .unwrap_or_else(|_| Err(timed_out()))
    }

    /// Connects to `host:port` and keeps the connection if the node says it is the primary.
    async fn verify(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Option<(redis::Client, MultiplexedConnection)>, DialError> {
        let addr = match self.node.addr() {
            ConnectionAddr::TcpTls { insecure, .. } if self.tls => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        let client = open(self.node.clone().set_addr(addr), self.certs.as_ref())?;
        let check = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            let role: redis::Role = redis::cmd("ROLE").query_async(&mut conn).await?;
            Ok::<_, redis::RedisError>(matches!(role, redis::Role::Primary { .. }).then_some(conn))
        };
        match tokio::time::timeout(STEP, check).await {
            Ok(Ok(Some(conn))) => Ok(Some((client, conn))),
            Ok(Ok(None)) => Ok(None),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(timed_out().into()),
        }
    }

    /// Logs the primary when it differs from the last one found.
    fn note(&self, host: &str, port: u16, via: &str) {
        let found = format!("{host}:{port}");
        let mut current = self.current.lock();
        if current.as_deref() != Some(found.as_str()) {
            tracing::info!(primary = %found, sentinel = %via, master = %self.master, "Redis primary found through Sentinel");
            *current = Some(found);
        }
    }
}

/// The error of a discovery step that took longer than [`STEP`]: an I/O timeout, so callers
/// treat it like any unreachable node.
fn timed_out() -> redis::RedisError {
    std::io::Error::from(std::io::ErrorKind::TimedOut).into()
}
