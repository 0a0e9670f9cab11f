//! Hostile and absurd input: a clear refusal every time, never a panic, a hang or unbounded
//! memory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;

fn raw_request(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_are_timed_out() {
    let gw = Gateway::spawn(&[("GATEWAY__SERVER__REQUEST_TIMEOUT_SECONDS", "2")]);
    let addr = gw.addr;
    let outcome = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let started = Instant::now();
        let request = b"GET /sse?channel=drip HTTP/1.1\r\nHost: x\r\nX-Padding: ";
        let mut buf = [0u8; 1024];
        for byte in request.iter().chain(std::iter::repeat(&b'a')) {
            if s.write_all(&[*byte]).is_err() {
                return started.elapsed();
            }
            match s.read(&mut buf) {
                Ok(_) => return started.elapsed(), // 408 or EOF: the server gave up on us
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return started.elapsed(),
            }
            if started.elapsed() > Duration::from_secs(15) {
                break;
            }
        }
        started.elapsed()
    })
    .await
    .unwrap();
    assert!(
        outcome < Duration::from_secs(6),
        "a trickling client held its connection for {outcome:?}"
    );
    // The instance still serves everyone else.
    assert_eq!(
        http()
            .get(gw.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_and_invalid_utf8_are_refused() {
    let gw = Gateway::spawn(&[]);
    let huge = format!(
        "GET /sse?channel=a HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(200 * 1024)
    );
    let reply = raw_request(gw.addr, huge.as_bytes());
    assert!(
        reply.starts_with("HTTP/1.1 431"),
        "{}",
        &reply[..reply.len().min(200)]
    );

    let bad_id = b"GET /sse?channel=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: \xff\xfe:1\r\nConnection: close\r\n\r\n";
    let reply = raw_request(gw.addr, bad_id);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains(r#""error":"bad_cursor""#), "{reply}");

    let bad_query = b"GET /sse?channel=%ff%fe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let reply = raw_request(gw.addr, bad_query);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains(r#""error":"invalid_channel""#), "{reply}");

    let bad_body = b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\n\xff\xfe";
    let reply = raw_request(gw.addr, bad_body);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert_eq!(
        http()
            .get(gw.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_also_guards_websockets() {
    let gw = Gateway::spawn(&[("GATEWAY__SERVER__MAX_CONNECTIONS", "2")]);
    let _a = Ws::connect(&ws_url(gw.addr)).await;
    let mut sse = Sse::connect(&gw.url("/sse?channel=x"), None).await;
    sse.ready().await;
    assert_eq!(
        Ws::try_connect(&ws_url(gw.addr), &[])
            .await
            .err()
            .as_deref(),
        Some("HTTP 503")
    );
    let res = http().get(gw.url("/sse?channel=y")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    drop(sse);
    eventually("a slot to free up", async || {
        Ws::try_connect(&ws_url(gw.addr), &[]).await.is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_unsubscribe_floods_leave_no_state_behind() {
    let gw = Gateway::spawn(&[("GATEWAY__WS__COMMANDS_PER_SECOND", "5000")]);
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Ws::connect(&ws_url(gw.addr)).await);
    }
    for round in 0..50 {
        for (i, ws) in clients.iter_mut().enumerate() {
            let channel = format!("flood-{}", (round + i) % 7);
            ws.send(json!({"type": "subscribe", "channel": channel}))
                .await;
            ws.send(json!({"type": "unsubscribe", "channel": channel}))
                .await;
        }
    }
    // Every command is answered (subscribed / unsubscribed / error) and nothing is left over.
    for ws in &mut clients {
        ws.send(json!({"type": "ping", "req": "end"})).await;
        loop {
            match ws.recv().await {
                WsItem::Json(v) if v["type"] == "pong" => break,
                WsItem::Json(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    eventually("hub state to drain", async || {
        let m = metrics_text(&gw.url("")).await;
        metric(&m, "gateway_subscriptions") == 0.0 && metric(&m, "gateway_channels") == 0.0
    })
    .await;
    drop(clients);
    eventually("connections to close", async || {
        metric(
            &metrics_text(&gw.url("")).await,
            r#"gateway_connections{transport="ws"}"#,
        ) == 0.0
    })
    .await;
}
