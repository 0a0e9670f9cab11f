//! Client frames into messages, without I/O: the bytes read so far are parsed with actix-http's
//! [`Parser`], fragments are joined, and sizes are bounded (a frame is refused by its header,
//! before its payload is kept). The reader (`read`) only feeds it bytes.

use std::io;

use actix_http::ws::{OpCode, Parser, ProtocolError};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

use super::Message;
use super::frame::header_and_payload;
use crate::compression::{InflateError, Inflater};

/// RSV1: the frame starts a message compressed with `permessage-deflate` (RFC 7692 §6).
const RSV1: u8 = 0x40;

/// The decoding state of one connection's input.
pub(super) struct Decoder {
    /// Bytes read but not yet decoded; unallocated while idle.
    pub(super) buf: BytesMut,
    /// The largest frame, and the largest aggregated message.
    max: usize,
    /// The fragments of a message in progress.
    pub(super) partial: BytesMut,
    /// What the message in progress is; `Some` while one is open.
    partial_kind: Option<Kind>,
    /// With `permessage-deflate` negotiated: the inflater and which messages are compressed.
    /// Boxed, so connections without it carry one pointer.
    deflate: Option<Box<Deflate>>,
}

struct Deflate {
    inflater: Inflater,
    /// The frame at the front of `buf` had RSV1 set (cleared there for the parser).
    frame_compressed: bool,
    /// The message in progress is compressed.
    message_compressed: bool,
}

#[derive(Clone, Copy)]
enum Kind {
    Text,
    Binary,
}

impl Decoder {
    /// Starts with `pending`, bytes already read (sent with the upgrade request); `max` bounds
    /// frames and messages (bigger ones are [`ProtocolError::Overflow`]).
    pub(super) fn new(max: usize, pending: BytesMut) -> Self {
        Self {
            buf: pending,
            max,
            partial: BytesMut::new(),
            partial_kind: None,
            deflate: None,
        }
    }

    /// Accepts compressed messages (`permessage-deflate`), inflated by `inflater` to at most
    /// the message limit.
    pub(super) fn inflate_with(&mut self, inflater: Inflater) {
        self.deflate = Some(Box::new(Deflate {
            inflater,
            frame_compressed: false,
            message_compressed: false,
        }));
    }

    /// Appends bytes read from the socket.
    pub(super) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message among the bytes pushed so far (`Ok(None)`: more are needed).
    /// An emptied read buffer is released, so an idle connection holds none.
    pub(super) fn next_message(&mut self) -> Result<Option<Message>, ProtocolError> {
        let decoded = self.decode();
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        decoded
    }

    /// Drops everything buffered: nothing more will be decoded.
    pub(super) fn release(&mut self) {
        self.buf = BytesMut::new();
        self.partial = BytesMut::new();
    }

    /// Takes RSV1 off the first frame of a message when `permessage-deflate` is on, so the
    /// parser (which refuses reserved bits) accepts it; anywhere else RSV1 stays and is refused.
    fn take_rsv1(&mut self) {
        let (Some(first), Some(d)) = (self.buf.first_mut(), self.deflate.as_deref_mut()) else {
            return;
        };
        if *first & RSV1 != 0 && matches!(*first & 0x0F, 0x1 | 0x2) {
            *first &= !RSV1;
            d.frame_compressed = true;
        }
    }

    fn decode(&mut self) -> Result<Option<Message>, ProtocolError> {
        loop {
            self.take_rsv1();
            let Some((fin, op, payload)) = Parser::parse(&mut self.buf, true, self.max)? else {
                // Refuse an oversized frame by its header, before buffering its payload.
                if header_and_payload(&self.buf).is_some_and(|(_, len)| len > self.max as u64) {
                    return Err(ProtocolError::Overflow);
                }
                return Ok(None);
            };
            let payload = payload.map_or_else(Bytes::new, BytesMut::freeze);
            let compressed = self
                .deflate
                .as_deref_mut()
                .is_some_and(|d| std::mem::take(&mut d.frame_compressed));
            match op {
                OpCode::Continue => {
                    let Some(kind) = self.partial_kind else {
                        return Err(ProtocolError::ContinuationNotStarted);
                    };
                    self.append(&payload)?;
                    if fin {
                        self.partial_kind = None;
                        let whole = std::mem::take(&mut self.partial).freeze();
                        let compressed = self
                            .deflate
                            .as_deref_mut()
                            .is_some_and(|d| std::mem::take(&mut d.message_compressed));
                        return self.message(kind, whole, compressed).map(Some);
                    }
                }
                OpCode::Text | OpCode::Binary => {
                    if self.partial_kind.is_some() {
                        return Err(ProtocolError::ContinuationStarted);
                    }
                    let kind = if op == OpCode::Text {
                        Kind::Text
                    } else {
                        Kind::Binary
                    };
                    if fin {
                        return self.message(kind, payload, compressed).map(Some);
                    }
                    if let Some(d) = self.deflate.as_deref_mut() {
                        d.message_compressed = compressed;
                    }
                    self.partial_kind = Some(kind);
                    self.append(&payload)?;
                }
                OpCode::Ping | OpCode::Pong | OpCode::Close if !fin => {
                    return Err(ProtocolError::ContinuationFragment(op));
                }
                OpCode::Ping => return Ok(Some(Message::Ping(payload))),
                OpCode::Pong => return Ok(Some(Message::Pong(payload))),
                OpCode::Close => {
                    let reason = Parser::try_parse_close_payload(&payload)?;
                    return Ok(Some(Message::Close(reason)));
                }
                OpCode::Bad => return Err(ProtocolError::BadOpCode),
            }
        }
    }

