//! Redis Cluster: the harness itself (a failover and a slot migration, no gateway), and the
//! exactness test — two gateways on a 3-primary, 3-replica cluster while a primary is SIGKILLed
//! and a slot holding a watched channel moves to another primary, with publishing throughout.
//! Every client must end with every acknowledged event exactly once and in order, or an
//! explicit gap exactly where the killed primary lost acknowledged writes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use shared::sse::SseDecoder;
use tokio::time::Instant;

use crate::common::redis_cluster::RedisCluster;
use crate::common::*;

/// Polls `f` every 50 ms until it holds; panics after `limit`.
async fn within(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads `key` through a cluster connection until it answers (a connection opened before a
/// failover or migration may fail a few times while it finds the new owner).
async fn get_eventually(conn: &mut redis::cluster_async::ClusterConnection, key: &str) -> String {
    let mut last = String::new();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match redis::cmd("GET")
            .arg(key)
            .query_async::<Option<String>>(conn)
            .await
        {
            Ok(Some(v)) => return v,
            Ok(None) => panic!("{key} is gone"),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("GET {key} never succeeded: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_harness_fails_over_and_migrates_a_slot() {
    let mut cluster = RedisCluster::start(3, 1);
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3);
    assert_eq!(cluster.alive().len(), 6);
    for p in &primaries {
        assert_eq!(cluster.replicas_of(*p).len(), 1, "replicas of {p}");
    }
    assert_eq!(cluster.seeds().split(',').count(), 6);

    // One hash tag per primary; keys sharing a tag share a slot.
    let layout = cluster.layout();
    let mut tags: BTreeMap<u16, String> = BTreeMap::new();
    for i in 0.. {
        if tags.len() == primaries.len() {
            break;
        }
        let tag = format!("t{i}");
        let owner = layout
            .owner(cluster.keyslot(&format!("smoke{{{tag}}}:a")))
            .expect("served");
        tags.entry(owner).or_insert(tag);
    }
    let mut conn = cluster.conn().await;
    // Opened before the changes and never retrying: it must still find the moved slots.
    let mut once = cluster.conn_once().await;
    for (port, tag) in &tags {
        let (a, b) = (format!("smoke{{{tag}}}:a"), format!("smoke{{{tag}}}:b"));
        assert_eq!(cluster.keyslot(&a), cluster.keyslot(&b));
        let () = redis::cmd("SET")
            .arg(&a)
            .arg(format!("value-{tag}"))
            .query_async(&mut conn)
            .await
            .expect("SET through the cluster");
        let () = redis::cmd("SET")
            .arg(&b)
            .arg(format!("other-{tag}"))
            .query_async(&mut once)
            .await
            .expect("SET through the cluster, once");
        // Routed to the owner: the key is on that node itself.
        assert_eq!(
            cluster.query::<String>(*port, redis::cmd("GET").arg(&a)),
            Some(format!("value-{tag}"))
        );
    }
    cluster.wait_replicated();

    // Failover: SIGKILL the primary of the first tag; its replica takes over with the key.
    let (&victim, victim_tag) = tags.iter().next().expect("a tag");
    let victim_key = format!("smoke{{{victim_tag}}}:a");
    let replica = cluster.replicas_of(victim)[0];
    let started = Instant::now();
    cluster.kill(victim);
    assert!(!cluster.alive().contains(&victim));
    assert!(std::net::TcpStream::connect(("127.0.0.1", victim)).is_err());
    let promoted = cluster.wait_failover(victim);
    let failover = started.elapsed();
    assert_eq!(promoted, replica, "the killed primary's replica took over");
    assert_eq!(cluster.primary_for(&victim_key), promoted);
    assert_eq!(cluster.primaries().len(), 3);
    assert!(cluster.replicas_of(promoted).is_empty());
    assert_eq!(
        get_eventually(&mut conn, &victim_key).await,
        format!("value-{victim_tag}")
    );

    // Migration: the slot of a key on a surviving primary moves to the promoted one.
    let (&source, moved_tag) = tags.iter().nth(1).expect("a second tag");
    let moved_key = format!("smoke{{{moved_tag}}}:a");
    let slot = cluster.keyslot(&moved_key);
    let neighbour = if slot > 0 { slot - 1 } else { slot + 1 };
    let neighbour_owner = cluster.primary_for_slot(neighbour);
    let started = Instant::now();
    cluster.migrate_slot(slot, promoted);
    let migration = started.elapsed();
    assert_eq!(cluster.primary_for_slot(slot), promoted);
    assert_eq!(cluster.primary_for_slot(neighbour), neighbour_owner);
    assert_eq!(
        cluster.query::<String>(promoted, redis::cmd("GET").arg(&moved_key)),
        Some(format!("value-{moved_tag}")),
        "the key moved with its slot"
    );
    let refused = cluster.query_result::<Option<String>>(source, redis::cmd("GET").arg(&moved_key));
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_uppercase().contains("MOVED")),
        "the old owner redirects: {refused:?}"
    );
    assert_eq!(
        get_eventually(&mut conn, &moved_key).await,
        format!("value-{moved_tag}")
    );
    let moved_b = format!("smoke{{{moved_tag}}}:b");
    let victim_b = format!("smoke{{{victim_tag}}}:b");
    assert_eq!(
        get_eventually(&mut conn, &moved_b).await,
        format!("other-{moved_tag}")
    );

    // The connection that sends each command once reaches both new owners after at most a
    // few failed attempts (each failure refreshes its slot map).
    for key in [&victim_b, &moved_b] {
        let mut errors = Vec::new();
        within(
            WAIT,
            &format!("a one-shot write to {key}"),
            async || match redis::cmd("SET")
                .arg(key)
                .arg("rewritten")
                .query_async::<()>(&mut once)
                .await
            {
                Ok(()) => true,
                Err(e) => {
                    errors.push(e.to_string());
                    false
                }
            },
        )
        .await;
        eprintln!(
            "one-shot write to {key}: {} failed attempts first {errors:?}",
            errors.len()
        );
        assert_eq!(get_eventually(&mut conn, key).await, "rewritten");
    }
    eprintln!("outcome cluster harness: failover {failover:?}, slot migration {migration:?}");
}

// ---------------------------------------------------------------------------------------------
// The exactness test.

/// Channels watched by every WebSocket client.
const CHANNELS: usize = 100;
/// Each channel gets one publish attempt per this interval (100 channels: 200 attempts/s).
const PUBLISH_EVERY: Duration = Duration::from_millis(500);
/// SSE clients per gateway.
const SSE_CLIENTS: usize = 3;
/// Channels per SSE client (`/sse?channel=a&channel=b...`, within `limits.max_channels`).
const SSE_CHANNELS: usize = 6;
/// Subscribe errors a client retries on the same connection (as `client.js` does).
const TRANSIENT: [&str; 4] = ["unavailable", "shutting_down", "rate_limited", "closed"];

/// One publish attempt, in the order the channel's publisher made them (each attempt starts
/// after the previous one of its channel ended, so acknowledged events are in store order).
#[derive(Debug, Clone)]
struct Attempt {
    /// Unique payload, `<channel>:<n>` (`<channel>:end<n>` for the final markers).
    data: String,
    /// The publish was acknowledged with an id. Otherwise the outcome is unknown: the event
    /// may or may not be stored, and a client may receive it zero times or once.
    acked: bool,
    /// When the attempt started: only attempts started before the kill can have been
    /// acknowledged by the killed primary.
    started: Instant,
}

/// What a client received on one channel, in arrival order.
#[derive(Debug, Clone)]
enum Item {
    /// An event, by its payload.
    Event { data: String },
    /// A gap notice, and when the client got it.
    Gap {
        first_available: String,
        at: Instant,
    },
}

/// Everything one client received.
#[derive(Debug, Default)]
struct Record {
    /// Per channel, in arrival order.
    items: HashMap<String, Vec<Item>>,
    /// WebSocket: channels with a `subscribed` reply; SSE: all of them once the prelude came.
    subscribed: HashSet<String>,
    /// Connections opened after the first.
    reconnects: usize,
    /// Error messages and close frames, for failure reports.
    notes: Vec<String>,
    /// SSE: the last `Last-Event-ID` the client would send.
    cursor: String,
}

/// A client's record, written by its task and read by the test.
type Shared = Arc<Mutex<Record>>;

/// Locks a record (a panicked client task leaves it readable).
fn lock(record: &Shared) -> std::sync::MutexGuard<'_, Record> {
    record.lock().unwrap_or_else(|e| e.into_inner())
}

