//! The subscribe/history race, forced deterministically with the hub's test hooks: an event
//! published at each dangerous point of a resume must reach the client exactly once — and the
//! same for latest-value subscriptions (`latest=N`), which are resumes from before the Nth-last
//! event.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gateway::hub::{Hook, HookPoint};

use crate::common::*;

/// `gateway_messages_received_total` of the gateway at `base`.
pub async fn received(base: &str) -> f64 {
    metric(&metrics_text(base).await, "gateway_messages_received_total")
}

/// A hook that, once armed, publishes `data` on the hooked channel at `point` and waits until
/// the hub has applied it before letting the gateway continue.
fn publish_at(
    point: HookPoint,
    base: Arc<OnceLock<String>>,
    armed: Arc<AtomicBool>,
    data: &'static str,
) -> Hook {
    Arc::new(move |at, channel| {
        let base = base.clone();
        let armed = armed.clone();
        Box::pin(async move {
            if at != point || !armed.swap(false, Ordering::SeqCst) {
                return;
            }
            let base = base.get().expect("base url").clone();
            let before = received(&base).await;
            publish(&base, channel.as_str(), data).await;
            let deadline = tokio::time::Instant::now() + WAIT;
            while received(&base).await <= before {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the hub never applied the racing event"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    })
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Sse,
    Ws,
    SseLatest,
    WsLatest,
}

async fn race(point: HookPoint, redis: Option<&Redis>) {
    for transport in [
        Transport::Sse,
        Transport::Ws,
        Transport::SseLatest,
        Transport::WsLatest,
    ] {
        race_on(point, redis, transport).await;
    }
}

async fn race_on(point: HookPoint, redis: Option<&Redis>, transport: Transport) {
    let base = Arc::new(OnceLock::new());
    let armed = Arc::new(AtomicBool::new(false));
    let prefix = format!("{}:", unique("race"));
    let settings = settings(redis.map(|r| (r, prefix.as_str())), &[]);
    let options = gateway::RunOptions {
        hook: Some(publish_at(point, base.clone(), armed.clone(), "racer")),
    };
    let gw = InProcess::start(settings, options);
    base.set(gw.url("")).unwrap();

    // History exists before this instance watches the channel, so the resume must read it.
    let first = publish(&gw.url(""), "room", "e1").await;
    publish(&gw.url(""), "room", "e2").await;
    publish(&gw.url(""), "room", "e3").await;

    armed.store(true, Ordering::SeqCst);
    let context = format!("race at {point:?} over {transport:?}");
    match transport {
        Transport::Sse => {
            let mut sse = Sse::connect(&gw.url("/sse?channel=room"), Some(&first)).await;
            assert_eq!(data(&sse.take(3).await), ["e2", "e3", "racer"], "{context}");
            assert!(
                !armed.load(Ordering::SeqCst),
                "the hook never ran: {context}"
            );
            publish(&gw.url(""), "room", "e5").await;
            assert_eq!(sse.next().await.data, "e5", "{context}");
            sse.assert_quiet(Duration::from_millis(300)).await;
        }
        Transport::Ws => {
            let mut ws = Ws::connect(&ws_url(gw.addr)).await;
            let sub = ws.subscribe("room", Some(&first)).await;
            assert_eq!(sub["recovered"], true, "{context}");
            assert_eq!(ws.event_data(3).await, ["e2", "e3", "racer"], "{context}");
            assert!(
                !armed.load(Ordering::SeqCst),
                "the hook never ran: {context}"
            );
            publish(&gw.url(""), "room", "e5").await;
            assert_eq!(ws.event_data(1).await, ["e5"], "{context}");
            ws.assert_quiet(Duration::from_millis(300)).await;
        }
        Transport::SseLatest | Transport::WsLatest => {
            // Before the head is read the racer is one of the last two; after, it is live.
            let want: &[&str] = match point {
                HookPoint::StartSubscribed => &["e3", "racer"],
                _ => &["e2", "e3", "racer"],
            };
            let got = if matches!(transport, Transport::SseLatest) {
                let mut sse = Sse::connect(&gw.url("/sse?channel=room&latest=2"), None).await;
                let got = data(&sse.take(want.len()).await);
                publish(&gw.url(""), "room", "e5").await;
                assert_eq!(sse.next().await.data, "e5", "{context}");
                sse.assert_quiet(Duration::from_millis(300)).await;
                got
            } else {
                let mut ws = Ws::connect(&ws_url(gw.addr)).await;
                let cmd = serde_json::json!({"type": "subscribe", "channel": "room", "latest": 2});
                ws.send(cmd).await;
                ws.expect("subscribed").await;
                let got = ws.event_data(want.len()).await;
                publish(&gw.url(""), "room", "e5").await;
                assert_eq!(ws.event_data(1).await, ["e5"], "{context}");
                ws.assert_quiet(Duration::from_millis(300)).await;
                got
            };
            assert_eq!(got, want, "{context}");
            assert!(
                !armed.load(Ordering::SeqCst),
                "the hook never ran: {context}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_between_subscribe_confirmation_and_head_read_redis() {
    let redis = Redis::start();
    race(HookPoint::StartSubscribed, Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_between_attach_and_history_read_redis() {
    let redis = Redis::start();
    race(HookPoint::JoinBeforeRead, Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_between_history_read_and_live_join_redis() {
    let redis = Redis::start();
    race(HookPoint::JoinAfterRead, Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_between_subscribe_confirmation_and_head_read_memory() {
    race(HookPoint::StartSubscribed, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_between_attach_and_history_read_memory() {
    race(HookPoint::JoinBeforeRead, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_between_history_read_and_live_join_memory() {
    race(HookPoint::JoinAfterRead, None).await;
}