    fn append(&mut self, fragment: &[u8]) -> Result<(), ProtocolError> {
        if self.partial.len() + fragment.len() > self.max {
            self.partial = BytesMut::new();
            self.partial_kind = None;
            return Err(ProtocolError::Overflow);
        }
        self.partial.extend_from_slice(fragment);
        Ok(())
    }

    /// A whole message, inflated first when it came compressed: to at most the message limit,
    /// so a deflate bomb is refused (1009) as soon as its output passes the limit.
    fn message(
        &mut self,
        kind: Kind,
        payload: Bytes,
        compressed: bool,
    ) -> Result<Message, ProtocolError> {
        let payload = match self.deflate.as_deref_mut() {
            Some(d) if compressed => match d.inflater.inflate(&payload, self.max) {
                Ok(plain) => Bytes::from(plain),
                Err(InflateError::TooBig) => return Err(ProtocolError::Overflow),
                Err(InflateError::Corrupt) => {
                    return Err(ProtocolError::Io(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "invalid compressed message",
                    )));
                }
            },
            _ => payload,
        };
        message(kind, payload)
    }
}

fn message(kind: Kind, payload: Bytes) -> Result<Message, ProtocolError> {
    match kind {
        Kind::Binary => Ok(Message::Binary(payload)),
        Kind::Text => ByteString::try_from(payload)
            .map(Message::Text)
            .map_err(|e| ProtocolError::Io(io::Error::new(io::ErrorKind::InvalidData, e))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::client_frame;
    use super::*;

    const MAX: usize = 1024;

    /// Every outcome of decoding `bytes` fed in pieces of `step` bytes, up to the first error.
    fn decode_all(bytes: &[u8], step: usize) -> Vec<Result<Message, String>> {
        let mut decoder = Decoder::new(MAX, BytesMut::new());
        let mut out = Vec::new();
        for piece in bytes.chunks(step.max(1)) {
            decoder.push(piece);
            loop {
                match decoder.next_message() {
                    Ok(Some(msg)) => out.push(Ok(msg)),
                    Ok(None) => break,
                    Err(e) => {
                        out.push(Err(e.to_string()));
                        return out;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn the_same_messages_whatever_the_pieces() {
        let text = "héllo wörld".as_bytes();
        let mut bytes = client_frame(OpCode::Text, false, &text[..2]);
        bytes.extend(client_frame(OpCode::Ping, true, b"mid"));
        bytes.extend(client_frame(OpCode::Continue, true, &text[2..]));
        bytes.extend(client_frame(OpCode::Binary, true, &[0; 300]));
        bytes.extend(client_frame(OpCode::Continue, true, b"x"));
        let whole = decode_all(&bytes, bytes.len());
        assert_eq!(
            whole,
            [
                Ok(Message::Ping(Bytes::from_static(b"mid"))),
                Ok(Message::Text("héllo wörld".into())),
                Ok(Message::Binary(Bytes::from(vec![0; 300]))),
                Err(ProtocolError::ContinuationNotStarted.to_string()),
            ]
        );
        for step in [1, 2, 3, 7, 64] {
            assert_eq!(decode_all(&bytes, step), whole, "in pieces of {step}");
        }
    }

    #[test]
    fn a_frame_announcing_more_than_the_limit_is_refused_before_its_payload() {
        // A masked 64-bit length; the masking key and payload never arrive.
        let mut header = vec![0x82, 0xFF];
        header.extend((MAX as u64 + 1).to_be_bytes());
        let mut decoder = Decoder::new(MAX, BytesMut::new());
        decoder.push(&header[..9]);
        assert!(
            matches!(decoder.next_message(), Ok(None)),
            "length incomplete"
        );
        decoder.push(&header[9..]);
        assert!(matches!(
            decoder.next_message(),
            Err(ProtocolError::Overflow)
        ));
        // Exactly the limit is allowed: it waits for the payload.
        let mut decoder = Decoder::new(MAX, BytesMut::new());
        decoder.push(&client_frame(OpCode::Binary, true, &[1; MAX])[..8]);
        assert!(matches!(decoder.next_message(), Ok(None)));
    }

    #[test]
    fn buffers_are_released_once_decoded() {
        let mut decoder = Decoder::new(MAX, BytesMut::new());
        decoder.push(&client_frame(OpCode::Text, false, b"one"));
        assert!(matches!(decoder.next_message(), Ok(None)));
        assert_eq!(decoder.buf.capacity(), 0, "the frame was taken whole");
        assert_eq!(&decoder.partial[..], b"one");
        decoder.push(&client_frame(OpCode::Continue, true, b"two"));
        assert_eq!(
            decoder.next_message().ok().flatten(),
            Some(Message::Text("onetwo".into()))
        );
        assert_eq!(decoder.buf.capacity(), 0);
        assert_eq!(decoder.partial.capacity(), 0);
    }

    /// A client frame with RSV1 set (a compressed message's first frame).
    fn rsv1(mut frame: Vec<u8>) -> Vec<u8> {
        frame[0] |= RSV1;
        frame
    }

    fn deflated(data: &[u8]) -> Vec<u8> {
        let mut out = crate::compression::deflate::compressed(data, 6).unwrap();
        out.truncate(out.len() - 4);
        out
    }

    fn decode_deflate(bytes: &[u8]) -> Vec<Result<Message, String>> {
        let mut decoder = Decoder::new(MAX, BytesMut::new());
        decoder.inflate_with(Inflater::new(false));
        let mut out = Vec::new();
        for piece in bytes.chunks(3) {
            decoder.push(piece);
            loop {
                match decoder.next_message() {
                    Ok(Some(msg)) => out.push(Ok(msg)),
                    Ok(None) => break,
                    Err(e) => {
                        out.push(Err(format!("{e:?}")));
                        return out;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn compressed_messages_are_inflated_whole_or_fragmented() {
        let text = br#"{"type":"subscribe","channel":"news","channel2":"news"}"#;
        let z = deflated(text);
        let mut bytes = rsv1(client_frame(OpCode::Text, true, &z));
        bytes.extend(client_frame(OpCode::Text, true, b"plain"));
        bytes.extend(rsv1(client_frame(OpCode::Binary, false, &z[..3])));
        bytes.extend(client_frame(OpCode::Ping, true, b"p"));
        bytes.extend(client_frame(OpCode::Continue, true, &z[3..]));
        let text = ByteString::try_from(&text[..]).unwrap();
        assert_eq!(
            decode_deflate(&bytes),
            [
                Ok(Message::Text(text.clone())),
                Ok(Message::Text("plain".into())),
                Ok(Message::Ping(Bytes::from_static(b"p"))),
                Ok(Message::Binary(text.into_bytes())),
            ]
        );
    }

    #[test]
    fn reserved_bits_out_of_place_and_bombs_are_refused() {
        let z = deflated(b"hello");
        let refused = |bytes: Vec<u8>| decode_deflate(&bytes).pop().unwrap().unwrap_err();
        // RSV1 on a continuation or a control frame.
        let cont = [
            client_frame(OpCode::Text, false, b"a"),
            rsv1(client_frame(OpCode::Continue, true, b"b")),
        ]
        .concat();
        assert!(refused(cont).contains("reserved bits"));
        assert!(refused(rsv1(client_frame(OpCode::Ping, true, b""))).contains("reserved bits"));
        // Without permessage-deflate, RSV1 is refused as before.
        let plain = decode_all(&rsv1(client_frame(OpCode::Text, true, &z)), 64);
        assert!(matches!(&plain[..], [Err(e)] if e.contains("reserved bits")));
        // A bomb: a few hundred bytes that inflate far past the limit.
        let bomb = deflated(&vec![b'a'; 100 * MAX]);
        assert!(bomb.len() < MAX);
        assert_eq!(
            refused(rsv1(client_frame(OpCode::Text, true, &bomb))),
            "Overflow"
        );
        assert!(refused(rsv1(client_frame(OpCode::Text, true, &[0xff; 8]))).contains("compressed"));
    }
}
