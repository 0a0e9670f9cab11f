//! The gateway's WebSocket framing (`gateway::transport::ws::io`), through the same
//! `MessageStream` and `Session` a connection uses, over in-memory I/O that moves bytes in
//! arbitrary pieces and sometimes has to wait. Properties:
//!
//! - reading: a byte stream gives the same messages, then the same error or end, whatever the
//!   pieces, and whether a read that waits cancels the `recv` or not;
//! - no message is bigger than the limit, and a frame whose header announces more than the
//!   limit fails as soon as its length field is read (the too-big error when nothing else is
//!   wrong first), without its payload;
//! - writing: whatever the gateway writes (text, binary, ping, pong, close; batched, flushed, or
//!   cut short by a stalled write), masked as a client would, reads back through the gateway's
//!   reader as the same messages (control payloads and close reasons cut to their RFC 6455
//!   sizes), whole frames only, ending with the close frame.
//!
//! - with `permessage-deflate` on (with and without client context takeover): the same
//!   independence of pieces, no inflated message bigger than the limit, and any data compressed
//!   as one message (RSV1) reads back as that data if it fits the limit, else the too-big error.
//!
//! Input: bytes 0-1 the read limit (little-endian), byte 2 the close reason, byte 3 the number
//! of piece sizes that follow (mod 8; 0 among them: one wait), then the bytes: read as a client
//! stream, and as a script of writes (an op byte, a length byte, the payload; repeated).
#![no_main]

use std::cell::{Cell, RefCell};
use std::io;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use actix_http::ws::{CloseCode, CloseReason};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use gateway::compression::Inflater;
use gateway::transport::ws::io::{Message, MessageStream, Session};
use libfuzzer_sys::fuzz_target;
use shared::Disconnect;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a `recv` gave: a message, or the error (by its description) that ends the stream.
type Outcome = Result<Message, String>;

/// How much each read or write moves, in turn; a 0 makes that call wait once instead.
struct Pieces {
    sizes: Vec<u8>,
    next: usize,
    waited: bool,
}

impl Pieces {
    fn new(sizes: &[u8]) -> Self {
        Self {
            sizes: sizes.to_vec(),
            next: 0,
            waited: false,
        }
    }

    /// `None`: wait (never twice in a row, so everything finishes); else at most this many bytes.
    fn take(&mut self) -> Option<usize> {
        if self.sizes.is_empty() {
            return Some(usize::MAX);
        }
        let size = self.sizes[self.next % self.sizes.len()];
        self.next += 1;
        if size == 0 && !self.waited {
            self.waited = true;
            return None;
        }
        self.waited = false;
        Some(usize::from(size.max(1)))
    }
}

/// A client's bytes, read in pieces, then the end of the stream.
struct Client {
    data: Vec<u8>,
    pos: usize,
    pieces: Pieces,
}

fn client(data: &[u8], pieces: &[u8]) -> Box<Client> {
    let pieces = Pieces::new(pieces);
    Box::new(Client {
        data: data.to_vec(),
        pos: 0,
        pieces,
    })
}

impl AsyncRead for Client {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos == this.data.len() {
            return Poll::Ready(Ok(()));
        }
        let Some(size) = this.pieces.take() else {
            return Poll::Pending;
        };
        let n = size.min(buf.remaining()).min(this.data.len() - this.pos);
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Where the gateway's frames go: written in pieces, waiting at most once in all (the stall
/// that ends a slow consumer), so the close that follows goes through.
struct Wire {
    out: Rc<RefCell<Vec<u8>>>,
    pieces: Pieces,
    /// Set once the wire has waited, or must not wait any more.
    waited: Rc<Cell<bool>>,
    shut: Rc<Cell<bool>>,
}

impl AsyncWrite for Wire {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        assert!(!this.shut.get(), "written after shutdown");
        let size = match this.pieces.take() {
            None if !this.waited.get() => {
                this.waited.set(true);
                return Poll::Pending;
            }
            None => 1,
            Some(size) => size,
        };
        let n = size.min(buf.len());
        this.out.borrow_mut().extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shut.set(true);
        Poll::Ready(Ok(()))
    }
}

