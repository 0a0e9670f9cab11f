//! The reader against frames made by the gateway's own encoder (`gateway::hub::message`) and by
//! flate2 as the gateway compresses (self-contained, and chained after the previous message for
//! a server that keeps its context), fed in every split a socket could produce.

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress};
use gateway::hub::message::Message;
use shared::{ChannelName, Epoch, Event, PayloadKind, Position};

use super::*;
use crate::deflate_testing::{message as deflated, server_text_frame, shifted};

/// An event as the gateway shares it, with the loadtest's realistic payload.
fn message(seq: u64) -> Message {
    let mut data = Vec::new();
    crate::payload::write_rows(&mut data, seq, 1_764_650_000_000_000 + seq, 1024);
    Message::new(Event {
        channel: ChannelName::new("lt-0").unwrap(),
        position: Position::new(Epoch(0x019a_d3f2_c1b0), seq + 1),
        name: None,
        kind: PayloadKind::Json,
        data: Bytes::from(data),
        published_ms: 0,
    })
}

/// Everything `wire` yields when fed in pieces of `step` bytes.
fn read_all(wire: &[u8], step: usize) -> (Vec<String>, u64) {
    read_all_with(FrameReader::default(), wire, step)
}

fn read_all_with(mut r: FrameReader, wire: &[u8], step: usize) -> (Vec<String>, u64) {
    let mut got = Vec::new();
    for piece in wire.chunks(step) {
        r.feed(piece, &mut |item| {
            got.push(match item {
                WsItem::Text(t) => String::from_utf8(t.to_vec()).unwrap(),
                other => format!("{other:?}"),
            })
        })
        .unwrap();
    }
    assert!(
        r.partial.is_empty() && r.message.is_none(),
        "nothing left over"
    );
    (got, r.inflated)
}

#[test]
fn gateway_frames_inflate_to_its_messages_in_any_split() {
    let events: Vec<Message> = (0..20).map(message).collect();
    let mut wire = Vec::new();
    let mut want = Vec::new();
    for (i, m) in events.iter().enumerate() {
        let frame = m.ws_deflated_frame(6).expect("realistic JSON compresses");
        assert!(frame.len() * 2 < m.ws_frame().len(), "compressed well");
        wire.extend_from_slice(frame);
        want.push(m.ws_text().to_string());
        if i % 7 == 3 {
            // A server ping and a plain message in between.
            wire.extend_from_slice(&[0x89, 2, b'h', b'i']);
            want.push("Ping([104, 105])".into());
            wire.extend_from_slice(m.ws_frame());
            want.push(m.ws_text().to_string());
        }
    }
    wire.extend_from_slice(&[0x88, 0]);
    want.push("Close".into());
    for step in [1, 3, 100, 1000, wire.len()] {
        let (got, inflated) = read_all(&wire, step);
        assert_eq!(got, want, "in pieces of {step}");
        assert_eq!(inflated, 20);
    }
}

#[test]
fn inflate_once_hands_out_the_same_text_for_the_same_bytes_only() {
    // Every event twice, as two subscribers on one thread get it, and more distinct events
    // than the memo holds.
    let mut wire = Vec::new();
    let mut want = Vec::new();
    for m in (0..20).map(message) {
        let frame = m.ws_deflated_frame(6).unwrap();
        for _ in 0..2 {
            wire.extend_from_slice(frame);
            want.push(m.ws_text().to_string());
        }
    }
    for step in [7, wire.len()] {
        let (got, inflated) = read_all_with(FrameReader::new(true, false), &wire, step);
        assert_eq!(got, want, "in pieces of {step}");
        assert_eq!(inflated, 40, "every compressed message counted");
    }
    for context in [false, true] {
        assert!(
            FrameReader::new(true, context)
                .feed(&[0xc1, 2, 0xff, 0xff], &mut |_| {})
                .is_err(),
            "bad data is still refused"
        );
    }
}

#[test]
fn a_fragmented_compressed_message_is_inflated_whole() {
    let text = crate::payload::write_rows as fn(&mut Vec<u8>, u64, u64, usize);
    let mut plain = Vec::new();
    text(&mut plain, 7, 1_764_650_000_000_000, 3000);
    let mut c = Compress::new(Compression::new(6), false);
    let mut z = Vec::with_capacity(8192);
    c.compress_vec(&plain, &mut z, FlushCompress::Sync).unwrap();
    assert!(z.ends_with(&SYNC_TAIL));
    z.truncate(z.len() - 4);
    let (a, b) = z.split_at(z.len() / 2);
    let mut wire = vec![0x40 | TEXT, 126];
    wire.extend_from_slice(&(a.len() as u16).to_be_bytes());
    wire.extend_from_slice(a);
    wire.extend_from_slice(&[0x8a, 0]); // a pong between the fragments
    wire.extend_from_slice(&[0x80 | CONTINUATION, 126]);
    wire.extend_from_slice(&(b.len() as u16).to_be_bytes());
    wire.extend_from_slice(b);
    for step in [1, 5, wire.len()] {
        let (got, inflated) = read_all(&wire, step);
        assert_eq!(got, [String::from_utf8(plain.clone()).unwrap()]);
        assert_eq!(inflated, 1);
    }
}

