//! The operators' status page (`/admin`, `/admin/feed`) against the real binary: off by
//! default, protected by the publish API key, and a feed whose numbers follow real connections
//! and publishes.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use shared::sse::SseDecoder;

use crate::common::*;

const KEY: &str = "admin-test-key-0123456789";
const CHAT_KEY: &str = "admin-test-chat-only-key-0123";

/// A `/admin/feed` reader.
struct Feed {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    decoder: SseDecoder,
}

impl Feed {
    async fn open(gw: &Gateway) -> Self {
        let res = feed_request(gw, Some(KEY)).await;
        let status = res.status();
        assert_eq!(status, 200, "{}", res.text().await.unwrap_or_default());
        assert_eq!(
            res.headers().get("content-type").unwrap(),
            "text/event-stream"
        );
        Self {
            stream: res.bytes_stream().boxed(),
            decoder: SseDecoder::new(),
        }
    }

    /// The next snapshot (one a second).
    async fn next(&mut self) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(e) = self.decoder.next_event() {
                return serde_json::from_str(&e.data).expect("a snapshot is JSON");
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(chunk))) => self.decoder.feed(&chunk),
                other => panic!("the feed stopped: {other:?}"),
            }
        }
    }

    /// Snapshots until one satisfies `done`; returns all of them (the last one satisfies it).
    async fn until(&mut self, what: &str, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        for _ in 0..12 {
            let s = self.next().await;
            let finished = done(&s);
            seen.push(s);
            if finished {
                return seen;
            }
        }
        panic!(
            "no snapshot showed {what}; last: {:#}",
            seen[seen.len() - 1]
        );
    }
}

async fn feed_request(gw: &Gateway, key: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::builder()
        .connect_timeout(WAIT)
        .build()
        .unwrap()
        .get(gw.url("/admin/feed"));
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    req.send().await.unwrap()
}

async fn expect_error(res: reqwest::Response, status: u16, code: &str) {
    let got = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (got, body["error"].as_str()),
        (status, Some(code)),
        "{body}"
    );
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

fn admin_gateway(extra: &[(&str, &str)]) -> Gateway {
    let mut env = vec![
        ("GATEWAY__ADMIN__ENABLED", "true"),
        ("GATEWAY__PUBLISH__API_KEY", KEY),
    ];
    env.extend_from_slice(extra);
    let gw = Gateway::spawn(&env);
    gw.wait_ready();
    gw
}

#[tokio::test]
async fn the_page_is_off_unless_enabled() {
    let gw = Gateway::spawn(&[("GATEWAY__PUBLISH__API_KEY", KEY)]);
    for path in ["/admin", "/admin/feed"] {
        let res = http()
            .get(gw.url(path))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        expect_error(res, 404, "not_found").await;
    }
}

