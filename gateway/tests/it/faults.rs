//! Faults production brings, each under load with an exact count per client: a silent pub/sub
//! path, lost live messages, Redis down and back, Redis restarted empty, slow consumers.

use std::time::Duration;

use crate::common::proxy::FreezingProxy;
use crate::common::*;

async fn ready_status(base: &str) -> u16 {
    http()
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_pubsub_path_is_detected_reported_and_replaced_without_loss() {
    let redis = Redis::start();
    let proxy = FreezingProxy::start(redis.port).await;
    let prefix = format!("{}:", unique("silent"));
    let url = proxy.url();
    let gw = Gateway::spawn(&[
        ("GATEWAY__REDIS__URL", url.as_str()),
        ("GATEWAY__REDIS__KEY_PREFIX", prefix.as_str()),
        ("GATEWAY__REDIS__PROBE_SECONDS", "1"),
        ("GATEWAY__REDIS__TIMEOUT_SECONDS", "1"),
    ]);
    let mut sse = Sse::connect(&gw.url("/sse?channel=ticker"), None).await;
    sse.ready().await;
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    ws.subscribe("ticker", None).await;
    eventually("readiness", async || ready_status(&gw.url("")).await == 200).await;
    publish(&gw.url(""), "ticker", "0").await;
    assert_eq!(sse.next().await.data, "0");
    assert_eq!(ws.event_data(1).await, ["0"]);

    // The subscriber connection goes silent but stays open, and new ones do too for a while;
    // publishing (through the command pool) keeps working.
    proxy.block_subscribers(true);
    proxy.freeze_subscribers();
    for i in 1..=20 {
        publish(&gw.url(""), "ticker", &i.to_string()).await;
    }
    eventually("/readyz to report the silent path", async || {
        ready_status(&gw.url("")).await == 503
    })
    .await;
    proxy.block_subscribers(false);
    eventually("/readyz to recover", async || {
        ready_status(&gw.url("")).await == 200
    })
    .await;
    for i in 21..=25 {
        publish(&gw.url(""), "ticker", &i.to_string()).await;
    }
    let expected: Vec<String> = (1..=25).map(|i| i.to_string()).collect();
    assert_eq!(data(&sse.take(25).await), expected);
    assert_eq!(ws.event_data(25).await, expected);
    sse.assert_quiet(Duration::from_millis(300)).await;
    let metrics = metrics_text(&gw.url("")).await;
    assert!(
        metric(
            &metrics,
            r#"gateway_engine_errors_total{kind="pubsub_silent"}"#
        ) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_live_message_is_recovered_at_the_next_jump() {
    let redis = Redis::start();
    let prefix = format!("{}:", unique("lost"));
    // Head checks off: only the offset jump can reveal the hole.
    let gw = Gateway::on_redis(
        &redis,
        &prefix,
        &[("GATEWAY__REDIS__HEAD_CHECK_SECONDS", "0")],
    );
    let mut sse = Sse::connect(&gw.url("/sse?channel=feed"), None).await;
    sse.ready().await;
    let mut conn = redis.conn().await;
    for round in 0..5 {
        fcall_publish(&mut conn, &prefix, "feed", &format!("live-{round}")).await;
        publish_without_live_message(&mut conn, &prefix, "feed", &format!("lost-{round}")).await;
    }
    fcall_publish(&mut conn, &prefix, "feed", "last").await;
    let got = data(&sse.take(11).await);
    let mut expected = Vec::new();
    for round in 0..5 {
        expected.push(format!("live-{round}"));
        expected.push(format!("lost-{round}"));
    }
    expected.push("last".into());
    assert_eq!(got, expected);
    sse.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_live_message_on_a_quiet_channel_is_found_by_the_head_check() {
    let redis = Redis::start();
    let prefix = format!("{}:", unique("tail"));
    let gw = Gateway::on_redis(
        &redis,
        &prefix,
        &[("GATEWAY__REDIS__HEAD_CHECK_SECONDS", "1")],
    );
    let mut sse = Sse::connect(&gw.url("/sse?channel=quiet"), None).await;
    sse.ready().await;
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    ws.subscribe("quiet", None).await;
    let mut conn = redis.conn().await;
    fcall_publish(&mut conn, &prefix, "quiet", "seen").await;
    publish_without_live_message(&mut conn, &prefix, "quiet", "lost").await;
    // Nothing else is ever published on this channel.
    assert_eq!(data(&sse.take(2).await), ["seen", "lost"]);
    assert_eq!(ws.event_data(2).await, ["seen", "lost"]);
    let metrics = metrics_text(&gw.url("")).await;
    assert!(
        metric(
            &metrics,
            r#"gateway_channel_resyncs_total{reason="head_check"}"#
        ) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_then_back_keeps_clients_and_delivers_everything_published() {
    // `appendfsync always`, declared with `redis.durable`: the restart loses nothing, so
    // clients get no gap although Redis is a new server lifetime.
    let mut redis = Redis::start_persistent();
    let prefix = format!("{}:", unique("down"));
    let gw = Gateway::on_redis(
        &redis,
        &prefix,
        &[
            ("GATEWAY__REDIS__DURABLE", "true"),
            ("GATEWAY__SSE__HEARTBEAT_SECONDS", "1"),
            ("GATEWAY__WS__PING_SECONDS", "1"),
            ("GATEWAY__WS__TIMEOUT_SECONDS", "3"),
            ("GATEWAY__REDIS__TIMEOUT_SECONDS", "1"),
            ("GATEWAY__REDIS__PROBE_SECONDS", "1"),
        ],
    );
    let mut sse = Sse::connect(&gw.url("/sse?channel=news"), None).await;
    sse.ready().await;
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    ws.subscribe("news", None).await;
    let mut published = Vec::new();
    for i in 0..5 {
        publish(&gw.url(""), "news", &format!("before-{i}")).await;
        published.push(format!("before-{i}"));
    }
    assert_eq!(data(&sse.take(5).await), published);
    assert_eq!(ws.event_data(5).await, published);

    redis.stop();
    eventually("/readyz to go 503", async || {
        ready_status(&gw.url("")).await == 503
    })
    .await;
    let res = http()
        .post(gw.url("/publish"))
        .json(&serde_json::json!({"channel": "news", "data": "lost?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "engine_unavailable");
    // While Redis is down the gateway idles (capped backoff, no busy loop) and keeps clients.
    let cpu_before = cpu_seconds(gw.pid());
    let comments_before = sse.comments();
    // Keep reading both streams meanwhile, as real clients do (WebSocket pongs are only sent
    // while the client reads).
    tokio::join!(
        sse.assert_quiet(Duration::from_secs(4)),
        ws.assert_quiet(Duration::from_secs(4))
    );
    let cpu = cpu_seconds(gw.pid()) - cpu_before;
    eprintln!("outcome redis-down: gateway CPU while Redis was down for 4 s: {cpu:.2} s");
    assert!(
        cpu < 0.5,
        "the gateway used {cpu:.2} CPU seconds in 4 s while Redis was down"
    );
    assert!(
        sse.comments() > comments_before,
        "SSE heartbeats must continue while Redis is down"
    );
    ws.send(serde_json::json!({"type": "ping"})).await;
    ws.expect("pong").await;

    redis.restart();
    // The WebSocket client keeps reading while it waits (answering pings), or the gateway
    // rightly closes it with 4002 when Redis takes longer than the heartbeat timeout to return.
    eventually("/readyz to recover", async || {
        ws.assert_quiet(Duration::from_millis(100)).await;
        ready_status(&gw.url("")).await == 200
    })
    .await;
    for i in 0..5 {
        publish(&gw.url(""), "news", &format!("after-{i}")).await;
    }
    let after: Vec<String> = (0..5).map(|i| format!("after-{i}")).collect();
    assert_eq!(
        data(&sse.take(5).await),
        after,
        "history survived, so no gap"
    );
    assert_eq!(ws.event_data(5).await, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_gives_gaps_never_silent_skips() {
    let mut redis = Redis::start();
    let prefix = format!("{}:", unique("empty"));
    let gw = Gateway::on_redis(
        &redis,
        &prefix,
        &[
            ("GATEWAY__REDIS__TIMEOUT_SECONDS", "1"),
            ("GATEWAY__REDIS__PROBE_SECONDS", "1"),
        ],
    );
    let mut sse = Sse::connect(&gw.url("/sse?channel=news"), None).await;
    sse.ready().await;
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    ws.subscribe("news", None).await;
    publish(&gw.url(""), "news", "old-1").await;
    let old_last = publish(&gw.url(""), "news", "old-2").await;
    assert_eq!(data(&sse.take(2).await), ["old-1", "old-2"]);
    assert_eq!(ws.event_data(2).await, ["old-1", "old-2"]);

    redis.restart(); // not persistent: history, offsets and the function library are gone
    eventually("/readyz to recover", async || {
        ready_status(&gw.url("")).await == 200
    })
    .await;
    let first_new = publish(&gw.url(""), "news", "new-1").await;
    publish(&gw.url(""), "news", "new-2").await;

    // Connected clients are told before the new epoch's events.
    let gap = sse.next().await;
    assert_eq!(gap.event, "gap");
    assert_eq!(data(&sse.take(2).await), ["new-1", "new-2"]);
    let gap = ws.expect("gap").await;
    assert_eq!(
        gap["first_available"].as_str().unwrap().split(':').next(),
        first_new.split(':').next()
    );
    assert_eq!(ws.event_data(2).await, ["new-1", "new-2"]);
    // A client resuming from the old epoch gets a gap too.
    let mut late = Sse::connect(&gw.url("/sse?channel=news"), Some(&old_last)).await;
    assert_eq!(late.next().await.event, "gap");
    assert_eq!(data(&late.take(2).await), ["new-1", "new-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sse_client_is_disconnected_memory_stays_bounded_and_it_resumes_exactly() {
    let redis = Redis::start();
    let prefix = format!("{}:", unique("slow"));
    let gw = Gateway::on_redis(
        &redis,
        &prefix,
        &[
            ("GATEWAY__LIMITS__QUEUE_SIZE", "128"),
            ("GATEWAY__LIMITS__CHANNEL_CACHE", "8"),
            ("GATEWAY__HISTORY__SIZE", "5000"),
            ("GATEWAY__PUBLISH__MAX_BYTES", "65536"),
        ],
    );
    // A healthy client on the same channel must not be held back by the stalled one.
    let mut healthy = Sse::connect(&gw.url("/sse?channel=firehose"), None).await;
    healthy.ready().await;
    let mut stalled = Sse::connect(&gw.url("/sse?channel=firehose"), None).await;
    stalled.ready().await;
    let start = stalled.last_event_id();
    let rss_before = rss_kib(gw.pid());

    let payload = "y".repeat(32 * 1024);
    let mut conn = redis.conn().await;
    let n = 1500; // ~48 MiB, far beyond what socket buffers and a 128-event queue hold
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen_by_healthy = progress.clone();
    let reader = tokio::spawn(async move {
        for _ in 0..n {
            assert_eq!(healthy.next().await.data.len(), 32 * 1024);
            seen_by_healthy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        healthy
    });
    for published in 0..n {
        // Paced to the healthy client (a debug-build test reader), never to the stalled one.
        while published - progress.load(std::sync::atomic::Ordering::Relaxed) > 64 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        fcall_publish(&mut conn, &prefix, "firehose", &payload).await;
    }
    let _healthy = reader.await.unwrap();
    let grown = rss_kib(gw.pid()).saturating_sub(rss_before);
    eprintln!(
        "outcome slow-consumer: RSS grew {grown} KiB while {n} x 32 KiB events went past a stalled client"
    );
    assert!(
        grown < 24 * 1024,
        "the gateway grew by {grown} KiB for one stalled client"
    );
    let metrics = metrics_text(&gw.url("")).await;
    assert!(
        metric(&metrics, "gateway_slow_consumer_disconnects_total") >= 1.0,
        "{metrics}"
    );

    // The stalled client reads what reached it, sees the stream end, and resumes from its last
    // id with nothing lost and nothing repeated.
    let (seen, ended) = stalled.read_to_end(WAIT).await;
    assert!(
        ended,
        "the stalled client's stream must be ended by the gateway"
    );
    assert!(seen.len() < n, "it cannot have received everything");
    let last = if seen.is_empty() {
        start
    } else {
        stalled.last_event_id()
    };
    let mut resumed = Sse::connect(&gw.url("/sse?channel=firehose"), Some(&last)).await;
    let rest = resumed.take(n - seen.len()).await;
    assert!(
        rest.iter().all(|e| e.event == "message"),
        "history holds everything: no gap"
    );
    let last_offset: u64 = rest
        .last()
        .unwrap()
        .id
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(last_offset, n as u64);
    resumed.assert_quiet(Duration::from_millis(300)).await;
}
