//! The history API (`GET /history`, the WebSocket `history` command) and latest-value
//! subscriptions (`latest=N`, `since=latest`): pages with the resume's gap rule, and exactness
//! while events are being published — every event exactly once, in order, across pages and at
//! the seam between the last-N read and live delivery.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use shared::Position;

use crate::common::*;

/// `GET <url>`: status and JSON body.
pub async fn get_json(url: &str) -> (u16, Value) {
    let res = http().get(url).send().await.expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.expect("JSON body"))
}

/// The `data` of each entry of `events`.
pub fn datas(events: &Value) -> Vec<String> {
    events
        .as_array()
        .expect("an array")
        .iter()
        .map(|e| e["data"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn position(v: &Value) -> Position {
    v.as_str().expect("a position").parse().expect("a position")
}

async fn pages_and_gaps(redis: Option<&Redis>) {
    let prefix = format!("{}:", unique("hist"));
    let gw = InProcess::start(
        settings(
            redis.map(|r| (r, prefix.as_str())),
            &[("GATEWAY__HISTORY__SIZE", "10")],
        ),
        Default::default(),
    );
    let base = gw.url("");
    for i in 1..=5 {
        publish(&base, "h", &i.to_string()).await;
    }
    let mut seen = Vec::new();
    let mut since = String::new();
    loop {
        let (status, page) =
            get_json(&format!("{base}/history?channel=h&limit=2&since={since}")).await;
        assert_eq!(status, 200, "{page}");
        assert!(page.get("gap").is_none(), "{page}");
        seen.extend(datas(&page["events"]));
        since = page["next"].as_str().expect("next").to_owned();
        if page["more"] == false {
            assert_eq!(page["next"], page["head"]);
            break;
        }
    }
    assert_eq!(seen, ["1", "2", "3", "4", "5"]);

    // The WebSocket command answers the same page.
    let (_, http_page) = get_json(&format!("{base}/history?channel=h&limit=3")).await;
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    ws.send(json!({"type": "history", "channel": "h", "limit": 3, "req": 9}))
        .await;
    let mut reply = ws.expect("history").await;
    assert_eq!(reply["req"], 9);
    for key in ["type", "req"] {
        reply.as_object_mut().expect("object").remove(key);
    }
    assert_eq!(reply, http_page);

    // Trimmed history: the gap a resume would get, then what is kept.
    let first = publish(&base, "t", "1").await;
    for i in 2..=300 {
        publish(&base, "t", &i.to_string()).await;
    }
    let (_, page) = get_json(&format!("{base}/history?channel=t&since={first}")).await;
    let gap = position(&page["gap"]["first_available"]);
    assert!(gap.offset > 2 && gap.offset <= 291, "{page}");
    assert_eq!(page["events"][0]["id"], gap.to_string());
    ws.send(json!({"type": "history", "channel": "t", "since": first}))
        .await;
    assert_eq!(ws.expect("history").await["gap"], page["gap"]);

    // A position beyond the head (a forged cursor) and a foreign epoch get a gap too.
    let head = position(&page["head"]);
    let ahead = Position::new(head.epoch, head.offset + 50);
    let (_, page) = get_json(&format!("{base}/history?channel=t&since={ahead}")).await;
    assert!(page["gap"]["first_available"].is_string(), "{page}");
    assert_eq!(datas(&page["events"]), Vec::<String>::new());
    let (_, page) = get_json(&format!("{base}/history?channel=t&since=abc:3")).await;
    assert!(page["gap"]["first_available"].is_string(), "{page}");
    assert!(
        !datas(&page["events"]).is_empty(),
        "what is kept follows: {page}"
    );

    // Latest values: fewer kept than asked is no gap.
    let mut sse = Sse::connect(&gw.url("/sse?channel=h&since=latest"), None).await;
    assert_eq!(sse.next().await.data, "5");
    let mut all = Sse::connect(&gw.url("/sse?channel=t&latest=50"), None).await;
    // Redis trims approximately: at least 10 are kept, at most the 50 asked for arrive.
    let mut kept = Vec::new();
    while kept.last().is_none_or(|d| d != "300") {
        let e = all.next().await;
        assert_ne!(e.event, "gap", "{kept:?}");
        kept.push(e.data);
    }
    assert!((10..=50).contains(&kept.len()), "{kept:?}");
    let first: usize = kept[0].parse().expect("a number");
    let want: Vec<String> = (first..=300).map(|i| i.to_string()).collect();
    assert_eq!(kept, want);
    publish(&base, "h", "6").await;
    assert_eq!(sse.next().await.data, "6");
    sse.assert_quiet(Duration::from_millis(200)).await;
    ws.send(json!({"type": "subscribe", "channel": "h", "latest": 2}))
        .await;
    let subscribed = ws.expect("subscribed").await;
    assert_eq!(subscribed["recovered"], false);
    assert_eq!(ws.event_data(2).await, ["5", "6"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_gaps_and_latest_memory() {
    pages_and_gaps(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_gaps_and_latest_redis() {
    let redis = Redis::start();
    pages_and_gaps(Some(&redis)).await;
}

/// Publishes `0..n` then [`exactly_once::END`] on `channel` through `base`, counting acks.
fn publisher(
    base: String,
    channel: &'static str,
    n: u64,
    acked: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for i in 0..n {
            publish(&base, channel, &i.to_string()).await;
            acked.store(i + 1, Ordering::SeqCst);
        }
        publish(&base, channel, exactly_once::END).await;
    })
}

fn expected(n: u64) -> Vec<String> {
    (0..n)
        .map(|i| i.to_string())
        .chain([exactly_once::END.to_owned()])
        .collect()
}

/// Pages through history while it grows, alternating between two instances: every event once,
/// in order, no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_paging_is_exact_while_publishing_across_instances() {
    let redis = Redis::start();
    let prefix = format!("{}:", unique("hist-race"));
    let a = Gateway::on_redis(&redis, &prefix, &[]);
    let b = Gateway::on_redis(&redis, &prefix, &[]);
    let n = 300;
    publish(&a.url(""), "race", "warm-up").await;
    let writer = publisher(a.url(""), "race", n, Arc::default());
    let (mut seen, mut since) = (Vec::new(), String::new());
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    for turn in 0.. {
        assert!(
            tokio::time::Instant::now() < deadline,
            "paging never reached the end: {seen:?}"
        );
        let base = if turn % 2 == 0 { a.url("") } else { b.url("") };
        let (status, page) = get_json(&format!(
            "{base}/history?channel=race&limit=7&since={since}"
        ))
        .await;
        assert_eq!(status, 200, "{page}");
        assert!(page.get("gap").is_none(), "{page}");
        seen.extend(datas(&page["events"]));
        since = page["next"].as_str().expect("next").to_owned();
        if seen.last().is_some_and(|d| d == exactly_once::END) {
            break;
        }
        if page["more"] == false {
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
    writer.await.expect("publisher");
    assert_eq!(seen.first().map(String::as_str), Some("warm-up"));
    assert_eq!(seen[1..], expected(n)[..]);
}

/// Clients subscribe with `latest=5` (SSE and WebSocket, one after another) while events are
/// published without pause: each gets a contiguous run of ids from the fifth-last event at its
/// subscription on, through the seam into live events, to the end — nothing lost or twice.
async fn latest_while_publishing(redis: Option<&Redis>) {
    let prefix = format!("{}:", unique("latest-race"));
    let gw = InProcess::start(
        settings(redis.map(|r| (r, prefix.as_str())), &[]),
        Default::default(),
    );
    let base = gw.url("");
    let n = 400;
    let acked = Arc::new(AtomicU64::new(0));
    let writer = publisher(base.clone(), "live", n, acked.clone());
    let mut clients = Vec::new();
    for k in 0..8 {
        while acked.load(Ordering::SeqCst) < 20 + k * 40 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let before = acked.load(Ordering::SeqCst);
        let (base, addr) = (base.clone(), gw.addr);
        let acked = acked.clone();
        clients.push(tokio::spawn(async move {
            let mut data = Vec::new();
            if k % 2 == 0 {
                let mut sse =
                    Sse::connect(&format!("{base}/sse?channel=live&latest=5"), None).await;
                let after = acked.load(Ordering::SeqCst);
                while data.last().is_none_or(|d| d != exactly_once::END) {
                    let e = sse.next().await;
                    assert_ne!(e.event, "gap", "client {k}");
                    data.push(e.data);
                }
                (k, before, after, data)
            } else {
                let mut ws = Ws::connect(&ws_url(addr)).await;
                ws.send(json!({"type": "subscribe", "channel": "live", "latest": 5}))
                    .await;
                ws.expect("subscribed").await;
                let after = acked.load(Ordering::SeqCst);
                while data.last().is_none_or(|d| d != exactly_once::END) {
                    data.extend(ws.event_data(1).await);
                }
                (k, before, after, data)
            }
        }));
    }
    writer.await.expect("publisher");
    for client in clients {
        let (k, before, after, data) = client.await.expect("client");
        let first: u64 = data[0]
            .parse()
            .unwrap_or_else(|_| panic!("client {k}: {data:?}"));
        // The fifth-last event when the channel's head was taken, somewhere in [before, after].
        assert!(
            first + 5 >= before && first + 5 <= after.max(before) + 1,
            "client {k} started at {first}, published {before}..{after}"
        );
        let want: Vec<String> = expected(n).into_iter().skip(first as usize).collect();
        assert_eq!(data, want, "client {k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn latest_is_exact_while_publishing_memory() {
    latest_while_publishing(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn latest_is_exact_while_publishing_redis() {
    let redis = Redis::start();
    latest_while_publishing(Some(&redis)).await;
}
