//! [`GzipOnce`] against [`GzipStream`] (which inflates every byte as it comes) on streams built
//! as the gateway builds them, fed in every split a socket could produce.

use std::sync::Arc;

use super::*;
use crate::deflate_testing::{GZIP_HEADER as HEADER, piece, shifted, stored};
use crate::inflate::GzipStream;

/// An event's SSE frame with the loadtest's realistic payload.
fn frame(seq: u64) -> Vec<u8> {
    let mut data = Vec::new();
    crate::payload::write_rows(&mut data, seq, 1_764_650_000_000_000 + seq, 600);
    let mut out = Vec::new();
    shared::sse::write_event(&mut out, Some(&format!("ab:{}", seq + 1)), None, &data);
    out
}

/// A stream as the gateway writes one: header, stored preamble, then per event a chained or
/// self-contained piece, with stored heartbeats and a gap (after which the chain restarts), an
/// event stored (as one that does not compress is) with the next one chained after it, and the
/// stored closing comment.
fn gateway_stream() -> Vec<u8> {
    let mut wire = HEADER.to_vec();
    stored(b"retry: 2000\nid: ab:0\n\n", &mut wire);
    let mut prev: Option<Vec<u8>> = None;
    for seq in 0..30 {
        let f = frame(seq);
        if seq % 7 == 3 {
            stored(b": ping\n\n", &mut wire);
            prev = None;
        }
        if seq == 20 {
            stored(b"id: ab:20\nevent: gap\ndata: {}\n\n", &mut wire);
            prev = None;
        }
        if seq == 25 {
            stored(&f, &mut wire);
        } else {
            wire.extend_from_slice(&piece(prev.as_deref(), &f, 6));
        }
        prev = Some(f);
    }
    stored(b": closing: shutdown\nretry: 2000\n\n", &mut wire);
    wire
}

/// What `GzipStream` makes of `wire`.
fn truth(wire: &[u8]) -> Vec<u8> {
    let mut s = GzipStream::default();
    let mut out = Vec::new();
    s.feed(wire, &mut |p| out.extend_from_slice(p)).unwrap();
    out
}

/// What `GzipOnce` makes of `wire` fed in pieces of `step` bytes.
fn once(wire: &[u8], step: usize) -> (Vec<u8>, GzipOnce) {
    let mut s = GzipOnce::default();
    let mut out = Vec::new();
    for chunk in wire.chunks(step) {
        s.feed(chunk, &mut |p| out.extend_from_slice(p)).unwrap();
    }
    (out, s)
}

#[test]
fn gateway_streams_inflate_as_the_streaming_decoder_does_in_any_split() {
    let wire = gateway_stream();
    let want = truth(&wire);
    assert!(want.ends_with(b": closing: shutdown\nretry: 2000\n\n"));
    for step in [1, 3, 7, 100, 1000, wire.len()] {
        let (got, s) = once(&wire, step);
        assert_eq!(got, want, "in pieces of {step}");
        assert!(s.pending.is_empty(), "everything delivered");
    }
}

#[test]
fn streams_on_one_thread_share_texts_and_keep_their_windows_apart() {
    // Two streams alike: every segment after the first hits, and they end on one shared text.
    let wire = gateway_stream();
    let (a, sa) = once(&wire, 500);
    let (b, sb) = once(&wire, 333);
    assert_eq!(a, b);
    assert!(Arc::ptr_eq(
        sa.prev.as_ref().unwrap(),
        sb.prev.as_ref().unwrap()
    ));
    // The same chained bytes after different frames: a hit keyed by the bytes alone would hand
    // the second stream the first one's text.
    let first = frame(1);
    let other = shifted(&first);
    let next = frame(2);
    let chained = piece(Some(&first), &next, 6);
    let build = |f: &[u8]| {
        let mut w = HEADER.to_vec();
        stored(b"retry: 2000\n\n", &mut w);
        w.extend_from_slice(&piece(None, f, 6));
        w.extend_from_slice(&chained);
        w
    };
    let (wa, wb) = (build(&first), build(&other));
    let (ta, tb) = (truth(&wa), truth(&wb));
    assert!(ta.ends_with(&next));
    assert!(
        !tb.ends_with(&next),
        "the same bytes inflate differently after another window"
    );
    let (mut ra, mut rb) = (GzipOnce::default(), GzipOnce::default());
    let (mut oa, mut ob) = (Vec::new(), Vec::new());
    for (ca, cb) in wa.chunks(64).zip(wb.chunks(64)) {
        ra.feed(ca, &mut |p| oa.extend_from_slice(p)).unwrap();
        rb.feed(cb, &mut |p| ob.extend_from_slice(p)).unwrap();
    }
    assert_eq!((oa, ob), (ta, tb));
}

