//! Exact resume on another instance: the events missed while disconnected, in order, once.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;

/// Subscribes on A, reads some events, disconnects (or kills A), publishes more, resumes on B
/// with the last event id, and checks every channel got exactly its missed events in order.
async fn resume_scenario(channels: &[&str], via_query: bool, kill_a: bool) {
    let redis = Redis::start();
    let prefix = format!("{}:", unique("t"));
    let mut a = Gateway::on_redis(&redis, &prefix, &[]);
    let b = Gateway::on_redis(&redis, &prefix, &[]);
    let query: String = channels.iter().map(|c| format!("channel={c}&")).collect();
    let path = format!("/sse?{query}");

    let mut sse = Sse::connect(&a.url(&path), None).await;
    sse.ready().await;
    for round in 1..=3 {
        for c in channels {
            publish(&a.url(""), c, &format!("{c}-{round}")).await;
        }
    }
    let seen = sse.take(3 * channels.len()).await;
    assert_eq!(per_channel(&seen), expected(channels, 1..=3));
    let last_id = sse.last_event_id();
    drop(sse);
    if kill_a {
        a.kill();
    }

    // Published while the client is away, through both instances.
    for round in 4..=6 {
        for c in channels {
            // Alternate instances, but never the killed one.
            let via = if round % 2 == 0 || kill_a { &b } else { &a };
            publish(&via.url(""), c, &format!("{c}-{round}")).await;
        }
    }

    let mut resumed = if via_query {
        Sse::connect(&b.url(&format!("{path}lastEventId={last_id}")), None).await
    } else {
        Sse::connect(&b.url(&path), Some(&last_id)).await
    };
    let missed = resumed.take(3 * channels.len()).await;
    assert!(
        missed.iter().all(|e| e.event == "message"),
        "no gap expected: {missed:?}"
    );
    assert_eq!(per_channel(&missed), expected(channels, 4..=6));
    resumed.assert_quiet(Duration::from_millis(300)).await;

    // Live delivery continues on B without repeats.
    for c in channels {
        publish(&b.url(""), c, &format!("{c}-7")).await;
    }
    let live = resumed.take(channels.len()).await;
    assert_eq!(per_channel(&live), expected(channels, 7..=7));
    resumed.assert_quiet(Duration::from_millis(300)).await;
}

fn per_channel(events: &[shared::sse::SseEvent]) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in events {
        let channel = e.data.split('-').next().unwrap_or("").to_owned();
        map.entry(channel).or_default().push(e.data.clone());
    }
    map
}

fn expected(
    channels: &[&str],
    rounds: std::ops::RangeInclusive<u32>,
) -> BTreeMap<String, Vec<String>> {
    channels
        .iter()
        .map(|c| {
            (
                c.to_string(),
                rounds.clone().map(|r| format!("{c}-{r}")).collect(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_on_another_instance_with_last_event_id_header() {
    resume_scenario(&["news"], false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_on_another_instance_with_query_parameter() {
    resume_scenario(&["news"], true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_three_channels_of_one_connection() {
    resume_scenario(&["alpha", "beta", "gamma"], false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_the_first_instance_is_killed() {
    resume_scenario(&["news", "sport"], false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_received_nothing_still_resumes_exactly() {
    // The stream's first frame carries the starting cursor, so a client that disconnects before
    // any event still knows where it stood.
    let redis = Redis::start();
    let prefix = format!("{}:", unique("t"));
    let a = Gateway::on_redis(&redis, &prefix, &[]);
    let b = Gateway::on_redis(&redis, &prefix, &[]);
    publish(&a.url(""), "quiet", "before").await;
    let mut sse = Sse::connect(&a.url("/sse?channel=quiet"), None).await;
    sse.ready().await;
    let start = sse.last_event_id();
    assert!(
        start.ends_with(":1"),
        "starting cursor {start:?} must be after the existing event"
    );
    drop(sse);
    publish(&b.url(""), "quiet", "missed").await;
    let mut resumed = Sse::connect(&b.url("/sse?channel=quiet"), Some(&start)).await;
    assert_eq!(resumed.next().await.data, "missed");
    resumed.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_engine_resumes_exactly_on_one_instance() {
    let gw = InProcess::start(settings(None, &[]), Default::default());
    let path = "/sse?channel=a&channel=b&channel=c";
    let mut sse = Sse::connect(&gw.url(path), None).await;
    sse.ready().await;
    for c in ["a", "b", "c"] {
        publish(&gw.url(""), c, &format!("{c}-1")).await;
    }
    assert_eq!(
        per_channel(&sse.take(3).await),
        expected(&["a", "b", "c"], 1..=1)
    );
    let last = sse.last_event_id();
    drop(sse);
    for round in 2..=4 {
        for c in ["a", "b", "c"] {
            publish(&gw.url(""), c, &format!("{c}-{round}")).await;
        }
    }
    let mut resumed = Sse::connect(&gw.url(&format!("{path}&lastEventId={last}")), None).await;
    assert_eq!(
        per_channel(&resumed.take(9).await),
        expected(&["a", "b", "c"], 2..=4)
    );
    resumed.assert_quiet(Duration::from_millis(300)).await;
}