/// A client under test: where it is connected, what it watches, what it got.
struct Client {
    name: String,
    channels: Vec<String>,
    record: Shared,
    task: tokio::task::JoinHandle<()>,
}

/// One WebSocket connection (reconnecting like `client.js`) subscribed to `channels`: on every
/// connection each channel is subscribed with `since` = the last id seen (or the position the
/// first `subscribed` reported), transient subscribe errors are retried.
async fn run_ws(url: String, channels: Vec<String>, record: Shared, stop: Arc<AtomicBool>) {
    let mut positions: HashMap<String, String> = HashMap::new();
    let mut first = true;
    let subscribe = |channel: &str, positions: &HashMap<String, String>| {
        let mut cmd = serde_json::json!({"type": "subscribe", "channel": channel, "req": channel});
        if let Some(since) = positions.get(channel) {
            cmd["since"] = since.clone().into();
        }
        cmd
    };
    while !stop.load(Ordering::Relaxed) {
        if !first {
            lock(&record).reconnects += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        first = false;
        let mut ws = match Ws::try_connect(&url, &[]).await {
            Ok(ws) => ws,
            Err(e) => {
                lock(&record).notes.push(format!("connect: {e}"));
                continue;
            }
        };
        for channel in &channels {
            ws.send(subscribe(channel, &positions)).await;
        }
        while !stop.load(Ordering::Relaxed) {
            let v = match ws.recv_within(Duration::from_millis(200)).await {
                None => continue,
                Some(WsItem::Json(v)) => v,
                Some(WsItem::Binary(_)) => {
                    lock(&record).notes.push("unexpected binary frame".into());
                    continue;
                }
                Some(WsItem::Closed(frame)) => {
                    lock(&record).notes.push(format!("closed: {frame:?}"));
                    break;
                }
            };
            let channel = v["channel"].as_str().unwrap_or_default().to_owned();
            match v["type"].as_str() {
                Some("event") => {
                    let data = v["data"]
                        .as_str()
                        .map_or_else(|| v["data"].to_string(), str::to_owned);
                    if let Some(id) = v["id"].as_str() {
                        positions.insert(channel.clone(), id.to_owned());
                    }
                    lock(&record)
                        .items
                        .entry(channel)
                        .or_default()
                        .push(Item::Event { data });
                }
                Some("gap") => {
                    let first_available = v["first_available"].as_str().unwrap_or("").to_owned();
                    lock(&record)
                        .items
                        .entry(channel)
                        .or_default()
                        .push(Item::Gap {
                            first_available,
                            at: Instant::now(),
                        });
                }
                Some("subscribed") => {
                    if let Some(position) = v["position"].as_str() {
                        positions.insert(channel.clone(), position.to_owned());
                    }
                    lock(&record).subscribed.insert(channel);
                }
                Some("error") => {
                    lock(&record).notes.push(format!("error: {v}"));
                    let code = v["code"].as_str().unwrap_or_default();
                    let target = v["req"].as_str().unwrap_or(&channel).to_owned();
                    if TRANSIENT.contains(&code) && channels.contains(&target) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        ws.send(subscribe(&target, &positions)).await;
                    }
                }
                _ => {}
            }
        }
    }
}