#[test]
fn a_marker_inside_a_segment_does_not_end_it() {
    let mut wire = HEADER.to_vec();
    // A comment carrying the marker's bytes, stored, then a compressed piece: the first marker
    // is in stored data, its segment so far inflates to no end of a block.
    stored(b": \x00\x00\xff\xff\n\n", &mut wire);
    wire.extend_from_slice(&piece(None, &frame(0), 6));
    // A piece compressed at level 0 (stored inside) with the marker in its text.
    let odd = b"data: {\"seq\":1,\"x\":\"\x00\x00\xff\xff\"}\n\n";
    let p = piece(None, odd, 0);
    assert!(memchr::memmem::find(&p, &MARKER).is_some_and(|i| i + 4 < p.len()));
    wire.extend_from_slice(&p);
    // An own write of 65,280 bytes: its stored header `00 00 ff ff 00` starts with the marker.
    let mut big = vec![b'x'; 0xff00];
    big[..2].copy_from_slice(b": ");
    big[0xff00 - 2..].copy_from_slice(b"\n\n");
    let at = wire.len();
    stored(&big, &mut wire);
    assert_eq!(wire[at..at + 4], MARKER);
    wire.extend_from_slice(&piece(Some(&big), &frame(1), 6));
    let want = truth(&wire);
    for step in [1, 5, 4096, wire.len()] {
        assert_eq!(once(&wire, step).0, want, "in pieces of {step}");
    }
}

#[test]
fn bad_streams_are_refused() {
    let feed = |wire: &[u8]| GzipOnce::default().feed(wire, &mut |_| {});
    assert!(feed(b"data: x\n\n").is_err(), "not gzip");
    let mut bad = [&HEADER[..], &[0xff, 0xff]].concat();
    bad.extend_from_slice(&MARKER);
    assert!(feed(&bad).is_err(), "not deflate");
    let mut s = GzipOnce::default();
    s.feed(&HEADER, &mut |_| {}).unwrap();
    let mut endless = Vec::new();
    for _ in 0..17 {
        stored(&[b'x'; 65_535], &mut endless);
    }
    assert!(s.feed(&endless, &mut |_| {}).is_err(), "no end in 1 MiB");
}

#[test]
fn only_whole_stored_blocks_are_taken_for_stored_blocks() {
    let mut two = Vec::new();
    stored(b": ping\n\n", &mut two);
    stored(b"", &mut two);
    stored(b"event: gap\ndata: {}\n\n", &mut two);
    assert!(whole_stored(&two));
    assert!(!whole_stored(&two[..two.len() - 1]), "cut short");
    assert!(!whole_stored(&[]));
    let mut last = two.clone();
    last[0] = 1;
    assert!(!whole_stored(&last), "a final block");
    let mut bad = two.clone();
    bad[3] ^= 1;
    assert!(!whole_stored(&bad), "NLEN not LEN's complement");
    let p = piece(None, &frame(0), 6);
    assert!(
        !whole_stored(&p) && !whole_stored(&p[..p.len() - 4]),
        "compressed"
    );
}
