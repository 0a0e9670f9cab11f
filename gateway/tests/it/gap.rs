//! Lost history is never skipped silently: the client gets `event: gap` naming the channel and
//! the first position it will receive, then everything still available.

use std::time::Duration;

use shared::Position;

use crate::common::*;

async fn trimmed_history(redis: Option<&Redis>) {
    let prefix = format!("{}:", unique("gap"));
    let gw = InProcess::start(
        settings(
            redis.map(|r| (r, prefix.as_str())),
            &[("GATEWAY__HISTORY__SIZE", "10")],
        ),
        Default::default(),
    );
    let seen = publish(&gw.url(""), "feed", "1").await;
    for i in 2..=300 {
        publish(&gw.url(""), "feed", &i.to_string()).await;
    }
    let mut sse = Sse::connect(&gw.url("/sse?channel=feed"), Some(&seen)).await;
    let gap = sse.next().await;
    let first = assert_gap(&gap, "feed");
    assert!(
        first.offset > 2,
        "history of size 10 cannot still hold event 2"
    );
    assert!(
        first.offset <= 291,
        "at least the newest 10 events are kept"
    );
    // The gap's id points just before the first available event, so a reconnect right after
    // the gap resumes without a second one.
    assert_eq!(
        gap.id,
        Position::new(first.epoch, first.offset - 1).to_string()
    );
    let rest = sse.take((300 - first.offset + 1) as usize).await;
    let expected: Vec<String> = (first.offset..=300).map(|i| i.to_string()).collect();
    assert_eq!(data(&rest), expected);
    sse.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_history_gives_gap_then_the_rest_redis() {
    let redis = Redis::start();
    trimmed_history(Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_history_gives_gap_then_the_rest_memory() {
    trimmed_history(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_history_new_epoch_gives_gap_on_resume() {
    let redis = Redis::start();
    let prefix = format!("{}:", unique("gap"));
    let gw = Gateway::on_redis(&redis, &prefix, &[]);
    publish(&gw.url(""), "feed", "old-1").await;
    let seen = publish(&gw.url(""), "feed", "old-2").await;
    // History is lost (as after a Redis restart without persistence)...
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    // ...and the channel starts over in a new epoch.
    let new_first = publish(&gw.url(""), "feed", "new-1").await;
    publish(&gw.url(""), "feed", "new-2").await;
    let mut sse = Sse::connect(&gw.url("/sse?channel=feed"), Some(&seen)).await;
    let first = assert_gap(&sse.next().await, "feed");
    assert_eq!(first.to_string(), new_first);
    assert_ne!(first.epoch, seen.parse::<Position>().unwrap().epoch);
    assert_eq!(data(&sse.take(2).await), ["new-1", "new-2"]);
    sse.assert_quiet(Duration::from_millis(300)).await;
}

async fn expired_while_connected(redis: Option<&Redis>) {
    let prefix = format!("{}:", unique("gap"));
    let gw = InProcess::start(
        settings(
            redis.map(|r| (r, prefix.as_str())),
            &[("GATEWAY__HISTORY__TTL_SECONDS", "1")],
        ),
        Default::default(),
    );
    let mut sse = Sse::connect(&gw.url("/sse?channel=feed"), None).await;
    sse.ready().await;
    publish(&gw.url(""), "feed", "a").await;
    assert_eq!(sse.next().await.data, "a");
    // The channel's history expires while the client stays connected; the next event starts a
    // new epoch, and the connected client is told before it receives it.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let id = publish(&gw.url(""), "feed", "b").await;
    let first = assert_gap(&sse.next().await, "feed");
    assert_eq!(first.to_string(), id);
    let b = sse.next().await;
    assert_eq!((b.data.as_str(), b.id.as_str()), ("b", id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_while_connected_gives_gap_redis() {
    let redis = Redis::start();
    expired_while_connected(Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_while_connected_gives_gap_memory() {
    expired_while_connected(None).await;
}
