//! Redis-side measurements over every node of the target (one server, or each primary and
//! replica of a cluster): CPU time (`INFO cpu`: `used_cpu_sys` + `used_cpu_user`) and command
//! counts (`INFO stats` / `commandstats`), sampled before and after a measurement window, so a
//! report can say what a publish or a resumed client cost Redis, per node and per shard.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Map, Value, json};

use crate::report::Report;
use crate::target::parse_url;

/// What one `INFO` of one node says that we use.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct NodeInfo {
    /// `role:` (`master` or `slave`).
    pub role: String,
    /// `used_cpu_sys` + `used_cpu_user`, seconds (the whole server process).
    pub cpu_s: f64,
    /// `total_commands_processed`.
    pub total: u64,
    /// `cmdstat_<name>` calls.
    pub calls: BTreeMap<String, u64>,
    /// `process_id`.
    pub pid: Option<u32>,
}

/// Parses the text of `INFO server stats cpu replication commandstats` (any subset).
pub fn parse_node_info(text: &str) -> NodeInfo {
    let mut out = NodeInfo::default();
    let (mut sys, mut user) = (0.0, 0.0);
    for line in text.lines() {
        let Some((key, value)) = line.trim_end().split_once(':') else {
            continue;
        };
        match key {
            "role" => out.role = value.to_owned(),
            "used_cpu_sys" => sys = value.parse().unwrap_or(0.0),
            "used_cpu_user" => user = value.parse().unwrap_or(0.0),
            "total_commands_processed" => out.total = value.parse().unwrap_or(0),
            "process_id" => out.pid = value.parse().ok(),
            _ => {
                if let Some(name) = key.strip_prefix("cmdstat_")
                    && let Some(calls) = value
                        .split(',')
                        .find_map(|kv| kv.strip_prefix("calls="))
                        .and_then(|v| v.parse().ok())
                {
                    out.calls.insert(name.to_owned(), calls);
                }
            }
        }
    }
    out.cpu_s = sys + user;
    out
}

/// One node's slot ranges from a `CLUSTER NODES` line marked `myself`; empty for a replica or a
/// node outside a cluster. Importing/migrating markers (`[...]`) are skipped.
pub fn own_slots(cluster_nodes: &str) -> Vec<(u16, u16)> {
    let Some(line) = cluster_nodes
        .lines()
        .find(|l| l.split(' ').nth(2).is_some_and(|f| f.contains("myself")))
    else {
        return Vec::new();
    };
    line.split(' ')
        .skip(8)
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => s.parse().ok().map(|v| (v, v)),
        })
        .collect()
}

/// Addresses (`host:port`) of the replicas of the `myself` node in `CLUSTER NODES` text.
pub fn replicas_of_self(cluster_nodes: &str) -> Vec<String> {
    let Some(id) = cluster_nodes
        .lines()
        .find(|l| l.split(' ').nth(2).is_some_and(|f| f.contains("myself")))
        .and_then(|l| l.split(' ').next())
    else {
        return Vec::new();
    };
    cluster_nodes
        .lines()
        .filter(|l| l.split(' ').nth(3) == Some(id))
        .filter_map(|l| l.split(' ').nth(1))
        // `host:port@busport[,hostname]`
        .map(|a| a.split(['@', ',']).next().unwrap_or(a).to_owned())
        .collect()
}

/// Open connections to every node measured.
pub struct RedisNodes {
    nodes: Vec<(String, redis::aio::MultiplexedConnection)>,
}

/// All nodes' `INFO` at one moment.
#[derive(Clone)]
pub struct Sample(Vec<NodeInfo>);

/// The INFO sections every sample asks for.
const SECTIONS: [&str; 5] = ["server", "stats", "cpu", "replication", "commandstats"];

/// Opens a plain connection to one node (`redis://` on loopback only).
pub async fn connect_node(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    ensure!(
        parse_url(url)?.scheme == "redis",
        "Redis URLs must be redis:// ({url})"
    );
    let client = redis::Client::open(url)?;
    // redis-rs gives up on a reply after 500 ms by default; a generator whose threads are busy
    // (a saturate step that overloads it) may read a reply later than that, and a sample that
    // fails loses the run's figures. INFO has its own 5-s deadline below.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    .with_context(|| format!("connecting to {url} timed out"))?
    .with_context(|| format!("connecting to {url}"))
}

impl RedisNodes {
    /// Connects to each URL (`redis://host:port`, loopback only).
    pub async fn connect(urls: &[String]) -> anyhow::Result<Self> {
        let mut nodes = Vec::with_capacity(urls.len());
        for url in urls {
            let con = connect_node(url).await?;
            let addr = parse_url(url).map(|u| u.host.clone())?;
            nodes.push((addr, con));
        }
        Ok(Self { nodes })
    }

