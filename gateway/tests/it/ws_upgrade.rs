//! What a client sends right behind its WebSocket upgrade request, in the same packet, is read
//! by the session (hyper hands those bytes back with the socket), on a keep-alive connection
//! too. Oversized frames on every arrival are in `matrix::hostile`.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

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