/// One SSE stream on `channels` (reconnecting like `EventSource`, with `Last-Event-ID`).
async fn run_sse(base: String, channels: Vec<String>, record: Shared, stop: Arc<AtomicBool>) {
    let query: Vec<String> = channels.iter().map(|c| format!("channel={c}")).collect();
    let url = format!("{base}/sse?{}", query.join("&"));
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let mut last_id = String::new();
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        if !first {
            lock(&record).reconnects += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        first = false;
        let mut req = client.get(&url);
        if !last_id.is_empty() {
            req = req.header("Last-Event-ID", &last_id);
        }
        let res = match req.send().await {
            Ok(res) if res.status() == 200 => res,
            Ok(res) => {
                let status = res.status();
                let body = res.text().await.unwrap_or_default();
                lock(&record)
                    .notes
                    .push(format!("connect: {status} {body}"));
                continue;
            }
            Err(e) => {
                lock(&record).notes.push(format!("connect: {e}"));
                continue;
            }
        };
        let mut stream = res.bytes_stream();
        let mut decoder = SseDecoder::new();
        while !stop.load(Ordering::Relaxed) {
            let chunk = match tokio::time::timeout(Duration::from_millis(200), stream.next()).await
            {
                Err(_) => continue,
                Ok(Some(Ok(chunk))) => chunk,
                Ok(other) => {
                    lock(&record)
                        .notes
                        .push(format!("stream ended: {:?}", other.map(|r| r.err())));
                    break;
                }
            };
            decoder.feed(&chunk);
            let mut rec = lock(&record);
            while let Some(e) = decoder.next_event() {
                if e.event == "gap" {
                    let body: serde_json::Value = serde_json::from_str(&e.data).unwrap_or_default();
                    let channel = body["channel"].as_str().unwrap_or_default().to_owned();
                    let first_available = body["first_available"].as_str().unwrap_or("").to_owned();
                    rec.items.entry(channel).or_default().push(Item::Gap {
                        first_available,
                        at: Instant::now(),
                    });
                } else {
                    // The payload names its channel: `<channel>:<n>`.
                    let channel = e.data.split_once(':').map_or("", |(c, _)| c).to_owned();
                    rec.items
                        .entry(channel)
                        .or_default()
                        .push(Item::Event { data: e.data });
                }
            }
            if decoder.retry().is_some() {
                rec.subscribed.extend(channels.iter().cloned());
            }
            if !decoder.last_event_id().is_empty() {
                last_id = decoder.last_event_id().to_owned();
                rec.cursor = last_id.clone();
            }
        }
    }
}

/// One `FCALL gw_publish` on `conn` (a cluster connection routes it by its first key); `true`
/// when it returned an id within 3 s.
async fn fcall(
    conn: &mut impl redis::aio::ConnectionLike,
    prefix: &str,
    channel: &str,
    data: &str,
) -> bool {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg("gw_publish")
        .arg(2)
        .arg(format!("{prefix}{{{channel}}}:stream"))
        .arg(format!("{prefix}{{{channel}}}:meta"))
        .arg(data);
    let call = cmd.query_async::<String>(conn);
    matches!(
        tokio::time::timeout(Duration::from_secs(3), call).await,
        Ok(Ok(id)) if id.contains(':')
    )
}

/// One `POST /publish`; `true` when it answered 200 with an id.
async fn http_publish(http: &reqwest::Client, base: &str, channel: &str, data: &str) -> bool {
    let Ok(res) = http
        .post(format!("{base}/publish"))
        .json(&serde_json::json!({ "channel": channel, "data": data }))
        .send()
        .await
    else {
        return false;
    };
    if res.status() != 200 {
        return false;
    }
    res.json::<serde_json::Value>()
        .await
        .is_ok_and(|b| b["id"].as_str().is_some_and(|id| id.contains(':')))
}

