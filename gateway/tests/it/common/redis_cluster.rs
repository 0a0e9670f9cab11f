//! A Redis Cluster on loopback ([`RedisCluster`]): `redis-server` processes in cluster mode,
//! joined with `redis-cli --cluster create`, with the faults a cluster test needs — SIGKILL of
//! one node, waiting for its replica to take over, and moving one chosen slot (with its keys)
//! to another primary the way `redis-cli --cluster reshard` does, one slot at a time.
//!
//! Every operation that waits polls the nodes themselves (`CLUSTER NODES`, `CLUSTER INFO`,
//! `ROLE`) until every live node agrees, so a test never races the cluster's gossip. The
//! operations block the calling thread; from an async test call them inside
//! `tokio::task::block_in_place` when other tasks must keep running meanwhile.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{free_port, redis_server_binary, unique};

/// Hash slots in a Redis Cluster.
pub const SLOTS: u32 = 16384;

/// Longest wait for the cluster to form, fail over or agree after a change.
pub const CLUSTER_WAIT: Duration = Duration::from_secs(30);

/// Timeout of every harness command to a node (connect, read and write).
const NODE_TIMEOUT: Duration = Duration::from_secs(2);

fn redis_cli_binary() -> PathBuf {
    for candidate in ["/usr/bin/redis-cli", "/usr/local/bin/redis-cli"] {
        let p = PathBuf::from(candidate);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("redis-cli")
}

/// One `redis-server` process of the cluster.
struct Proc {
    /// The client port.
    port: u16,
    /// Running until killed.
    child: Option<Child>,
    /// Its working directory (node config file and log).
    dir: PathBuf,
}

/// One line of `CLUSTER NODES`: how one node sees another (or itself).
#[derive(Debug, Clone)]
pub struct NodeEntry {
    /// The node id (40 hex digits).
    pub id: String,
    /// The client port.
    pub port: u16,
    /// The raw flags (`myself`, `master`, `slave`, `fail?`, `fail`, `handshake`, ...).
    pub flags: Vec<String>,
    /// The id of its primary, for replicas.
    pub primary_id: Option<String>,
    /// `connected` or `disconnected`.
    pub link_connected: bool,
    /// The slot ranges it serves, inclusive.
    pub slots: Vec<(u16, u16)>,
    /// Whether the line lists slots being imported or migrated (`[slot->-id]`, `[slot-<-id]`).
    pub open_slots: bool,
}

impl NodeEntry {
    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// Whether the node is a primary.
    pub fn is_primary(&self) -> bool {
        self.has("master")
    }

    /// Whether the cluster has marked the node failed (`fail`, not the local `fail?`).
    pub fn is_failed(&self) -> bool {
        self.has("fail")
    }

    /// Whether the observing node suspects it (`fail?`) or is still meeting it.
    pub fn is_doubtful(&self) -> bool {
        self.has("fail?") || self.has("handshake") || self.has("noaddr")
    }
}

/// Parses the text of `CLUSTER NODES`.
pub fn parse_cluster_nodes(text: &str) -> Vec<NodeEntry> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            continue;
        }
        // `ip:port@cport[,hostname]`
        let port = fields[1]
            .split('@')
            .next()
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let mut slots = Vec::new();
        let mut open_slots = false;
        for s in &fields[8..] {
            if s.starts_with('[') {
                open_slots = true;
            } else if let Some((a, b)) = s.split_once('-') {
                if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                    slots.push((a, b));
                }
            } else if let Ok(a) = s.parse() {
                slots.push((a, a));
            }
        }
        out.push(NodeEntry {
            id: fields[0].to_owned(),
            port,
            flags: fields[2].split(',').map(str::to_owned).collect(),
            primary_id: (fields[3] != "-").then(|| fields[3].to_owned()),
            link_connected: fields[7] == "connected",
            slots,
            open_slots,
        });
    }
    out
}