/// Polls a future once, as a task would; the in-memory I/O never needs a wake-up.
fn poll_once<F: Future>(future: F) -> Poll<F::Output> {
    pin!(future).poll(&mut Context::from_waker(Waker::noop()))
}

/// Every outcome of a stream, up to its end or first error. A `recv` that has to wait is
/// dropped (as a `select!` would) and a new one started.
fn read_all(mut stream: MessageStream) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    loop {
        let next = loop {
            if let Poll::Ready(next) = poll_once(stream.recv()) {
                break next;
            }
        };
        match next {
            None => return outcomes,
            Some(Ok(msg)) => outcomes.push(Ok(msg)),
            Some(Err(e)) => {
                outcomes.push(Err(format!("{e:?}")));
                return outcomes;
            }
        }
    }
}

/// `data` read in `pieces` by a stream with limit `max`.
fn read_in(data: &[u8], pieces: &[u8], max: usize) -> Vec<Outcome> {
    read_all(MessageStream::new(client(data, pieces), max))
}

/// Like [`read_in`], with `permessage-deflate` negotiated (`takeover`: client context kept).
fn read_deflate(data: &[u8], pieces: &[u8], max: usize, takeover: bool) -> Vec<Outcome> {
    let mut stream = MessageStream::new(client(data, pieces), max);
    stream.inflate_with(Inflater::new(takeover));
    read_all(stream)
}

fn check_inflating(data: &[u8], pieces: &[u8], max: usize) {
    for takeover in [false, true] {
        let whole = read_deflate(data, &[], max, takeover);
        assert_eq!(
            read_deflate(data, pieces, max, takeover),
            whole,
            "the pieces changed what was inflated"
        );
        for outcome in &whole {
            match outcome {
                Ok(Message::Text(text)) => assert!(text.len() <= max),
                Ok(Message::Binary(bytes)) => assert!(bytes.len() <= max),
                _ => {}
            }
        }
    }
    // `data` sent as one compressed binary message, masked as a client would.
    let Some(mut z) = gateway::compression::deflate::compressed(data, 6) else {
        panic!("compressing failed");
    };
    z.truncate(z.len() - 4);
    let mut frame = BytesMut::new();
    actix_http::ws::Parser::write_message(
        &mut frame,
        &z[..],
        actix_http::ws::OpCode::Binary,
        true,
        true,
    );
    frame[0] |= 0x40;
    let got = read_deflate(&frame, pieces, max, false);
    if z.len() > max {
        assert_eq!(got, [Err("Overflow".to_owned())], "a frame over the limit");
    } else if data.len() > max {
        assert_eq!(got, [Err("Overflow".to_owned())], "inflated past the limit");
    } else {
        assert_eq!(got, [Ok(Message::Binary(Bytes::copy_from_slice(data)))]);
    }
}

/// `data` already read with the upgrade request.
fn read_pending(data: &[u8], max: usize) -> Vec<Outcome> {
    let pending = BytesMut::from(data);
    read_all(MessageStream::with_pending(client(&[], &[]), max, pending))
}

/// A frame header, decoded here independently of the gateway.
struct Header {
    /// FIN, RSV and opcode.
    first: u8,
    masked: bool,
    /// Where the length field ends.
    len_end: usize,
    /// Where the payload starts.
    payload_start: usize,
    announced: u64,
}

fn header(buf: &[u8]) -> Option<Header> {
    let (&first, &second) = (buf.first()?, buf.get(1)?);
    let (len_end, announced) = match second & 0x7F {
        126 => (
            4,
            u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
        ),
        127 => (10, u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)),
        n => (2, u64::from(n)),
    };
    let masked = second & 0x80 != 0;
    let payload_start = len_end + if masked { 4 } else { 0 };
    Some(Header {
        first,
        masked,
        len_end,
        payload_start,
        announced,
    })
}

