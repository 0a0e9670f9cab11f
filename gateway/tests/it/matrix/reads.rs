//! The request/response reads — `GET /history` and the long poll `GET /poll` — on every
//! arrival: hyper serves them whether they come first on a connection or later on a keep-alive
//! one, over TLS or HTTP/2, with the same answers and the same JSON errors.

use std::time::{Duration, Instant};

use http::Method;

use super::assert_error;
use crate::common::arrival::*;

async fn get(
    arrival: Arrival,
    gw: &crate::common::Gateway,
    path: &str,
) -> (u16, serde_json::Value) {
    let reply = request(arrival, gw, Method::GET, path, &[], empty())
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = reply.status;
    (status, reply.json().await)
}

fn data(events: &serde_json::Value) -> Vec<String> {
    events
        .as_array()
        .expect("an array")
        .iter()
        .map(|e| e["data"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// History pages, a poll answered at once, a poll that waits for the next event, and a poll
/// that times out empty, with JSON errors for bad parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_and_poll_on_every_arrival() {
    each(&Arrival::ALL, |arrival| async move {
        let gw = arrival.gateway(&[]).await;
        let mut control = Control::new(&gw);
        let first = control.publish("c", "1").await;
        control.publish("c", "2").await;
        let head = control.publish("c", "3").await;

        let (status, page) = get(arrival, &gw, "/history?channel=c&limit=2").await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(data(&page["events"]), ["1", "2"]);
        assert_eq!(page["more"], true);
        let next = page["next"].as_str().expect("next").to_owned();
        let (_, page) = get(arrival, &gw, &format!("/history?channel=c&since={next}")).await;
        assert_eq!(data(&page["events"]), ["3"]);
        assert_eq!(page["next"], head.as_str());
        assert_eq!(page["more"], false);

        let (status, poll) = get(
            arrival,
            &gw,
            &format!("/poll?channel=c&lastEventId={first}"),
        )
        .await;
        assert_eq!(status, 200, "{poll}");
        assert_eq!(data(&poll["messages"]), ["2", "3"]);
        assert_eq!(poll["next"], head.as_str());

        let started = Instant::now();
        let (_, poll) = get(
            arrival,
            &gw,
            &format!("/poll?channel=c&lastEventId={head}&timeout=1"),
        )
        .await;
        assert_eq!(data(&poll["messages"]), Vec::<String>::new());
        assert_eq!(poll["next"], head.as_str());
        assert!(started.elapsed() >= Duration::from_millis(900), "it waited");

        let path = format!("/poll?channel=c&lastEventId={head}&timeout=10");
        let target = Target::from(&gw);
        let waiting = tokio::spawn(async move {
            // For the keep-alive arrivals the poll is the connection's second request.
            let mut client = Client::connect(arrival, target).await;
            let (status, text) = client
                .call(Method::GET, &path, &[], empty())
                .await
                .expect("poll");
            (
                status,
                serde_json::from_str::<serde_json::Value>(&text).expect("json"),
            )
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let fourth = control.publish("c", "4").await;
        let (status, poll) = waiting.await.expect("poll task");
        assert_eq!(status, 200, "{poll}");
        assert_eq!(data(&poll["messages"]), ["4"]);
        assert_eq!(poll["next"], fourth.as_str());

        for (path, code) in [
            ("/poll?channel=c&timeout=soon", "invalid_parameter"),
            ("/poll?channel=c&lastEventId=nope", "bad_cursor"),
            ("/history?channel=c&since=nope", "bad_position"),
            ("/history", "missing_channel"),
        ] {
            let (status, body) = get(arrival, &gw, path).await;
            assert_eq!(status, 400, "{path}: {body}");
            assert_error(&body, code);
        }
    })
    .await;
}
