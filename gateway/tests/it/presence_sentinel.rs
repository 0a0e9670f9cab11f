//! Presence across a Sentinel failover: the primary is SIGKILLed while an SSE stream and a
//! WebSocket are tracked on a channel. The gateway's heartbeat re-writes their entries on the
//! promoted replica within the TTL, so `/presence` (answered from the new primary) lists them
//! again, with deadlines only a write after the kill can have set.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::common::sentinel::{MASTER, Topology};
use crate::common::*;
use crate::presence::get;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The connection ids `/presence` lists, sorted.
async fn listed(url: &str) -> Option<Vec<String>> {
    let (status, body) = get(url, None).await;
    let mut conns: Vec<String> = body["clients"]
        .as_array()?
        .iter()
        .filter_map(|c| c["conn"].as_str().map(str::to_owned))
        .collect();
    conns.sort();
    (status == 200).then_some(conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_back_on_the_new_primary_within_the_ttl_after_a_failover() {
    let mut topology = Topology::start(1, 3);
    let old_port = topology.nodes[0].port;
    let prefix = format!("{}:", unique("pres-sentinel"));
    let sentinels = topology.sentinel_urls();
    let gw = Gateway::spawn(&[
        ("GATEWAY__REDIS__SENTINELS", sentinels.as_str()),
        ("GATEWAY__REDIS__SENTINEL_MASTER", MASTER),
        ("GATEWAY__REDIS__KEY_PREFIX", prefix.as_str()),
        ("GATEWAY__REDIS__PROBE_SECONDS", "1"),
        ("GATEWAY__REDIS__TIMEOUT_SECONDS", "2"),
        ("GATEWAY__PRESENCE__CHANNELS", "room"),
        ("GATEWAY__PRESENCE__TTL_SECONDS", "2"),
    ]);
    gw.wait_ready();
    let mut sse = Sse::connect(&gw.url("/sse?channel=room"), None).await;
    sse.ready().await;
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    ws.subscribe("room", None).await;
    let url = gw.url("/presence?channel=room");
    let mut before = Vec::new();
    eventually("two entries", async || {
        before = listed(&url).await.unwrap_or_default();
        before.len() == 2
    })
    .await;

    topology.nodes[0].kill();
    let killed_ms = now_ms();
    let killed = Instant::now();
    eventually("the sentinels to promote the replica", async || {
        topology.agreed_primary().is_some_and(|p| p != old_port)
    })
    .await;
    let promoted = Instant::now();
    // Within the TTL of the promotion (plus the gateway finding the new primary and a refresh
    // period), the same two entries are listed again.
    let mut after = Vec::new();
    while after != before {
        assert!(
            promoted.elapsed() < Duration::from_secs(8),
            "after the failover /presence lists {after:?}, not {before:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = listed(&url).await.unwrap_or_default();
    }
    // Still there once every deadline written before the kill has passed: they were
    // re-written on the new primary, which holds them with later deadlines.
    let replicated_until = killed + Duration::from_millis(2_500);
    tokio::time::sleep_until(replicated_until).await;
    assert_eq!(listed(&url).await.unwrap_or_default(), before);
    let new = &topology.nodes[1];
    assert!(new.is_primary());
    let deadlines: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(format!("{prefix}{{room}}:presence:exp"))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut new.conn().await)
        .await
        .expect("ZRANGE on the new primary");
    let conns: Vec<&str> = deadlines.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(conns.len(), 2, "{deadlines:?}");
    assert!(before.iter().all(|c| conns.contains(&c.as_str())));
    assert!(
        deadlines
            .iter()
            .all(|(_, at)| *at as u64 > killed_ms + 2_000),
        "deadlines {deadlines:?} not refreshed after the kill at {killed_ms}"
    );
    // The connections themselves lived through it (told of a gap, maybe: continuity across an
    // unplanned failover cannot be proven).
    ws.send(serde_json::json!({"type": "ping"})).await;
    loop {
        match ws.recv().await {
            WsItem::Json(v) if v["type"] == "pong" => break,
            WsItem::Json(v) if v["type"] == "gap" => {}
            other => panic!("expected a pong, got {other:?}"),
        }
    }
}
