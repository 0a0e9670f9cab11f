//! Batch publishing at its edges: `FCALL gw_publish_many` as the documented API for other
//! languages, hostile batches that must store nothing, and batches spanning the shards of a
//! Redis Cluster.

use std::time::Duration;

use redis::cluster_routing::Slot;
use serde_json::{Value, json};
use shared::Position;
use tokio::io::AsyncWriteExt;

use crate::batch_race::publish_batch;
use crate::common::redis_cluster::RedisCluster;
use crate::common::*;

/// Checks an error answer: its status, JSON body and code; returns its detail.
async fn expect_error(res: reqwest::Response, status: u16, code: &str) -> String {
    let got = res.status().as_u16();
    let body: Value = res.json().await.expect("a JSON error body");
    assert_eq!(
        (got, body["error"].as_str()),
        (status, Some(code)),
        "{body}"
    );
    body["detail"].as_str().unwrap_or_default().to_owned()
}

async fn post(gw: &Gateway, body: &str) -> reqwest::Response {
    http()
        .post(gw.url("/publish"))
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("publish request")
}

fn offset(id: &str) -> u64 {
    id.parse::<Position>().expect("a position").offset
}

/// Hostile batches, on both engines: each is refused with its status and code, and none of
/// their events is stored (the channel's next offset is unchanged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_batches_store_nothing() {
    let redis = Redis::start();
    let limits = [
        ("GATEWAY__PUBLISH__MAX_BATCH", "4"),
        ("GATEWAY__PUBLISH__MAX_BYTES", "4096"),
    ];
    let on_redis = Gateway::on_redis(&redis, &format!("{}:", unique("bh")), &limits);
    let in_memory = Gateway::spawn(&limits);
    in_memory.wait_ready();
    for gw in [&on_redis, &in_memory] {
        let first = publish(&gw.url(""), "h", "first").await;
        let ok = r#"{"channel":"h","data":"never"}"#;
        let refused: [(String, &str, Option<&str>); 8] = [
            ("[]".into(), "invalid_json", None),
            ("  [ ]".into(), "invalid_json", None),
            (format!("[{ok},"), "invalid_json", None),
            (format!("[{ok}, 7]"), "invalid_json", Some("item 1:")),
            (
                format!(r#"[{ok}, {{"channel":"h"}}]"#),
                "invalid_json",
                Some("item 1:"),
            ),
            (
                format!(r#"[{ok}, {{"channel":"h","data":1,"x":2}}]"#),
                "invalid_json",
                Some("item 1:"),
            ),
            (
                format!(r#"[{ok}, {ok}, {{"channel":"h","data":1,"event":"gap"}}]"#),
                "invalid_event",
                Some("item 2:"),
            ),
            (
                format!(r#"[{ok}, {{"channel":"h}}","data":1}}]"#),
                "invalid_channel",
                Some("item 1:"),
            ),
        ];
        for (body, code, names) in &refused {
            let detail = expect_error(post(gw, body).await, 400, code).await;
            if let Some(names) = names {
                assert!(detail.starts_with(names), "{body}: {detail}");
            }
        }
        let five = format!("[{}]", [ok; 5].join(","));
        expect_error(post(gw, &five).await, 400, "batch_too_large").await;
        let nested = format!("[[{ok}]]");
        expect_error(post(gw, &nested).await, 400, "invalid_json").await;

        // A body announced beyond publish.max_bytes is refused from its head, before any of
        // it is sent.
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let head = "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                    Content-Length: 100000000\r\n\r\n[";
        s.write_all(head.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        raw::read_until(&mut s, &mut buf, "the 413", |t| t.contains("\r\n\r\n")).await;
        let answer = String::from_utf8_lossy(&buf).to_string();
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

        let next = publish(&gw.url(""), "h", "next").await;
        assert_eq!(
            offset(&next),
            offset(&first) + 1,
            "a refused batch stored nothing"
        );
    }
}

/// The API key judges a batch whole: one channel it may not publish to, or more events than
/// its rate has left, refuses the batch and stores none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_refused_whole_by_its_key() {
    const KEY: &str = "batch-key-0123456789";
    let config = std::env::temp_dir().join(format!("{}.toml", unique("batch-key")));
    let toml = format!(
        "[publish]\nburst = 5\n\n[[publish.keys]]\nname = \"chat\"\nkey = \"{KEY}\"\n\
         channels = [\"chat:*\"]\nrate_per_second = 1\n"
    );
    std::fs::write(&config, toml).unwrap();
    let gw = Gateway::spawn(&[("GATEWAY_CONFIG", config.to_str().unwrap())]);
    gw.wait_ready();
    let mut sse = Sse::connect(&gw.url("/sse?channel=chat:a"), None).await;
    sse.ready().await;
    let send = |items: Value| {
        http()
            .post(gw.url("/publish"))
            .bearer_auth(KEY)
            .json(&items)
            .send()
    };
    let mixed = json!([{ "channel": "chat:a", "data": "x" }, { "channel": "news", "data": "y" }]);
    expect_error(send(mixed).await.unwrap(), 403, "publish_forbidden").await;
    let three = |tag: &str| {
        Value::Array(
            (1..=3)
                .map(|i| json!({ "channel": "chat:a", "data": format!("{tag}{i}") }))
                .collect(),
        )
    };
    // Five tokens: one spent on the refused batch, three on this one, one left.
    assert_eq!(send(three("a")).await.unwrap().status(), 200);
    expect_error(send(three("b")).await.unwrap(), 429, "rate_limited").await;
    assert_eq!(data(&sse.take(3).await), ["a1", "a2", "a3"]);
    sse.assert_quiet(Duration::from_millis(300)).await;
    let _ = std::fs::remove_file(&config);
}

/// `FCALL gw_publish_many`, as README documents it: many events to several channels in one
/// call, ids in order, delivered to subscribers; a bad argument anywhere stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gw_publish_many_is_the_documented_api() {
    let redis = Redis::start();
    let prefix = format!("{}:", unique("many"));
    let gw = Gateway::on_redis(&redis, &prefix, &[]);
    let mut news = Sse::connect(&gw.url("/sse?channel=news"), None).await;
    news.ready().await;
    let mut chat = Sse::connect(&gw.url("/sse?channel=chat"), None).await;
    chat.ready().await;
    let key = |c: &str, k: &str| format!("{prefix}{{{c}}}:{k}");
    let mut conn = redis.conn().await;
    let mut many = redis::cmd("FCALL");
    many.arg("gw_publish_many")
        .arg(4)
        .arg(key("news", "stream"))
        .arg(key("news", "meta"))
        .arg(key("chat", "stream"))
        .arg(key("chat", "meta"))
        .arg("")
        .arg("")
        .arg(&["1", "hello", "", ""])
        .arg(&["2", r#"{"text":"hi"}"#, "msg", "json"])
        .arg(&["1", "again", "", ""]);
    let ids: Vec<String> = many.query_async(&mut conn).await.expect("gw_publish_many");
    let offsets: Vec<u64> = ids.iter().map(|id| offset(id)).collect();
    assert_eq!(offsets, [1, 1, 2], "{ids:?}");
    assert_eq!(ids[0].split(':').next(), ids[2].split(':').next());
    assert_eq!(data(&news.take(2).await), ["hello", "again"]);
    let msg = chat.next().await;
    assert_eq!(
        (msg.event.as_str(), msg.data.as_str()),
        ("msg", r#"{"text":"hi"}"#)
    );

    // Refused calls: a bad kind in the second event, a channel number beyond the keys, a
    // stream and meta key of different channels, an incomplete event.
    let call = |keys: &[String], events: &[&str]| {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("gw_publish_many").arg(keys.len()).arg(keys);
        cmd.arg("").arg("").arg(events);
        cmd
    };
    let pair = [key("news", "stream"), key("news", "meta")];
    let crossed = [key("news", "stream"), key("chat", "meta")];
    let refusals: [(&[String], &[&str], &str); 4] = [
        (
            &pair,
            &["1", "ok", "", "", "1", "bad", "", "xml"],
            "event 2: kind",
        ),
        (
            &pair,
            &["1", "ok", "", "", "2", "bad", "", ""],
            "event 2: channel#",
        ),
        (&crossed, &["1", "ok", "", ""], "keys must be"),
        (&pair, &["1", "ok", ""], "4 arguments"),
    ];
    for (keys, events, why) in refusals {
        let err = call(keys, events)
            .query_async::<redis::Value>(&mut conn)
            .await
            .map(|_| ())
            .expect_err("refused");
        assert_eq!(err.code(), Some("GATEWAY"), "{err}");
        assert!(err.to_string().contains(why), "{why}: {err}");
    }
    let after = fcall_publish(&mut conn, &prefix, "news", "after").await;
    assert_eq!(offset(&after), 3, "the refused calls stored nothing");
    assert_eq!(news.next().await.data, "after");
    news.assert_quiet(Duration::from_millis(300)).await;
}

/// On a Redis Cluster a batch over channels of every shard, two of them sharing one slot, is
/// stored per slot in one call each: ids in order and contiguous per channel, and each
/// subscriber receives exactly its channel's events, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_span_the_shards_of_a_cluster() {
    let cluster = RedisCluster::start(3, 0);
    let prefix = format!("{}:", unique("bc"));
    let seeds = cluster.seeds();
    let gw = Gateway::spawn(&[
        ("GATEWAY__REDIS__CLUSTER_NODES", seeds.as_str()),
        ("GATEWAY__REDIS__KEY_PREFIX", prefix.as_str()),
    ]);
    gw.wait_ready();

    // One channel per primary, and a second channel in the first one's slot.
    let mut channels: Vec<String> = one_channel_per_primary(&cluster, &prefix)
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    let slot_of = |c: &str| Slot::for_key(format!("{prefix}{{{c}}}:stream"));
    let twin = (0..)
        .map(|i| format!("tw{i}"))
        .find(|c| slot_of(c) == slot_of(&channels[0]))
        .expect("a channel in the same slot");
    channels.push(twin);

    let mut subscribers = Vec::new();
    for c in &channels {
        let mut sse = Sse::connect(&gw.url(&format!("/sse?channel={c}")), None).await;
        sse.ready().await;
        subscribers.push(sse);
    }
    let items: Vec<(String, String)> = (0..24)
        .map(|i| {
            let c = &channels[(i * 7 + i / 5) % channels.len()];
            (c.clone(), format!("{c}-{i}"))
        })
        .collect();
    let positions = publish_batch(&gw.url(""), &items).await;
    for (c, sse) in channels.iter().zip(&mut subscribers) {
        let mine: Vec<usize> = (0..items.len()).filter(|&i| items[i].0 == *c).collect();
        let offsets: Vec<u64> = mine.iter().map(|&i| positions[i].offset).collect();
        let contiguous: Vec<u64> = (1..=mine.len() as u64).collect();
        assert_eq!(offsets, contiguous, "{c}");
        let want: Vec<&str> = mine.iter().map(|&i| items[i].1.as_str()).collect();
        assert_eq!(data(&sse.take(mine.len()).await), want, "{c}");
        sse.assert_quiet(Duration::from_millis(200)).await;
    }
    let body = json!([{ "channel": channels[0], "data": "after" }]);
    let res = http().post(gw.url("/publish")).json(&body).send().await;
    assert_eq!(res.expect("publish").status(), 200);
}

/// A channel (`sh<i>`) on each primary of `cluster`, with the primary's port.
fn one_channel_per_primary(cluster: &RedisCluster, prefix: &str) -> Vec<(String, u16)> {
    let layout = cluster.layout();
    let mut channels: Vec<(String, u16)> = Vec::new();
    for p in layout.primaries() {
        let c = (0..)
            .map(|i| format!("sh{i}"))
            .find(|c| {
                let slot = cluster.keyslot(&format!("{prefix}{{{c}}}:stream"));
                layout.owner(slot) == Some(p) && channels.iter().all(|(o, _)| o != c)
            })
            .expect("a channel on every primary");
        channels.push((c, p));
    }
    channels
}

/// The one case where a batch succeeds in part: on a cluster with a primary down (and the
/// others serving their slots regardless), the events of the live shards are stored and
/// delivered, and the answer carries the first failure's status, an id for each stored event
/// and the error for each of the dead shard's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_batch_with_a_shard_down_answers_per_event() {
    let mut cluster = RedisCluster::start(3, 0);
    let prefix = format!("{}:", unique("bd"));
    let seeds = cluster.seeds();
    let gw = Gateway::spawn(&[
        ("GATEWAY__REDIS__CLUSTER_NODES", seeds.as_str()),
        ("GATEWAY__REDIS__KEY_PREFIX", prefix.as_str()),
        ("GATEWAY__REDIS__TIMEOUT_SECONDS", "2"),
    ]);
    gw.wait_ready();
    let channels = one_channel_per_primary(&cluster, &prefix);
    let mut live = Vec::new();
    for (c, _) in &channels[1..] {
        let mut sse = Sse::connect(&gw.url(&format!("/sse?channel={c}")), None).await;
        sse.ready().await;
        live.push(sse);
    }
    let dead = channels[0].1;
    for (_, p) in &channels[1..] {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("SET")
            .arg("cluster-require-full-coverage")
            .arg("no");
        let _: String = cluster.query(*p, &cmd).expect("CONFIG SET");
    }
    cluster.kill(dead);

    let items: Vec<Value> = (0..6)
        .map(|i| json!({ "channel": channels[i % 3].0, "data": format!("e{i}") }))
        .collect();
    let res = http().post(gw.url("/publish")).json(&items).send().await;
    let res = res.expect("an answer");
    let status = res.status().as_u16();
    let body: Value = res.json().await.expect("JSON");
    let results = body["results"].as_array().expect("results per event");
    assert_eq!(results.len(), 6, "{body}");
    let first_error = results[0]["error"]
        .as_str()
        .expect("the dead shard's error");
    for (i, r) in results.iter().enumerate() {
        if i % 3 == 0 {
            assert_eq!(r["error"].as_str(), Some(first_error), "{body}");
        } else {
            assert!(
                r["id"]
                    .as_str()
                    .is_some_and(|id| id.ends_with(":1") || id.ends_with(":2"))
            );
        }
    }
    assert_eq!(
        (status, first_error),
        (503, "engine_unavailable"),
        "the first failure's status and code: {body}"
    );
    for (k, sse) in live.iter_mut().enumerate() {
        let want = [format!("e{}", k + 1), format!("e{}", k + 4)];
        assert_eq!(data(&sse.take(2).await), want);
    }
}
