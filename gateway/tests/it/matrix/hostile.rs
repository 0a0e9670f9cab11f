//! Hostile input: oversized heads and frames, RFC 9112's head rules, and trickled heads and
//! bodies (slowloris), refused or timed out the same way on every arrival.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{CLOSE_TOO_BIG, WS_KEY, assert_error};
use crate::common::arrival::*;
use crate::common::rss_kib;

/// A request head beyond 16 KiB is refused: 431 with the JSON error body on HTTP/1.1, never
/// served on HTTP/2; the connection's gateway keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_heads_are_refused_on_every_arrival() {
    each(&Arrival::ALL, |arrival| async move {
        let gw = arrival.gateway(&[]).await;
        let big = "b".repeat(20 * 1024);
        for path in ["/sse?channel=big", "/healthz"] {
            let reply = request(arrival, &gw, Method::GET, path, &[("x-big", &big)], empty()).await;
            eprintln!(
                "[{arrival}] GET {path} with a 20 KiB header: {:?}",
                reply.as_ref().map(|r| r.status)
            );
            match (arrival.http2(), reply) {
                (false, Ok(reply)) => {
                    assert_eq!(reply.status, 431, "GET {path}");
                    assert_error(&reply.json().await, "head_too_large");
                }
                (false, Err(e)) => panic!("GET {path}: no 431 but {e}"),
                (true, Ok(reply)) => assert_eq!(
                    reply.status, 431,
                    "GET {path} with a 20 KiB header over HTTP/2"
                ),
                // A reset stream or connection: refused too.
                (true, Err(_)) => {}
            }
        }
        sse(arrival, &gw, "/sse?channel=after", &[])
            .await
            .ready()
            .await;
    })
    .await;
}

/// Upgrades `io` by hand; the bytes that followed the 101 head.
async fn upgrade(io: &mut BoxIo) -> Vec<u8> {
    let head = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n\r\n"
    );
    write_flush(io, head.as_bytes()).await;
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + crate::common::WAIT;
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout_at(deadline, io.read(&mut chunk))
            .await
            .expect("no upgrade answer")
            .expect("read");
        assert!(n > 0, "closed before the upgrade answer");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    buf[end..].to_vec()
}

/// A frame header announcing 2^40 bytes is refused from the header (close 1009) on every
/// WebSocket arrival, and nothing of the 256 MiB the client goes on streaming is kept. (The
/// regression: an upgrade arriving as a later request on a keep-alive connection once reached
/// actix-ws, which buffered the whole announced payload: 300 MiB sent grew RSS by 300 MiB.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_frames_are_refused_from_the_header_on_every_arrival() {
    const STREAMED: usize = 256 << 20;
    const RSS_SLACK_KIB: u64 = 16 * 1024;
    each(&Arrival::WS, |arrival| async move {
        let gw = arrival.gateway(&[]).await;
        let pid = gw.pid();
        let mut io = raw(arrival, &gw).await;
        let mut pending = upgrade(&mut io).await;
        let before = rss_kib(pid);
        let (mut read, mut write) = tokio::io::split(io);
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
                if write.write_all(&zeros).await.is_err() || write.flush().await.is_err() {
                    return;
                }
                sent += zeros.len();
            }
        });
        let mut growth = 0;
        let deadline = tokio::time::Instant::now() + crate::common::WAIT;
        let code = loop {
            growth = growth.max(rss_kib(pid).saturating_sub(before));
            if pending.len() >= 4 && pending[0] == 0x88 {
                break Some(u16::from_be_bytes([pending[2], pending[3]]));
            }
            let mut chunk = [0u8; 1024];
            match tokio::time::timeout_at(deadline, read.read(&mut chunk)).await {
                Err(_) => panic!("no close frame in time"),
                Ok(Ok(0)) | Ok(Err(_)) => break None,
                Ok(Ok(n)) => pending.extend_from_slice(&chunk[..n]),
            }
        };
        // Whatever the client still streams after the close must not be kept either.
        tokio::time::sleep(Duration::from_millis(300)).await;
        growth = growth.max(rss_kib(pid).saturating_sub(before));
        writer.abort();
        assert_eq!(
            code,
            Some(CLOSE_TOO_BIG),
            "closed with 1009 (message too big)"
        );
        assert!(
            growth < RSS_SLACK_KIB,
            "the gateway's RSS grew by {growth} KiB while a client streamed an oversized frame"
        );
    })
    .await;
}

