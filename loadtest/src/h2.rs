//! A minimal HTTP/2 client side for SSE subscribers (RFC 9113), written for the hot path: one
//! task per connection reads the frames of all its streams and hands each DATA payload, as a
//! slice of the read, straight to that stream's SSE parser — no task, lock or allocation per
//! frame. It speaks only what a stream of server-sent events needs:
//!
//! - the connection preface and our SETTINGS: no server push, a 0-byte HPACK dynamic table (so
//!   response headers can be read without keeping HPACK state), and the largest flow-control
//!   windows, replenished long before they could run out;
//! - GET requests as one HEADERS frame each (HPACK literals, no Huffman coding);
//! - from the server: DATA (padding handled, delivered as it arrives, even in pieces), HEADERS
//!   and CONTINUATION (only `:status` is decoded), RST_STREAM, SETTINGS (acknowledged), PING
//!   (answered), GOAWAY and WINDOW_UPDATE; PRIORITY and unknown frame types are skipped.

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Largest flow-control window (2^31 - 1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;
/// Received bytes after which a window is topped up again (half the window).
pub const REPLENISH: u32 = 1 << 30;
/// Default initial window before SETTINGS apply (RFC 9113 §6.9.2).
const DEFAULT_WINDOW: u32 = 65_535;
/// Largest frame payload we accept (our SETTINGS_MAX_FRAME_SIZE is the default, 16 KiB).
const MAX_FRAME: u32 = 16_384;
/// Largest header block (HEADERS + CONTINUATION) kept.
const MAX_HEADER_BLOCK: usize = 64 * 1024;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// Appends a frame header.
fn frame_head(out: &mut Vec<u8>, len: usize, ty: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(ty);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
}

/// The preface, our SETTINGS, and the connection window raised to the maximum.
pub fn write_preface(out: &mut Vec<u8>) {
    out.extend_from_slice(PREFACE);
    let settings: [(u16, u32); 3] = [
        (0x1, 0),          // SETTINGS_HEADER_TABLE_SIZE: no dynamic table
        (0x2, 0),          // SETTINGS_ENABLE_PUSH
        (0x4, MAX_WINDOW), // SETTINGS_INITIAL_WINDOW_SIZE
    ];
    frame_head(out, settings.len() * 6, SETTINGS, 0, 0);
    for (id, value) in settings {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
    write_window_update(out, 0, MAX_WINDOW - DEFAULT_WINDOW);
}

/// A WINDOW_UPDATE frame.
pub fn write_window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    frame_head(out, 4, WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&(increment & 0x7fff_ffff).to_be_bytes());
}

/// Acknowledges the server's SETTINGS.
pub fn write_settings_ack(out: &mut Vec<u8>) {
    frame_head(out, 0, SETTINGS, ACK, 0);
}

/// Answers a PING.
pub fn write_ping_ack(out: &mut Vec<u8>, payload: &[u8; 8]) {
    frame_head(out, 8, PING, ACK, 0);
    out.extend_from_slice(payload);
}

/// An RST_STREAM frame with CANCEL.
pub fn write_cancel(out: &mut Vec<u8>, stream: u32) {
    frame_head(out, 4, RST_STREAM, 0, stream);
    out.extend_from_slice(&0x8u32.to_be_bytes());
}

fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u32, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// A GET request as one HEADERS frame (END_STREAM | END_HEADERS). `headers` are extra
/// lowercase `(name, value)` pairs.
pub fn write_get(
    out: &mut Vec<u8>,
    stream: u32,
    tls: bool,
    authority: &str,
    path: &str,
    headers: &[(&[u8], &[u8])],
) {
    let mut block = Vec::with_capacity(64 + path.len() + authority.len());
    block.push(0x82); // :method GET (static 2)
    block.push(if tls { 0x87 } else { 0x86 }); // :scheme https (7) / http (6)
    hpack_int(&mut block, 0x00, 4, 4); // :path, literal without indexing, name static 4
    hpack_str(&mut block, path.as_bytes());
    hpack_int(&mut block, 0x00, 4, 1); // :authority (static 1)
    hpack_str(&mut block, authority.as_bytes());
    for (name, value) in headers {
        block.push(0x00); // literal without indexing, new name
        hpack_str(&mut block, name);
        hpack_str(&mut block, value);
    }
    frame_head(out, block.len(), HEADERS, END_STREAM | END_HEADERS, stream);
    out.extend_from_slice(&block);
}

/// Why a connection's frames could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A frame larger than our SETTINGS_MAX_FRAME_SIZE.
    TooLarge,
    /// Padding longer than the frame, or a malformed fixed-size frame.
    Malformed,
    /// CONTINUATION out of place, or a header block that never ends.
    HeaderBlock,
    /// PUSH_PROMISE, though push is disabled.
    Push,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TooLarge => "frame too large",
            Self::Malformed => "malformed frame",
            Self::HeaderBlock => "bad header block",
            Self::Push => "push promise",
        })
    }
}

