//! The reader against frames made by the gateway's own encoder (`gateway::hub::message`) and by
//! flate2, fed in every split a socket could produce.

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress};
use gateway::compression::PerMessageDeflate;
use gateway::hub::message::Message;
use shared::{ChannelName, Epoch, Event, PayloadKind, Position};

use super::*;

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
        let (got, inflated) = read_all_with(FrameReader::new(true), &wire, step);
        assert_eq!(got, want, "in pieces of {step}");
        assert_eq!(inflated, 40, "every compressed message counted");
    }
    assert!(
        FrameReader::new(true)
            .feed(&[0xc1, 2, 0xff, 0xff], &mut |_| {})
            .is_err(),
        "bad data is still refused"
    );
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
fn the_gateways_answers_are_accepted_and_a_decline_is_not() {
    let offer = PerMessageDeflate::negotiate([OFFER], false).expect("the gateway takes our offer");
    let answer = offer.response();
    assert_eq!(check_answer([answer.as_bytes()]), Ok(()));
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Extensions: {answer}\r\n\r\n"
    );
    let values: Vec<&[u8]> = header_values(head.as_bytes(), b"sec-websocket-extensions").collect();
    assert_eq!(values, [answer.as_bytes()]);
    assert!(check_answer([]).is_err(), "declined");
    assert!(
        check_answer([&b"permessage-deflate"[..]]).is_err(),
        "server context"
    );
    assert!(check_answer([&b"permessage-deflate; server_no_context_takeover; x=1"[..]]).is_err());
    assert!(check_answer([&b"x-webkit-deflate-frame"[..]]).is_err());
}