/// RFC 9112's head rules are applied the same whichever HTTP/1.1 path reads a request, for a
/// stream and a publish alike: a request without exactly one Host is refused with 400
/// `bad_request_head`; a body is framed one way only (RFC 9112 §6.3, as hyper implements it):
/// identical duplicate Content-Lengths count as one, different ones are a 400, and with
/// Transfer-Encoding the Content-Length is ignored and the connection closed after the answer
/// (no request can be smuggled behind it). Every case is tried; the failure lists all that
/// differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn head_rules_are_the_same_on_every_http1_arrival() {
    each(&Arrival::HTTP1, |arrival| async move {
        let gw = arrival.gateway(&[]).await;
        let json = r#"{"channel":"x","data":"y"}"#;
        let chunked = format!("{:x}\r\n{json}\r\n0\r\n\r\n", json.len());
        let cl = |n: usize| format!("Content-Length: {n}\r\n");
        let publish = "POST /publish HTTP/1.1\r\nContent-Type: application/json\r\n";
        let stream = "GET /sse?channel=x HTTP/1.1\r\n";
        // (case, request, expected status, expected error code if any)
        let refused = Some("bad_request_head");
        let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
            (
                "GET /sse without Host",
                format!("{stream}\r\n"),
                400,
                refused,
            ),
            (
                "GET /sse with a header line that is not a header",
                format!("{stream}Host: x\r\nthis is not a header\r\n\r\n"),
                400,
                refused,
            ),
            (
                "a request line that is not HTTP",
                "GET /sse?channel=x HTTP/9.9\r\nHost: x\r\n\r\n".to_owned(),
                400,
                refused,
            ),
            (
                "GET /sse with two Hosts",
                format!("{stream}Host: a\r\nHost: b\r\n\r\n"),
                400,
                refused,
            ),
            (
                "POST /publish without Host",
                format!("{publish}{}\r\n{json}", cl(json.len())),
                400,
                refused,
            ),
            (
                "POST /publish with two Hosts",
                format!(
                    "{publish}Host: a\r\nHost: b\r\n{}\r\n{json}",
                    cl(json.len())
                ),
                400,
                refused,
            ),
            (
                "POST /publish with two different Content-Lengths",
                format!(
                    "{publish}Host: x\r\n{}{}\r\n{json}",
                    cl(json.len()),
                    cl(json.len() + 1)
                ),
                400,
                None,
            ),
            (
                "POST /publish with two equal Content-Lengths",
                format!(
                    "{publish}Host: x\r\n{}{}\r\n{json}",
                    cl(json.len()),
                    cl(json.len())
                ),
                200,
                None,
            ),
            (
                "POST /publish with Content-Length and Transfer-Encoding",
                format!(
                    "{publish}Host: x\r\n{}Transfer-Encoding: chunked\r\n\r\n{chunked}",
                    cl(json.len() + 5)
                ),
                200,
                None,
            ),
        ];
        let total = cases.len();
        let mut wrong = Vec::new();
        for (case, request, status, code) in cases {
            let mut io = raw(arrival, &gw).await;
            write_flush(&mut io, request.as_bytes()).await;
            let res = read_response(&mut io).await;
            let got = serde_json::from_str::<serde_json::Value>(&res.body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned));
            let code_ok = code.is_none_or(|c| got.as_deref() == Some(c));
            let smuggling_guard = !case.contains("Transfer-Encoding")
                || res.head.to_ascii_lowercase().contains("connection: close");
            if res.status != status || !code_ok || !smuggling_guard {
                let first_line = res.head.lines().next().unwrap_or("").to_owned();
                wrong.push(format!(
                    "{case}: expected {status} {code:?}, got {first_line} {:?} (head {:?})",
                    res.body, res.head
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} of {total} heads breaking the rules were not refused:\n  {}",
            wrong.len(),
            wrong.join("\n  ")
        );
    })
    .await;
}

/// What a trickling client saw.
#[derive(Debug)]
enum Trickled {
    /// The gateway answered (e.g. 408) after this long.
    Answered(Duration, String),
    /// The gateway closed the connection after this long.
    Closed(Duration),
    /// The gateway was still waiting when the client gave up.
    Waiting(Duration),
}

/// Writes `head` one byte every 300 ms until the gateway answers or closes (at most `limit`).
async fn trickle(io: &mut BoxIo, head: &[u8], limit: Duration) -> Trickled {
    let started = Instant::now();
    for byte in head.iter().chain(std::iter::repeat(&b'a')) {
        if io.write_all(&[*byte]).await.is_err() || io.flush().await.is_err() {
            return Trickled::Closed(started.elapsed());
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(300), io.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0) | Err(_)) => return Trickled::Closed(started.elapsed()),
            Ok(Ok(n)) => {
                return Trickled::Answered(
                    started.elapsed(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                );
            }
        }
        if started.elapsed() > limit {
            break;
        }
    }
    Trickled::Waiting(started.elapsed())
}