/// What the server sent, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// Part of a DATA frame's payload (padding removed); a frame may come in several parts.
    Data {
        /// Stream id.
        stream: u32,
        /// The bytes (a slice of the input).
        data: &'a [u8],
    },
    /// The end of a DATA frame: its whole length counts against the flow-control windows.
    DataEnd {
        /// Stream id.
        stream: u32,
        /// Frame payload length, padding included.
        flow: u32,
        /// Whether the stream ended with it.
        end_stream: bool,
    },
    /// A complete header block.
    Headers {
        /// Stream id.
        stream: u32,
        /// The HPACK block.
        block: &'a [u8],
        /// Whether the stream ended with it (a response without a body, or trailers).
        end_stream: bool,
    },
    /// The server reset a stream.
    Reset {
        /// Stream id.
        stream: u32,
        /// HTTP/2 error code.
        code: u32,
    },
    /// Server SETTINGS (to be acknowledged); acknowledgements of ours are not reported.
    Settings,
    /// A PING to answer.
    Ping([u8; 8]),
    /// The server is closing the connection.
    GoAway {
        /// Highest stream id it processed.
        last_stream: u32,
        /// HTTP/2 error code.
        code: u32,
    },
}

/// The frame being read.
#[derive(Clone, Copy, Debug)]
struct Current {
    ty: u8,
    flags: u8,
    stream: u32,
    len: u32,
    /// Payload bytes still to come.
    left: u32,
    /// Whether the pad-length byte is still to come (PADDED DATA).
    pad_len_pending: bool,
    /// Trailing padding bytes (DATA).
    pad: u32,
}

/// Incremental frame reader of one connection.
#[derive(Debug, Default)]
pub struct FrameReader {
    head: [u8; 9],
    head_len: usize,
    cur: Option<Current>,
    /// Payload of the non-DATA frame being read.
    buf: Vec<u8>,
    /// Header block waiting for CONTINUATION: (stream, end_stream).
    continuing: Option<(u32, bool)>,
    block: Vec<u8>,
}

