//! `scripts/topology.sh` end to end: Redis, two gateways and a real load balancer as local
//! processes; streams and a publish through the balancer; then SIGTERM, after which no process
//! the script started (nor anything in their process groups) and none of its files remain.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

/// How long the script may take to print `ready` (a sentinel quorum alone takes a few seconds).
const START: Duration = Duration::from_secs(30);
/// How long it may take to stop: above the gateways' 3 s drain.
const STOP: Duration = Duration::from_secs(20);

/// The running script and what it printed up to `ready`.
struct Topology {
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
    url: String,
    gateways: Vec<String>,
    pids: Vec<u32>,
    dir: PathBuf,
}

impl Topology {
    /// Starts the script; again (up to three times) when a port it chose was taken before its
    /// server bound it (other tests pick free ports at the same time).
    fn start(args: &[&str]) -> Self {
        for _ in 0..2 {
            match Self::try_start(args) {
                Ok(topology) => return topology,
                Err(e) if e.contains("Address already in use") => {
                    eprintln!("topology.sh {args:?}: a port was taken meanwhile; again");
                }
                Err(e) => panic!("{e}"),
            }
        }
        Self::try_start(args).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start(args: &[&str]) -> Result<Self, String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/topology.sh");
        let mut cmd = Command::new(&script);
        cmd.args(args)
            .env("GATEWAY_BIN", env!("CARGO_BIN_EXE_gateway"))
            .env("TOPOLOGY_TIMEOUT", "20")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Only the script's own settings reach the gateways.
        for (key, _) in std::env::vars() {
            if key.starts_with("GATEWAY__") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd.spawn().expect("run scripts/topology.sh");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        // Lines arrive on a thread so the wait for `ready` can time out; the thread keeps reading
        // until the script exits, so its stdout never fills or breaks.
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut topology = Self {
            child: Some(child),
            stderr,
            url: String::new(),
            gateways: Vec::new(),
            pids: Vec::new(),
            dir: PathBuf::new(),
        };
        let deadline = Instant::now() + START;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(wait) {
                Ok(line) => line,
                Err(e) => {
                    return Err(format!(
                        "topology.sh {args:?}: no `ready` ({e}); stderr:\n{}",
                        topology.stderr()
                    ));
                }
            };
            if line == "ready" {
                break;
            }
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not key=value: {line:?}"));
            match key {
                "url" => topology.url = value.to_owned(),
                "gateway" => topology.gateways.push(value.to_owned()),
                "pid" => topology.pids.push(value.parse().expect("pid")),
                "dir" => topology.dir = PathBuf::from(value),
                "redis" | "sentinel" | "sentinel_master" => {}
                _ => panic!("unexpected line {line:?}"),
            }
        }
        assert!(!topology.url.is_empty(), "no url= line");
        assert!(topology.dir.is_dir(), "dir= is not a directory");
        Ok(topology)
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGTERM to the script; its exit status once it has stopped everything, or `None` if it
    /// had not stopped within [`STOP`] (then it is killed).
    fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        signal("TERM", child.id());
        let deadline = Instant::now() + STOP;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Topology {
    /// A failed test still stops everything: the script's own cleanup does it.
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(name: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// Processes that are `pids` or in one of their process groups (every process the script
/// starts leads its own group, so nginx workers count too).
fn survivors(pids: &[u32]) -> Vec<String> {
    let wanted: HashSet<u32> = pids.iter().copied().collect();
    let mut left = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        let Some((comm, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let pgrp: u32 = rest
            .split_whitespace()
            .nth(2)
            .and_then(|g| g.parse().ok())
            .unwrap_or(0);
        if wanted.contains(&pid) || wanted.contains(&pgrp) {
            left.push(format!("{comm})"));
        }
    }
    left
}

/// Streams through the balancer land on every gateway (no stickiness), one publish
/// through it reaches every stream, and SIGTERM leaves nothing behind.
async fn exercise(args: &[&str]) {
    let mut topology = Topology::start(args);
    assert_eq!(topology.gateways.len(), 2, "{args:?}");
    let channel = unique("topology");
    let sse_url = format!("{}/sse?channel={channel}", topology.url);
    // Streams until each gateway holds one: HAProxy alternates, the shipped nginx starts each
    // request at a random address of the name (deploy/README.md), so it may take a few.
    let mut streams = Vec::new();
    let held = async |gateway: &String| {
        metric(
            &metrics_text(gateway).await,
            r#"gateway_connections{transport="sse"}"#,
        ) >= 1.0
    };
    for _ in 0..20 {
        let mut sse = Sse::connect(&sse_url, None).await;
        sse.ready().await;
        streams.push(sse);
        // The gauge follows the stream's start; a moment for HAProxy's second slot too.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut on_each = true;
        for gateway in &topology.gateways {
            on_each &= held(gateway).await;
        }
        if on_each {
            break;
        }
    }
    for gateway in &topology.gateways {
        eventually("a stream on each gateway", async || held(gateway).await).await;
    }
    publish(&topology.url, &channel, "through the balancer").await;
    for sse in &mut streams {
        assert_eq!(sse.next().await.data, "through the balancer");
    }

    let status = tokio::task::block_in_place(|| topology.stop())
        .unwrap_or_else(|| panic!("topology.sh did not stop; stderr:\n{}", topology.stderr()));
    assert_eq!(
        status.code(),
        Some(143),
        "exit status after SIGTERM; stderr:\n{}",
        topology.stderr()
    );
    let left = survivors(&topology.pids);
    assert!(left.is_empty(), "still running: {left:?}");
    assert!(
        !topology.dir.exists(),
        "{} was not removed",
        topology.dir.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_redis_two_gateways_behind_haproxy() {
    exercise(&["--redis", "single", "--gateways", "2", "--lb", "haproxy"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_redis_two_gateways_behind_nginx() {
    exercise(&["--redis", "sentinel", "--gateways", "2", "--lb", "nginx"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_redis_two_gateways_behind_haproxy() {
    exercise(&["--redis", "cluster", "--gateways", "2", "--lb", "haproxy"]).await;
}
