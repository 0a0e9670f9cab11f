//! Publishers' connections: an HTTP/1.1 connection whose first request is `POST /publish` moves
//! to the publish thread (`front::publish_thread`). Whatever comes next on it is served the
//! same as anywhere (streams included), and it does not hold up the SIGTERM drain.

use std::time::Duration;

use http::Method;

use crate::common::arrival::*;
use crate::common::metric;

const JSON: (&str, &str) = ("content-type", "application/json");

fn body(data: &str) -> String {
    serde_json::json!({ "channel": "moved", "data": data }).to_string()
}

async fn publish_on(client: &mut Client, data: &str) -> String {
    let (status, text) = client
        .call(Method::POST, "/publish", &[JSON], full(body(data)))
        .await
        .unwrap_or_else(|e| panic!("POST /publish: {e}"));
    assert_eq!(status, 200, "{text}");
    let reply: serde_json::Value = serde_json::from_str(&text).expect("JSON reply");
    reply["id"].as_str().expect("id").to_owned()
}

/// Whether a connection of `arrival` whose next request is `POST /publish` moves: only when
/// that is its first request, on HTTP/1.1.
fn moves(arrival: Arrival) -> bool {
    !arrival.later() && !arrival.http2()
}

/// On every arrival: two publishes on one connection, then on that same connection a stream
/// that resumes after the first and receives a live event published on another connection;
/// `gateway_publish_thread_connections_total` counts exactly the connections that moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publishers_connection_serves_any_request_on_every_arrival() {
    each(&Arrival::ALL, |arrival| async move {
        let gw = arrival.gateway(&[]).await;
        let mut publisher = Client::connect(arrival, &gw).await;
        let first = publish_on(&mut publisher, "one").await;
        let second = publish_on(&mut publisher, "two").await;
        let mut stream = publisher
            .into_sse("/sse?channel=moved", &[("last-event-id", &first)])
            .await;
        let got = stream.next().await;
        assert_eq!(
            (got.id.as_str(), got.data.as_str()),
            (second.as_str(), "two")
        );
        let mut other = Client::connect(arrival, &gw).await;
        let third = publish_on(&mut other, "three").await;
        let got = stream.next().await;
        assert_eq!(
            (got.id.as_str(), got.data.as_str()),
            (third.as_str(), "three")
        );

        let mut control = Control::new(&gw);
        let text = control.metrics().await;
        let moved = metric(&text, "gateway_publish_thread_connections_total");
        // The publisher's and the other connection's; the control connection asked for
        // /metrics first, so it stays.
        let expected = if moves(arrival) { 2.0 } else { 0.0 };
        assert_eq!(moved, expected, "[{arrival}] connections moved");
    })
    .await;
}

/// SIGTERM with a publisher's idle connection and a stream on the publish thread: the stream
/// gets the closing comment, and the process exits 0 well within its shutdown timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_publish_thread_drains_on_sigterm() {
    each(&[Arrival::First, Arrival::Tls], |arrival| async move {
        const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(4);
        let gw = arrival
            .gateway(&[("GATEWAY__SERVER__SHUTDOWN_TIMEOUT_SECONDS", "4")])
            .await;
        let mut idle = Client::connect(arrival, &gw).await;
        publish_on(&mut idle, "idle").await;
        let mut streaming = Client::connect(arrival, &gw).await;
        publish_on(&mut streaming, "streaming").await;
        let mut stream = streaming.into_sse("/sse?channel=moved", &[]).await;
        stream.ready().await;
        assert_sigterm_drains(gw, stream, SHUTDOWN_TIMEOUT).await;
        drop(idle);
    })
    .await;
}
