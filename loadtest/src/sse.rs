//! A streaming `text/event-stream` parser for the hot path: it keeps no per-event allocations
//! (the last id, the event name and a partial line live in buffers reused for the whole
//! connection) and reads only what the load generator checks: each event's `id:`, `event:`,
//! and the publisher's `seq`/`ts` from its `data:` (see [`crate::payload::extract`]).

use crate::payload::{Stamp, extract};

/// Longest line kept across reads; longer lines are cut (they cannot be ours).
const MAX_LINE: usize = 64 * 1024;

/// What a dispatched block contained.
#[derive(Debug, PartialEq, Eq)]
pub enum SseItem<'a> {
    /// A block with data: an event.
    Event {
        /// The connection's last event id (from this block or an earlier one).
        id: &'a [u8],
        /// Whether this block carried an `id:` line.
        id_in_block: bool,
        /// The event name (`event:` field), empty when absent.
        name: &'a [u8],
        /// `seq`/`ts` found in the data lines.
        stamp: Stamp,
    },
    /// A block with an `id:` but no data: sets the last event id without an event (the
    /// gateway's first frame carries the starting position this way).
    Marker {
        /// The new last event id.
        id: &'a [u8],
    },
}

/// Incremental parser state of one SSE stream.
#[derive(Debug, Default)]
pub struct SseParser {
    carry: Vec<u8>,
    after_cr: bool,
    started: bool,
    last_id: Vec<u8>,
    id_in_block: bool,
    name: Vec<u8>,
    has_data: bool,
    stamp: Stamp,
    /// Whether a `retry:` field was seen.
    pub retry_seen: bool,
    /// Comment lines (`: ping`, closing reasons) seen.
    pub comments: u64,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// A parser that starts with a known last event id (a resumed connection).
    pub fn with_last_id(id: &[u8]) -> Self {
        Self {
            last_id: id.to_vec(),
            ..Self::default()
        }
    }

    /// The last event id seen.
    pub fn last_id(&self) -> &[u8] {
        &self.last_id
    }

