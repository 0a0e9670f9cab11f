//! Presence on a Redis Cluster: every key of a channel's presence shares its hash tag, so
//! channels spread over every primary are tracked, read, expired and announced like on one
//! node.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::common::redis_cluster::RedisCluster;
use crate::common::*;
use crate::presence::get;

const CHANNELS: usize = 9;

async fn counts(gw: &Gateway, names: &[String]) -> Vec<u64> {
    let mut counts = Vec::new();
    for name in names {
        let (status, body) = get(&gw.url(&format!("/presence?channel={name}")), None).await;
        assert_eq!(status, 200, "{body}");
        counts.push(body["count"].as_u64().unwrap_or(u64::MAX));
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_the_shards_of_a_cluster() {
    let cluster = RedisCluster::start(3, 0);
    let prefix = format!("{}:", unique("pc"));
    let seeds = cluster.seeds();
    let env = [
        ("GATEWAY__REDIS__CLUSTER_NODES", seeds.as_str()),
        ("GATEWAY__REDIS__KEY_PREFIX", prefix.as_str()),
        ("GATEWAY__PRESENCE__CHANNELS", "*"),
        ("GATEWAY__PRESENCE__EVENTS", "c0"),
        ("GATEWAY__PRESENCE__TTL_SECONDS", "2"),
    ];
    let (gw1, mut gw2) = (Gateway::spawn(&env), Gateway::spawn(&env));
    gw1.wait_ready();
    gw2.wait_ready();
    // Three channels on each primary (the slot depends on the prefix), c0 among them.
    let layout = cluster.layout();
    let mut per_owner: BTreeMap<Option<u16>, usize> = BTreeMap::new();
    let mut names: Vec<String> = Vec::new();
    for i in 0.. {
        let name = format!("c{i}");
        let owner = layout.owner(cluster.keyslot(&format!("{prefix}{{{name}}}:presence")));
        let taken = per_owner.entry(owner).or_default();
        if *taken < CHANNELS / 3 {
            *taken += 1;
            names.push(name);
        }
        if names.len() == CHANNELS {
            break;
        }
    }
    assert_eq!(per_owner.len(), 3, "{per_owner:?}");
    let mut ws = Ws::connect(&ws_url(gw1.addr)).await;
    for name in &names {
        ws.send(json!({"type": "subscribe", "channel": name})).await;
    }
    // Replies, and maybe the connection's own join on c0 among them.
    let mut subscribed = 0;
    while subscribed < CHANNELS {
        match ws.recv().await {
            WsItem::Json(v) if v["type"] == "subscribed" => subscribed += 1,
            WsItem::Json(v) if v["event"] == "presence.join" => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let query: Vec<String> = names.iter().map(|n| format!("channel={n}")).collect();
    let sse = Sse::connect(&gw2.url(&format!("/sse?{}", query.join("&"))), None).await;
    for gw in [&gw1, &gw2] {
        eventually("two connections on every channel", async || {
            counts(gw, &names).await == [2; CHANNELS]
        })
        .await;
    }
    // One entry per connection and channel, the SSE stream's with one id on every channel.
    let mut sse_conns = Vec::new();
    for name in &names {
        let (_, body) = get(&gw1.url(&format!("/presence?channel={name}")), None).await;
        let clients = body["clients"].as_array().cloned().unwrap_or_default();
        assert!(clients.iter().all(|c| c["sub"].is_null()), "{body}");
        sse_conns.push(
            clients
                .iter()
                .map(|c| c["conn"].clone())
                .collect::<Vec<Value>>(),
        );
    }
    assert!(sse_conns.windows(2).all(|w| w[0] == w[1]), "{sse_conns:?}");
    // c0 announces both joins, through the cluster's publishing path.
    let (_, page) = get(&gw1.url("/history?channel=c0"), None).await;
    let events: Vec<&str> = page["events"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["event"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(events, ["presence.join", "presence.join"], "{page}");
    // The instance holding the SSE stream dies: its entries expire on every shard.
    gw2.kill();
    drop(sse);
    eventually("the dead instance's entries to expire", async || {
        counts(&gw1, &names).await == [1; CHANNELS]
    })
    .await;
    drop(ws);
    eventually("the last connection to leave", async || {
        counts(&gw1, &names).await == [0; CHANNELS]
    })
    .await;
}
