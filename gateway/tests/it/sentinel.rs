//! Redis Sentinel: the gateway finds the primary through sentinels and follows a failover for
//! commands and pub/sub. Real processes: a primary, two replicas and three sentinels; the
//! primary is SIGKILLed while an SSE and a WebSocket client follow a channel that a publisher
//! writes to continuously. Every acknowledged event must reach every client exactly once, or
//! the client must be told about a gap; a client that just goes silent fails the test.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::common::exactly_once::{END, check, follow_sse, follow_ws, try_publish};
use crate::common::sentinel::{MASTER, Topology, named_primary, start_sentinel};
use crate::common::*;

async fn ready(base: &str) -> u16 {
    http()
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// Polls `f` every 50 ms until it holds; panics after `limit`.
async fn within(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_is_followed_for_commands_and_pubsub_without_silent_loss() {
    let mut topology = Topology::start(2, 3);
    let old_port = topology.nodes[0].port;
    // The first sentinel listed is down: discovery must move on to the next one.
    let sentinels = format!(
        "redis://127.0.0.1:{},{}",
        free_port(),
        topology.sentinel_urls()
    );
    let prefix = format!("{}:", unique("sentinel"));
    let gw = Gateway::spawn(&[
        ("GATEWAY__REDIS__SENTINELS", sentinels.as_str()),
        ("GATEWAY__REDIS__SENTINEL_MASTER", MASTER),
        ("GATEWAY__REDIS__KEY_PREFIX", prefix.as_str()),
        ("GATEWAY__REDIS__PROBE_SECONDS", "1"),
        ("GATEWAY__REDIS__TIMEOUT_SECONDS", "2"),
    ]);
    gw.wait_ready();
    let base = gw.url("");
    let channel = "failover";
    let start = publish(&base, channel, "start").await;

    let limit = Duration::from_secs(50);
    let sse = tokio::spawn(follow_sse(
        base.clone(),
        channel.into(),
        start.clone(),
        limit,
    ));
    let ws = tokio::spawn(follow_ws(ws_url(gw.addr), channel.into(), start, limit));

    // Publish continuously, each attempt with its own payload, retrying on 503.
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let publisher = tokio::spawn({
        let (base, stop, count) = (base.clone(), stop.clone(), count.clone());
        async move {
            let mut acked = Vec::new();
            let mut attempt = 0;
            while !stop.load(Ordering::Relaxed) {
                attempt += 1;
                let payload = format!("e{attempt}");
                if try_publish(&base, channel, &payload).await.is_some() {
                    acked.push(payload);
                    count.fetch_add(1, Ordering::Relaxed);
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        }
    });
    within(Duration::from_secs(10), "30 publishes", async || {
        count.load(Ordering::Relaxed) >= 30
    })
    .await;

    // SIGKILL the primary. Its port now refuses connections: the first dial after the failover
    // (to the address the sentinels still name) is refused, and must not wedge the gateway.
    topology.nodes[0].kill();
    let refused = std::net::TcpStream::connect(("127.0.0.1", old_port))
        .expect_err("the old primary's port must refuse");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    within(
        Duration::from_secs(10),
        "/readyz 503 without a primary",
        async || ready(&base).await == 503,
    )
    .await;
    let killed = Instant::now();
    within(
        Duration::from_secs(30),
        "the sentinels to promote a replica",
        async || topology.agreed_primary().is_some_and(|p| p != old_port),
    )
    .await;
    let promoted = Instant::now();
    within(
        Duration::from_secs(15),
        "/readyz 200 on the new primary",
        async || ready(&base).await == 200,
    )
    .await;
    eprintln!(
        "failover: promoted {:?} after the kill, gateway ready {:?} after that",
        promoted - killed,
        promoted.elapsed()
    );

    // Publishing works again, on the new primary.
    let before = count.load(Ordering::Relaxed);
    within(Duration::from_secs(15), "30 more publishes", async || {
        count.load(Ordering::Relaxed) >= before + 30
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let acked = publisher.await.expect("publisher");
    within(Duration::from_secs(10), "the final publish", async || {
        try_publish(&base, channel, END).await.is_some()
    })
    .await;
    let new_port = topology.agreed_primary().expect("an agreed primary");
    let new_primary = topology
        .nodes
        .iter()
        .find(|n| n.port == new_port)
        .expect("the new primary is one of the replicas");
    let head: Option<String> = redis::cmd("HGET")
        .arg(format!("{prefix}{{{channel}}}:meta"))
        .arg("offset")
        .query_async(&mut new_primary.conn().await)
        .await
        .expect("HGET on the new primary");
    assert!(head.is_some(), "the channel lives on the new primary");

    let sse = sse.await.expect("sse follower");
    let ws = ws.await.expect("ws follower");
    check("SSE", &sse, &acked);
    check("WebSocket", &ws, &acked);
    let metrics = metrics_text(&base).await;
    assert!(metric(&metrics, "gateway_engine_reconnects_total") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_naming_a_replica_is_skipped_and_readyz_waits_for_a_primary() {
    let topology = Topology::start(1, 1);
    let replica = &topology.nodes[1];
    // A sentinel with a stale view: it names the replica as the primary.
    let stale = start_sentinel(replica.port, 1);
    assert_eq!(named_primary(&stale), Some(replica.port));
    let sentinels = format!(
        "redis://127.0.0.1:{},{}",
        stale.port,
        topology.sentinel_urls()
    );
    let prefix = format!("{}:", unique("stale"));
    let gw = Gateway::spawn(&[
        ("GATEWAY__REDIS__SENTINELS", sentinels.as_str()),
        ("GATEWAY__REDIS__SENTINEL_MASTER", MASTER),
        ("GATEWAY__REDIS__KEY_PREFIX", prefix.as_str()),
    ]);
    gw.wait_ready();
    let id = publish(&gw.url(""), "stale", "to the primary").await;
    assert!(id.ends_with(":1"), "{id}");
    let offset: Option<String> = redis::cmd("HGET")
        .arg(format!("{prefix}{{stale}}:meta"))
        .arg("offset")
        .query_async(&mut topology.nodes[0].conn().await)
        .await
        .expect("HGET on the primary");
    assert_eq!(offset.as_deref(), Some("1"));

    // With only the stale sentinel, no primary can be found: not ready, and publishes are 503.
    let only_stale = format!("redis://127.0.0.1:{}", stale.port);
    let lost = Gateway::spawn(&[
        ("GATEWAY__REDIS__SENTINELS", only_stale.as_str()),
        ("GATEWAY__REDIS__SENTINEL_MASTER", MASTER),
        ("GATEWAY__REDIS__KEY_PREFIX", prefix.as_str()),
        ("GATEWAY__REDIS__TIMEOUT_SECONDS", "1"),
    ]);
    let base = lost.url("");
    for _ in 0..10 {
        assert_eq!(ready(&base).await, 503);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(try_publish(&base, "stale", "nowhere").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_leave_a_primary_demoted_while_still_alive() {
    // A manual failover: the old primary keeps running, as a replica. Command connections to
    // it get READONLY, which must send them to the new primary rather than fail forever. The
    // replica is in sync, which the operator declares with `redis.durable`: subscribers then
    // cross the failover without a gap (without it they would get one, in place, as continuity
    // could not be proven; see `lost_writes`).
    let topology = Topology::start(1, 1);
    let (old, new) = (&topology.nodes[0], &topology.nodes[1]);
    let prefix = format!("{}:", unique("demoted"));
    let sentinels = topology.sentinel_urls();
    let gw = Gateway::spawn(&[
        ("GATEWAY__REDIS__SENTINELS", sentinels.as_str()),
        ("GATEWAY__REDIS__SENTINEL_MASTER", MASTER),
        ("GATEWAY__REDIS__KEY_PREFIX", prefix.as_str()),
        ("GATEWAY__REDIS__PROBE_SECONDS", "1"),
        ("GATEWAY__REDIS__DURABLE", "true"),
    ]);
    gw.wait_ready();
    let base = gw.url("");
    let mut sse = Sse::connect(&gw.url("/sse?channel=moved"), None).await;
    sse.ready().await;
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    ws.subscribe("moved", None).await;
    for i in 1..=3 {
        publish(&base, "moved", &format!("before-{i}")).await;
    }

    // In sync before the switch, as `redis.durable` promises: under load the replica can
    // still be a few writes behind, and those would be lost (the gateway then announces the
    // gap it finds, correctly, but this test is about a failover that loses nothing).
    let written = old
        .written_offset()
        .expect("the primary's replication offset");
    within(
        Duration::from_secs(10),
        "the replica to acknowledge every write",
        async || old.replicas_reached(written),
    )
    .await;
    // Refused (NOGOODSLAVE) until the sentinel has fresh replication info about the replica.
    within(
        Duration::from_secs(10),
        "SENTINEL FAILOVER to be accepted",
        async || {
            topology.sentinels[0]
                .query::<redis::Value>(redis::cmd("SENTINEL").arg("FAILOVER").arg(MASTER))
                .is_some()
        },
    )
    .await;
    within(
        Duration::from_secs(20),
        "the replica to be promoted",
        async || {
            new.is_primary()
                && old
                    .query::<redis::Role>(&redis::cmd("ROLE"))
                    .is_some_and(|r| matches!(r, redis::Role::Replica { .. }))
                && named_primary(&topology.sentinels[0]) == Some(new.port)
        },
    )
    .await;
    // Each publish either succeeds or gets 503 while the gateway moves; it must move quickly.
    let mut acked = Vec::new();
    let mut attempt = 0;
    within(
        Duration::from_secs(15),
        "publishes to land on the new primary",
        async || {
            attempt += 1;
            if let Some(_id) = try_publish(&base, "moved", &format!("after-{attempt}")).await {
                acked.push(format!("after-{attempt}"));
            }
            acked.len() >= 3
        },
    )
    .await;
    let offset: Option<String> = redis::cmd("HGET")
        .arg(format!("{prefix}{{moved}}:meta"))
        .arg("offset")
        .query_async(&mut new.conn().await)
        .await
        .expect("HGET on the new primary");
    assert!(offset.is_some(), "the publishes landed on the new primary");
    assert!(ready(&base).await == 200);

    let mut want: Vec<String> = (1..=3).map(|i| format!("before-{i}")).collect();
    want.extend(acked);
    let mut got = Vec::new();
    while got.len() < want.len() {
        let Some(e) = sse.next_within(Duration::from_secs(10)).await else {
            break;
        };
        got.push(format!(
            "{}{}",
            if e.event == "gap" { "gap:" } else { "" },
            e.data
        ));
    }
    assert_eq!(got, want, "SSE");
    let mut got = Vec::new();
    while got.len() < want.len() {
        match ws.recv_within(Duration::from_secs(10)).await {
            Some(WsItem::Json(v)) if v["type"] == "event" => {
                got.push(v["data"].as_str().unwrap_or_default().to_owned());
            }
            Some(WsItem::Json(v)) if v["type"] == "gap" => got.push(format!("gap:{v}")),
            Some(WsItem::Json(_)) | Some(WsItem::Binary(_)) => {}
            other => {
                got.push(format!("{other:?}"));
                break;
            }
        }
    }
    assert_eq!(got, want, "WebSocket");
}
