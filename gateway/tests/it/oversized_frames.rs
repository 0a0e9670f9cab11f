//! A frame header announcing a huge payload is refused from the header, on every way a
//! WebSocket can arrive: its payload is never buffered, so the gateway's memory stays flat while
//! a hostile client keeps streaming it.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// How much the hostile client streams at most; the gateway must not keep any of it.
const STREAMED: usize = 256 << 20;
/// RSS the gateway may gain meanwhile (allocator noise, the connection itself).
const RSS_SLACK_KIB: u64 = 16 * 1024;

/// Upgrades `s` to a WebSocket (RFC 6455 example key) and returns what followed the 101 head.
async fn upgrade(s: &mut TcpStream) -> Vec<u8> {
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("no upgrade answer")
            .unwrap();
        assert!(n > 0, "closed before the upgrade answer");
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    buf[end..].to_vec()
}

/// Sends a masked binary frame header announcing 2^40 payload bytes, then streams zeros until
/// the gateway closes; returns the close code it sent and the largest RSS growth seen.
async fn stream_a_huge_frame(s: TcpStream, pid: u32, mut pending: Vec<u8>) -> (Option<u16>, u64) {
    let before = rss_kib(pid);
    let (mut read, mut write) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut header = vec![0x82, 0xFF];
        header.extend_from_slice(&(1u64 << 40).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        if write.write_all(&header).await.is_err() {
            return;
        }
        let zeros = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while sent < STREAMED {
            if write.write_all(&zeros).await.is_err() {
                return;
            }
            sent += zeros.len();
        }
    });
    let mut growth = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    let code = loop {
        growth = growth.max(rss_kib(pid).saturating_sub(before));
        if pending.len() >= 4 && pending[0] == 0x88 {
            break Some(u16::from_be_bytes([pending[2], pending[3]]));
        }
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout_at(deadline, read.read(&mut chunk)).await {
            Err(_) => panic!("no close frame within {WAIT:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => break None,
            Ok(Ok(n)) => pending.extend_from_slice(&chunk[..n]),
        }
    };
    // Whatever the client still streams after the close must not be kept either.
    tokio::time::sleep(Duration::from_millis(300)).await;
    growth = growth.max(rss_kib(pid).saturating_sub(before));
    writer.abort();
    (code, growth)
}

async fn assert_refused_from_the_header(s: TcpStream, gw: &Gateway) {
    let mut s = s;
    let pending = upgrade(&mut s).await;
    let (code, growth) = stream_a_huge_frame(s, gw.pid(), pending).await;
    assert_eq!(code, Some(1009), "closed with 1009 (message too big)");
    assert!(
        growth < RSS_SLACK_KIB,
        "the gateway's RSS grew by {growth} KiB while a client streamed an oversized frame"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_frame_on_a_first_request_is_closed_with_1009_without_buffering() {
    let gw = Gateway::spawn(&[]);
    let s = TcpStream::connect(gw.addr).await.unwrap();
    assert_refused_from_the_header(s, &gw).await;
}

/// The regression: an upgrade arriving as a later request on a keep-alive connection reached
/// actix-ws, which buffered the whole announced payload (300 MiB sent grew RSS by 300 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_frame_on_a_keep_alive_upgrade_is_closed_with_1009_without_buffering() {
    let gw = Gateway::spawn(&[]);
    let s = after_one_request(gw.addr).await;
    assert_refused_from_the_header(s, &gw).await;
}

/// Frames sent in the same packet as the upgrade request are read by the session, not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sent_with_a_keep_alive_upgrade_are_read() {
    let gw = Gateway::spawn(&[]);
    let mut s = after_one_request(gw.addr).await;
    let mut packet =
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            .to_vec();
    let ping = br#"{"type":"ping","req":7}"#;
    packet.extend_from_slice(&[0x81, 0x80 | ping.len() as u8, 0, 0, 0, 0]);
    packet.extend_from_slice(ping);
    s.write_all(&packet).await.unwrap();
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !String::from_utf8_lossy(&buf).contains(r#""type":"pong""#) {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("no pong")
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}