/// `server.request_timeout_seconds` bounds every HTTP/1.1 request head, not only a connection's
/// first: a head trickled one byte per 300 ms (as the first request, or on a keep-alive
/// connection after one served request, plain or TLS) ends in 408 or a closed connection within
/// a few seconds; also once a publisher's connection has moved to the publish thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trickled_head_is_timed_out_on_every_http1_arrival() {
    each(&Arrival::HTTP1, |arrival| async move {
        let gw = arrival
            .gateway(&[("GATEWAY__SERVER__REQUEST_TIMEOUT_SECONDS", "1")])
            .await;
        // A publisher's first line arrives at once (its connection moves to the publish
        // thread, `front::publish_thread`), the rest of its head trickles.
        for (at_once, trickled) in [
            (
                &b""[..],
                &b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: "[..],
            ),
            (b"POST /publish HTTP/1.1\r\n", b"Host: x\r\nX-Padding: "),
        ] {
            let mut io = connect(arrival, &gw).await;
            if arrival.later() {
                serve_one(&mut io).await;
            }
            write_flush(&mut io, at_once).await;
            let outcome = trickle(&mut io, trickled, Duration::from_secs(8)).await;
            let at_once = String::from_utf8_lossy(at_once);
            eprintln!("[{arrival}] trickled head after {at_once:?}: {outcome:?}");
            assert_timed_out(&outcome, "HTTP/1.1 408");
        }
    })
    .await;
}

/// Asserts the gateway gave up on a trickling client within 3 s (answering with `answer`, or
/// closing).
fn assert_timed_out(outcome: &Trickled, answer: &str) {
    match outcome {
        Trickled::Closed(after) => {
            assert!(*after < Duration::from_secs(3), "{outcome:?}")
        }
        Trickled::Answered(after, text) => {
            assert!(*after < Duration::from_secs(3), "{outcome:?}");
            assert!(text.starts_with(answer), "{outcome:?}");
        }
        Trickled::Waiting(after) => {
            panic!("a trickled head was still waiting after {after:?}")
        }
    }
}

/// One HTTP/2 frame read by hand.
struct H2Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Takes the complete frames off the front of `buf`.
fn h2_frames(buf: &mut Vec<u8>) -> Vec<H2Frame> {
    let mut frames = Vec::new();
    while buf.len() >= 9 {
        let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
        if buf.len() < 9 + len {
            break;
        }
        frames.push(H2Frame {
            kind: buf[3],
            flags: buf[4],
            stream: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff,
            payload: buf[9..9 + len].to_vec(),
        });
        buf.drain(..9 + len);
    }
    frames
}