    /// The nodes named by the options: every `--redis-cluster` node, else `--redis-url` if
    /// given; `None` when neither is.
    pub async fn from_opts(
        cluster: &[String],
        single: Option<&String>,
    ) -> anyhow::Result<Option<Self>> {
        if !cluster.is_empty() {
            return Ok(Some(Self::connect(cluster).await?));
        }
        match single {
            Some(u) => Ok(Some(Self::connect(std::slice::from_ref(u)).await?)),
            None => Ok(None),
        }
    }

    /// Every node's `INFO` now (a node that does not answer is an error: the window would lie).
    pub async fn sample(&mut self) -> anyhow::Result<Sample> {
        let mut out = Vec::with_capacity(self.nodes.len());
        for (addr, con) in &mut self.nodes {
            let mut cmd = redis::cmd("INFO");
            for s in SECTIONS {
                cmd.arg(s);
            }
            let text: String = tokio::time::timeout(Duration::from_secs(5), cmd.query_async(con))
                .await
                .with_context(|| format!("INFO on {addr} timed out"))?
                .with_context(|| format!("INFO on {addr}"))?;
            out.push(parse_node_info(&text));
        }
        Ok(Sample(out))
    }

    /// Like [`RedisNodes::sample`], but a node that has gone (killed on purpose) keeps its
    /// previous figures instead of failing the run.
    pub async fn sample_lenient(&mut self, previous: &Sample) -> Sample {
        let mut out = Vec::with_capacity(self.nodes.len());
        for (i, (_, con)) in self.nodes.iter_mut().enumerate() {
            let mut cmd = redis::cmd("INFO");
            for s in SECTIONS {
                cmd.arg(s);
            }
            let got: Option<String> =
                tokio::time::timeout(Duration::from_secs(2), cmd.query_async(con))
                    .await
                    .ok()
                    .and_then(Result::ok);
            out.push(match got {
                Some(text) => parse_node_info(&text),
                None => previous.0.get(i).cloned().unwrap_or_default(),
            });
        }
        Sample(out)
    }

    /// The differences between two samples of these nodes over a window of `window_s`.
    pub fn deltas(&self, before: &Sample, after: &Sample, window_s: f64) -> Deltas {
        deltas(
            self.nodes.iter().map(|(a, _)| a.as_str()),
            before,
            after,
            window_s,
        )
    }
}

/// The differences between two samples, per node and summed by role.
#[derive(Debug, Default)]
pub struct Deltas {
    /// Per node: address, role, CPU seconds, commands.
    pub nodes: Vec<(String, String, f64, u64)>,
    /// CPU seconds summed over primaries / replicas.
    pub cpu_primaries: f64,
    /// See `cpu_primaries`.
    pub cpu_replicas: f64,
    /// Commands summed over primaries (what clients sent) / replicas (the replication stream).
    pub commands_primaries: u64,
    /// See `commands_primaries`.
    pub commands_replicas: u64,
    /// Calls per command, primaries only.
    pub calls_primaries: BTreeMap<String, u64>,
    /// Measurement window, seconds.
    pub window_s: f64,
}

/// Computes [`Deltas`] between two samples of the same nodes (roles from `after`; a node that
/// changed role during the window counts where it ended).
pub fn deltas<'a>(
    addrs: impl Iterator<Item = &'a str>,
    before: &Sample,
    after: &Sample,
    window_s: f64,
) -> Deltas {
    let mut d = Deltas {
        window_s,
        ..Deltas::default()
    };
    for ((addr, b), a) in addrs.zip(&before.0).zip(&after.0) {
        let cpu = (a.cpu_s - b.cpu_s).max(0.0);
        // The first INFO is counted by the second; the second does not count itself.
        let commands = a.total.saturating_sub(b.total).saturating_sub(1);
        let primary = a.role == "master";
        if primary {
            d.cpu_primaries += cpu;
            d.commands_primaries += commands;
            for (name, n) in &a.calls {
                let mut delta = n.saturating_sub(b.calls.get(name).copied().unwrap_or(0));
                if name == "info" {
                    delta = delta.saturating_sub(1);
                }
                if delta > 0 {
                    *d.calls_primaries.entry(name.clone()).or_default() += delta;
                }
            }
        } else {
            d.cpu_replicas += cpu;
            d.commands_replicas += commands;
        }
        d.nodes
            .push((addr.to_owned(), a.role.clone(), cpu, commands));
    }
    d
}

