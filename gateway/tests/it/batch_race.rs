//! Batch publishing racing single publishes: every subscriber, live or resuming, gets every
//! event exactly once and in position order.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use shared::Position;
use shared::sse::SseDecoder;
use tokio::time::Instant;

use crate::common::exactly_once::{END, Seen, check, follow_sse, follow_ws};
use crate::common::*;

/// One acknowledged event: its channel, data and position.
#[derive(Clone, Debug)]
struct Acked {
    channel: String,
    data: String,
    position: Position,
}

/// `POST /publish` with an array; the positions, which must all have been stored.
pub async fn publish_batch(base: &str, items: &[(String, String)]) -> Vec<Position> {
    let body: Vec<Value> = items
        .iter()
        .map(|(channel, data)| json!({ "channel": channel, "data": data }))
        .collect();
    let res = http()
        .post(format!("{base}/publish"))
        .json(&body)
        .send()
        .await
        .expect("batch request");
    let status = res.status();
    let reply: Value = res.json().await.expect("batch answer");
    assert_eq!(status, 200, "batch failed: {reply}");
    let results = reply["results"].as_array().expect("results");
    assert_eq!(results.len(), items.len(), "{reply}");
    results
        .iter()
        .map(|r| r["id"].as_str().expect("id").parse().expect("a position"))
        .collect()
}

/// Follows `channel` over SSE from `after`, dropping the connection after every few events
/// and resuming with `Last-Event-ID`, like a client on a flaky network.
async fn follow_sse_choppy(base: String, channel: String, after: String, limit: Duration) -> Seen {
    let end = Instant::now() + limit;
    let mut seen = Seen::default();
    let mut last_id = after;
    while !seen.done() && Instant::now() < end {
        let Ok(res) = http()
            .get(format!("{base}/sse?channel={channel}"))
            .header("Last-Event-ID", &last_id)
            .send()
            .await
        else {
            continue;
        };
        if res.status() != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let mut stream = res.bytes_stream();
        let mut decoder = SseDecoder::new();
        let mut here = 0;
        // Drop the connection after 1 to 12 events (mid-batch, most of the time).
        let quota = 1 + fastrand::usize(..12);
        while !seen.done() && here < quota {
            match tokio::time::timeout_at(end, stream.next()).await {
                Ok(Some(Ok(chunk))) => decoder.feed(&chunk),
                _ => break,
            }
            while let Some(e) = decoder.next_event() {
                match e.event.as_str() {
                    "gap" => seen.gaps += 1,
                    _ => {
                        seen.data.push(e.data);
                        here += 1;
                    }
                }
                last_id = e.id;
                if here >= quota {
                    break;
                }
            }
        }
        seen.reconnects += 1;
    }
    seen
}

/// Several single publishers and several batch publishers on the same two channels at once,
/// while SSE and WebSocket followers read live and a choppy follower keeps resuming: every
/// follower gets every acknowledged event exactly once, in position order, without a gap, and
/// each channel's positions are contiguous.
async fn batches_race_single_publishes(base: String, ws: String) {
    let channels = ["bx", "by"];
    let mut starts = HashMap::new();
    for c in channels {
        starts.insert(c, publish(&base, c, "start").await);
    }
    let limit = Duration::from_secs(30);
    let mut followers = Vec::new();
    for c in channels {
        let (b, w, s) = (base.clone(), ws.clone(), starts[c].clone());
        followers.push((c, "sse", tokio::spawn(follow_sse(b, c.into(), s, limit))));
        let s = starts[c].clone();
        followers.push((c, "ws", tokio::spawn(follow_ws(w, c.into(), s, limit))));
    }

    let mut publishers = Vec::new();
    for p in 0..2 {
        let base = base.clone();
        publishers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..100 {
                let channel = channels[fastrand::usize(..2)].to_owned();
                let data = format!("s{p}-{i}");
                let position = publish(&base, &channel, &data).await.parse().unwrap();
                acked.push(Acked {
                    channel,
                    data,
                    position,
                });
            }
            acked
        }));
    }
    for p in 0..2 {
        let base = base.clone();
        publishers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for b in 0..40 {
                let items: Vec<(String, String)> = (0..1 + fastrand::usize(..8))
                    .map(|k| {
                        let channel = channels[fastrand::usize(..2)].to_owned();
                        (channel, format!("b{p}-{b}-{k}"))
                    })
                    .collect();
                let positions = publish_batch(&base, &items).await;
                for ((channel, data), position) in items.into_iter().zip(positions) {
                    acked.push(Acked {
                        channel,
                        data,
                        position,
                    });
                }
            }
            acked
        }));
    }
    // A follower that joins while the publishers are busy and resumes again and again.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for c in channels {
        let (b, s) = (base.clone(), starts[c].clone());
        let choppy = follow_sse_choppy(b, c.into(), s, limit);
        followers.push((c, "choppy sse", tokio::spawn(choppy)));
    }

    let mut acked: Vec<Acked> = Vec::new();
    for p in publishers {
        let mine = p.await.expect("publisher");
        // Each publisher's own events keep their order per channel, within batches too.
        for c in channels {
            let offsets: Vec<u64> = (mine.iter().filter(|a| a.channel == c))
                .map(|a| a.position.offset)
                .collect();
            assert!(offsets.is_sorted(), "{c}: {offsets:?}");
        }
        acked.extend(mine);
    }
    for c in channels {
        publish(&base, c, END).await;
    }

    let mut expected: HashMap<&str, Vec<String>> = HashMap::new();
    for c in channels {
        let mut mine: Vec<&Acked> = acked.iter().filter(|a| a.channel == c).collect();
        mine.sort_by_key(|a| a.position.offset);
        let offsets: Vec<u64> = mine.iter().map(|a| a.position.offset).collect();
        let contiguous: Vec<u64> = (2..2 + mine.len() as u64).collect();
        assert_eq!(offsets, contiguous, "{c}: every offset once, after start");
        let epoch = starts[c].parse::<Position>().unwrap().epoch;
        assert!(mine.iter().all(|a| a.position.epoch == epoch), "{c}");
        let mut data: Vec<String> = mine.iter().map(|a| a.data.clone()).collect();
        data.push(END.to_owned());
        expected.insert(c, data);
    }
    for (c, kind, follower) in followers {
        let seen = follower.await.expect("follower");
        let client = format!("{kind} follower of {c}");
        let data = &expected[c];
        check(&client, &seen, data);
        assert_eq!(seen.gaps, 0, "{client}: {seen:?}");
        assert_eq!(&seen.data, data, "{client}: not in position order");
        if kind == "choppy sse" {
            assert!(seen.reconnects > 2, "{client} hardly resumed: {seen:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_racing_single_publishes_arrive_exactly_once_in_order_memory() {
    let gw = Gateway::spawn(&[]);
    gw.wait_ready();
    batches_race_single_publishes(gw.url(""), ws_url(gw.addr)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_racing_single_publishes_arrive_exactly_once_in_order_redis() {
    let redis = Redis::start();
    let gw = Gateway::on_redis(&redis, &format!("{}:", unique("brace")), &[]);
    batches_race_single_publishes(gw.url(""), ws_url(gw.addr)).await;
}
