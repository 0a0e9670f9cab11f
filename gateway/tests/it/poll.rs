//! The long-poll fallback `GET /poll`: stateless (any instance continues from the cursor),
//! admitted and limited like SSE, with bounded waits and pages, and exact while events are
//! published: every event once, in order, whichever instance each poll lands on.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;
use crate::history::{datas, get_json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_pages_gaps_and_bounded_waits() {
    let gw = InProcess::start(
        settings(
            None,
            &[
                ("GATEWAY__HISTORY__SIZE", "10"),
                ("GATEWAY__HISTORY__MAX_PAGE", "4"),
                ("GATEWAY__POLL__MAX_TIMEOUT_SECONDS", "1"),
            ],
        ),
        Default::default(),
    );
    let base = gw.url("");
    let first = publish(&base, "p", "1").await;
    for i in 2..=6 {
        publish(&base, "p", &i.to_string()).await;
    }
    // Pages of at most history.max_page, whatever `limit` asks.
    let (status, page) = get_json(&format!(
        "{base}/poll?channel=p&lastEventId={first}&limit=100"
    ))
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(datas(&page["messages"]), ["2", "3", "4", "5"]);
    let next = page["next"].as_str().expect("next").to_owned();
    let (_, page) = get_json(&format!("{base}/poll?channel=p&lastEventId={next}&limit=1")).await;
    assert_eq!(datas(&page["messages"]), ["6"]);
    let head = page["next"].as_str().expect("next").to_owned();

    // The wait is clamped to poll.max_timeout_seconds.
    let started = Instant::now();
    let (_, page) = get_json(&format!(
        "{base}/poll?channel=p&lastEventId={head}&timeout=100"
    ))
    .await;
    assert_eq!(page, json!({"messages": [], "next": head}));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Trimmed history: a gap message first, as on SSE and WebSocket.
    for i in 7..=40 {
        publish(&base, "p", &i.to_string()).await;
    }
    let (_, page) = get_json(&format!("{base}/poll?channel=p&lastEventId={head}")).await;
    let gap = &page["messages"][0];
    assert_eq!(gap["type"], "gap", "{page}");
    assert_eq!(gap["channel"], "p");
    assert_eq!(page["messages"][1]["id"], gap["first_available"]);

    // Several channels share one cursor, in sorted channel order.
    let x = publish(&base, "x", "x1").await;
    let (_, page) = get_json(&format!(
        "{base}/poll?channel=x&channel=p&lastEventId={head},{x}&limit=1"
    ))
    .await;
    let cursor = page["next"].as_str().expect("next");
    assert_eq!(cursor.split(',').nth(1), Some(x.as_str()), "{page}");
}

/// Two instances on one Redis; a publisher writes two channels without pause while a client
/// long-polls both with one cursor, each poll on the other instance, small pages: every event
/// of each channel exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poll_is_exact_across_instances_while_publishing() {
    let redis = Redis::start();
    let prefix = format!("{}:", unique("poll-race"));
    let a = Gateway::on_redis(&redis, &prefix, &[]);
    let b = Gateway::on_redis(&redis, &prefix, &[]);
    let n = 200;
    // The client starts from a cursor taken before the first event.
    let (_, page) = get_json(&a.url("/poll?channel=pa&channel=pb&timeout=0")).await;
    let mut cursor = page["next"].as_str().expect("next").to_owned();
    let writer = {
        let base = a.url("");
        tokio::spawn(async move {
            for i in 0..n {
                publish(&base, "pa", &format!("a{i}")).await;
                publish(&base, "pb", &format!("b{i}")).await;
            }
            publish(&base, "pa", exactly_once::END).await;
            publish(&base, "pb", exactly_once::END).await;
        })
    };
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    let done = |seen: &HashMap<String, Vec<String>>| {
        ["pa", "pb"].iter().all(|c| {
            seen.get(*c)
                .and_then(|d| d.last())
                .is_some_and(|d| d == exactly_once::END)
        })
    };
    let deadline = Instant::now() + WAIT * 3;
    let mut turn = 0;
    while !done(&seen) {
        assert!(Instant::now() < deadline, "polling never reached the end");
        let gw = if turn % 2 == 0 { &b } else { &a };
        turn += 1;
        let url = gw.url(&format!(
            "/poll?channel=pa&channel=pb&lastEventId={cursor}&limit=9&timeout=5"
        ));
        let (status, page) = get_json(&url).await;
        assert_eq!(status, 200, "{page}");
        for m in page["messages"].as_array().expect("messages") {
            assert_eq!(m["type"], "event", "no gap expected: {m}");
            let channel = m["channel"].as_str().expect("channel").to_owned();
            let data = m["data"].as_str().expect("data").to_owned();
            seen.entry(channel).or_default().push(data);
        }
        cursor = page["next"].as_str().expect("next").to_owned();
    }
    writer.await.expect("publisher");
    for (channel, tag) in [("pa", "a"), ("pb", "b")] {
        let want: Vec<String> = (0..n)
            .map(|i| format!("{tag}{i}"))
            .chain([exactly_once::END.to_owned()])
            .collect();
        assert_eq!(seen[channel], want, "{channel}");
    }
    assert!(turn > 2, "the polls alternated between instances");
}

/// A poll is admitted like a stream: the token decides (401, 403), and a waiting poll holds
/// one of the address's connections, so SSE and polls share `limits.max_connections_per_ip`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_is_admitted_and_limited_like_sse() {
    const SECRET: &str = "a-poll-test-secret-0123456789";
    let gw = Gateway::spawn(&[
        ("GATEWAY__AUTH__JWT_SECRET", SECRET),
        ("GATEWAY__PUBLISH__ALLOW_ANONYMOUS", "true"),
        ("GATEWAY__LIMITS__MAX_CONNECTIONS_PER_IP", "1"),
    ]);
    let exp = jwt::now() + 600;
    let token = jwt::hs256(SECRET, &json!({"exp": exp, "channels": ["news"]}));
    let (status, body) = get_json(&gw.url("/poll?channel=news&timeout=0")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    let (status, body) =
        get_json(&gw.url(&format!("/poll?channel=other&timeout=0&token={token}"))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (status, body) = get_json(&gw.url(&format!("/history?channel=other&token={token}"))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (status, body) = get_json(&gw.url(&format!("/history?channel=news&token={token}"))).await;
    assert_eq!(status, 200, "{body}");

    let waiting = {
        let url = gw.url(&format!("/poll?channel=news&timeout=2&token={token}"));
        tokio::spawn(async move { get_json(&url).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) =
        get_json(&gw.url(&format!("/poll?channel=news&timeout=0&token={token}"))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("too_many_connections")),
        "{body}"
    );
    let res = http()
        .get(gw.url(&format!("/sse?channel=news&token={token}")))
        .send()
        .await
        .expect("sse");
    assert_eq!(
        res.status(),
        429,
        "the waiting poll holds the address's one stream"
    );
    let (status, body) = waiting.await.expect("poll");
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        get_json(&gw.url(&format!("/poll?channel=news&timeout=0&token={token}"))).await;
    assert_eq!(status, 200, "the slot is free again: {body}");
}
