//! Every publish path reaches every subscriber on every instance.

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_function_and_http_publishes_reach_every_instance() {
    let redis = Redis::start();
    let prefix = format!("{}:", unique("fan"));
    let a = Gateway::on_redis(&redis, &prefix, &[]);
    let b = Gateway::on_redis(&redis, &prefix, &[]);
    let mut on_a = Sse::connect(&a.url("/sse?channel=news"), None).await;
    let mut on_b = Sse::connect(&b.url("/sse?channel=news"), None).await;
    let mut also_b = Sse::connect(&b.url("/sse?channel=news&channel=other"), None).await;
    for s in [&mut on_a, &mut on_b, &mut also_b] {
        s.ready().await;
    }

    // A backend in any language: one FCALL, no gateway involved.
    let mut conn = redis.conn().await;
    let id1 = fcall_publish(&mut conn, &prefix, "news", "from redis").await;
    // The HTTP API of either instance.
    let id2 = publish(&a.url(""), "news", "from http on a").await;
    let id3 = publish(&b.url(""), "news", "from http on b").await;

    for s in [&mut on_a, &mut on_b] {
        let got = s.take(3).await;
        assert_eq!(
            data(&got),
            ["from redis", "from http on a", "from http on b"]
        );
        let ids: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, [id1.as_str(), id2.as_str(), id3.as_str()]);
        s.assert_quiet(Duration::from_millis(200)).await;
    }
    let got = also_b.take(3).await;
    assert_eq!(
        data(&got),
        ["from redis", "from http on a", "from http on b"]
    );
    // Multi-channel streams carry a cursor with every channel's position.
    assert!(got[2].id.contains(','), "cursor {:?}", got[2].id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_subscribers_of_one_channel_each_get_every_event_once() {
    let redis = Redis::start();
    let prefix = format!("{}:", unique("fan"));
    let a = Gateway::on_redis(&redis, &prefix, &[]);
    let b = Gateway::on_redis(&redis, &prefix, &[]);
    let mut clients = Vec::new();
    for i in 0..40 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let mut s = Sse::connect(&gw.url("/sse?channel=crowd"), None).await;
        s.ready().await;
        clients.push(s);
    }
    let mut conn = redis.conn().await;
    for i in 0..50 {
        fcall_publish(&mut conn, &prefix, "crowd", &i.to_string()).await;
    }
    let expected: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    for s in &mut clients {
        assert_eq!(data(&s.take(50).await), expected);
        s.assert_quiet(Duration::from_millis(50)).await;
    }
}
