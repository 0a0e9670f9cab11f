//! The front door: a connection's first streaming request is served on the raw socket, every
//! other request by actix; both paths must look the same to clients.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_sse_request_is_served_raw_close_delimited_with_cors() {
    let gw = Gateway::spawn(&[("GATEWAY__CORS__ALLOW_ORIGINS", "https://app.example")]);
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /sse?channel=raw HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    read_until(&mut s, &mut buf, "the prelude", |t| {
        t.contains("\n\nid: ") || t.ends_with("\n\n")
    })
    .await;
    let head = head_of(&buf);
    assert!(head.starts_with("http/1.1 200 ok"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(
        head.contains("access-control-allow-origin: https://app.example"),
        "{head}"
    );
    assert!(head.contains("connection: close"), "{head}");
    assert!(
        !head.contains("transfer-encoding"),
        "a raw stream is not chunked: {head}"
    );

    let text = metrics_text(&gw.url("")).await;
    assert_eq!(metric(&text, "gateway_connections{transport=\"sse\"}"), 1.0);
    publish(&gw.url(""), "raw", "hello").await;
    read_until(&mut s, &mut buf, "the event", |t| {
        t.contains("data: hello\n\n")
    })
    .await;

    // A client that leaves frees its connection at once.
    drop(s);
    eventually("the connection to be released", async || {
        let text = metrics_text(&gw.url("")).await;
        metric(&text, "gateway_connections{transport=\"sse\"}") == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_on_the_raw_path_are_json_with_cors_and_close_the_connection() {
    let gw = Gateway::spawn(&[("GATEWAY__CORS__ALLOW_ORIGINS", "*")]);
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /sse HTTP/1.1\r\nHost: x\r\nOrigin: https://elsewhere.example\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&reply);
    let head = head_of(&reply);
    assert!(head.starts_with("http/1.1 400 bad request"), "{text}");
    assert!(head.contains("content-type: application/json"), "{text}");
    assert!(head.contains("access-control-allow-origin: *"), "{text}");
    let body: serde_json::Value =
        serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"], "missing_channel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_arriving_in_pieces_is_still_served() {
    let gw = Gateway::spawn(&[]);
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    for piece in [
        &b"GET /s"[..],
        b"se?channel=slow HTTP/1.1\r\nHo",
        b"st: x\r\n",
        b"\r\n",
    ] {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut buf = Vec::new();
    read_until(&mut s, &mut buf, "the prelude", |t| {
        t.contains("\r\n\r\nretry:")
    })
    .await;
    publish(&gw.url(""), "slow", "made it").await;
    read_until(&mut s, &mut buf, "the event", |t| {
        t.contains("data: made it\n\n")
    })
    .await;
}

/// Behind a proxy with upstream keep-alive (nginx `keepalive`), a stream can be the second
/// request of a connection; actix serves it then, and it must work the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_on_a_reused_keep_alive_connection_are_served_by_hyper() {
    let gw = Gateway::spawn(&[]);

    let mut s = after_one_request(gw.addr).await;
    s.write_all(b"GET /sse?channel=reused HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    read_until(&mut s, &mut buf, "the stream head", |t| {
        t.contains("\r\n\r\n")
    })
    .await;
    let head = head_of(&buf);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("transfer-encoding: chunked"),
        "served by hyper, chunked: {head}"
    );
    publish(&gw.url(""), "reused", "via actix").await;
    read_until(&mut s, &mut buf, "the event", |t| {
        t.contains("data: via actix\n\n")
    })
    .await;

    let s = after_one_request(gw.addr).await;
    let (mut ws, _) = tokio_tungstenite::client_async(ws_url(gw.addr), s)
        .await
        .unwrap();
    ws.send(Message::text(
        r#"{"type":"subscribe","channel":"reused-ws"}"#,
    ))
    .await
    .unwrap();
    let reply = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(reply.to_text().unwrap().contains("subscribed"), "{reply:?}");
    publish(&gw.url(""), "reused-ws", "ws via actix").await;
    let event = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        event.to_text().unwrap().contains("ws via actix"),
        "{event:?}"
    );
}