    /// Parses a run of body bytes, calling `sink` for every dispatched block.
    pub fn feed(&mut self, mut input: &[u8], sink: &mut impl FnMut(SseItem<'_>)) {
        if self.after_cr && !input.is_empty() {
            self.after_cr = false;
            if input[0] == b'\n' {
                input = &input[1..];
            }
        }
        while let Some(i) = memchr::memchr2(b'\n', b'\r', input) {
            let ended_by_cr = input[i] == b'\r';
            if self.carry.is_empty() {
                self.line(&input[..i], sink);
            } else {
                let mut carry = std::mem::take(&mut self.carry);
                append_limited(&mut carry, &input[..i]);
                self.line(&carry, sink);
                carry.clear();
                self.carry = carry;
            }
            input = &input[i + 1..];
            if ended_by_cr {
                match input.first() {
                    Some(b'\n') => input = &input[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        if !input.is_empty() {
            append_limited(&mut self.carry, input);
        }
    }

    fn line(&mut self, mut line: &[u8], sink: &mut impl FnMut(SseItem<'_>)) {
        if !self.started {
            self.started = true;
            line = line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch(sink);
            return;
        }
        if line[0] == b':' {
            self.comments += 1;
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.stamp.seq.is_none() || self.stamp.ts.is_none() {
                    let found = extract(value);
                    self.stamp.seq = self.stamp.seq.or(found.seq);
                    self.stamp.ts = self.stamp.ts.or(found.ts);
                }
                self.has_data = true;
            }
            b"id" if memchr::memchr(0, value).is_none() => {
                self.last_id.clear();
                self.last_id.extend_from_slice(value);
                self.id_in_block = true;
            }
            b"event" => {
                self.name.clear();
                self.name.extend_from_slice(value);
            }
            b"retry" => self.retry_seen = true,
            _ => {}
        }
    }

    fn dispatch(&mut self, sink: &mut impl FnMut(SseItem<'_>)) {
        let id_in_block = std::mem::take(&mut self.id_in_block);
        if self.has_data {
            sink(SseItem::Event {
                id: &self.last_id,
                id_in_block,
                name: &self.name,
                stamp: self.stamp,
            });
        } else if id_in_block {
            sink(SseItem::Marker { id: &self.last_id });
        }
        self.has_data = false;
        self.stamp = Stamp::default();
        self.name.clear();
    }
}

fn append_limited(buf: &mut Vec<u8>, bytes: &[u8]) {
    let room = MAX_LINE.saturating_sub(buf.len());
    buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::write_payload;

    #[derive(Debug, PartialEq, Eq, Clone)]
    enum Owned {
        Event(String, bool, String, Stamp),
        Marker(String),
    }

    fn parse_split(bytes: &[u8], splits: &[usize]) -> (Vec<Owned>, SseParser) {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        let mut last = 0;
        for &s in splits.iter().chain(std::iter::once(&bytes.len())) {
            p.feed(&bytes[last..s], &mut |item| {
                out.push(match item {
                    SseItem::Event {
                        id,
                        id_in_block,
                        name,
                        stamp,
                    } => Owned::Event(
                        String::from_utf8_lossy(id).into(),
                        id_in_block,
                        String::from_utf8_lossy(name).into(),
                        stamp,
                    ),
                    SseItem::Marker { id } => Owned::Marker(String::from_utf8_lossy(id).into()),
                })
            });
            last = s;
        }
        (out, p)
    }

    /// A gateway-like stream built with the gateway's own encoder.
    fn gateway_stream() -> (Vec<u8>, Vec<Owned>) {
        let mut out = Vec::new();
        shared::sse::write_field(&mut out, b"retry", b"2000");
        out.extend_from_slice(b"id: 1f:0\n\n");
        let mut expected = vec![Owned::Marker("1f:0".into())];
        for seq in 0..3u64 {
            let mut payload = Vec::new();
            write_payload(&mut payload, seq, 1000 + seq, 60);
            let id = format!("1f:{}", seq + 1);
            let name = if seq == 1 { Some("price") } else { None };
            shared::sse::write_event(&mut out, Some(&id), name, &payload);
            expected.push(Owned::Event(
                id,
                true,
                name.unwrap_or("").into(),
                Stamp {
                    seq: Some(seq),
                    ts: Some(1000 + seq),
                },
            ));
        }
        shared::sse::write_comment(&mut out, "ping");
        shared::sse::write_event(
            &mut out,
            Some("1f:9"),
            Some("gap"),
            br#"{"channel":"c","first_available":"1f:10"}"#,
        );
        expected.push(Owned::Event(
            "1f:9".into(),
            true,
            "gap".into(),
            Stamp::default(),
        ));
        // Multi-line data (an id-less event keeps the previous id).
        shared::sse::write_event(&mut out, None, None, b"{\"seq\":7,\n\"ts\":8}");
        expected.push(Owned::Event(
            "1f:9".into(),
            false,
            "".into(),
            Stamp {
                seq: Some(7),
                ts: Some(8),
            },
        ));
        (out, expected)
    }

    #[test]
    fn encoder_output_split_at_every_byte_boundary() {
        let (bytes, expected) = gateway_stream();
        let (whole, p) = parse_split(&bytes, &[]);
        assert_eq!(whole, expected);
        assert!(p.retry_seen);
        assert_eq!(p.comments, 1);
        for i in 0..=bytes.len() {
            assert_eq!(parse_split(&bytes, &[i]).0, expected, "split at {i}");
        }
        // Byte by byte.
        let every: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(parse_split(&bytes, &every).0, expected);
    }

    #[test]
    fn crlf_and_cr_line_endings_at_every_split() {
        let (lf, expected) = gateway_stream();
        for ending in [&b"\r\n"[..], &b"\r"[..]] {
            let mut bytes = Vec::new();
            for &b in &lf {
                if b == b'\n' {
                    bytes.extend_from_slice(ending);
                } else {
                    bytes.push(b);
                }
            }
            for i in 0..=bytes.len() {
                assert_eq!(parse_split(&bytes, &[i]).0, expected, "split at {i}");
            }
        }
    }

    #[test]
    fn odd_fields_and_resume_id() {
        let mut p = SseParser::with_last_id(b"a:5");
        let mut got = Vec::new();
        p.feed(b"\xef\xbb\xbfdata\nid: x\0y\nfoo: bar\n\n", &mut |item| {
            if let SseItem::Event {
                id, id_in_block, ..
            } = item
            {
                got.push((id.to_vec(), id_in_block));
            }
        });
        assert_eq!(got, vec![(b"a:5".to_vec(), false)]);
        assert_eq!(p.last_id(), b"a:5");
    }

    #[test]
    fn huge_lines_are_bounded() {
        let mut p = SseParser::new();
        let chunk = vec![b'x'; 10_000];
        for _ in 0..20 {
            p.feed(&chunk, &mut |_| {});
        }
        assert!(p.carry.len() <= MAX_LINE);
        let mut n = 0;
        p.feed(b"\n\ndata: {\"seq\":1,\"ts\":2}\n\n", &mut |_| n += 1);
        assert_eq!(n, 1);
    }
}