/// Where the first frame announcing more than `max` starts and its length field ends, if every
/// frame before it is complete.
fn oversized(data: &[u8], max: usize) -> Option<(usize, usize, Header)> {
    let mut pos = 0;
    loop {
        let h = header(&data[pos..])?;
        if h.announced > max as u64 {
            return Some((pos, pos + h.len_end, h));
        }
        let end = pos + h.payload_start + usize::try_from(h.announced).ok()?;
        if end > data.len() {
            return None;
        }
        pos = end;
    }
}

fn check_reading(data: &[u8], pieces: &[u8], max: usize) {
    let whole = read_pending(data, max);
    assert_eq!(
        read_in(data, pieces, max),
        whole,
        "the pieces changed what was read"
    );
    for outcome in &whole {
        match outcome {
            Ok(Message::Text(text)) => assert!(text.len() <= max),
            Ok(Message::Binary(bytes)) => assert!(bytes.len() <= max),
            Ok(Message::Ping(bytes) | Message::Pong(bytes)) => assert!(bytes.len() <= max.min(125)),
            Ok(Message::Close(_)) | Err(_) => {}
        }
    }
    let Some((start, len_end, h)) = oversized(data, max) else {
        return;
    };
    // Only the header up to its length: no masking key, no payload.
    let cut = read_in(&data[..len_end], pieces, max);
    assert_eq!(cut, whole, "an oversized frame's payload made a difference");
    assert!(
        matches!(cut.last(), Some(Err(_))),
        "an oversized frame did not fail"
    );
    // A valid client header (masked, no reserved bits, a known opcode) after a clean start: the
    // too-big error itself.
    let valid = h.masked && h.first & 0x70 == 0 && matches!(h.first & 0x0F, 0..=2 | 8..=10);
    if valid && read_pending(&data[..start], max).iter().all(Result::is_ok) {
        assert_eq!(cut.last(), Some(&Err("Overflow".to_owned())));
    }
}

/// One thing the gateway does with its writing half.
enum Op {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Flush,
}

fn script(mut rest: &[u8]) -> Vec<Op> {
    let mut ops = Vec::new();
    while let [op, len, tail @ ..] = rest {
        let (payload, after) = tail.split_at(usize::from(*len).min(tail.len()));
        rest = after;
        ops.push(match op % 8 {
            0 | 6 => Op::Text(String::from_utf8_lossy(payload).into_owned()),
            1 | 7 => Op::Binary(payload.to_vec()),
            2 => Op::Ping(payload.to_vec()),
            3 => Op::Pong(payload.to_vec()),
            4 => Op::Flush,
            // A batch that crosses the 64 KiB flush threshold on its own.
            _ => Op::Binary(vec![*len; usize::from(*len) * 512]),
        });
    }
    ops
}

/// The client's view of `payload` cut to `max` bytes.
fn cut(payload: &[u8], max: usize) -> Bytes {
    Bytes::copy_from_slice(&payload[..payload.len().min(max)])
}

/// The server frames in `out`, masked as a client would send them; every frame whole,
/// unmasked, final, the last one (only) a close.
fn mask(out: &[u8]) -> Vec<u8> {
    let mut masked = Vec::with_capacity(out.len() + out.len() / 2);
    let (mut pos, mut ops) = (0, Vec::new());
    while pos < out.len() {
        let h = header(&out[pos..]).expect("a whole header");
        assert!(
            !h.masked && h.first & 0xF0 == 0x80,
            "a server frame is final and unmasked"
        );
        let start = pos + h.payload_start;
        let end = start + usize::try_from(h.announced).expect("a payload that fits");
        let payload = out.get(start..end).expect("a whole payload");
        let key = [pos as u8, 0x5A, (pos >> 8) as u8, 0xA5];
        let at = masked.len();
        masked.extend_from_slice(&out[pos..pos + h.len_end]);
        masked[at + 1] |= 0x80;
        masked.extend_from_slice(&key);
        masked.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        ops.push(h.first & 0x0F);
        pos = end;
    }
    assert_eq!(
        ops.iter().filter(|&&op| op == 8).count(),
        1,
        "one close frame"
    );
    assert_eq!(ops.last(), Some(&8), "the close frame comes last");
    masked
}

