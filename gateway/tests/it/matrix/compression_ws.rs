//! WebSocket `permessage-deflate` (issue 15) on every HTTP/1.1 arrival, written by hand so the
//! frames' RSV1 bits can be seen: the negotiation answer, events compressed (RSV1) that inflate
//! to the exact message — referring back into the one before when the gateway keeps its
//! context, standing alone when the client or the operator asks — compressed commands
//! inflated, and a deflate bomb closed with 1009.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::CLOSE_TOO_BIG;
use crate::common::WAIT;
use crate::common::arrival::*;

const ON: &[(&str, &str)] = &[("GATEWAY__COMPRESSION__WS", "true")];

/// The upgrade request, offering `extensions`; the 101 head (lowercased) and bytes after it.
async fn upgrade(io: &mut BoxIo, extensions: &str) -> (String, Vec<u8>) {
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\n\
         Sec-WebSocket-Extensions: {extensions}\r\n\r\n",
        super::WS_KEY
    );
    write_flush(io, req.as_bytes()).await;
    let mut buf = Vec::new();
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
            return (head, buf[i + 4..].to_vec());
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, io.read(&mut chunk))
            .await
            .expect("101")
            .expect("read");
        assert!(n > 0, "closed during the handshake");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A masked client frame; `rsv1`: the message is compressed.