/// Publishes to `channel` every [`PUBLISH_EVERY`] until `stop`: even attempts by `FCALL` on the
/// cluster, odd ones by `POST /publish` on the gateways in turn. A failed attempt is never
/// repeated: the next one has a new payload.
async fn publish_channel(
    channel: String,
    prefix: String,
    mut conn: impl redis::aio::ConnectionLike,
    bases: Vec<String>,
    stop: Arc<AtomicBool>,
) -> Vec<Attempt> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    let mut attempts = Vec::new();
    tokio::time::sleep(Duration::from_millis(fastrand::u64(..500))).await;
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let data = format!("{channel}:{n}");
        let started = Instant::now();
        let acked = if n.is_multiple_of(2) {
            fcall(&mut conn, &prefix, &channel, &data).await
        } else {
            http_publish(&http, &bases[(n / 2) % bases.len()], &channel, &data).await
        };
        attempts.push(Attempt {
            data,
            acked,
            started,
        });
        n += 1;
    }
    attempts
}

/// A channel's history as the store holds it at the end: payloads (field `d`) in stream order.
async fn stored(
    conn: &mut impl redis::aio::ConnectionLike,
    prefix: &str,
    channel: &str,
) -> Vec<String> {
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(format!("{prefix}{{{channel}}}:stream"))
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .expect("XRANGE on the cluster");
    entries
        .into_iter()
        .filter_map(|(_, fields)| {
            fields
                .chunks(2)
                .find(|kv| kv[0] == "d")
                .and_then(|kv| kv.get(1).cloned())
        })
        .collect()
}

/// What the checks counted over every client and channel.
#[derive(Debug, Default)]
struct Tally {
    delivered: usize,
    duplicated: usize,
    gaps: usize,
    /// Acknowledged events a client did not get, each covered by a gap it got.
    lost_acked: usize,
}

/// The facts one client's channel is checked against.
struct Truth<'a> {
    attempts: &'a [Attempt],
    /// The channel's history in the store at the end (payloads in order).
    store: &'a [String],
    /// The channel lived on the killed primary.
    on_killed: bool,
    killed_at: Instant,
    /// The payload of the channel's last acknowledged event (a final marker).
    last: &'a str,
}

/// Checks one client's events on one channel; pushes every violation to `failures`.
fn check_channel(
    who: &str,
    items: &[Item],
    truth: &Truth<'_>,
    tally: &mut Tally,
    failures: &mut Vec<String>,
) {
    let attempt_of: HashMap<&str, usize> = truth
        .attempts
        .iter()
        .enumerate()
        .map(|(i, a)| (a.data.as_str(), i))
        .collect();
    let store_of: HashMap<&str, usize> = truth
        .store
        .iter()
        .enumerate()
        .map(|(i, d)| (d.as_str(), i))
        .collect();

    // Each received event: known, once, in publish order and in store order.
    let mut received: HashMap<usize, usize> = HashMap::new(); // attempt -> item position
    let mut last_attempt: Option<usize> = None;
    let mut last_store: Option<usize> = None;
    for (pos, item) in items.iter().enumerate() {
        match item {
            Item::Event { data } => {
                tally.delivered += 1;
                let Some(&a) = attempt_of.get(data.as_str()) else {
                    failures.push(format!("{who}: received {data:?}, never published"));
                    continue;
                };
                if received.insert(a, pos).is_some() {
                    tally.duplicated += 1;
                    failures.push(format!("{who}: received {data:?} twice"));
                    continue;
                }
                if last_attempt.is_some_and(|l| a < l) {
                    failures.push(format!("{who}: {data:?} arrived after a later event"));
                }
                last_attempt = Some(a);
                if let Some(&s) = store_of.get(data.as_str()) {
                    if last_store.is_some_and(|l| s < l) {
                        failures.push(format!("{who}: {data:?} arrived out of store order"));
                    }
                    last_store = Some(s);
                }
            }
            Item::Gap {
                first_available,
                at,
            } => {
                tally.gaps += 1;
                let wrong = if !truth.on_killed {
                    Some("on a channel whose primary was not killed")
                } else if *at < truth.killed_at {
                    Some("before the kill")
                } else {
                    None
                };
                if let Some(wrong) = wrong {
                    failures.push(format!(
                        "{who}: gap (first_available {first_available}) {wrong}: nothing was lost"
                    ));
                }
            }
        }
    }

    // Each event that must have arrived (acknowledged, or stored whatever the publisher was
    // told) did, or was lost by the killed primary and a gap sits exactly where it belonged.
    for (i, attempt) in truth.attempts.iter().enumerate() {
        let in_store = store_of.contains_key(attempt.data.as_str());
        if received.contains_key(&i) || !(attempt.acked || in_store) {
            continue;
        }
        let data = &attempt.data;
        if in_store {
            failures.push(format!("{who}: {data:?} is stored but never arrived"));
            continue;
        }
        if !truth.on_killed || attempt.started >= truth.killed_at {
            failures.push(format!(
                "{who}: acknowledged {data:?} is neither stored nor delivered, and no primary holding it was killed"
            ));
            continue;
        }
        let before = received
            .iter()
            .filter(|(a, _)| **a < i)
            .map(|(_, p)| *p)
            .max();
        let after = received
            .iter()
            .filter(|(a, _)| **a > i)
            .map(|(_, p)| *p)
            .min()
            .unwrap_or(items.len());
        let start = before.map_or(0, |p| p + 1);
        let covered = items
            .get(start..after)
            .is_some_and(|between| between.iter().any(|it| matches!(it, Item::Gap { .. })));
        if covered {
            tally.lost_acked += 1;
        } else {
            failures.push(format!(
                "{who}: acknowledged {data:?} was lost with the killed primary but no gap marks the spot"
            ));
        }
    }

    if !items
        .iter()
        .any(|it| matches!(it, Item::Event { data } if data == truth.last))
    {
        failures.push(format!(
            "{who}: never received the final event {:?} (went silent; {} items)",
            truth.last,
            items.len()
        ));
    }
}