/// The close reason the gateway sends (a code from its table), and what a client reads back:
/// the description cut to 123 bytes at a character boundary, an empty one none.
fn close_reason(selector: u8, data: &[u8]) -> (Option<CloseReason>, Option<CloseReason>) {
    let code = Disconnect::ALL[usize::from(selector & 0x0F) % Disconnect::ALL.len()].code();
    let reason = |description| {
        let code = CloseCode::from(code);
        Some(CloseReason { code, description })
    };
    match (selector >> 4) % 3 {
        0 => (None, None),
        1 => (reason(None), reason(None)),
        _ => {
            let description = String::from_utf8_lossy(data).into_owned();
            let mut kept = String::new();
            for c in description.chars() {
                if kept.len() + c.len_utf8() > 123 {
                    break;
                }
                kept.push(c);
            }
            let kept = Some(kept).filter(|k| !k.is_empty());
            (reason(Some(description)), reason(kept))
        }
    }
}

fn check_writing(data: &[u8], pieces: &[u8], reason: u8) {
    let out = Rc::new(RefCell::new(Vec::new()));
    let shut = Rc::new(Cell::new(false));
    let no_waits = Rc::new(Cell::new(false));
    let wire = Wire {
        out: out.clone(),
        pieces: Pieces::new(pieces),
        waited: no_waits.clone(),
        shut: shut.clone(),
    };
    let mut session = Session::new(Box::new(wire));
    let mut expected = Vec::new();
    let mut stalled = false;
    for op in script(data) {
        let done = match op {
            Op::Text(text) => {
                expected.push(Message::Text(ByteString::from(text.as_str())));
                poll_once(session.feed_text(ByteString::from(text)))
            }
            Op::Binary(bytes) => {
                expected.push(Message::Binary(Bytes::from(bytes.clone())));
                poll_once(session.feed_frame(gateway::hub::ws_frame::encode(&bytes, true, false)))
            }
            Op::Ping(bytes) => {
                expected.push(Message::Ping(cut(&bytes, 125)));
                poll_once(session.ping(&bytes))
            }
            Op::Pong(bytes) => {
                expected.push(Message::Pong(cut(&bytes, 125)));
                poll_once(session.pong(&bytes))
            }
            Op::Flush => poll_once(session.flush()),
        };
        match done {
            Poll::Ready(result) => assert_eq!(result, Ok(())),
            // A write that makes no progress: the gateway gives up on the client and closes.
            Poll::Pending => {
                stalled = true;
                break;
            }
        }
    }

    // The close is not timed out here: the wire waits no more.
    no_waits.set(true);
    let (sent, read_back) = close_reason(reason, data);
    assert_eq!(
        poll_once(session.close(sent)),
        Poll::Ready(Ok(())),
        "the close went through"
    );
    assert!(shut.get(), "the write side is shut after the close frame");

    let masked = mask(&out.borrow());
    // Big batches are read back whole: byte-sized reads of them only cost time.
    let pieces = if masked.len() <= 16 * 1024 {
        pieces
    } else {
        &[]
    };
    let mut outcomes = read_in(&masked, pieces, 1 << 20);
    let last = outcomes.pop().expect("at least the close");
    assert_eq!(last, Ok(Message::Close(read_back)));
    let messages: Vec<Message> = outcomes
        .into_iter()
        .map(|m| m.expect("no error before the close"))
        .collect();
    if stalled {
        assert!(messages.len() <= expected.len());
    } else {
        assert_eq!(messages.len(), expected.len(), "a frame was lost");
    }
    assert_eq!(messages[..], expected[..messages.len()]);
}

fuzz_target!(|input: &[u8]| {
    let [max_lo, max_hi, reason, count, rest @ ..] = input else {
        return;
    };
    let max = usize::from(u16::from_le_bytes([*max_lo, *max_hi]));
    let count = usize::from(*count % 8).min(rest.len());
    let (pieces, data) = rest.split_at(count);
    check_reading(data, pieces, max);
    check_inflating(data, pieces, max);
    check_writing(data, pieces, *reason);
});
