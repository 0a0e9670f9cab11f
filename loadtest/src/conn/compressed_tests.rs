//! `--compressed` subscribers against fake servers that compress as the gateway does (pieces
//! chained after the previous event), with and without `--inflate-once`: every event accounted
//! exactly, and data that cannot be inflated counted as `malformed`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::{Phase, Shared, SubPlan, SubResult, Transport, subscriber, unix_micros};
use crate::deflate_testing::{GZIP_HEADER, message, piece, server_text_frame, stored};
use crate::phase::PhaseTx;
use crate::publish::Book;
use crate::stats::Stats;

/// Events each fake server sends.
const EVENTS: u64 = 4;

/// Reads a request head (up to the blank line).
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Serves one connection: `respond` gets the request head and returns what to write, and
/// what to write 100 ms later (after what came before was read: a decoder's error may drop what
/// the same read brought); the connection then stays open.
async fn serve(respond: impl FnOnce(&str) -> (Vec<u8>, Vec<u8>) + Send + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let head = read_head(&mut s).await;
        let (good, bad) = respond(&head);
        // Byte by byte: every split of frames and pieces.
        for b in good {
            s.write_all(&[b]).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(&bad).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    addr
}

/// Runs one subscriber against `addr` until its session ends (or 2 s pass).
async fn run(addr: SocketAddr, transport: Transport, once: bool, no_ctx: bool) -> Arc<Shared> {
    let book = Arc::new(Book::new("c", 1));
    book.attempted[0].store(EVENTS, Ordering::Relaxed);
    let sh = Arc::new(Shared {
        plan: SubPlan {
            compressed: true,
            inflate_once: once,
            ws_no_server_context: no_ctx,
            ..super::tests::plan(&format!("http://{addr}"), transport)
        },
        stats: Stats::new(),
        book,
        storm_start: std::sync::OnceLock::new(),
        watch: std::sync::OnceLock::new(),
    });
    let phase = PhaseTx::new(Phase::Run);
    let task = tokio::spawn(subscriber(0, sh.clone(), phase.subscribe()));
    for _ in 0..200 {
        if Stats::get(&sh.stats.disconnects) + Stats::get(&sh.stats.failed) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    phase.set(Phase::Stop);
    let result: Option<SubResult> = task.await.unwrap();
    if let Some(r) = result {
        assert_eq!(r.seq.final_lost(EVENTS, &[]), 0);
    }
    sh
}

/// Event `seq`'s data.
fn payload(seq: u64) -> Vec<u8> {
    let mut out = Vec::new();
    crate::payload::write_payload(&mut out, seq, unix_micros(), 200);
    out
}

/// A fake gateway's WebSocket answering `extensions`, then sending the subscription, events
/// chained after the previous compressed message (a pong in between), and a compressed
/// message that is no deflate data.
fn ws_server(extensions: &'static str) -> impl FnOnce(&str) -> (Vec<u8>, Vec<u8>) + Send + 'static {
    move |head| {
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap();
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Extensions: {extensions}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        )
        .into_bytes();
        out.extend(server_text_frame(
            br#"{"type":"subscribed","channel":"c0","position":"ab:0"}"#,
            false,
        ));
        let mut prev: Option<Vec<u8>> = None;
        for seq in 0..EVENTS {
            let mut text = format!(
                r#"{{"type":"event","channel":"c0","id":"ab:{}","data":"#,
                seq + 1
            )
            .into_bytes();
            text.extend(payload(seq));
            text.push(b'}');
            out.extend(server_text_frame(&message(prev.as_deref(), &text), true));
            out.extend(server_text_frame(br#"{"type":"pong"}"#, false));
            prev = Some(text);
        }
        (out, server_text_frame(&[0xff, 0xff], true))
    }
}

#[tokio::test]
async fn compressed_ws_subscribers_keep_the_servers_context() {
    for once in [false, true] {
        let addr = serve(ws_server("permessage-deflate; client_no_context_takeover")).await;
        let sh = run(addr, Transport::Ws, once, false).await;
        let c = sh.stats.counters();
        assert_eq!((c.deliveries, c.in_order, c.id_jumps), (EVENTS, EVENTS, 0));
        assert_eq!(c.malformed, 1, "the last message is no deflate data");
        assert_eq!(Stats::get(&sh.stats.ws_context_answers), 1);
        assert_eq!(Stats::get(&sh.stats.inflated_messages), EVENTS + 1);
        assert_eq!(Stats::get(&sh.stats.disconnects), 1);
    }
    // Asked for no server context, answered without it: refused.
    let addr = serve(ws_server("permessage-deflate")).await;
    let sh = run(addr, Transport::Ws, true, true).await;
    assert_eq!(Stats::get(&sh.stats.failed), 1);
    let failures = crate::stats::lock(&sh.stats.failures).clone();
    assert!(
        failures
            .keys()
            .any(|k| k.starts_with("protocol: permessage-deflate without")),
        "{failures:?}"
    );
}

#[tokio::test]
async fn compressed_sse_subscribers_inflate_once_or_streaming_alike() {
    for once in [false, true] {
        let addr = serve(|head| {
            assert!(head.contains("Accept-Encoding: gzip\r\n"));
            let mut body = GZIP_HEADER.to_vec();
            stored(b"retry: 2000\nid: ab:0\n\n", &mut body);
            let mut prev: Option<Vec<u8>> = None;
            for seq in 0..EVENTS {
                let mut frame = Vec::new();
                let id = format!("ab:{}", seq + 1);
                shared::sse::write_event(&mut frame, Some(&id), None, &payload(seq));
                body.extend(piece(prev.as_deref(), &frame, 6));
                if seq == 1 {
                    stored(b": ping\n\n", &mut body);
                    prev = None;
                } else {
                    prev = Some(frame);
                }
            }
            let mut out = b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\n\r\n".to_vec();
            out.extend(body);
            (out, vec![0xff, 0xff, 0x00, 0x00, 0xff, 0xff])
        })
        .await;
        let sh = run(addr, Transport::Sse, once, false).await;
        let c = sh.stats.counters();
        assert_eq!((c.deliveries, c.in_order, c.id_jumps), (EVENTS, EVENTS, 0));
        assert_eq!(c.malformed, 1, "the last piece is no deflate data");
        assert_eq!(Stats::get(&sh.stats.disconnects), 1);
    }
}