/// The check itself, on made-up histories: it accepts exactly-once delivery and a gap that
/// marks events the killed primary lost, and catches everything else.
#[test]
fn the_exactness_check_catches_loss_repeats_reordering_and_misplaced_gaps() {
    let t0 = Instant::now();
    let killed_at = t0 + Duration::from_secs(1);
    let after_kill = t0 + Duration::from_secs(2);
    // c:0..c:2 before the kill; c:3 acknowledged by the killed primary and lost from the store;
    // c:4 unknown outcome, never stored; c:5 and the final marker after the failover.
    let attempt = |data: &str, acked: bool, started: Instant| Attempt {
        data: data.into(),
        acked,
        started,
    };
    let attempts = vec![
        attempt("c:0", true, t0),
        attempt("c:1", true, t0),
        attempt("c:2", true, t0),
        attempt("c:3", true, t0),
        attempt("c:4", false, t0),
        attempt("c:5", true, after_kill),
        attempt("c:end0", true, after_kill),
    ];
    let store: Vec<String> = ["c:0", "c:1", "c:2", "c:5", "c:end0"]
        .map(String::from)
        .to_vec();
    let ev = |d: &str| Item::Event { data: d.into() };
    let gap = |at: Instant| Item::Gap {
        first_available: "e:4".into(),
        at,
    };
    let run = |items: Vec<Item>, on_killed: bool| {
        let truth = Truth {
            attempts: &attempts,
            store: &store,
            on_killed,
            killed_at,
            last: "c:end0",
        };
        let (mut tally, mut failures) = (Tally::default(), Vec::new());
        check_channel("client", &items, &truth, &mut tally, &mut failures);
        (tally, failures)
    };
    let all = || vec![ev("c:0"), ev("c:1"), ev("c:2"), ev("c:5"), ev("c:end0")];

    // Everything stored, once, in order (the lost c:3 was never seen): fine only with a gap.
    let (_, f) = run(all(), true);
    assert!(
        f.iter().any(|f| f.contains("no gap marks the spot")),
        "{f:?}"
    );
    let mut with_gap = all();
    with_gap.insert(3, gap(after_kill));
    let (tally, f) = run(with_gap.clone(), true);
    assert!(f.is_empty(), "{f:?}");
    assert_eq!((tally.delivered, tally.gaps, tally.lost_acked), (5, 1, 1));
    // The lost event seen live before the gap, and the unknown one too: also fine.
    let mut seen_live = all();
    seen_live.splice(3..3, [ev("c:3"), ev("c:4"), gap(after_kill)]);
    let (tally, f) = run(seen_live, true);
    assert!(f.is_empty(), "{f:?}");
    assert_eq!(tally.lost_acked, 0);

    // A gap in the wrong place, before the kill, or on a channel nothing was lost on.
    let mut misplaced = all();
    misplaced.insert(1, gap(after_kill));
    let (_, f) = run(misplaced, true);
    assert!(
        f.iter().any(|f| f.contains("no gap marks the spot")),
        "{f:?}"
    );
    let mut early = all();
    early.insert(3, gap(t0));
    let (_, f) = run(early, true);
    assert!(f.iter().any(|f| f.contains("before the kill")), "{f:?}");
    let (_, f) = run(with_gap.clone(), false);
    assert!(
        f.iter().any(|f| f.contains("whose primary was not killed")),
        "{f:?}"
    );

    // A stored event missing, even with a gap; a repeat; a reordering; silence; a stranger.
    let mut skipped = with_gap.clone();
    skipped.remove(1);
    let (_, f) = run(skipped, true);
    assert!(
        f.iter()
            .any(|f| f.contains("\"c:1\" is stored but never arrived")),
        "{f:?}"
    );
    let mut twice = with_gap.clone();
    twice.insert(2, ev("c:1"));
    let (tally, f) = run(twice, true);
    assert!(f.iter().any(|f| f.contains("twice")), "{f:?}");
    assert_eq!(tally.duplicated, 1);
    let mut swapped = with_gap.clone();
    swapped.swap(0, 1);
    let (_, f) = run(swapped, true);
    assert!(f.iter().any(|f| f.contains("after a later event")), "{f:?}");
    let mut silent = with_gap.clone();
    silent.pop();
    let (_, f) = run(silent, true);
    assert!(f.iter().any(|f| f.contains("went silent")), "{f:?}");
    let mut stranger = with_gap;
    stranger.push(ev("c:99"));
    let (_, f) = run(stranger, true);
    assert!(f.iter().any(|f| f.contains("never published")), "{f:?}");
}

