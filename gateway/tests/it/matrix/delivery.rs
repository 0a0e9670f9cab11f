//! What a subscriber receives: exact resume, gaps, the slow-consumer cut-off and the SIGTERM
//! drain, on every arrival.

use std::time::Duration;

use shared::Position;

use super::{ev, pairs};
use crate::common::arrival::*;
use crate::common::metric;

/// Resuming with `Last-Event-ID` (SSE) or `since` (WebSocket) delivers exactly the missed
/// events, in order, then live ones, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_is_exact_on_every_arrival() {
    each(&Arrival::ALL, |arrival| async move {
        let gw = arrival.gateway(&[]).await;
        let mut ctl = Control::new(&gw);
        let id1 = ctl.publish("feed", "1").await;
        let id2 = ctl.publish("feed", "2").await;
        let id3 = ctl.publish("feed", "3").await;

        let mut sse = sse(
            arrival,
            &gw,
            "/sse?channel=feed",
            &[("last-event-id", &id1)],
        )
        .await;
        assert_eq!(pairs(&sse.take(2).await), [ev(&id2, "2"), ev(&id3, "3")]);
        let mut ws = match arrival.websocket() {
            true => {
                let mut ws = open_ws(arrival, &gw, "", &[]).await.expect("upgrade");
                let sub = ws.subscribe("feed", Some(&id1)).await;
                assert_eq!(sub["recovered"], true, "{sub}");
                assert_eq!(ws.event().await, ev(&id2, "2"));
                assert_eq!(ws.event().await, ev(&id3, "3"));
                Some(ws)
            }
            false => None,
        };

        let id4 = ctl.publish("feed", "4").await;
        assert_eq!(pairs(&[sse.next().await]), [ev(&id4, "4")]);
        sse.assert_quiet(Duration::from_millis(300)).await;
        assert_eq!(sse.last_event_id(), id4);
        if let Some(ws) = &mut ws {
            assert_eq!(ws.event().await, ev(&id4, "4"));
            ws.assert_quiet(Duration::from_millis(100)).await;
        }
    })
    .await;
}

/// Resuming from a position whose successors were trimmed: `event: gap` naming the first
/// available position, then everything from there, then live events.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trimmed_history_gives_a_gap_on_every_arrival() {
    each(&Arrival::ALL, |arrival| async move {
        const PUBLISHED: u64 = 40;
        let gw = arrival.gateway(&[("GATEWAY__HISTORY__SIZE", "10")]).await;
        let mut ctl = Control::new(&gw);
        let seen = ctl.publish("feed", "1").await;
        for i in 2..=PUBLISHED {
            ctl.publish("feed", &i.to_string()).await;
        }
        let mut sse = sse(
            arrival,
            &gw,
            "/sse?channel=feed",
            &[("last-event-id", &seen)],
        )
        .await;
        let gap = sse.next().await;
        assert_eq!(gap.event, "gap", "expected a gap, got {gap:?}");
        let body: serde_json::Value = serde_json::from_str(&gap.data).expect("gap data is JSON");
        assert_eq!(body["channel"], "feed");
        let first: Position = body["first_available"]
            .as_str()
            .expect("first_available")
            .parse()
            .expect("a position");
        assert!(
            (3..=PUBLISHED - 9).contains(&first.offset),
            "a history of 10 keeps at least the newest 10 and not event 2: {first}"
        );
        assert_eq!(
            gap.id,
            Position::new(first.epoch, first.offset - 1).to_string()
        );
        let rest = sse.take((PUBLISHED - first.offset + 1) as usize).await;
        assert!(rest.iter().all(|e| e.event == "message"), "{rest:?}");
        let expected: Vec<String> = (first.offset..=PUBLISHED).map(|i| i.to_string()).collect();
        let got: Vec<String> = rest.iter().map(|e| e.data.clone()).collect();
        assert_eq!(got, expected);
        let live = ctl.publish("feed", "live").await;
        let event = sse.next().await;
        assert_eq!((event.id, event.data.as_str()), (live, "live"));
        sse.assert_quiet(Duration::from_millis(300)).await;
    })
    .await;
}

/// A client that stops reading while events pour in is disconnected as a slow consumer (its
/// queue overflows), on every arrival: no path buffers without bound on its behalf.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_consumers_are_disconnected_on_every_arrival() {
    each(&Arrival::ALL, |arrival| async move {
        const MAX_EVENTS: usize = 4000;
        let gw = arrival
            .gateway(&[("GATEWAY__LIMITS__QUEUE_SIZE", "16")])
            .await;
        let mut ctl = Control::new(&gw);
        let mut stalled = sse(arrival, &gw, "/sse?channel=flood", &[]).await;
        stalled.ready().await;
        // From here on the client reads nothing (on HTTP/2 its flow-control window runs out).
        let data = "x".repeat(4096);
        let mut sent = 0;
        loop {
            for _ in 0..50 {
                ctl.publish("flood", &data).await;
            }
            sent += 50;
            let text = ctl.metrics().await;
            if metric(&text, "gateway_slow_consumer_disconnects_total") >= 1.0 {
                eprintln!("[{arrival}] slow consumer after {sent} events");
                // One scrape is not one instant: the disconnect may be counted by both
                // counters between their reads, so read again for the settled figures.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let text = ctl.metrics().await;
                for name in [
                    "gateway_slow_consumer_disconnects_total",
                    r#"gateway_disconnects_total{reason="slow_consumer"}"#,
                ] {
                    assert_eq!(metric(&text, name), 1.0, "{name}: {text}");
                }
                break;
            }
            assert!(
                sent < MAX_EVENTS,
                "no slow consumer after {sent} events of 4 KiB to a client that reads nothing"
            );
        }
        drop(stalled);
    })
    .await;
}

/// Heartbeats are for idle streams: a stream that events keep busy gets none, however its
/// events are written (fan-out writes them itself to an idle plain socket, `hub::direct`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn busy_streams_get_no_heartbeats_on_every_arrival() {
    each(&Arrival::ALL, |arrival| async move {
        let gw = arrival
            .gateway(&[("GATEWAY__SSE__HEARTBEAT_SECONDS", "2")])
            .await;
        let mut ctl = Control::new(&gw);
        let mut stream = sse(arrival, &gw, "/sse?channel=busy", &[]).await;
        stream.ready().await;
        // An event every 200 ms for 4.4 s: two heartbeat periods, never 2 s without a write.
        for i in 0..22 {
            ctl.publish("busy", &i.to_string()).await;
            assert_eq!(stream.next().await.data, i.to_string());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let tail = stream.tail();
        assert!(
            !tail.contains(": ping"),
            "[{arrival}] a heartbeat: {tail:?}"
        );
    })
    .await;
}

/// SIGTERM: every open stream gets the closing comment and ends, and the process exits 0
/// within its shutdown timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_streams_on_every_arrival() {
    each(&Arrival::ALL, |arrival| async move {
        const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(4);
        let gw = arrival
            .gateway(&[("GATEWAY__SERVER__SHUTDOWN_TIMEOUT_SECONDS", "4")])
            .await;
        let mut stream = sse(arrival, &gw, "/sse?channel=bye", &[]).await;
        stream.ready().await;
        assert_sigterm_drains(gw, stream, SHUTDOWN_TIMEOUT).await;
    })
    .await;
}
