//! Raw-socket helpers for tests that speak HTTP/1.1 byte by byte.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

/// Reads from `s` into `buf` until `done(buf)` holds; panics after [`WAIT`].
pub async fn read_until(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    what: &str,
    done: impl Fn(&str) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(&String::from_utf8_lossy(buf)) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {what} within {WAIT:?}: {:?}",
                    String::from_utf8_lossy(buf)
                )
            })
            .unwrap();
        assert!(
            n > 0,
            "closed before {what}: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

pub fn head_of(buf: &[u8]) -> String {
    let text = String::from_utf8_lossy(buf);
    text.split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// A keep-alive connection that has served one request (`GET /healthz`) and is idle again.
pub async fn after_one_request(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    read_until(&mut s, &mut buf, "the health answer", |t| {
        t.contains("\r\n\r\n")
    })
    .await;
    assert!(
        head_of(&buf).starts_with("http/1.1 200"),
        "{}",
        head_of(&buf)
    );
    // The answer is short; let its body arrive too, then the connection is idle for reuse.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut rest = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(100), s.read(&mut rest)).await;
    s
}