impl Deltas {
    /// Writes the fields (see the README's Redis Cluster section).
    pub fn write(&self, r: &mut Report) {
        let w = self.window_s.max(1e-9);
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .map(|(addr, role, cpu, commands)| {
                json!({
                    "addr": addr,
                    "role": role,
                    "cpu_s": crate::report::round3(*cpu),
                    "cpu_cores": crate::report::round3(cpu / w),
                    "commands": commands,
                })
            })
            .collect();
        r.set("redis_nodes", Value::Array(nodes));
        r.set("redis_cpu_cores_primaries", self.cpu_primaries / w);
        r.set("redis_cpu_cores_replicas", self.cpu_replicas / w);
        r.set("redis_commands_primaries", self.commands_primaries);
        r.set("redis_commands_replicas", self.commands_replicas);
        let calls: Map<String, Value> = self
            .calls_primaries
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        r.set("redis_command_calls", Value::Object(calls));
        r.set("redis_window_s", self.window_s);
    }

    /// CPU µs per unit (publish, resumed client) on primaries and on replicas.
    pub fn per_unit(&self, r: &mut Report, unit: &str, n: u64) {
        if n == 0 {
            return;
        }
        r.set(
            &format!("redis_cpu_us_per_{unit}_primaries"),
            self.cpu_primaries * 1e6 / n as f64,
        );
        r.set(
            &format!("redis_cpu_us_per_{unit}_replicas"),
            self.cpu_replicas * 1e6 / n as f64,
        );
        r.set(
            &format!("redis_commands_per_{unit}"),
            self.commands_primaries as f64 / n as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Server\r\nredis_version:7.0.15\r\nprocess_id:4242\r\n\r\n# Stats\r\n\
        total_commands_processed:1000\r\n\r\n# CPU\r\nused_cpu_sys:1.500000\r\n\
        used_cpu_user:2.250000\r\nused_cpu_sys_children:9.0\r\n\r\n# Replication\r\n\
        role:master\r\nconnected_slaves:1\r\n\r\n# Commandstats\r\n\
        cmdstat_fcall:calls=40,usec=900,usec_per_call=22.50,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_info:calls=3,usec=1\r\n";

    #[test]
    fn info_fields() {
        let i = parse_node_info(INFO);
        assert_eq!(i.role, "master");
        assert!((i.cpu_s - 3.75).abs() < 1e-9, "children's CPU is not ours");
        assert_eq!(i.total, 1000);
        assert_eq!(i.pid, Some(4242));
        assert_eq!(i.calls.get("fcall"), Some(&40));
        assert_eq!(i.calls.get("info"), Some(&3));
    }

    #[test]
    fn deltas_by_role_without_our_own_info() {
        let b = Sample(vec![
            parse_node_info(INFO),
            parse_node_info("role:slave\r\nused_cpu_sys:1\r\ntotal_commands_processed:10\r\n"),
        ]);
        let a = Sample(vec![
            parse_node_info(
                &INFO
                    .replace("processed:1000", "processed:1101")
                    .replace("used_cpu_user:2.25", "used_cpu_user:3.25")
                    .replace("calls=40", "calls=140")
                    .replace("calls=3,", "calls=4,"),
            ),
            parse_node_info("role:slave\r\nused_cpu_sys:1.5\r\ntotal_commands_processed:111\r\n"),
        ]);
        let d = deltas(["p:1", "r:2"].into_iter(), &b, &a, 2.0);
        assert_eq!((d.commands_primaries, d.commands_replicas), (100, 100));
        assert!((d.cpu_primaries - 1.0).abs() < 1e-9);
        assert!((d.cpu_replicas - 0.5).abs() < 1e-9);
        assert_eq!(d.calls_primaries.get("fcall"), Some(&100));
        assert_eq!(
            d.calls_primaries.get("info"),
            None,
            "our INFO is not counted"
        );
        let mut r = Report::new("t");
        d.per_unit(&mut r, "publish", 100);
        assert_eq!(
            r.fields.get("redis_commands_per_publish"),
            Some(&json!(1.0))
        );
    }

    const NODES: &str = "aaa 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 6000 [7000->-bbb]\n\
        bbb 127.0.0.1:7001@17001 master - 0 1 2 connected 5461-10922\n\
        ccc 127.0.0.1:7003@17003,host slave aaa 0 1 1 connected\n\
        ddd 127.0.0.1:7004@17004 slave bbb 0 1 2 connected\n";

    #[test]
    fn cluster_nodes_lines() {
        assert_eq!(own_slots(NODES), vec![(0, 5460), (6000, 6000)]);
        assert_eq!(replicas_of_self(NODES), vec!["127.0.0.1:7003".to_owned()]);
        assert!(own_slots("").is_empty());
        let replica = "ccc 127.0.0.1:7003@17003 myself,slave aaa 0 1 1 connected\n";
        assert!(own_slots(replica).is_empty());
    }
}