/// The same slowloris defence on HTTP/2: after the connection preface, a request's HEADERS
/// frame trickled one byte per 300 ms must end in a refusal (RST_STREAM, GOAWAY, a 408) or a
/// closed connection within a few seconds, as a trickled HTTP/1.1 head does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_head_is_timed_out_on_every_http2_arrival() {
    each(&Arrival::HTTP2, |arrival| async move {
        let gw = arrival
            .gateway(&[("GATEWAY__SERVER__REQUEST_TIMEOUT_SECONDS", "1")])
            .await;
        let mut io = connect(arrival, &gw).await;
        // The preface and an empty SETTINGS frame; then the server's SETTINGS, acknowledged,
        // and its acknowledgement of ours: the connection is established.
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        write_flush(&mut io, &hello).await;
        let mut inbox = Vec::new();
        let (mut settings, mut acked) = (false, false);
        let deadline = tokio::time::Instant::now() + crate::common::WAIT;
        while !(settings && acked) {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, io.read(&mut chunk))
                .await
                .expect("no SETTINGS from the gateway")
                .expect("read");
            assert!(n > 0, "closed during the HTTP/2 handshake");
            inbox.extend_from_slice(&chunk[..n]);
            for f in h2_frames(&mut inbox) {
                match (f.kind, f.flags & 1) {
                    (4, 0) => {
                        write_flush(&mut io, &[0, 0, 0, 4, 1, 0, 0, 0, 0]).await;
                        settings = true;
                    }
                    (4, 1) => acked = true,
                    (7, _) => panic!("GOAWAY during the handshake: {:?}", f.payload),
                    _ => {}
                }
            }
        }
        // `GET /` (HPACK: :method GET, :scheme, :path /, :authority x) with a padding header,
        // as one HEADERS frame (END_STREAM | END_HEADERS) on `stream`.
        let scheme = if arrival.tls() { 0x87 } else { 0x86 };
        let mut block = vec![0x82, scheme, 0x84, 0x41, 1, b'x', 0x40, 9];
        block.extend_from_slice(b"x-padding");
        block.push(40);
        block.extend_from_slice(&[b'a'; 40]);
        let headers = |stream: u8| {
            let mut frame = (block.len() as u32).to_be_bytes()[1..].to_vec();
            frame.extend_from_slice(&[1, 0x5, 0, 0, 0, stream]);
            frame.extend_from_slice(&block);
            frame
        };
        // Sent whole on stream 1, the frame is served: the request is valid.
        write_flush(&mut io, &headers(1)).await;
        let mut served = false;
        while !served {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, io.read(&mut chunk))
                .await
                .expect("no answer to a whole HEADERS frame")
                .expect("read");
            assert!(n > 0, "closed after a whole HEADERS frame");
            inbox.extend_from_slice(&chunk[..n]);
            for f in h2_frames(&mut inbox) {
                match (f.kind, f.stream) {
                    // HEADERS on stream 1 starting with the indexed `:status 200`.
                    (1, 1) => {
                        assert_eq!(f.payload.first(), Some(&0x88), "not 200: {:?}", f.payload);
                        served = true;
                    }
                    (3 | 7, _) => panic!("a whole HEADERS frame was refused: {:?}", f.payload),
                    _ => {}
                }
            }
        }
        // The same request trickled on stream 3, a later request on the connection.
        let frame = headers(3);
        let started = Instant::now();
        let mut outcome = Trickled::Waiting(Duration::ZERO);
        'trickle: for byte in &frame {
            if started.elapsed() > Duration::from_secs(8) {
                break;
            }
            if io.write_all(&[*byte]).await.is_err() || io.flush().await.is_err() {
                outcome = Trickled::Closed(started.elapsed());
                break;
            }
            let pause = tokio::time::Instant::now() + Duration::from_millis(300);
            loop {
                let mut chunk = [0u8; 4096];
                match tokio::time::timeout_at(pause, io.read(&mut chunk)).await {
                    Err(_) => break,
                    Ok(Ok(0) | Err(_)) => {
                        outcome = Trickled::Closed(started.elapsed());
                        break 'trickle;
                    }
                    Ok(Ok(n)) => inbox.extend_from_slice(&chunk[..n]),
                }
                for f in h2_frames(&mut inbox) {
                    match f.kind {
                        // GOAWAY, or RST_STREAM / a response on our stream.
                        7 => {
                            outcome = Trickled::Answered(
                                started.elapsed(),
                                format!("GOAWAY {:?}", f.payload),
                            );
                            break 'trickle;
                        }
                        3 | 1 if f.stream == 3 => {
                            let what = if f.kind == 3 { "RST_STREAM" } else { "HEADERS" };
                            outcome = Trickled::Answered(
                                started.elapsed(),
                                format!("{what} {:?}", f.payload),
                            );
                            break 'trickle;
                        }
                        _ => {}
                    }
                }
            }
        }
        if let Trickled::Waiting(_) = outcome {
            outcome = Trickled::Waiting(started.elapsed());
        }
        eprintln!("[{arrival}] trickled HEADERS frame: {outcome:?}");
        match &outcome {
            Trickled::Answered(after, _) | Trickled::Closed(after) => assert!(
                *after < Duration::from_secs(3),
                "the gateway gave up only after {after:?}: {outcome:?}"
            ),
            Trickled::Waiting(after) => panic!(
                "a HEADERS frame trickled one byte per 300 ms (of {} bytes) was still being \
                 waited for after {after:?}, with server.request_timeout_seconds = 1",
                frame.len()
            ),
        }
    })
    .await;
}

/// A publish body that trickles (Content-Length: 100, one byte per 300 ms) is answered
/// 408 `body_timeout` (or its connection or stream closed) within a few seconds, on every
/// arrival.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trickled_body_is_timed_out_on_every_arrival() {
    each(&Arrival::ALL, |arrival| async move {
        let gw = arrival
            .gateway(&[("GATEWAY__SERVER__REQUEST_TIMEOUT_SECONDS", "1")])
            .await;
        let (tx, body) = streamed();
        let feeder = tokio::spawn(async move {
            for _ in 0..100 {
                if tx.send(Bytes::from_static(b" ")).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        let started = Instant::now();
        let reply = request(
            arrival,
            &gw,
            Method::POST,
            "/publish",
            &[
                ("content-type", "application/json"),
                ("content-length", "100"),
            ],
            body,
        )
        .await;
        let after = started.elapsed();
        eprintln!(
            "[{arrival}] trickled body after {after:?}: {:?}",
            reply.as_ref().map(|r| r.status)
        );
        match reply {
            Ok(reply) => {
                assert_eq!(reply.status, 408, "after {after:?}");
                assert_error(&reply.json().await, "body_timeout");
            }
            Err(e) => assert!(!e.contains("no response within"), "{e}"),
        }
        assert!(
            after < Duration::from_secs(3),
            "a trickled body held the request for {after:?}"
        );
        feeder.abort();
    })
    .await;
}