#[test]
fn broken_frames_are_refused() {
    let feed = |wire: &[u8]| FrameReader::default().feed(wire, &mut |_| {});
    assert!(feed(&[0x81, 0x81, 0, 0, 0, 0, b'x']).is_err(), "masked");
    assert!(feed(&[0xc9, 0]).is_err(), "RSV1 on a ping");
    assert!(feed(&[0xa1, 0]).is_err(), "RSV2");
    assert!(feed(&[0x80, 0]).is_err(), "continuation of nothing");
    assert!(feed(&[0xc1, 2, 0xff, 0xff]).is_err(), "not deflate");
    assert!(
        feed(&[0x81, 127, 0, 0, 0, 1, 0, 0, 0, 0]).is_err(),
        "too big"
    );
    assert!(feed(&[0x81, 126]).is_ok(), "incomplete: wait for more");
}

#[test]
fn client_frames_are_masked() {
    let f = client_text(r#"{"type":"subscribe","channel":"c"}"#);
    assert_eq!(f[0], 0x81);
    let len = usize::from(f[1] & 0x7f);
    assert!(f[1] & 0x80 != 0);
    let mask = [f[2], f[3], f[4], f[5]];
    let plain: Vec<u8> = f[6..]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    assert_eq!(
        (len, &plain[..]),
        (34, &br#"{"type":"subscribe","channel":"c"}"#[..])
    );
    let long = client_pong(&[7; 300]);
    assert_eq!(
        (long[0], long[1], &long[2..4]),
        (0x8a, 0x80 | 126, &[1u8, 44][..])
    );
}

#[test]
fn answers_are_checked_against_the_offer() {
    assert_eq!(offer(false), "permessage-deflate; client_max_window_bits");
    assert_eq!(
        offer(true),
        "permessage-deflate; client_no_context_takeover; server_no_context_takeover"
    );
    let check =
        |answer: &str, no_server_context| check_answer([answer.as_bytes()], no_server_context);
    // The gateway's answers to a browser's offer: with or without its context.
    assert_eq!(check("permessage-deflate", false), Ok(true));
    assert_eq!(
        check("permessage-deflate; client_no_context_takeover", false),
        Ok(true)
    );
    assert_eq!(
        check(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            false
        ),
        Ok(false)
    );
    assert_eq!(
        check("permessage-deflate; client_max_window_bits=15", false),
        Ok(true)
    );
    // Asked for no server context: only an answer with it will do.
    assert_eq!(
        check(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            true
        ),
        Ok(false)
    );
    assert!(check("permessage-deflate", true).is_err());
    assert!(check("permessage-deflate; client_no_context_takeover", true).is_err());
    let head = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n";
    let values: Vec<&[u8]> = header_values(head.as_bytes(), b"sec-websocket-extensions").collect();
    assert_eq!(values, [&b"permessage-deflate"[..]]);
    for no_server_context in [false, true] {
        assert!(check_answer([], no_server_context).is_err(), "declined");
        assert!(
            check(
                "permessage-deflate; server_no_context_takeover; x=1",
                no_server_context
            )
            .is_err()
        );
        assert!(check("x-webkit-deflate-frame", no_server_context).is_err());
        assert!(
            check(
                "permessage-deflate; server_no_context_takeover, permessage-deflate",
                no_server_context
            )
            .is_err(),
            "answered twice"
        );
    }
}

/// An event message's text, in the gateway's layout, with the loadtest's realistic payload.
fn event_text(seq: u64) -> Vec<u8> {
    let mut out = format!(
        r#"{{"type":"event","channel":"lt-0","id":"19ad3f2c1b0:{}","data":"#,
        seq + 1
    )
    .into_bytes();
    crate::payload::write_rows(&mut out, seq, 1_764_650_000_000_000 + seq, 1024);
    out.push(b'}');
    out
}

/// What `r` makes of `wire` fed in pieces of `step` bytes (texts lossily), or its error.
fn try_read(mut r: FrameReader, wire: &[u8], step: usize) -> Result<Vec<String>, String> {
    let mut got = Vec::new();
    for piece in wire.chunks(step) {
        r.feed(piece, &mut |item| {
            if let WsItem::Text(t) = item {
                got.push(String::from_utf8_lossy(t).into_owned());
            }
        })?;
    }
    Ok(got)
}

#[test]
fn with_server_context_both_readers_inflate_chained_messages_exactly() {
    // As a server keeping its context sends a channel's events: chained after the previous
    // compressed message, every fifth self-contained; uncompressed messages (replies, an event
    // compression did not shrink) in between never enter the window.
    let mut wire = Vec::new();
    let mut want = Vec::new();
    let mut window: Option<Vec<u8>> = None;
    let (mut alone, mut chained) = (0, 0);
    for seq in 0..30 {
        let text = event_text(seq);
        if seq % 4 == 2 {
            wire.extend_from_slice(&server_text_frame(br#"{"type":"pong"}"#, false));
            want.push(r#"{"type":"pong"}"#.to_owned());
            wire.extend_from_slice(&[0x89, 0]);
        }
        want.push(String::from_utf8(text.clone()).unwrap());
        if seq % 7 == 6 {
            wire.extend_from_slice(&server_text_frame(&text, false));
            continue;
        }
        let prev = window.as_deref().filter(|_| seq % 5 != 0);
        let z = deflated(prev, &text);
        if prev.is_some() {
            (alone, chained) = (alone + deflated(None, &text).len(), chained + z.len());
        }
        wire.extend_from_slice(&server_text_frame(&z, true));
        window = Some(text);
    }
    assert!(
        chained * 3 < alone * 2,
        "{chained} bytes chained vs {alone} alone"
    );
    for step in [1, 3, 100, 1000, wire.len()] {
        for once in [false, true] {
            let got = try_read(FrameReader::new(once, true), &wire, step);
            assert_eq!(got.as_ref(), Ok(&want), "once {once}, pieces of {step}");
        }
    }
    // Read as if every message stood alone, the chained ones come out wrong or not at all.
    for once in [false, true] {
        assert_ne!(
            try_read(FrameReader::new(once, false), &wire, 100),
            Ok(want.clone())
        );
    }
}

#[test]
fn inflate_once_keeps_connections_with_different_windows_apart() {
    // Two connections of one thread get the same compressed bytes after different messages:
    // a memo keyed by the bytes alone would hand the second one the first one's text.
    let first = event_text(1);
    let other = shifted(&first);
    let next = event_text(2);
    let z = server_text_frame(&deflated(Some(&first), &next), true);
    let wire_a = [server_text_frame(&deflated(None, &first), true), z.clone()].concat();
    let wire_b = [server_text_frame(&deflated(None, &other), true), z.clone()].concat();
    let truth = |wire: &[u8]| try_read(FrameReader::new(false, true), wire, wire.len()).unwrap();
    let (ta, tb) = (truth(&wire_a), truth(&wire_b));
    assert_eq!(ta[1].as_bytes(), &next[..]);
    assert_ne!(
        ta[1], tb[1],
        "the same bytes inflate differently after another window"
    );
    // A third connection like the first, later: its messages are the remembered ones.
    let mut readers: [FrameReader; 3] = std::array::from_fn(|_| FrameReader::new(true, true));
    let mut got = vec![Vec::new(); 3];
    let split = |w: &[u8]| -> (Vec<u8>, Vec<u8>) {
        let cut = w.len() - z.len();
        (w[..cut].to_vec(), w[cut..].to_vec())
    };
    let wires = [split(&wire_a), split(&wire_b), split(&wire_a)];
    // First messages of A and B, then the shared bytes to A, B, and C's whole wire.
    let order = [(0, 0), (1, 0), (0, 1), (1, 1), (2, 0), (2, 1)];
    for (conn, part) in order {
        let bytes = if part == 0 {
            &wires[conn].0
        } else {
            &wires[conn].1
        };
        readers[conn]
            .feed(bytes, &mut |item| {
                if let WsItem::Text(t) = item {
                    got[conn].push(String::from_utf8_lossy(t).into_owned());
                }
            })
            .unwrap();
    }
    assert_eq!(got, [ta.clone(), tb, ta]);
    let window = |r: &FrameReader| match &r.decoder {
        decode::Decoder::Once { prev: Some(t), .. } => t.clone(),
        other => panic!("{other:?}"),
    };
    let [a, b, c] = readers.each_ref().map(window);
    assert!(
        std::sync::Arc::ptr_eq(&a, &c),
        "C's windows are A's: remembered"
    );
    assert!(!std::sync::Arc::ptr_eq(&a, &b));
}