/// Starts the clients: per gateway one WebSocket on every channel, and [`SSE_CLIENTS`] SSE
/// streams on [`SSE_CHANNELS`] consecutive channels each (`channels[0..6]` on the first).
fn spawn_clients(gateways: &[Gateway], channels: &[String], stop: &Arc<AtomicBool>) -> Vec<Client> {
    let mut clients = Vec::new();
    for (g, gw) in gateways.iter().enumerate() {
        let record = Shared::default();
        clients.push(Client {
            name: format!("ws@gw{g}"),
            channels: channels.to_vec(),
            record: record.clone(),
            task: tokio::spawn(run_ws(
                ws_url(gw.addr),
                channels.to_vec(),
                record,
                stop.clone(),
            )),
        });
        for k in 0..SSE_CLIENTS {
            let first = (g * SSE_CLIENTS + k) * SSE_CHANNELS;
            let set = channels[first..first + SSE_CHANNELS].to_vec();
            let record = Shared::default();
            clients.push(Client {
                name: format!("sse{k}@gw{g}"),
                channels: set.clone(),
                record: record.clone(),
                task: tokio::spawn(run_sse(gw.url(""), set, record, stop.clone())),
            });
        }
    }
    clients
}

/// Everything a run has when publishing stops, for [`settle_and_check`].
struct Run<'a, C> {
    gateways: &'a [Gateway],
    clients: Vec<Client>,
    stop_clients: Arc<AtomicBool>,
    channels: &'a [String],
    prefix: &'a str,
    /// Every publish attempt per channel, in order.
    attempts: HashMap<String, Vec<Attempt>>,
    /// Channels whose primary was killed, and when.
    killed: HashSet<String>,
    killed_at: Instant,
    /// The publishers' connection (commands sent once) and one for reading the store.
    publish_conn: C,
    read_conn: C,
    /// Clients must have everything by then.
    deadline: Instant,
}

/// What [`settle_and_check`] counted.
#[derive(Debug, Default)]
struct Outcome {
    clients: usize,
    acked: usize,
    unknown: usize,
    unknown_stored: usize,
    store_lost: usize,
    reconnects: usize,
    resumed: usize,
    tally: Tally,
}

