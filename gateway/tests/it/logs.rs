//! What the gateway writes to its logs: never a token from a query string (at any level, on
//! any arrival), and malformed input summarized at WARN at most once a minute rather than one
//! line each.

use std::time::Duration;

use crate::common::arrival::*;
use crate::common::{Gateway, LOG_CAPTURE_FILE, unique};
use crate::matrix::{SECRET, token};

fn capture_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique("gw-logs-"));
    std::fs::create_dir_all(&dir).expect("dir");
    dir.join(name)
}

/// A gateway's log after it stopped (its capture directory removed).
fn log_of(gw: Gateway, path: &std::path::Path) -> String {
    drop(gw);
    let log = std::fs::read_to_string(path).expect("captured log");
    if let Some(dir) = path.parent() {
        std::fs::remove_dir_all(dir).ok();
    }
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn query_tokens_never_reach_the_log_at_any_level() {
    each(&Arrival::ALL, |arrival| async move {
        let path = capture_file("trace.log");
        let path_text = path.to_str().expect("path").to_owned();
        let gw = arrival
            .gateway(&[
                ("GATEWAY__AUTH__JWT_SECRET", SECRET),
                ("GATEWAY__PUBLISH__ALLOW_ANONYMOUS", "true"),
                ("RUST_LOG", "trace"),
                (LOG_CAPTURE_FILE, &path_text),
            ])
            .await;
        let good = token(&["c"]);
        let mut stream = sse(arrival, &gw, &format!("/sse?channel=c&token={good}"), &[]).await;
        stream.ready().await;
        let bearer = format!("Bearer {good}");
        let mut header = sse(
            arrival,
            &gw,
            "/sse?channel=c",
            &[("authorization", &bearer)],
        )
        .await;
        header.ready().await;
        drop(header);
        // Refused tokens too: a bad token is as secret as a good one.
        let bad = format!("{good}x");
        let reply = open_sse(arrival, &gw, &format!("/sse?channel=c&token={bad}"), &[]).await;
        assert_eq!(reply.status, 401);
        if arrival.websocket() {
            let mut ws = open_ws(arrival, &gw, &format!("?token={good}"), &[])
                .await
                .expect("upgraded");
            ws.subscribe("c", None).await;
            ws.send(serde_json::json!({"type": "auth", "token": good}))
                .await;
            ws.expect("authenticated").await;
        }
        drop(stream);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let log = log_of(gw, &path);
        assert!(log.lines().count() > 10, "trace logging was on: {log}");
        // The signature is the secret part; the payload is base64 of public claims.
        let signature = good.rsplit('.').next().expect("signature");
        assert!(
            !log.contains(signature),
            "a token reached the log:\n{}",
            log.lines()
                .filter(|l| l.contains(signature))
                .collect::<Vec<_>>()
                .join("\n")
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_malformed_requests_logs_one_warning() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let path = capture_file("info.log");
    let path_text = path.to_str().expect("path").to_owned();
    let gw = Gateway::spawn(&[("RUST_LOG", "info"), (LOG_CAPTURE_FILE, &path_text)]);
    let heads: [&[u8]; 3] = [
        b"GET /sse?channel=c HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        b"\x16\x03\x01 this is not HTTP\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nbad header line\r\n\r\n",
    ];
    for i in 0..60 {
        let mut tcp = tokio::net::TcpStream::connect(gw.addr)
            .await
            .expect("connect");
        tcp.write_all(heads[i % heads.len()]).await.expect("write");
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut reply)).await;
    }
    let log = log_of(gw, &path);
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("malformed")).collect();
    assert_eq!(
        warnings.len(),
        1,
        "one summary line, not one per request:\n{log}"
    );
    assert!(warnings[0].contains("WARN"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_access_log_has_every_request_without_its_query() {
    each(&Arrival::ALL, |arrival| async move {
        let path = capture_file("access.log");
        let path_text = path.to_str().expect("path").to_owned();
        let gw = arrival
            .gateway(&[
                ("GATEWAY__LOG__ACCESS", "true"),
                ("GATEWAY__SERVER__TRUSTED_PROXIES", "127.0.0.1"),
                ("RUST_LOG", "info"),
                (LOG_CAPTURE_FILE, &path_text),
            ])
            .await;
        let xff = [("x-forwarded-for", "198.51.100.77")];
        let mut stream = sse(arrival, &gw, "/sse?channel=c&token=secret-in-query", &xff).await;
        stream.ready().await;
        let reply = open_sse(arrival, &gw, "/sse?channel=a%7B", &[]).await;
        assert_eq!(reply.status, 400);
        drop(stream);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let log = log_of(gw, &path);
        let access: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("gateway::access"))
            .collect();
        assert!(
            access.iter().any(|l| l.contains("path=\"/sse\"")
                && l.contains("status=200")
                && l.contains("client=198.51.100.77")),
            "{log}"
        );
        assert!(
            access
                .iter()
                .any(|l| l.contains("status=400") && l.contains("client=127.0.0.1")),
            "{log}"
        );
        assert!(!log.contains("secret-in-query"), "{log}");
    })
    .await;
}
