//! Redis processes started with arbitrary arguments ([`Node`]: TLS servers, replicas,
//! sentinels), and a Sentinel topology on loopback ([`Topology`]: a primary, two replicas and
//! three sentinels watching it). Every process is killed by its PID on drop.

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, redis_server_binary, unique};

/// The name the sentinels monitor.
pub const MASTER: &str = "mymaster";

/// One `redis-server` process (data node or sentinel) in its own temp directory.
pub struct Node {
    child: Option<Child>,
    /// The port it listens on (the TLS port for TLS-only servers).
    pub port: u16,
    dir: PathBuf,
}

impl Node {
    /// Starts `redis-server <args>` on `port`, without persistence, and waits until the port
    /// accepts connections. `config` (if any) is written to `redis.conf` in the node's directory
    /// and passed first (sentinels need a writable config file).
    pub fn start(port: u16, config: Option<&str>, args: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(unique("gw-node-"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut cmd = Command::new(redis_server_binary());
        if let Some(config) = config {
            let path = dir.join("redis.conf");
            std::fs::write(&path, config).expect("write config");
            cmd.arg(path);
        }
        cmd.args(["--dir"])
            .arg(&dir)
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        let node = Self {
            child: Some(child),
            port,
            dir,
        };
        let deadline = Instant::now() + super::WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        node
    }

    /// A plain data node on a free port; `extra` are more arguments (e.g. `--replicaof`).
    pub fn data(extra: &[&str]) -> Self {
        let port = free_port();
        let port_text = port.to_string();
        let mut args = vec![
            "--port",
            &port_text,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--replica-announce-ip",
            "127.0.0.1",
        ];
        args.extend_from_slice(extra);
        Self::start(port, None, &args)
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A fresh async connection (plain nodes only).
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis node")
    }

    /// One command on a fresh blocking connection (plain nodes and sentinels); `None` when the
    /// node cannot be reached or the reply does not convert.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        cmd.query(&mut conn).ok()
    }

    /// Whether the node answers `ROLE` as the primary.
    pub fn is_primary(&self) -> bool {
        self.query::<redis::Role>(&redis::cmd("ROLE"))
            .is_some_and(|r| matches!(r, redis::Role::Primary { .. }))
    }

    /// As a primary, how far it has written (its replication offset).
    pub fn written_offset(&self) -> Option<u64> {
        match self.query::<redis::Role>(&redis::cmd("ROLE"))? {
            redis::Role::Primary {
                replication_offset, ..
            } => Some(replication_offset),
            _ => None,
        }
    }

    /// As a primary, whether every replica has acknowledged everything up to `offset` (see
    /// [`Node::written_offset`]): a failover then loses none of it, the in-sync failover
    /// `redis.durable` promises.
    pub fn replicas_reached(&self, offset: u64) -> bool {
        match self.query::<redis::Role>(&redis::cmd("ROLE")) {
            Some(redis::Role::Primary { replicas, .. }) => {
                !replicas.is_empty()
                    && replicas
                        .iter()
                        .all(|r| u64::try_from(r.replication_offset).is_ok_and(|o| o >= offset))
            }
            _ => false,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL, and wait until the process is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A primary, its replicas and sentinels watching it (quorum: a majority) on loopback, ready
/// to fail over quickly: a node counts as down after 1 s of silence.
pub struct Topology {
    /// `[primary, replicas...]` as started (roles change after a failover).
    pub nodes: Vec<Node>,
    /// The sentinels.
    pub sentinels: Vec<Node>,
}

impl Topology {
    /// Starts everything and waits until every sentinel knows every replica and every other
    /// sentinel, so a failover can be authorised.
    pub fn start(replicas: usize, sentinels: usize) -> Self {
        let primary = Node::data(&[]);
        let of = primary.port.to_string();
        let mut nodes = vec![primary];
        nodes.extend((0..replicas).map(|_| Node::data(&["--replicaof", "127.0.0.1", &of])));
        wait_for("the replicas to be online", Duration::from_secs(20), || {
            nodes[0]
                .query::<String>(redis::cmd("INFO").arg("replication"))
                .is_some_and(|info| info.matches("state=online").count() == replicas)
        });
        let quorum = sentinels / 2 + 1;
        let sentinels: Vec<Node> = (0..sentinels)
            .map(|_| start_sentinel(nodes[0].port, quorum))
            .collect();
        let topology = Self { nodes, sentinels };
        let others = topology.sentinels.len() - 1;
        wait_for(
            "the sentinels to know everyone",
            Duration::from_secs(30),
            || {
                topology.sentinels.iter().all(|s| {
                    s.query::<HashMap<String, String>>(
                        redis::cmd("SENTINEL").arg("MASTER").arg(MASTER),
                    )
                    .is_some_and(|m| {
                        m.get("num-slaves") == Some(&replicas.to_string())
                            && m.get("num-other-sentinels") == Some(&others.to_string())
                    })
                })
            },
        );
        topology
    }

    /// The sentinel URLs, comma-separated (the form of `GATEWAY__REDIS__SENTINELS`).
    pub fn sentinel_urls(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The port a majority of the sentinels name as the primary, if they agree on one.
    pub fn agreed_primary(&self) -> Option<u16> {
        let named: Vec<u16> = self.sentinels.iter().filter_map(named_primary).collect();
        named
            .iter()
            .copied()
            .find(|p| named.iter().filter(|q| *q == p).count() > self.sentinels.len() / 2)
    }
}

/// The port `sentinel` names as the primary.
pub fn named_primary(sentinel: &Node) -> Option<u16> {
    let (_, port) = sentinel.query::<Option<(String, u16)>>(
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(MASTER),
    )??;
    Some(port)
}

/// A sentinel monitoring `127.0.0.1:<port>` as [`MASTER`] with `quorum`.
pub fn start_sentinel(port: u16, quorum: usize) -> Node {
    let own = free_port();
    let config = format!(
        "port {own}\nbind 127.0.0.1\nsentinel announce-ip 127.0.0.1\n\
         sentinel monitor {MASTER} 127.0.0.1 {port} {quorum}\n\
         sentinel down-after-milliseconds {MASTER} 1000\n\
         sentinel failover-timeout {MASTER} 2000\n\
         sentinel parallel-syncs {MASTER} 2\n"
    );
    Node::start(own, Some(&config), &["--sentinel"])
}

/// Polls `f` (blocking) until it holds; panics after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