fn frame(op: u8, rsv1: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | op | if rsv1 { 0x40 } else { 0 }];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [1u8, 2, 3, 4];
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// One server frame: (first byte, payload).
async fn next_frame(io: &mut BoxIo, buf: &mut Vec<u8>) -> (u8, Vec<u8>) {
    loop {
        if buf.len() >= 2 {
            let (header, len) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
                127 if buf.len() >= 10 => (
                    10,
                    u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                ),
                126 | 127 => (usize::MAX, 0),
                n => (2, n as usize),
            };
            if header != usize::MAX && buf.len() >= header + len {
                let payload = buf[header..header + len].to_vec();
                let first = buf[0];
                buf.drain(..header + len);
                return (first, payload);
            }
        }
        let mut chunk = [0u8; 16384];
        let n = tokio::time::timeout(WAIT, io.read(&mut chunk))
            .await
            .expect("a frame")
            .expect("read");
        assert!(n > 0, "closed before a whole frame");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The next text message, inflated when RSV1 says it is compressed — through `window`, which a
/// client keeps between messages unless the server answered `server_no_context_takeover` — and
/// its compressed size (`None`: it came plain).
async fn next_text(
    io: &mut BoxIo,
    buf: &mut Vec<u8>,
    window: &mut Decompress,
) -> (serde_json::Value, Option<usize>) {
    loop {
        let (first, mut payload) = next_frame(io, buf).await;
        match first & 0x0f {
            0x1 => {
                let compressed = (first & 0x40 != 0).then_some(payload.len());
                if compressed.is_some() {
                    payload.extend_from_slice(&[0, 0, 0xff, 0xff]);
                    let mut out = Vec::with_capacity(1 << 16);
                    window
                        .decompress_vec(&payload, &mut out, FlushDecompress::Sync)
                        .expect("inflate");
                    payload = out;
                }
                return (serde_json::from_slice(&payload).expect("JSON"), compressed);
            }
            0x9 | 0xa => {}
            op => panic!("unexpected frame {op}: {payload:?}"),
        }
    }
}

/// An update that repeats most of its predecessor, as state updates do.
fn quote(i: u32) -> String {
    format!(
        r#"{{"seq":{i},"symbol":"ACME","bid":{},"ask":{},"venue":"XNAS","note":"quote update for the ACME order book"}}"#,
        100 + i,
        101 + i
    )
}

/// A message compressed as a client with no context takeover would.
fn deflated(text: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(text.len() + 64);
    c.compress_vec(text, &mut out, FlushCompress::Sync).unwrap();
    out.truncate(out.len() - 4);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_events_are_compressed_once_and_commands_inflated() {
    each(&Arrival::WS, |arrival| async move {
        let gw = arrival.gateway(ON).await;
        let mut control = Control::new(&gw);
        // Two events before the subscribe, delivered from history, then live ones.
        let mut ids = Vec::new();
        for i in 0..2 {
            ids.push(control.publish("zws", &quote(i)).await);
        }
        let mut io = raw(arrival, &gw).await;
        let (head, mut buf) = upgrade(&mut io, "permessage-deflate; client_max_window_bits").await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        // Chromium's offer: the gateway keeps its context (no server_no_context_takeover).
        assert!(
            head.lines()
                .any(|l| l
                    == "sec-websocket-extensions: permessage-deflate; client_no_context_takeover"),
            "{head}"
        );
        let mut window = Decompress::new(false);
        // A compressed subscribe.
        let subscribe =
            br#"{"type":"subscribe","channel":"zws","latest":2,"req":"compressed subscribe"}"#;
        write_flush(&mut io, &frame(0x1, true, &deflated(subscribe))).await;
        let (reply, _) = next_text(&mut io, &mut buf, &mut window).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        assert_eq!(reply["req"], "compressed subscribe");
        let mut sizes = Vec::new();
        for i in 0..6 {
            if i >= 2 {
                ids.push(control.publish("zws", &quote(i)).await);
            }
            let (event, compressed) = next_text(&mut io, &mut buf, &mut window).await;
            assert_eq!(event["id"], ids[i as usize].as_str(), "{event}");
            assert_eq!(event["data"], quote(i).as_str());
            sizes.push(compressed.expect("events are compressed"));
        }
        // From the second live event on, each refers back into the one before (the first
        // live one follows an event this instance did not fan out, so it stands alone).
        for later in &sizes[3..] {
            assert!(*later * 2 < sizes[2], "{sizes:?}");
        }
        // A deflate bomb: small on the wire, far past ws.max_message_bytes once inflated.
        let bomb = deflated(&vec![b' '; 8 << 20]);
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        write_flush(&mut io, &frame(0x1, true, &bomb)).await;
        loop {
            let (first, payload) = next_frame(&mut io, &mut buf).await;
            if first & 0x0f == 0x8 {
                assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), CLOSE_TOO_BIG);
                break;
            }
        }
        let _ = io.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_messages_stand_alone_when_the_client_or_the_operator_asks() {
    each(&Arrival::WS, |arrival| async move {
        let off: &[(&str, &str)] = &[
            ON[0],
            ("GATEWAY__COMPRESSION__WS_SERVER_CONTEXT_TAKEOVER", "false"),
        ];
        for (env, offer) in [
            (ON, "permessage-deflate; server_no_context_takeover"),
            (off, "permessage-deflate; client_max_window_bits"),
        ] {
            let gw = arrival.gateway(env).await;
            let mut control = Control::new(&gw);
            let mut io = raw(arrival, &gw).await;
            let (head, mut buf) = upgrade(&mut io, offer).await;
            assert!(head.contains("server_no_context_takeover"), "{head}");
            let subscribe = br#"{"type":"subscribe","channel":"zws"}"#;
            write_flush(&mut io, &frame(0x1, false, subscribe)).await;
            let (reply, _) = next_text(&mut io, &mut buf, &mut Decompress::new(false)).await;
            assert_eq!(reply["type"], "subscribed", "{reply}");
            for i in 0..3 {
                let id = control.publish("zws", &quote(i)).await;
                // Every message inflates from an empty window.
                let (event, compressed) =
                    next_text(&mut io, &mut buf, &mut Decompress::new(false)).await;
                assert_eq!(event["id"], id.as_str(), "{offer}");
                assert!(compressed.is_some());
            }
            let _ = io.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_compression_is_declined_when_off_or_unanswerable() {
    each(&Arrival::WS, |arrival| async move {
        let gw = arrival.gateway(&[]).await;
        let mut io = raw(arrival, &gw).await;
        let (head, mut buf) = upgrade(&mut io, "permessage-deflate").await;
        assert!(
            head.starts_with("http/1.1 101") && !head.contains("sec-websocket-extensions"),
            "{head}"
        );
        // Without the extension, RSV1 is a protocol error (1002).
        write_flush(&mut io, &frame(0x1, true, &deflated(b"{}"))).await;
        let (first, payload) = next_frame(&mut io, &mut buf).await;
        assert_eq!(first & 0x0f, 0x8);
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1002);

        let gw = arrival.gateway(ON).await;
        let mut io = raw(arrival, &gw).await;
        let (head, _) = upgrade(&mut io, "permessage-deflate; server_max_window_bits=7").await;
        assert!(
            head.starts_with("http/1.1 101") && !head.contains("sec-websocket-extensions"),
            "{head}"
        );
    })
    .await;
}