impl FrameReader {
    /// A reader at the start of the server's frames.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `input`, calling `on` for everything complete (or, for DATA, as it arrives).
    pub fn feed(
        &mut self,
        mut input: &[u8],
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<(), FrameError> {
        while !input.is_empty() {
            let Some(cur) = self.cur.as_mut() else {
                let n = (9 - self.head_len).min(input.len());
                self.head[self.head_len..self.head_len + n].copy_from_slice(&input[..n]);
                self.head_len += n;
                input = &input[n..];
                if self.head_len == 9 {
                    self.head_len = 0;
                    self.start_frame(on)?;
                }
                continue;
            };
            if cur.ty == DATA {
                if cur.pad_len_pending {
                    cur.pad_len_pending = false;
                    cur.pad = u32::from(input[0]);
                    cur.left -= 1;
                    input = &input[1..];
                    if cur.pad > cur.left {
                        return Err(FrameError::Malformed);
                    }
                }
                let data_left = cur.left - cur.pad;
                let n = (data_left as usize).min(input.len());
                if n > 0 {
                    on(Event::Data {
                        stream: cur.stream,
                        data: &input[..n],
                    });
                }
                cur.left -= n as u32;
                input = &input[n..];
                if cur.left <= cur.pad {
                    // Only padding remains: skip what is here.
                    let skip = (cur.left as usize).min(input.len());
                    cur.left -= skip as u32;
                    cur.pad -= skip as u32;
                    input = &input[skip..];
                }
                if cur.left == 0 {
                    self.end_data(on);
                }
                continue;
            }
            let n = (cur.left as usize).min(input.len());
            self.buf.extend_from_slice(&input[..n]);
            cur.left -= n as u32;
            input = &input[n..];
            if cur.left == 0 {
                self.end_frame(on)?;
            }
        }
        Ok(())
    }

    fn start_frame(&mut self, on: &mut impl FnMut(Event<'_>)) -> Result<(), FrameError> {
        let h = self.head;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
        let (ty, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge);
        }
        if self.continuing.is_some() && ty != CONTINUATION {
            return Err(FrameError::HeaderBlock);
        }
        let padded = ty == DATA && flags & PADDED != 0;
        if padded && len == 0 {
            return Err(FrameError::Malformed);
        }
        self.cur = Some(Current {
            ty,
            flags,
            stream,
            len,
            left: len,
            pad_len_pending: padded,
            pad: 0,
        });
        self.buf.clear();
        if len == 0 {
            if ty == DATA {
                self.end_data(on);
            } else {
                self.end_frame(on)?;
            }
        }
        Ok(())
    }

    fn end_data(&mut self, on: &mut impl FnMut(Event<'_>)) {
        if let Some(cur) = self.cur.take() {
            on(Event::DataEnd {
                stream: cur.stream,
                flow: cur.len,
                end_stream: cur.flags & END_STREAM != 0,
            });
        }
    }

    fn end_frame(&mut self, on: &mut impl FnMut(Event<'_>)) -> Result<(), FrameError> {
        let Some(cur) = self.cur.take() else {
            return Ok(());
        };
        let p = &self.buf[..];
        match cur.ty {
            HEADERS => {
                let mut p = p;
                if cur.flags & PADDED != 0 {
                    let (&pad, rest) = p.split_first().ok_or(FrameError::Malformed)?;
                    let keep = rest
                        .len()
                        .checked_sub(usize::from(pad))
                        .ok_or(FrameError::Malformed)?;
                    p = &rest[..keep];
                }
                if cur.flags & PRIORITY != 0 {
                    p = p.get(5..).ok_or(FrameError::Malformed)?;
                }
                let end_stream = cur.flags & END_STREAM != 0;
                if cur.flags & END_HEADERS != 0 {
                    on(Event::Headers {
                        stream: cur.stream,
                        block: p,
                        end_stream,
                    });
                } else {
                    self.block.clear();
                    self.block.extend_from_slice(p);
                    self.continuing = Some((cur.stream, end_stream));
                }
            }
            CONTINUATION => {
                let Some((stream, end_stream)) = self.continuing else {
                    return Err(FrameError::HeaderBlock);
                };
                if stream != cur.stream || self.block.len() + p.len() > MAX_HEADER_BLOCK {
                    return Err(FrameError::HeaderBlock);
                }
                self.block.extend_from_slice(p);
                if cur.flags & END_HEADERS != 0 {
                    self.continuing = None;
                    on(Event::Headers {
                        stream,
                        block: &self.block,
                        end_stream,
                    });
                }
            }
            RST_STREAM => {
                let code = be32(p).ok_or(FrameError::Malformed)?;
                on(Event::Reset {
                    stream: cur.stream,
                    code,
                });
            }
            SETTINGS if cur.flags & ACK == 0 => {
                if !p.len().is_multiple_of(6) {
                    return Err(FrameError::Malformed);
                }
                on(Event::Settings);
            }
            PING if cur.flags & ACK == 0 => {
                let payload: [u8; 8] = p.try_into().map_err(|_| FrameError::Malformed)?;
                on(Event::Ping(payload));
            }
            GOAWAY => {
                let last_stream = be32(p).ok_or(FrameError::Malformed)? & 0x7fff_ffff;
                let code = p.get(4..).and_then(be32).ok_or(FrameError::Malformed)?;
                on(Event::GoAway { last_stream, code });
            }
            PUSH_PROMISE => return Err(FrameError::Push),
            // SETTINGS/PING acknowledgements, WINDOW_UPDATE (we send only request heads),
            // PRIORITY, and unknown types.
            _ => {}
        }
        Ok(())
    }
}

fn be32(p: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(..4)?.try_into().ok()?))
}

/// Reads an HPACK integer with an `n`-bit prefix from the start of `p`: (value, bytes used).
fn read_int(p: &[u8], n: u32) -> Option<(usize, usize)> {
    let max = (1usize << n) - 1;
    let first = usize::from(*p.first()?) & max;
    if first < max {
        return Some((first, 1));
    }
    let mut value = max;
    let mut shift = 0;
    for (i, &b) in p.iter().enumerate().skip(1) {
        value = value.checked_add(usize::from(b & 0x7f).checked_shl(shift)?)?;
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
    None
}

/// HTTP/2 error code names for reports.
pub fn error_name(code: u32) -> &'static str {
    match code {
        0x0 => "no_error",
        0x1 => "protocol_error",
        0x2 => "internal_error",
        0x3 => "flow_control_error",
        0x5 => "stream_closed",
        0x6 => "frame_size_error",
        0x7 => "refused_stream",
        0x8 => "cancel",
        0xb => "enhance_your_calm",
        _ => "error",
    }
}

/// The `:status` of a response header block, encoded without the dynamic table (we set its
/// size to 0). `None` when it cannot be read.
pub fn status(block: &[u8]) -> Option<u16> {
    let mut p = block;
    loop {
        let b = *p.first()?;
        if b & 0xe0 == 0x20 {
            // Dynamic table size update.
            let (_, used) = read_int(p, 5)?;
            p = &p[used..];
            continue;
        }
        if b & 0x80 != 0 {
            let (index, _) = read_int(p, 7)?;
            return match index {
                8 => Some(200),
                9 => Some(204),
                10 => Some(206),
                11 => Some(304),
                12 => Some(400),
                13 => Some(404),
                14 => Some(500),
                _ => None,
            };
        }
        // A literal: its name must be one of the static `:status` entries.
        let prefix = if b & 0xc0 == 0x40 { 6 } else { 4 };
        let (name, used) = read_int(p, prefix)?;
        if !(8..=14).contains(&name) {
            return None;
        }
        p = &p[used..];
        let huffman = *p.first()? & 0x80 != 0;
        let (len, used) = read_int(p, 7)?;
        let value = p.get(used..used + len)?;
        let digits = if huffman {
            huffman_digits(value)?
        } else {
            value.to_vec()
        };
        if digits.len() != 3 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        return Some(
            digits
                .iter()
                .fold(0u16, |a, &d| a * 10 + u16::from(d - b'0')),
        );
    }
}

/// Decodes a Huffman-coded string of decimal digits (RFC 7541 Appendix B: '0'-'2' are the
/// 5-bit codes 00000-00010, '3'-'9' the 6-bit codes 011001-011111; padding is all ones).
fn huffman_digits(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(3);
    let total = bytes.len() * 8;
    let bit = |i: usize| (bytes[i / 8] >> (7 - i % 8)) & 1;
    let mut i = 0;
    while i < total {
        let rest = total - i;
        // Padding: fewer than 8 bits, all ones.
        if rest < 8 && (i..total).all(|j| bit(j) == 1) {
            break;
        }
        if rest < 5 {
            return None;
        }
        let five = (0..5).fold(0u8, |a, j| a << 1 | bit(i + j));
        if five <= 0b00010 {
            out.push(b'0' + five);
            i += 5;
            continue;
        }
        if rest < 6 {
            return None;
        }
        let six = five << 1 | bit(i + 5);
        if (0b011001..=0b011111).contains(&six) {
            out.push(b'3' + (six - 0b011001));
            i += 6;
            continue;
        }
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Owned {
        Data(u32, Vec<u8>),
        DataEnd(u32, u32, bool),
        Headers(u32, Vec<u8>, bool),
        Reset(u32, u32),
        Settings,
        Ping([u8; 8]),
        GoAway(u32, u32),
    }

    fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame_head(&mut out, payload.len(), ty, flags, stream);
        out.extend_from_slice(payload);
        out
    }

    /// Feeds `bytes` split at `splits`, merging adjacent Data parts of the same stream.
    fn read(bytes: &[u8], splits: &[usize]) -> Result<Vec<Owned>, FrameError> {
        let mut r = FrameReader::new();
        let mut out: Vec<Owned> = Vec::new();
        let mut last = 0;
        for &s in splits.iter().chain(std::iter::once(&bytes.len())) {
            r.feed(&bytes[last..s], &mut |e| match e {
                Event::Data { stream, data } => match out.last_mut() {
                    Some(Owned::Data(s, d)) if *s == stream => d.extend_from_slice(data),
                    _ => out.push(Owned::Data(stream, data.to_vec())),
                },
                Event::DataEnd {
                    stream,
                    flow,
                    end_stream,
                } => out.push(Owned::DataEnd(stream, flow, end_stream)),
                Event::Headers {
                    stream,
                    block,
                    end_stream,
                } => out.push(Owned::Headers(stream, block.to_vec(), end_stream)),
                Event::Reset { stream, code } => out.push(Owned::Reset(stream, code)),
                Event::Settings => out.push(Owned::Settings),
                Event::Ping(p) => out.push(Owned::Ping(p)),
                Event::GoAway { last_stream, code } => out.push(Owned::GoAway(last_stream, code)),
            })?;
            last = s;
        }
        Ok(out)
    }

    #[test]
    fn frames_at_every_split() {
        let mut bytes = Vec::new();
        bytes.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 1, 0]));
        bytes.extend(frame(SETTINGS, ACK, 0, &[]));
        bytes.extend(frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1, 0]));
        bytes.extend(frame(HEADERS, END_HEADERS, 1, &[0x20, 0x88]));
        bytes.extend(frame(DATA, 0, 1, b"retry: 2000\n\n"));
        // Padded DATA with priority-flagged, padded HEADERS split by CONTINUATION around it.
        bytes.extend(frame(DATA, PADDED, 3, b"\x03abc\0\0\0"));
        bytes.extend(frame(
            HEADERS,
            PADDED | PRIORITY,
            5,
            b"\x02\0\0\0\x01\x10\x88\x00\x00",
        ));
        bytes.extend(frame(CONTINUATION, END_HEADERS, 5, b"\x0f"));
        bytes.extend(frame(PING, 0, 0, b"12345678"));
        bytes.extend(frame(PING, ACK, 0, b"12345678"));
        bytes.extend(frame(0x2, 0, 1, &[0, 0, 0, 0, 16])); // PRIORITY: skipped
        bytes.extend(frame(DATA, END_STREAM, 1, b""));
        bytes.extend(frame(DATA, PADDED | END_STREAM, 3, b"\x02\0\0"));
        bytes.extend(frame(RST_STREAM, 0, 5, &[0, 0, 0, 8]));
        bytes.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 5, 0, 0, 0, 0, b'x']));
        let expected = vec![
            Owned::Settings,
            Owned::Headers(1, vec![0x20, 0x88], false),
            Owned::Data(1, b"retry: 2000\n\n".to_vec()),
            Owned::DataEnd(1, 13, false),
            Owned::Data(3, b"abc".to_vec()),
            Owned::DataEnd(3, 7, false),
            Owned::Headers(5, vec![0x88, 0x0f], false),
            Owned::Ping(*b"12345678"),
            Owned::DataEnd(1, 0, true),
            Owned::DataEnd(3, 3, true),
            Owned::Reset(5, 8),
            Owned::GoAway(5, 0),
        ];
        assert_eq!(read(&bytes, &[]).unwrap(), expected);
        for i in 0..=bytes.len() {
            assert_eq!(read(&bytes, &[i]).unwrap(), expected, "split at {i}");
        }
        let every: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(read(&bytes, &every).unwrap(), expected);
    }

    #[test]
    fn bad_frames() {
        let big = frame(DATA, 0, 1, &vec![0; MAX_FRAME as usize + 1]);
        assert_eq!(read(&big, &[]), Err(FrameError::TooLarge));
        assert_eq!(
            read(&frame(DATA, PADDED, 1, b"\x05ab"), &[]),
            Err(FrameError::Malformed)
        );
        assert_eq!(
            read(&frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2]), &[]),
            Err(FrameError::Push)
        );
        let mut interrupted = frame(HEADERS, 0, 1, &[0x88]);
        interrupted.extend(frame(DATA, 0, 1, b"x"));
        assert_eq!(read(&interrupted, &[]), Err(FrameError::HeaderBlock));
        assert_eq!(
            read(&frame(CONTINUATION, END_HEADERS, 1, &[0x88]), &[]),
            Err(FrameError::HeaderBlock)
        );
        assert_eq!(
            read(&frame(PING, 0, 0, b"short"), &[]),
            Err(FrameError::Malformed)
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(status(&[0x20, 0x88, 0x5f, 0x00]), Some(200));
        assert_eq!(status(&[0x8d]), Some(404));
        // Literal `:status: 503` without indexing, plain and Huffman-coded ("503" is
        // 011011 00000 011001 and 7 bits of padding = 0x6c 0x0c 0xff), and with indexing.
        assert_eq!(status(&[0x08, 0x03, b'5', b'0', b'3']), Some(503));
        assert_eq!(status(&[0x08, 0x83, 0x6c, 0x0c, 0xff]), Some(503));
        assert_eq!(status(&[0x48, 0x03, b'4', b'2', b'9']), Some(429));
        // "429" = 011010 00010 011111 + 1111111; "000" = 00000 00000 00000 + 1.
        assert_eq!(huffman_digits(&[0x68, 0x4f, 0xff]), Some(b"429".to_vec()));
        assert_eq!(huffman_digits(&[0x00, 0x01]), Some(b"000".to_vec()));
        assert_eq!(huffman_digits(&[0x00, 0x00]), None, "padding must be ones");
        assert_eq!(status(&[0xbe]), None, "dynamic table entry");
        assert_eq!(status(&[0x01, 0x01, b'x']), None, "not :status");
        assert_eq!(status(&[]), None);
    }

    #[test]
    fn integers_and_requests() {
        let mut out = Vec::new();
        hpack_int(&mut out, 0, 7, 300);
        assert_eq!(read_int(&out, 7), Some((300, out.len())));
        let mut out = Vec::new();
        hpack_int(&mut out, 0, 5, 10);
        assert_eq!(out, [10]);
        assert_eq!(read_int(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff], 7), None);
        let mut req = Vec::new();
        write_get(
            &mut req,
            3,
            true,
            "127.0.0.1:8443",
            "/sse?channel=c0",
            &[(b"accept", b"text/event-stream")],
        );
        assert_eq!(&req[3..9], &[HEADERS, END_STREAM | END_HEADERS, 0, 0, 0, 3]);
        assert_eq!(&req[9..12], &[0x82, 0x87, 0x04]);
        let mut pre = Vec::new();
        write_preface(&mut pre);
        assert!(pre.starts_with(PREFACE));
        assert_eq!(pre.len(), PREFACE.len() + 9 + 18 + 9 + 4);
    }
}
