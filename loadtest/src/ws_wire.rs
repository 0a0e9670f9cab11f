//! WebSocket with `permessage-deflate` (RFC 7692) spoken by hand, for `--compressed` WebSocket
//! subscribers (tokio-tungstenite refuses RSV1 frames): the offer and the check of the answer
//! ([`handshake`]), unmasked server frames read from whatever bytes arrive, compressed messages
//! inflated ([`decode`]), and the masked frames a client sends. Pure code, no I/O.
//!
//! The default offer is a browser's, which lets the server keep its compression context: it
//! may then send messages that refer back into the previous compressed one (the gateway sends
//! each event either self-contained or compressed against the channel's previous event), so
//! the reader keeps a window per connection, or with `--inflate-once` the text of the
//! connection's previous compressed message as the key of the thread's memo.
//! `--ws-no-server-context` asks for `server_no_context_takeover`: every message then inflates
//! from an empty window, with one inflater per thread, reset before each message.

mod decode;
mod handshake;

use decode::Decoder;
pub use handshake::{check_answer, header_values, offer};

/// Largest message (compressed or inflated) accepted, as the uncompressed client allows.
pub const MAX_MESSAGE: usize = 1 << 20;
/// RFC 7692 §7.2.2: the empty stored block the sender stripped from every message.
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Frame opcodes (RFC 6455 §5.2).
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xa;

/// A masked, final client frame (RFC 6455 §5.3): `opcode` and `payload`.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = fastrand::u32(..).to_be_bytes();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A masked text frame.
pub fn client_text(text: &str) -> Vec<u8> {
    client_frame(TEXT, text.as_bytes())
}

/// A masked pong answering a ping's payload.
pub fn client_pong(payload: &[u8]) -> Vec<u8> {
    client_frame(PONG, payload)
}

/// One thing the server said, as the subscriber needs it.
#[derive(Debug, PartialEq, Eq)]
pub enum WsItem<'a> {
    /// A whole text message, inflated if it was compressed.
    Text(&'a [u8]),
    /// A whole binary message (not inflated: the subscriber only counts it).
    Binary,
    /// A ping to answer with this payload.
    Ping(&'a [u8]),
    /// The server closes.
    Close,
}

/// Reads server frames from the bytes of successive socket reads. Holds bytes only while a
/// frame or a fragmented message is incomplete.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// The start of a frame whose rest has not arrived.
    partial: Vec<u8>,
    /// A fragmented message so far: (opcode, compressed, payload).
    message: Option<(u8, bool, Vec<u8>)>,
    /// Compressed messages inflated (the report's proof that compression was in use).
    pub inflated: u64,
    /// How compressed messages are inflated.
    decoder: Decoder,
}

impl FrameReader {
    /// A reader; `once`: remember the thread's recent messages and hand their text out again
    /// for the same compressed bytes after the same window (`--inflate-once`); `context`: the
    /// server keeps its compression context ([`check_answer`]).
    pub fn new(once: bool, context: bool) -> Self {
        Self {
            decoder: Decoder::new(once, context),
            ..Self::default()
        }
    }

    /// Feeds the bytes of one read, handing every complete message or control frame to `on`.
    pub fn feed(&mut self, input: &[u8], on: &mut impl FnMut(WsItem<'_>)) -> Result<(), String> {
        if self.partial.is_empty() {
            let used = self.frames(input, on)?;
            self.partial.extend_from_slice(&input[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(input);
            let used = self.frames(&buf, on)?;
            buf.drain(..used);
            self.partial = buf;
        }
        if self.partial.is_empty() && self.partial.capacity() > 64 * 1024 {
            self.partial = Vec::new();
        }
        Ok(())
    }

    /// Handles the complete frames at the start of `data`; returns the bytes they took.
    fn frames(&mut self, data: &[u8], on: &mut impl FnMut(WsItem<'_>)) -> Result<usize, String> {
        let mut pos = 0;
        while let Some((head, len)) = parse_header(&data[pos..])? {
            let Some(payload) = data.get(pos + head..pos + head + len) else {
                break;
            };
            let b0 = data[pos];
            pos += head + len;
            let (fin, rsv1, opcode) = (b0 & 0x80 != 0, b0 & 0x40 != 0, b0 & 0x0f);
            if b0 & 0x30 != 0 {
                return Err("RSV2/RSV3 set".into());
            }
            match opcode {
                PING | PONG | CLOSE => {
                    if !fin || rsv1 || len > 125 {
                        return Err("bad control frame".into());
                    }
                    match opcode {
                        PING => on(WsItem::Ping(payload)),
                        CLOSE => on(WsItem::Close),
                        _ => {}
                    }
                }
                TEXT | BINARY if self.message.is_some() => {
                    return Err("new message inside a fragmented one".into());
                }
                TEXT | BINARY if fin => self.deliver(opcode, rsv1, payload, on)?,
                TEXT | BINARY => self.message = Some((opcode, rsv1, payload.to_vec())),
                CONTINUATION => {
                    let Some((op, z, mut buf)) = self.message.take() else {
                        return Err("continuation without a message".into());
                    };
                    if rsv1 {
                        return Err("RSV1 on a continuation frame".into());
                    }
                    buf.extend_from_slice(payload);
                    if buf.len() > MAX_MESSAGE {
                        return Err("message too big".into());
                    }
                    if fin {
                        self.deliver(op, z, &buf, on)?;
                    } else {
                        self.message = Some((op, z, buf));
                    }
                }
                _ => return Err(format!("unknown opcode {opcode}")),
            }
        }
        Ok(pos)
    }

    /// Hands on one whole message, inflated if it came compressed.
    fn deliver(
        &mut self,
        opcode: u8,
        compressed: bool,
        payload: &[u8],
        on: &mut impl FnMut(WsItem<'_>),
    ) -> Result<(), String> {
        // A compressed binary message is inflated only to keep the window right.
        if !compressed || (opcode == BINARY && !self.decoder.keeps_context()) {
            on(item(opcode, payload));
            return Ok(());
        }
        self.inflated += 1;
        self.decoder.inflate(payload, |text| on(item(opcode, text)))
    }
}

/// What a whole message of `opcode` is for the subscriber (binary ones are only counted).
fn item(opcode: u8, text: &[u8]) -> WsItem<'_> {
    match opcode {
        BINARY => WsItem::Binary,
        _ => WsItem::Text(text),
    }
}

/// A frame header at the start of `data`: (header length, payload length), `None` until whole.
fn parse_header(data: &[u8]) -> Result<Option<(usize, usize)>, String> {
    let [_, b1, rest @ ..] = data else {
        return Ok(None);
    };
    if b1 & 0x80 != 0 {
        return Err("masked server frame".into());
    }
    let (head, len) = match b1 & 0x7f {
        126 => match rest {
            [a, b, ..] => (4, u64::from(u16::from_be_bytes([*a, *b]))),
            _ => return Ok(None),
        },
        127 => match rest.first_chunk::<8>() {
            Some(b) => (10, u64::from_be_bytes(*b)),
            None => return Ok(None),
        },
        n => (2, u64::from(n)),
    };
    match usize::try_from(len) {
        Ok(len) if len <= MAX_MESSAGE => Ok(Some((head, len))),
        _ => Err("frame too big".into()),
    }
}

#[cfg(test)]
mod tests;
