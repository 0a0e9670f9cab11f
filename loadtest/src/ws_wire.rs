//! WebSocket with `permessage-deflate` (RFC 7692) spoken by hand, for `--compressed` WebSocket
//! subscribers (tokio-tungstenite refuses RSV1 frames): the offer and the check of the answer,
//! unmasked server frames read from whatever bytes arrive, compressed messages inflated, and
//! the masked frames a client sends. Pure code, no I/O.
//!
//! The offer asks for `server_no_context_takeover` (the gateway answers it anyway: one
//! compressed message per event, shared by every subscriber), so every message is inflated
//! from an empty window: one inflater per thread, reset before each message, instead of ~43 KiB
//! of window and tables kept per connection.

use std::cell::RefCell;

use flate2::{Decompress, FlushDecompress, Status};

/// What the client offers in `Sec-WebSocket-Extensions`.
pub const OFFER: &str =
    "permessage-deflate; client_no_context_takeover; server_no_context_takeover";
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

/// Distinct messages remembered per thread with [`FrameReader::new`]`(true)`: enough for
/// subscribers some way behind one another (a few hundred KiB per thread).
const MEMO: usize = 128;

/// One thread's inflating state.
struct ThreadInflater {
    /// No window survives a message (no context takeover), so connections need not keep one.
    d: Decompress,
    out: Vec<u8>,
    /// Recent (compressed, inflated) messages, newest last, for inflate-once readers.
    memo: Vec<(Vec<u8>, Vec<u8>)>,
}

thread_local! {
    static INFLATER: RefCell<ThreadInflater> = RefCell::new(ThreadInflater {
        d: Decompress::new(false),
        out: Vec::with_capacity(64 * 1024),
        memo: Vec::new(),
    });
}

/// The values of header `name` in a raw response head.
pub fn header_values<'a>(head: &'a [u8], name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
    head.split(|&b| b == b'\n').filter_map(move |line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = memchr::memchr(b':', line)?;
        line[..colon]
            .eq_ignore_ascii_case(name)
            .then(|| line[colon + 1..].trim_ascii())
    })
}

/// Checks the server's `Sec-WebSocket-Extensions` answer: `permessage-deflate` with
/// `server_no_context_takeover` (a message referring back into an earlier one could not be
/// inflated by a per-thread inflater), nothing unknown. Errors say why, for the failure report.
pub fn check_answer<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Result<(), String> {
    let mut found = false;
    for ext in values.into_iter().flat_map(|v| v.split(|&b| b == b',')) {
        let text = String::from_utf8_lossy(ext);
        let mut parts = text.split(';').map(str::trim);
        if !parts
            .next()
            .is_some_and(|n| n.eq_ignore_ascii_case("permessage-deflate"))
        {
            return Err(format!("unexpected extension {}", text.trim()));
        }
        let mut server_nct = false;
        for p in parts {
            let name = p
                .split('=')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            match name.as_str() {
                "server_no_context_takeover" => server_nct = true,
                // We never compress what we send, and take any window for what we receive.
                "client_no_context_takeover"
                | "server_max_window_bits"
                | "client_max_window_bits" => {}
                _ => return Err(format!("unknown permessage-deflate parameter {p}")),
            }
        }
        if !server_nct {
            return Err("permessage-deflate without server_no_context_takeover".into());
        }
        found = true;
    }
    if found {
        Ok(())
    } else {
        Err("permessage-deflate declined".into())
    }
}

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
    /// Compressed messages received (the report's proof that compression was in use).
    pub inflated: u64,
    /// Inflate each distinct compressed message once per thread (`--inflate-once`).
    once: bool,
}

impl FrameReader {
    /// A reader; `once`: remember the last few inflated messages of the thread and hand their
    /// text out again when a message's compressed bytes are the same (they inflate the same).
    pub fn new(once: bool) -> Self {
        Self {
            once,
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

    fn deliver(
        &mut self,
        opcode: u8,
        compressed: bool,
        payload: &[u8],
        on: &mut impl FnMut(WsItem<'_>),
    ) -> Result<(), String> {
        if opcode == BINARY {
            on(WsItem::Binary);
            return Ok(());
        }
        if !compressed {
            on(WsItem::Text(payload));
            return Ok(());
        }
        self.inflated += 1;
        INFLATER.with(|cell| {
            let t = &mut *cell.borrow_mut();
            if self.once {
                let same =
                    |(z, _): &&(Vec<u8>, Vec<u8>)| z.len() == payload.len() && z[..] == *payload;
                if let Some((_, text)) = t.memo.iter().rev().find(same) {
                    on(WsItem::Text(text));
                    return Ok(());
                }
                inflate(&mut t.d, payload, &mut t.out)?;
                if t.memo.len() == MEMO {
                    t.memo.remove(0); // 128 moves of two Vec headers, once per distinct message
                }
                t.memo.push((payload.to_vec(), t.out.clone()));
            } else {
                inflate(&mut t.d, payload, &mut t.out)?;
            }
            on(WsItem::Text(&t.out));
            Ok(())
        })
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

/// Inflates one message from an empty window: `payload` then the stripped [`SYNC_TAIL`].
fn inflate(d: &mut Decompress, payload: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    d.reset(false);
    out.clear();
    for input in [payload, &SYNC_TAIL[..]] {
        let start = d.total_in();
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_MESSAGE {
                    return Err("inflated message too big".into());
                }
                out.reserve(out.capacity().max(4096));
            }
            let used = (d.total_in() - start) as usize;
            let before = (d.total_in(), d.total_out());
            let status = d
                .decompress_vec(&input[used..], out, FlushDecompress::Sync)
                .map_err(|e| format!("bad deflate data: {e}"))?;
            if status == Status::StreamEnd {
                // A final block: the message ends there.
                return Ok(());
            }
            let used = (d.total_in() - start) as usize;
            let room = out.len() < out.capacity();
            if used == input.len() && room {
                break;
            }
            if before == (d.total_in(), d.total_out()) && room {
                return Err("deflate data stuck".into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
