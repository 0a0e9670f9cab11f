//! Unmasked WebSocket frames as a server sends them (RFC 6455 §5.2): header and payload in one
//! buffer, so an event's frame is encoded once and the same bytes go to every subscriber.

use bytes::Bytes;

/// RSV1: the message is compressed (RFC 7692 §6).
const RSV1: u8 = 0x40;

/// One final, unmasked frame carrying `payload` (text or binary), RSV1 set when `compressed`.
pub fn encode(payload: &[u8], binary: bool, compressed: bool) -> Bytes {
    let mut out = Vec::with_capacity(header_len(payload.len()) + payload.len());
    let opcode = if binary { 0x2 } else { 0x1 };
    out.push(0x80 | opcode | if compressed { RSV1 } else { 0 });
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// Whether a frame [`encode`] made carries a compressed message (RSV1): a client with
/// `permessage-deflate` inflates exactly those.
pub fn is_compressed(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & RSV1 != 0)
}

/// The header's length in a frame [`encode`] made for a payload of `len` bytes.
pub fn header_len(len: usize) -> usize {
    match len {
        n if n < 126 => 2,
        n if n <= usize::from(u16::MAX) => 4,
        _ => 10,
    }
}

/// The payload of a frame [`encode`] made.
pub fn payload(frame: &Bytes) -> Bytes {
    let len = frame.len();
    // The header is 2, 4 or 10 bytes; find which one leaves a payload of the announced size.
    let header = [2, 4, 10]
        .into_iter()
        .find(|&h| len >= h && header_len(len - h) == h)
        .unwrap_or(2.min(len));
    frame.slice(header..)
}

#[cfg(test)]
mod tests {
    use actix_http::ws::{OpCode, Parser};
    use bytes::BytesMut;

    use super::*;

    #[test]
    fn headers_of_each_length_class() {
        assert_eq!(&encode(b"hi", false, false)[..], &[0x81, 2, b'h', b'i']);
        assert_eq!(&encode(b"hi", true, true)[..], &[0xC2, 2, b'h', b'i']);
        assert!(is_compressed(&encode(b"hi", true, true)));
        assert!(!is_compressed(&encode(b"hi", false, false)) && !is_compressed(&[]));
        let medium = encode(&[0; 300], true, false);
        assert_eq!(&medium[..4], &[0x82, 126, 1, 44]);
        assert_eq!(medium.len(), 304);
        let large = encode(&[7; 70_000], false, false);
        assert_eq!(&large[..2], &[0x81, 127]);
        assert_eq!(&large[2..10], &70_000u64.to_be_bytes());
        for n in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let frame = encode(&vec![1; n], true, false);
            assert_eq!(header_len(n) + n, frame.len());
            assert_eq!(payload(&frame).len(), n, "payload of {n} bytes");
        }
    }

    #[test]
    fn a_client_parser_reads_what_is_encoded() {
        for (payload, binary) in [(&b"text"[..], false), (&[9u8; 500][..], true)] {
            let mut buf = BytesMut::from(&encode(payload, binary, false)[..]);
            let (fin, op, data) = Parser::parse(&mut buf, false, 1 << 20).unwrap().unwrap();
            let op_wanted = if binary { OpCode::Binary } else { OpCode::Text };
            assert!(fin && op == op_wanted);
            assert_eq!(&data.unwrap()[..], payload);
            assert!(buf.is_empty());
        }
    }
}
