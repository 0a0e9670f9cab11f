//! The backend authorization hook against a real local backend: cookies decide, answers are
//! cached, a refusal is 401/403 (4500 on a WebSocket), a slow or dead backend is 503.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::common::arrival::*;
use crate::common::{Gateway, WsItem};
use crate::matrix::assert_error;

/// A backend on a free port that authorizes by cookie: `session=alice` may read `news`,
/// `session=slow` answers after 3 s, anyone else is refused 403. Counts what it is asked, and
/// records the request bodies.
struct Backend {
    url: String,
    asked: Arc<AtomicUsize>,
    bodies: Arc<parking_lot::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/authorize", listener.local_addr().expect("addr"));
        let asked = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (a, b) = (asked.clone(), bodies.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    return;
                };
                let (a, b) = (a.clone(), b.clone());
                tokio::spawn(async move {
                    let Some((head, body)) = read_request(&mut tcp).await else {
                        return;
                    };
                    a.fetch_add(1, Ordering::SeqCst);
                    b.lock().push(body);
                    let cookie = head
                        .lines()
                        .find_map(|l| l.strip_prefix("cookie: "))
                        .unwrap_or("")
                        .to_owned();
                    let (status, json) = match cookie.as_str() {
                        "session=alice" => ("200 OK", r#"{"sub":"alice","channels":["news"]}"#),
                        "session=slow" => {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            ("200 OK", r#"{"channels":["news"]}"#)
                        }
                        _ => ("403 Forbidden", r#"{"error":"no"}"#),
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
                        json.len()
                    );
                    let _ = tcp.write_all(reply.as_bytes()).await;
                });
            }
        });
        Self {
            url,
            asked,
            bodies,
            task,
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request: its head (lower-cased header names) and body.
async fn read_request(tcp: &mut tokio::net::TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tcp.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head: String = String::from_utf8_lossy(&buf[..end])
            .lines()
            .map(|l| match l.split_once(':') {
                Some((k, v)) => format!("{}: {}\n", k.to_ascii_lowercase(), v.trim()),
                None => format!("{l}\n"),
            })
            .collect();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < end + 4 + length {
            let n = tcp.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned();
        return Some((head, body));
    }
}

async fn gateway(arrival: Arrival, url: &str) -> Gateway {
    arrival
        .gateway(&[
            ("GATEWAY__AUTH__HOOK_URL", url),
            ("GATEWAY__AUTH__HOOK_TIMEOUT_MS", "500"),
            ("GATEWAY__PUBLISH__ALLOW_ANONYMOUS", "true"),
        ])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hook_allows_refuses_and_is_cached_on_every_arrival() {
    each(&Arrival::ALL, |arrival| async move {
        let backend = Backend::start().await;
        let gw = gateway(arrival, &backend.url).await;
        let alice = [("cookie", "session=alice")];
        let mut stream = sse(arrival, &gw, "/sse?channel=news", &alice).await;
        stream.ready().await;
        let mut control = Control::new(&gw);
        control.publish("news", "hello").await;
        assert_eq!(stream.next().await.data, "hello");
        let body: serde_json::Value =
            serde_json::from_str(&backend.bodies.lock()[0]).expect("JSON body");
        assert_eq!(body["transport"], "sse");
        assert_eq!(body["channels"], serde_json::json!(["news"]));

        // The same credentials and channels again: from the cache.
        let again = sse(arrival, &gw, "/sse?channel=news", &alice).await;
        drop(again);
        assert_eq!(backend.asked.load(Ordering::SeqCst), 1);

        // Alice's grant does not cover `admin`.
        let reply = open_sse(arrival, &gw, "/sse?channel=admin", &alice).await;
        assert_eq!(reply.status, 403);
        // The backend refuses mallory; no cookie at all is refused the same way.
        for headers in [&[("cookie", "session=mallory")][..], &[][..]] {
            let reply = open_sse(arrival, &gw, "/sse?channel=news", headers).await;
            assert_eq!(reply.status, 403, "{headers:?}");
            assert_error(&reply.json().await, "forbidden");
        }

        if arrival.websocket() {
            let mut ws = open_ws(arrival, &gw, "", &alice).await.expect("upgraded");
            ws.subscribe("news", None).await;
            ws.send(serde_json::json!({"type": "subscribe", "channel": "admin"}))
                .await;
            assert_eq!(ws.expect("error").await["code"], "forbidden");
            let mut refused = open_ws(arrival, &gw, "", &[("cookie", "session=mallory")])
                .await
                .expect("upgraded, then closed");
            match refused.recv().await {
                WsItem::Closed(Some((code, _))) => assert_eq!(code, 4500),
                other => panic!("expected close 4500, got {other:?}"),
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_or_dead_hook_is_503_never_an_open_door() {
    each(&Arrival::ALL, |arrival| async move {
        let backend = Backend::start().await;
        let gw = gateway(arrival, &backend.url).await;
        let reply = open_sse(
            arrival,
            &gw,
            "/sse?channel=news",
            &[("cookie", "session=slow")],
        )
        .await;
        assert_eq!(reply.status, 503);
        assert!(reply.header("retry-after").is_some());
        assert_error(&reply.json().await, "auth_unavailable");

        // A port nothing listens on.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            format!("http://{}/authorize", l.local_addr().expect("addr"))
        };
        let gw = gateway(arrival, &dead).await;
        let reply = open_sse(
            arrival,
            &gw,
            "/sse?channel=news",
            &[("cookie", "session=alice")],
        )
        .await;
        assert_eq!(reply.status, 503);
        if arrival.websocket() {
            let refused = open_ws(arrival, &gw, "", &[("cookie", "session=alice")]).await;
            assert_eq!(refused.err().map(|(status, _)| status), Some(503));
        }
    })
    .await;
}