/// What every live node must agree on: which port serves which slots, and who replicates whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `(first slot, last slot, primary port)`, sorted, for slots served by live nodes.
    pub slots: Vec<(u16, u16, u16)>,
    /// Replica port → primary port, for live replicas.
    pub replicas: BTreeMap<u16, u16>,
}

impl Layout {
    /// The port serving `slot`.
    pub fn owner(&self, slot: u16) -> Option<u16> {
        self.slots
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&slot))
            .map(|(_, _, port)| *port)
    }

    /// How many slots are served.
    pub fn covered(&self) -> u32 {
        self.slots
            .iter()
            .map(|(a, b, _)| u32::from(*b) - u32::from(*a) + 1)
            .sum()
    }

    /// The primaries serving slots, sorted by port.
    pub fn primaries(&self) -> Vec<u16> {
        let set: HashSet<u16> = self.slots.iter().map(|(_, _, p)| *p).collect();
        let mut v: Vec<u16> = set.into_iter().collect();
        v.sort_unstable();
        v
    }

    /// The replicas of the primary on `port`.
    pub fn replicas_of(&self, port: u16) -> Vec<u16> {
        self.replicas
            .iter()
            .filter(|(_, p)| **p == port)
            .map(|(r, _)| *r)
            .collect()
    }
}

/// A node as it was when [`RedisCluster::kill`] killed it.
#[derive(Debug, Clone)]
struct Killed {
    /// Its replicas' ports.
    replicas: Vec<u16>,
    /// The slot ranges it served.
    slots: Vec<(u16, u16)>,
}

/// A Redis Cluster of `redis-server` processes on loopback, each in its own temporary
/// directory; every process is SIGKILLed (by PID) and every directory removed on drop.
pub struct RedisCluster {
    procs: Vec<Proc>,
    /// Parent of the nodes' directories.
    dir: PathBuf,
    /// Node ids by port, as created.
    ids: HashMap<u16, String>,
    /// What each killed node was just before the kill.
    killed: HashMap<u16, Killed>,
    /// One blocking connection per node for harness commands, reopened after any error.
    conns: Mutex<HashMap<u16, redis::Connection>>,
}

