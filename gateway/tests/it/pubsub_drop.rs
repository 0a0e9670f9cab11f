//! The live path breaking under load: the instance reconnects, re-subscribes and replays each
//! watched channel from history, so connected clients see no loss and no duplicate.

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_pubsub_connection_while_publishing_loses_nothing() {
    let redis = Redis::start();
    let prefix = format!("{}:", unique("drop"));
    let gw = Gateway::on_redis(&redis, &prefix, &[]);
    let mut one = Sse::connect(&gw.url("/sse?channel=ticks"), None).await;
    let mut multi = Sse::connect(&gw.url("/sse?channel=ticks&channel=tocks"), None).await;
    one.ready().await;
    multi.ready().await;

    let publisher = {
        let mut conn = redis.conn().await;
        let mut admin = redis.conn().await;
        let prefix = prefix.clone();
        tokio::spawn(async move {
            for i in 0..300 {
                fcall_publish(&mut conn, &prefix, "ticks", &i.to_string()).await;
                fcall_publish(&mut conn, &prefix, "tocks", &format!("t{i}")).await;
                if i % 100 == 50 {
                    let killed = kill_pubsub(&mut admin).await;
                    assert!(
                        killed >= 1,
                        "the gateway's pub/sub connection should have been killed"
                    );
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let expected: Vec<String> = (0..300).map(|i| i.to_string()).collect();
    let got = one.take(300).await;
    assert!(
        got.iter().all(|e| e.event == "message"),
        "no gap may be reported: history has everything"
    );
    assert_eq!(data(&got), expected);
    let got = multi.take(600).await;
    let ticks: Vec<String> = got
        .iter()
        .filter(|e| !e.data.starts_with('t'))
        .map(|e| e.data.clone())
        .collect();
    let tocks: Vec<String> = got
        .iter()
        .filter(|e| e.data.starts_with('t'))
        .map(|e| e.data.clone())
        .collect();
    assert_eq!(ticks, expected);
    assert_eq!(tocks, (0..300).map(|i| format!("t{i}")).collect::<Vec<_>>());
    publisher.await.unwrap();
    one.assert_quiet(Duration::from_millis(300)).await;
    multi.assert_quiet(Duration::from_millis(100)).await;
    let metrics = metrics_text(&gw.url("")).await;
    assert!(
        metric(&metrics, "gateway_engine_reconnects_total") >= 1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_only_while_pubsub_is_down_are_replayed_after_reconnect() {
    // No later publish reveals the hole by an offset jump: only the replay after re-subscribing
    // can deliver these.
    let redis = Redis::start();
    let prefix = format!("{}:", unique("drop"));
    let gw = Gateway::on_redis(&redis, &prefix, &[]);
    let mut sse = Sse::connect(&gw.url("/sse?channel=quiet"), None).await;
    sse.ready().await;
    let mut conn = redis.conn().await;
    fcall_publish(&mut conn, &prefix, "quiet", "before").await;
    assert_eq!(sse.next().await.data, "before");
    for round in 0..3 {
        kill_pubsub(&mut conn).await;
        for i in 0..3 {
            fcall_publish(&mut conn, &prefix, "quiet", &format!("r{round}-{i}")).await;
        }
        let got = sse.take(3).await;
        assert_eq!(
            data(&got),
            (0..3).map(|i| format!("r{round}-{i}")).collect::<Vec<_>>()
        );
    }
    sse.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_subscribed_connection_survives_its_liveness_probes() {
    // Subscribed connections answer PING differently from idle ones; a probe that misread the
    // reply would reconnect (and replay every channel) at each probe.
    let redis = Redis::start();
    let prefix = format!("{}:", unique("probe"));
    let gw = Gateway::on_redis(&redis, &prefix, &[("GATEWAY__REDIS__PROBE_SECONDS", "1")]);
    let mut sse = Sse::connect(&gw.url("/sse?channel=calm"), None).await;
    sse.ready().await;
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let metrics = metrics_text(&gw.url("")).await;
    assert_eq!(
        metric(&metrics, "gateway_engine_reconnects_total"),
        0.0,
        "{metrics}"
    );
    publish(&gw.url(""), "calm", "still here").await;
    assert_eq!(sse.next().await.data, "still here");
}