#[tokio::test]
async fn the_feed_needs_a_key_for_every_channel() {
    let config = std::env::temp_dir().join(format!("{}.toml", unique("admin-config")));
    std::fs::write(
        &config,
        format!(
            "[[publish.keys]]\nname = \"chat\"\nkey = \"{CHAT_KEY}\"\nchannels = [\"chat:*\"]\n"
        ),
    )
    .unwrap();
    let gw = admin_gateway(&[("GATEWAY_CONFIG", config.to_str().unwrap())]);

    // The page itself holds no data: it is served to anyone, who then needs the key.
    let page = http().get(gw.url("/admin")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    let html = page.text().await.unwrap();
    assert!(
        html.contains("<canvas id=\"chart-rates\""),
        "the page has its charts"
    );
    assert!(
        !html.contains("src=\"http") && !html.contains("//cdn"),
        "nothing is loaded from elsewhere"
    );

    expect_error(feed_request(&gw, None).await, 401, "unauthorized").await;
    expect_error(
        feed_request(&gw, Some("not-the-key")).await,
        401,
        "unauthorized",
    )
    .await;
    expect_error(feed_request(&gw, Some(CHAT_KEY)).await, 403, "forbidden").await;
    let post = http()
        .post(gw.url("/admin/feed"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    expect_error(post, 405, "method_not_allowed").await;
    Feed::open(&gw).await.next().await;
    let _ = std::fs::remove_file(&config);
}

#[tokio::test]
async fn feeds_are_limited() {
    let gw = admin_gateway(&[("GATEWAY__ADMIN__MAX_FEEDS", "1")]);
    let first = Feed::open(&gw).await;
    expect_error(
        feed_request(&gw, Some(KEY)).await,
        503,
        "too_many_connections",
    )
    .await;
    drop(first);
    // The slot comes back once the server notices the client is gone (its next write).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let res = feed_request(&gw, Some(KEY)).await;
        if res.status() == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sums `rate × interval` over consecutive snapshots: the events the rates account for.
fn integrate(snapshots: &[Value], field: &str) -> f64 {
    snapshots
        .windows(2)
        .map(|w| {
            let seconds = (w[1]["at_ms"].as_f64().unwrap() - w[0]["at_ms"].as_f64().unwrap()) / 1e3;
            w[1][field].as_f64().unwrap_or(0.0) * seconds
        })
        .sum()
}

#[tokio::test]
async fn the_feed_follows_connections_and_publishes() {
    let redis = Redis::start();
    let prefix = unique("admin");
    let gw = Gateway::on_redis(
        &redis,
        &prefix,
        &[
            ("GATEWAY__ADMIN__ENABLED", "true"),
            ("GATEWAY__PUBLISH__API_KEY", KEY),
        ],
    );
    let mut feed = Feed::open(&gw).await;
    let first = feed.next().await;
    assert_eq!(first["connections"]["sse"], 0, "{first:#}");
    assert_eq!(first["topology"]["kind"], "single");
    assert_eq!(
        first["topology"]["nodes"][0],
        format!("127.0.0.1:{}", redis.port)
    );
    assert_eq!(first["health"]["live"], true, "{first:#}");
    assert_eq!(first["health"]["ready"], true, "{first:#}");
    assert!(first["health"]["ping_ms"].as_f64().is_some(), "{first:#}");

    let busy = unique("busy");
    let quiet = unique("quiet");
    let mut clients = Vec::new();
    for channel in [&busy, &busy, &busy, &quiet] {
        let mut sse = Sse::connect(&gw.url(&format!("/sse?channel={channel}")), None).await;
        sse.ready().await;
        clients.push(sse);
    }
    let seen = feed
        .until("four SSE connections on two channels", |s| {
            s["connections"]["sse"] == 4 && s["subscriptions"] == 4 && s["channels"] == 2
        })
        .await;
    let last = &seen[seen.len() - 1];
    assert_eq!(last["busiest"][0]["channel"], busy.as_str(), "{last:#}");
    assert_eq!(last["busiest"][0]["subscribers"], 3);
    assert_eq!(last["busiest"][1]["channel"], quiet.as_str());

    // 20 publishes over about two seconds, each delivered to the three busy clients.
    let mut window = vec![last.clone()];
    let done = std::cell::Cell::new(false);
    let base = format!("http://{}", gw.addr);
    let publishing = async {
        for i in 0..20 {
            let res = http()
                .post(format!("{base}/publish"))
                .bearer_auth(KEY)
                .json(&serde_json::json!({ "channel": busy, "data": i.to_string() }))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        done.set(true);
    };
    let reading = async {
        // Until the rates have been back at zero for two intervals after the last publish.
        let mut idle_after = 0;
        while idle_after < 2 {
            let s = feed.next().await;
            let idle = s["publish_rate"] == 0.0 && s["delivery_rate"] == 0.0;
            idle_after = if idle && done.get() {
                idle_after + 1
            } else {
                0
            };
            window.push(s);
        }
    };
    tokio::join!(publishing, reading);
    for client in &mut clients[..3] {
        assert_eq!(client.take(20).await.len(), 20);
    }
    let published = integrate(&window, "publish_rate");
    let delivered = integrate(&window, "delivery_rate");
    assert!(
        (published - 20.0).abs() < 1.5,
        "publish rates add up to {published}"
    );
    assert!(
        (delivered - 60.0).abs() < 4.0,
        "delivery rates add up to {delivered}"
    );
    assert!(
        window
            .iter()
            .any(|s| s["latency_ms"]["p99"].as_f64().is_some()),
        "some interval had a latency"
    );
    assert!(
        window
            .iter()
            .any(|s| s["busiest"][0]["events_per_second"].as_f64().unwrap_or(0.0) > 0.0),
        "the busy channel's rate shows"
    );

    drop(clients);
    feed.until("the connections closing", |s| {
        s["connections"]["sse"] == 0 && s["channels"] == 0
    })
    .await;
}