impl RedisCluster {
    /// Starts `primaries * (1 + replicas_per_primary)` nodes (`--cluster-node-timeout 1000`,
    /// replicas that fail over however stale they are, no replica migration, no persistence),
    /// joins them with `redis-cli --cluster create --cluster-replicas <n>`, and waits until every
    /// node reports `cluster_state:ok`, all agree on the slot map and the roles, and every
    /// replica's link to its primary is up.
    pub fn start(primaries: usize, replicas_per_primary: usize) -> Self {
        assert!(
            primaries >= 3,
            "redis-cli --cluster create needs 3 primaries"
        );
        let dir = std::env::temp_dir().join(unique("gw-cluster-"));
        std::fs::create_dir_all(&dir).expect("cluster temp dir");
        let count = primaries * (1 + replicas_per_primary);
        // Client and bus ports: all distinct (the bus port is set, not port + 10000, which can
        // fall outside the port range or on a busy port).
        let mut taken = HashSet::new();
        let mut next_port = || loop {
            let p = free_port();
            if taken.insert(p) {
                return p;
            }
        };
        let ports: Vec<(u16, u16)> = (0..count).map(|_| (next_port(), next_port())).collect();
        let mut cluster = Self {
            procs: Vec::new(),
            dir,
            ids: HashMap::new(),
            killed: HashMap::new(),
            conns: Mutex::new(HashMap::new()),
        };
        for (port, bus) in ports {
            cluster.spawn_node(port, bus);
        }
        for p in &cluster.procs {
            let port = p.port;
            wait_for(&format!("node {port} to answer"), super::WAIT, || {
                cluster
                    .query::<String>(port, &redis::cmd("PING"))
                    .is_some_and(|r| r == "PONG")
            });
        }

        let output = Command::new(redis_cli_binary())
            .arg("--cluster")
            .arg("create")
            .args(
                cluster
                    .procs
                    .iter()
                    .map(|p| format!("127.0.0.1:{}", p.port)),
            )
            .arg("--cluster-replicas")
            .arg(replicas_per_primary.to_string())
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli must be installed (scripts/test.sh installs it)");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        for p in &cluster.procs {
            let id: String = cluster
                .query(p.port, redis::cmd("CLUSTER").arg("MYID"))
                .expect("CLUSTER MYID");
            cluster.ids.insert(p.port, id);
        }
        cluster.wait_stable("the cluster to form", |layout| {
            layout.primaries().len() == primaries
                && layout
                    .primaries()
                    .iter()
                    .all(|p| layout.replicas_of(*p).len() == replicas_per_primary)
        });
        cluster.wait_for_replica_links();
        cluster
    }

    fn spawn_node(&mut self, port: u16, bus: u16) {
        let dir = self.dir.join(port.to_string());
        std::fs::create_dir_all(&dir).expect("node temp dir");
        let child = Command::new(redis_server_binary())
            .arg("--port")
            .arg(port.to_string())
            .arg("--cluster-port")
            .arg(bus.to_string())
            .args(["--bind", "127.0.0.1", "--cluster-announce-ip", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(dir.join(format!("nodes-{port}.conf")))
            .args(["--cluster-node-timeout", "1000"])
            // A replica takes over however long it was cut off, and replicas stay with the
            // primary they were given: failovers are quick and the layout predictable.
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--cluster-allow-replica-migration", "no"])
            .args(["--appendonly", "no", "--save", ""])
            // A replica's first sync starts at once instead of waiting for more replicas.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .args(["--daemonize", "no", "--loglevel", "notice"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        self.procs.push(Proc {
            port,
            child: Some(child),
            dir,
        });
    }

    /// Every node's client port, as started (killed ones included).
    pub fn ports(&self) -> Vec<u16> {
        self.procs.iter().map(|p| p.port).collect()
    }

    /// The client ports of the nodes still running.
    pub fn alive(&self) -> Vec<u16> {
        self.procs
            .iter()
            .filter(|p| p.child.is_some())
            .map(|p| p.port)
            .collect()
    }

    /// `redis://127.0.0.1:<port>` of every node, comma-separated: the value of
    /// `GATEWAY__REDIS__CLUSTER_NODES`.
    pub fn seeds(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("redis://127.0.0.1:{}", p.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node id of the node on `port`.
    pub fn node_id(&self, port: u16) -> String {
        self.ids
            .get(&port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
            .clone()
    }

    /// One command to the node on `port` (not following redirects); `None` when the node
    /// cannot be reached, answers with an error, or the reply does not convert.
    pub fn query<T: redis::FromRedisValue>(&self, port: u16, cmd: &redis::Cmd) -> Option<T> {
        self.query_result(port, cmd).ok()
    }

    /// Like [`RedisCluster::query`], with the error.
    pub fn query_result<T: redis::FromRedisValue>(
        &self,
        port: u16,
        cmd: &redis::Cmd,
    ) -> Result<T, String> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let conn = match conns.entry(port) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(open_node(port).map_err(|e| e.to_string())?),
        };
        match cmd.query::<redis::Value>(conn) {
            Ok(value) => redis::from_redis_value(value).map_err(|e| e.to_string()),
            Err(e) => {
                // A server error leaves the connection usable; anything else may not.
                if !matches!(e.kind(), redis::ErrorKind::Server(_)) {
                    conns.remove(&port);
                }
                Err(e.to_string())
            }
        }
    }

    /// `CLUSTER NODES` as the node on `port` sees it.
    pub fn view(&self, port: u16) -> Option<Vec<NodeEntry>> {
        self.query::<String>(port, redis::cmd("CLUSTER").arg("NODES"))
            .map(|t| parse_cluster_nodes(&t))
    }

    /// The layout in `view`, counting only nodes that are running.
    fn layout_of(&self, view: &[NodeEntry]) -> Layout {
        let alive: HashSet<u16> = self.alive().into_iter().collect();
        let by_id: HashMap<&str, u16> = view.iter().map(|e| (e.id.as_str(), e.port)).collect();
        let mut slots: Vec<(u16, u16, u16)> = view
            .iter()
            .filter(|e| e.is_primary() && alive.contains(&e.port))
            .flat_map(|e| e.slots.iter().map(move |(a, b)| (*a, *b, e.port)))
            .collect();
        slots.sort_unstable();
        let replicas = view
            .iter()
            .filter(|e| !e.is_primary() && alive.contains(&e.port))
            .filter_map(|e| {
                let primary = by_id.get(e.primary_id.as_deref()?)?;
                Some((e.port, *primary))
            })
            .collect();
        Layout { slots, replicas }
    }

    /// The layout every live node agrees on right now: `None` unless every live node answers,
    /// reports `cluster_state:ok`, lists every other live node as healthy and connected, has no
    /// slot half-moved, and sees the same layout covering all slots.
    pub fn agreed_layout(&self) -> Option<Layout> {
        let alive = self.alive();
        let mut agreed: Option<Layout> = None;
        for &port in &alive {
            let info: String = self.query(port, redis::cmd("CLUSTER").arg("INFO"))?;
            if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
                return None;
            }
            let view = self.view(port)?;
            for &other in &alive {
                let entry = view.iter().find(|e| e.port == other)?;
                let healthy = entry.has("myself")
                    || (entry.link_connected && !entry.is_doubtful() && !entry.is_failed());
                if !healthy || entry.open_slots {
                    return None;
                }
            }
            let layout = self.layout_of(&view);
            if layout.covered() != SLOTS {
                return None;
            }
            match &agreed {
                None => agreed = Some(layout),
                Some(a) if *a == layout => {}
                Some(_) => return None,
            }
        }
        agreed
    }

    /// Waits until the live nodes agree on a layout (see [`RedisCluster::agreed_layout`]) that
    /// satisfies `want`; returns it. Panics after [`CLUSTER_WAIT`].
    pub fn wait_stable(&self, what: &str, mut want: impl FnMut(&Layout) -> bool) -> Layout {
        let mut found = None;
        wait_for(what, CLUSTER_WAIT, || {
            found = self.agreed_layout().filter(|l| want(l));
            found.is_some()
        });
        found.expect("checked")
    }

    /// The agreed layout now (waits briefly for agreement).
    pub fn layout(&self) -> Layout {
        self.wait_stable("the nodes to agree on the layout", |_| true)
    }

    /// Waits until every live replica reports its link to its primary up.
    fn wait_for_replica_links(&self) {
        let layout = self.layout();
        wait_for("every replica's link to be up", CLUSTER_WAIT, || {
            layout.replicas.keys().all(|&r| {
                self.query::<String>(r, redis::cmd("INFO").arg("replication"))
                    .is_some_and(|i| i.lines().any(|l| l.trim() == "master_link_status:up"))
            })
        });
    }

    /// Waits until every live replica has acknowledged everything its primary has written.
    pub fn wait_replicated(&self) {
        let layout = self.layout();
        wait_for("the replicas to catch up", CLUSTER_WAIT, || {
            layout.primaries().iter().all(|&p| {
                let Some(redis::Role::Primary {
                    replication_offset,
                    replicas,
                }) = self.query::<redis::Role>(p, &redis::cmd("ROLE"))
                else {
                    return false;
                };
                let want = layout.replicas_of(p);
                want.iter().all(|r| {
                    replicas.iter().any(|i| {
                        i.port == *r
                            && u64::try_from(i.replication_offset)
                                .is_ok_and(|o| o >= replication_offset)
                    })
                })
            })
        });
    }

    /// The primaries serving slots, by port.
    pub fn primaries(&self) -> Vec<u16> {
        self.layout().primaries()
    }

    /// The replicas of the primary on `port`.
    pub fn replicas_of(&self, port: u16) -> Vec<u16> {
        self.layout().replicas_of(port)
    }

    /// `CLUSTER KEYSLOT key` (a hash tag `{...}` in `key` decides it).
    pub fn keyslot(&self, key: &str) -> u16 {
        self.alive()
            .into_iter()
            .find_map(|p| self.query(p, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)))
            .expect("CLUSTER KEYSLOT on a live node")
    }

    /// The port of the primary serving `slot`, in the agreed layout.
    pub fn primary_for_slot(&self, slot: u16) -> u16 {
        self.layout().owner(slot).expect("every slot is served")
    }

    /// The port of the primary serving `key`.
    pub fn primary_for(&self, key: &str) -> u16 {
        self.primary_for_slot(self.keyslot(key))
    }

    /// SIGKILLs the node on `port` (by its PID) and reaps it; the cluster is not told.
    pub fn kill(&mut self, port: u16) {
        let layout = self.layout();
        let replicas = layout.replicas_of(port);
        let slots = layout
            .slots
            .iter()
            .filter(|(_, _, p)| *p == port)
            .map(|(a, b, _)| (*a, *b))
            .collect();
        let proc = self
            .procs
            .iter_mut()
            .find(|p| p.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"));
        let mut child = proc.child.take().expect("the node is running");
        // `Child::kill` is `kill(pid, SIGKILL)`.
        let _ = child.kill();
        let _ = child.wait();
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&port);
        self.killed.insert(port, Killed { replicas, slots });
    }

    /// Waits until a replica of the node killed on `killed_port` reports itself primary, serves
    /// every slot the killed node served, and every live node agrees (`cluster_state:ok`);
    /// returns the new primary's port.
    pub fn wait_failover(&self, killed_port: u16) -> u16 {
        let Killed { replicas, slots } = self
            .killed
            .get(&killed_port)
            .unwrap_or_else(|| panic!("{killed_port} was not killed with RedisCluster::kill"))
            .clone();
        assert!(
            !replicas.is_empty() && !slots.is_empty(),
            "the node on {killed_port} was not a primary with a replica"
        );
        let layout = self.wait_stable(
            &format!("a replica of {killed_port} to take over"),
            |layout| {
                let Some(new) = layout.owner(slots[0].0) else {
                    return false;
                };
                replicas.contains(&new)
                    && slots.iter().all(|(a, b)| {
                        layout.owner(*a) == Some(new) && layout.owner(*b) == Some(new)
                    })
                    && self
                        .query::<redis::Role>(new, &redis::cmd("ROLE"))
                        .is_some_and(|r| matches!(r, redis::Role::Primary { .. }))
            },
        );
        layout.owner(slots[0].0).expect("checked")
    }

    /// Moves `slot`, with every key in it, from its primary to the primary on `to_port`:
    /// `CLUSTER SETSLOT IMPORTING` on the target, `MIGRATING` on the source, `MIGRATE ... KEYS`
    /// until the source holds none, then `SETSLOT NODE` on the target, the source and every
    /// other primary; waits until every live node agrees. While it runs, commands for the
    /// slot's keys get `ASK` (or `TRYAGAIN`) redirections, as in a real resharding.
    pub fn migrate_slot(&self, slot: u16, to_port: u16) {
        let layout = self.layout();
        let from_port = layout.owner(slot).expect("the slot is served");
        if from_port == to_port {
            return;
        }
        assert!(
            layout.primaries().contains(&to_port),
            "{to_port} is not a primary"
        );
        let (from_id, to_id) = (self.node_id(from_port), self.node_id(to_port));
        let setslot = |port: u16, state: &str, id: Option<&str>| {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SETSLOT").arg(slot).arg(state);
            if let Some(id) = id {
                cmd.arg(id);
            }
            let reply: Result<String, String> = self.query_result(port, &cmd);
            assert!(
                reply.as_deref() == Ok("OK"),
                "CLUSTER SETSLOT {slot} {state} on {port}: {reply:?}"
            );
        };
        setslot(to_port, "IMPORTING", Some(&from_id));
        setslot(from_port, "MIGRATING", Some(&to_id));
        let deadline = Instant::now() + CLUSTER_WAIT;
        loop {
            let keys: Vec<Vec<u8>> = self
                .query_result(
                    from_port,
                    redis::cmd("CLUSTER")
                        .arg("GETKEYSINSLOT")
                        .arg(slot)
                        .arg(1000),
                )
                .unwrap_or_else(|e| panic!("CLUSTER GETKEYSINSLOT {slot} on {from_port}: {e}"));
            if keys.is_empty() {
                break;
            }
            let mut migrate = redis::cmd("MIGRATE");
            migrate
                .arg("127.0.0.1")
                .arg(to_port)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("REPLACE")
                .arg("KEYS")
                .arg(&keys);
            let reply: Result<String, String> = self.query_result(from_port, &migrate);
            assert!(
                matches!(reply.as_deref(), Ok("OK") | Ok("NOKEY")),
                "MIGRATE of {} keys from {from_port} to {to_port}: {reply:?}",
                keys.len()
            );
            assert!(
                Instant::now() < deadline,
                "slot {slot} never emptied on {from_port}"
            );
        }
        setslot(to_port, "NODE", Some(&to_id));
        setslot(from_port, "NODE", Some(&to_id));
        for other in layout.primaries() {
            if other != to_port && other != from_port {
                setslot(other, "NODE", Some(&to_id));
            }
        }
        self.wait_stable(
            &format!("every node to see slot {slot} on {to_port}"),
            |layout| layout.owner(slot) == Some(to_port),
        );
    }

    /// A cluster client on the live nodes (redirections followed, failed commands retried).
    pub fn client(&self) -> redis::cluster::ClusterClient {
        self.client_with(None)
    }

    /// A cluster client that sends every command once (`retries(0)`): an error (a timeout, a
    /// dropped connection, a `MOVED`/`ASK`) comes back to the caller instead of the command
    /// being sent again, so a write whose outcome is unknown is never executed twice. Each
    /// redirection still refreshes the slot map for the next command.
    pub fn client_once(&self) -> redis::cluster::ClusterClient {
        self.client_with(Some(0))
    }

    fn client_with(&self, retries: Option<u32>) -> redis::cluster::ClusterClient {
        let seeds: Vec<String> = self
            .alive()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect();
        let mut builder = redis::cluster::ClusterClientBuilder::new(seeds)
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(2));
        if let Some(retries) = retries {
            builder = builder.retries(retries);
        }
        builder.build().expect("cluster client")
    }

    /// An async cluster connection (routes each command by its first key, follows `MOVED` and
    /// `ASK`, retries after failures).
    pub async fn conn(&self) -> redis::cluster_async::ClusterConnection {
        self.client()
            .get_async_connection()
            .await
            .expect("connect to the test cluster")
    }

    /// An async cluster connection that sends every command once (see
    /// [`RedisCluster::client_once`]): for publishers that must not write anything twice.
    pub async fn conn_once(&self) -> redis::cluster_async::ClusterConnection {
        self.client_once()
            .get_async_connection()
            .await
            .expect("connect to the test cluster")
    }

    /// The last `lines` lines of each node's log, for failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for p in &self.procs {
            let log = std::fs::read_to_string(p.dir.join("redis.log")).unwrap_or_default();
            let all: Vec<&str> = log.lines().collect();
            out.push_str(&format!(
                "--- node {} ({}) ---\n",
                p.port,
                if p.child.is_some() {
                    "running"
                } else {
                    "killed"
                }
            ));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("redis cluster logs:\n{}", self.log_tails(15));
        }
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).clear();
        for p in &mut self.procs {
            if let Some(mut child) = p.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A blocking connection to one node, with [`NODE_TIMEOUT`] on connect, reads and writes.
fn open_node(port: u16) -> redis::RedisResult<redis::Connection> {
    let conn = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?
        .get_connection_with_timeout(NODE_TIMEOUT)?;
    conn.set_read_timeout(Some(NODE_TIMEOUT))?;
    conn.set_write_timeout(Some(NODE_TIMEOUT))?;
    Ok(conn)
}

/// Polls `f` (blocking) every 50 ms until it holds; panics after `limit`.
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