/// Publishes a final acknowledged event on every channel, waits until every client has all of
/// them (or the deadline), stops the clients, reads every channel's history from the store and
/// checks every client's channels against the attempts and the store; then one SSE client
/// resumes on the other gateway from its cursor and must get exactly the events published
/// after it. Returns the counts and every violation found.
async fn settle_and_check<C>(mut run: Run<'_, C>) -> (Outcome, Vec<String>)
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    let mut failures = Vec::new();
    let mut outcome = Outcome {
        clients: run.clients.len(),
        ..Outcome::default()
    };

    // A final acknowledged event on every channel: every client must get it.
    let finals = join_all(run.channels.iter().map(|channel| {
        let (mut conn, prefix) = (run.publish_conn.clone(), run.prefix.to_owned());
        async move {
            let mut tried = Vec::new();
            for k in 0..50 {
                let data = format!("{channel}:end{k}");
                let started = Instant::now();
                let acked = fcall(&mut conn, &prefix, channel, &data).await;
                tried.push(Attempt {
                    data,
                    acked,
                    started,
                });
                if acked {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            tried
        }
    }))
    .await;
    let mut last: HashMap<String, String> = HashMap::new();
    for (channel, tried) in run.channels.iter().zip(finals) {
        let end = tried.last().expect("an attempt");
        assert!(end.acked, "no final event on {channel} was acknowledged");
        last.insert(channel.clone(), end.data.clone());
        run.attempts
            .get_mut(channel)
            .expect("channel")
            .extend(tried);
    }
    let all_final = || {
        run.clients.iter().all(|c| {
            let rec = lock(&c.record);
            c.channels.iter().all(|ch| {
                rec.items.get(ch).is_some_and(|items| {
                    items
                        .iter()
                        .any(|it| matches!(it, Item::Event { data } if *data == last[ch]))
                })
            })
        })
    };
    let deadline = run.deadline.max(Instant::now() + Duration::from_secs(5));
    while !all_final() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A moment more for anything that should not come (a duplicate after the final event).
    tokio::time::sleep(Duration::from_millis(500)).await;
    run.stop_clients.store(true, Ordering::Relaxed);
    for c in &mut run.clients {
        (&mut c.task).await.expect("client task");
    }

    // The store's final word on every channel.
    let mut store: HashMap<String, Vec<String>> = HashMap::new();
    for channel in run.channels {
        store.insert(
            channel.clone(),
            stored(&mut run.read_conn, run.prefix, channel).await,
        );
    }
    for channel in run.channels {
        let in_store: HashSet<&str> = store[channel].iter().map(String::as_str).collect();
        for a in &run.attempts[channel] {
            let stored = in_store.contains(a.data.as_str());
            match (a.acked, stored) {
                (true, true) => outcome.acked += 1,
                (true, false) => {
                    outcome.acked += 1;
                    outcome.store_lost += 1;
                    if !run.killed.contains(channel) || a.started >= run.killed_at {
                        failures.push(format!(
                            "acknowledged {:?} is not in the store, and no primary holding it was killed",
                            a.data
                        ));
                    }
                }
                (false, s) => {
                    outcome.unknown += 1;
                    outcome.unknown_stored += usize::from(s);
                }
            }
        }
    }

    // Every client, every channel.
    for c in &run.clients {
        let rec = lock(&c.record);
        outcome.reconnects += rec.reconnects;
        let before = failures.len();
        for channel in &c.channels {
            let truth = Truth {
                attempts: &run.attempts[channel],
                store: &store[channel],
                on_killed: run.killed.contains(channel),
                killed_at: run.killed_at,
                last: &last[channel],
            };
            let items = rec.items.get(channel).map_or(&[][..], Vec::as_slice);
            check_channel(
                &format!("{} on {channel}", c.name),
                items,
                &truth,
                &mut outcome.tally,
                &mut failures,
            );
        }
        if let Some(other) = rec.items.keys().find(|k| !c.channels.contains(k)) {
            failures.push(format!("{}: received events for {other:?}", c.name));
        }
        if failures.len() > before && !rec.notes.is_empty() {
            let notes = &rec.notes[rec.notes.len().saturating_sub(5)..];
            failures.push(format!("{} notes: {notes:?}", c.name));
        }
    }

    // The first SSE client of the first gateway resumes on the second from its cursor: exactly
    // what was published after it, no gap, nothing again.
    let resumer = &run.clients[1];
    assert_eq!(resumer.name, "sse0@gw0");
    let cursor = lock(&resumer.record).cursor.clone();
    let other = &run.gateways[1];
    let mut after: HashMap<String, Vec<String>> = HashMap::new();
    for channel in &resumer.channels {
        for i in 0..2 {
            let data = format!("{channel}:after{i}");
            publish(&other.url(""), channel, &data).await;
            after.entry(channel.clone()).or_default().push(data);
        }
    }
    let query: Vec<String> = resumer
        .channels
        .iter()
        .map(|c| format!("channel={c}"))
        .collect();
    let mut sse = Sse::connect(
        &other.url(&format!("/sse?{}", query.join("&"))),
        Some(&cursor),
    )
    .await;
    let want: usize = after.values().map(Vec::len).sum();
    let mut got: HashMap<String, Vec<String>> = HashMap::new();
    while outcome.resumed < want {
        let Some(e) = sse.next_within(WAIT).await else {
            break;
        };
        if e.event == "gap" {
            failures.push(format!("resume on the other gateway: unexpected gap {e:?}"));
            continue;
        }
        let channel = e.data.split_once(':').map_or("", |(c, _)| c).to_owned();
        got.entry(channel).or_default().push(e.data);
        outcome.resumed += 1;
    }
    if let Some(extra) = sse.next_within(Duration::from_secs(1)).await {
        failures.push(format!("resume on the other gateway: unexpected {extra:?}"));
    }
    if got != after {
        failures.push(format!(
            "resume on the other gateway from {cursor:?}: got {got:?}, want {after:?}"
        ));
    }
    (outcome, failures)
}

/// Panics with the first violations, if any.
fn assert_no_violations(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} violations:\n{}",
        failures.len(),
        failures
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Starts one publisher per channel (see [`publish_channel`]).
fn spawn_publishers<C>(
    channels: &[String],
    prefix: &str,
    conn: &C,
    bases: &[String],
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Attempt>>>
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    channels
        .iter()
        .map(|c| {
            tokio::spawn(publish_channel(
                c.clone(),
                prefix.to_owned(),
                conn.clone(),
                bases.to_vec(),
                stop.clone(),
            ))
        })
        .collect()
}

/// Stops the publishers; every channel's attempts.
async fn stop_publishers(
    channels: &[String],
    publishers: Vec<tokio::task::JoinHandle<Vec<Attempt>>>,
    stop: &AtomicBool,
) -> HashMap<String, Vec<Attempt>> {
    stop.store(true, Ordering::Relaxed);
    let mut attempts = HashMap::new();
    for (channel, task) in channels.iter().zip(publishers) {
        attempts.insert(channel.clone(), task.await.expect("publisher"));
    }
    attempts
}

/// Gateway settings of these tests (besides the Redis location and key prefix).
const GATEWAY_ENV: [(&str, &str); 4] = [
    ("GATEWAY__REDIS__TIMEOUT_SECONDS", "1"),
    // Longer than the whole test: the failover must be followed from the dead primary's
    // disconnection (redis-rs repairs and re-subscribes), not found by a probe that did not
    // come back.
    ("GATEWAY__REDIS__PROBE_SECONDS", "120"),
    // One WebSocket client watches all 100 channels and subscribes them at once.
    ("GATEWAY__LIMITS__MAX_CHANNELS", "100"),
    ("GATEWAY__WS__COMMANDS_PER_SECOND", "1000"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_failover_and_a_slot_migration_lose_and_repeat_nothing() {
    let test_started = Instant::now();
    let mut cluster = RedisCluster::start(3, 1);
    let prefix = format!("{}:", unique("cl"));
    let seeds = cluster.seeds();
    let mut env = vec![
        ("GATEWAY__REDIS__CLUSTER_NODES", seeds.as_str()),
        ("GATEWAY__REDIS__KEY_PREFIX", prefix.as_str()),
    ];
    env.extend_from_slice(&GATEWAY_ENV);
    let gateways = [Gateway::spawn(&env), Gateway::spawn(&env)];
    for gw in &gateways {
        gw.wait_ready();
    }
    let bases: Vec<String> = gateways.iter().map(|g| g.url("")).collect();

    // 100 channels, a third on each primary (by the slot of their hash tag), interleaved so
    // that channels[i] lives on primaries[i % 3].
    let layout = cluster.layout();
    let primaries = layout.primaries();
    let quota = CHANNELS.div_ceil(primaries.len());
    let mut by_primary: BTreeMap<u16, Vec<String>> =
        primaries.iter().map(|p| (*p, Vec::new())).collect();
    for i in 0.. {
        if by_primary.values().map(Vec::len).sum::<usize>() >= quota * primaries.len() {
            break;
        }
        let channel = format!("ch{i}");
        let slot = cluster.keyslot(&format!("{prefix}{{{channel}}}:stream"));
        let owner = layout.owner(slot).expect("served");
        let list = by_primary.get_mut(&owner).expect("a primary");
        if list.len() < quota {
            list.push(channel);
        }
    }
    let mut channels = Vec::new();
    let mut home: HashMap<String, u16> = HashMap::new();
    'fill: for j in 0..quota {
        for (p, list) in &by_primary {
            if channels.len() == CHANNELS {
                break 'fill;
            }
            let channel = list.get(j).expect("filled to the quota").clone();
            home.insert(channel.clone(), *p);
            channels.push(channel);
        }
    }
    for p in &primaries {
        let n = channels.iter().filter(|c| home[*c] == *p).count();
        assert!(n >= CHANNELS / 3, "only {n} channels on {p}");
    }
    let victim = primaries[0];
    let killed: HashSet<String> = channels
        .iter()
        .filter(|c| home[*c] == victim)
        .cloned()
        .collect();
    // A channel of the first SSE client, on a primary that survives, moves to the promoted
    // replica.
    let moved = channels[1].clone();
    assert_eq!(home[&moved], primaries[1]);
    let moved_slot = cluster.keyslot(&format!("{prefix}{{{moved}}}:stream"));

    let stop_clients = Arc::new(AtomicBool::new(false));
    let clients = spawn_clients(&gateways, &channels, &stop_clients);
    within(WAIT, "every client to be subscribed", async || {
        clients
            .iter()
            .all(|c| lock(&c.record).subscribed.len() == c.channels.len())
    })
    .await;

    // Publish continuously; SIGKILL a primary, wait for its replica, keep publishing; move a
    // slot, keep publishing; stop.
    let stop_publishing = Arc::new(AtomicBool::new(false));
    let conn = cluster.conn_once().await;
    let publishers = spawn_publishers(&channels, &prefix, &conn, &bases, &stop_publishing);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let killed_at = Instant::now();
    tokio::task::block_in_place(|| cluster.kill(victim));
    let promoted = tokio::task::block_in_place(|| cluster.wait_failover(victim));
    let failover = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let migration_started = Instant::now();
    tokio::task::block_in_place(|| cluster.migrate_slot(moved_slot, promoted));
    let migration = migration_started.elapsed();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let attempts = stop_publishers(&channels, publishers, &stop_publishing).await;

    let (o, failures) = settle_and_check(Run {
        gateways: &gateways,
        clients,
        stop_clients,
        channels: &channels,
        prefix: &prefix,
        attempts,
        killed,
        killed_at,
        publish_conn: conn,
        read_conn: cluster.conn().await,
        deadline: test_started + Duration::from_secs(50),
    })
    .await;
    eprintln!(
        "outcome cluster: {} clients ({} WebSocket x {CHANNELS} channels, {} SSE x {SSE_CHANNELS}) on 2 gateways; \
         published {} acknowledged + {} with unknown outcome ({} of those stored); \
         delivered {}, duplicated {}, gaps {}, lost-acknowledged {} (store lost {}), reconnects {}; \
         failover {failover:?}, slot migration {migration:?}, resumed on the other gateway {}",
        o.clients,
        gateways.len(),
        o.clients - gateways.len(),
        o.acked,
        o.unknown,
        o.unknown_stored,
        o.tally.delivered,
        o.tally.duplicated,
        o.tally.gaps,
        o.tally.lost_acked,
        o.store_lost,
        o.reconnects,
        o.resumed,
    );
    assert_no_violations(&failures);
    assert!(
        test_started.elapsed() < Duration::from_secs(60),
        "the test took {:?}",
        test_started.elapsed()
    );
}
