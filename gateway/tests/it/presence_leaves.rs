//! The leaves of a dead instance's connections: three instances on one Redis, the one in the
//! middle SIGKILLed while it holds three connections on a channel with join/leave events. Its
//! entries expire, and whichever survivor removes them publishes their leaves in the same
//! atomic call: a watcher on each survivor gets exactly one `presence.leave` per dead
//! connection within about the TTL, never two, and history holds each leave once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;
use crate::presence::get;

const SECRET: &str = "a-presence-leaves-secret-0123456789";
const KEY: &str = "a-presence-leaves-api-key";

fn ws_as(gw: &Gateway, sub: &str) -> String {
    let token = jwt::hs256(
        SECRET,
        &json!({"sub": sub, "channels": ["room"], "exp": jwt::now() + 600}),
    );
    format!("{}?token={token}", ws_url(gw.addr))
}

/// Reads `ws`'s events for `wait`; the `presence.leave` events' subs, in order.
async fn leaves_within(ws: &mut Ws, wait: Duration) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut leaves = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.recv_within(left).await {
            None => return leaves,
            Some(WsItem::Json(v)) if v["event"] == "presence.leave" => {
                leaves.push(v["data"]["sub"].as_str().unwrap_or("?").to_owned());
            }
            Some(WsItem::Json(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// How many times each sub occurs.
fn tally(subs: &[String]) -> BTreeMap<&str, usize> {
    let mut t = BTreeMap::new();
    for s in subs {
        *t.entry(s.as_str()).or_default() += 1;
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instances_connections_leave_exactly_once() {
    let redis = Redis::start();
    let prefix = format!("{}:", unique("pres-dead"));
    let env = [
        ("GATEWAY__AUTH__JWT_SECRET", SECRET),
        ("GATEWAY__PUBLISH__API_KEY", KEY),
        ("GATEWAY__PRESENCE__TTL_SECONDS", "2"),
        ("GATEWAY__PRESENCE__CHANNELS", "room"),
        ("GATEWAY__PRESENCE__EVENTS", "room"),
    ];
    let (gw1, mut gw2, gw3) = (
        Gateway::on_redis(&redis, &prefix, &env),
        Gateway::on_redis(&redis, &prefix, &env),
        Gateway::on_redis(&redis, &prefix, &env),
    );
    // A watcher on each survivor, three connections on the instance that will die.
    let mut w1 = Ws::connect(&ws_as(&gw1, "w1")).await;
    w1.subscribe("room", None).await;
    let mut w3 = Ws::connect(&ws_as(&gw3, "w3")).await;
    w3.subscribe("room", None).await;
    let mut doomed = Vec::new();
    for sub in ["d1", "d2"] {
        let mut ws = Ws::connect(&ws_as(&gw2, sub)).await;
        ws.subscribe("room", None).await;
        doomed.push(ws);
    }
    let t = jwt::hs256(
        SECRET,
        &json!({"sub": "d3", "channels": ["room"], "exp": jwt::now() + 600}),
    );
    let sse = Sse::connect(&gw2.url(&format!("/sse?channel=room&token={t}")), None).await;
    let url = gw1.url("/presence/stats?channel=room");
    eventually("five connections", async || {
        get(&url, Some(KEY)).await.1["count"] == 5
    })
    .await;

    gw2.kill();
    let killed = Instant::now();
    // Within the TTL (2 s), a refresh period and slack, each watcher sees each dead
    // connection leave once; then nothing more for two more refresh periods.
    let mut seen = Vec::new();
    for ws in [&mut w1, &mut w3] {
        let mut leaves = Vec::new();
        while leaves.len() < 3 && killed.elapsed() < Duration::from_secs(6) {
            leaves.extend(leaves_within(ws, Duration::from_millis(200)).await);
        }
        seen.push(leaves);
    }
    let took = killed.elapsed();
    seen[0].extend(leaves_within(&mut w1, Duration::from_millis(700)).await);
    seen[1].extend(leaves_within(&mut w3, Duration::from_millis(700)).await);
    let want = BTreeMap::from([("d1", 1), ("d2", 1), ("d3", 1)]);
    assert_eq!(tally(&seen[0]), want, "watcher on the first survivor");
    assert_eq!(tally(&seen[1]), want, "watcher on the second survivor");
    assert!(took < Duration::from_secs(5), "leaves took {took:?}");
    drop((doomed, sse));

    // History holds each leave once, wherever it was published.
    let (status, page) = get(&gw3.url("/history?channel=room&limit=100"), Some(KEY)).await;
    assert_eq!(status, 200, "{page}");
    let stored: Vec<String> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["event"] == "presence.leave")
        .map(|e| e["data"]["sub"].as_str().unwrap_or("?").to_owned())
        .collect();
    assert_eq!(tally(&stored), want, "{page}");
    let (_, roster) = get(&gw1.url("/presence?channel=room"), Some(KEY)).await;
    assert_eq!(roster["count"], 2, "{roster}");

    // The survivors count the expiry: three entries, three leaves, between them; each its
    // own watcher's join and one entry.
    let mut expired = 0.0;
    let mut leaves = 0.0;
    for gw in [&gw1, &gw3] {
        let text = metrics_text(&gw.url("")).await;
        expired += metric(&text, "gateway_presence_expired_total");
        leaves += metric(&text, r#"gateway_presence_events_total{kind="leave"}"#);
        assert_eq!(
            metric(&text, r#"gateway_presence_events_total{kind="join"}"#),
            1.0
        );
        assert_eq!(metric(&text, "gateway_presence_entries"), 1.0);
        assert!(metric(&text, r#"gateway_presence_writes_total{outcome="ok"}"#) >= 2.0);
        assert_eq!(
            metric(&text, r#"gateway_presence_writes_total{outcome="failed"}"#),
            0.0
        );
    }
    assert_eq!((expired, leaves), (3.0, 3.0));
}
