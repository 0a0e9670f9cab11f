//! The subscriber's view of an SSE stream: [`shared::sse::SseReader`] (the same framing code
//! the gateway's tests decode with) splits lines and fields without allocating; this keeps only
//! what the load generator checks of each dispatched block: its id, its event name, and the
//! publisher's `seq`/`ts` from its data (see [`crate::payload::extract`]).

use shared::sse::{SseReader, SseToken};

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

/// Incremental state of one subscriber's SSE stream: the shared reader plus the stamp of the
/// block being read.
#[derive(Debug)]
pub struct SseParser {
    reader: SseReader,
    stamp: Stamp,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self {
            reader: SseReader::new().with_max_line(MAX_LINE),
            stamp: Stamp::default(),
        }
    }

    /// A parser that starts with a known last event id (a resumed connection).
    pub fn with_last_id(id: &[u8]) -> Self {
        Self {
            reader: SseReader::with_last_id(id).with_max_line(MAX_LINE),
            stamp: Stamp::default(),
        }
    }

    /// The last event id seen.
    pub fn last_id(&self) -> &[u8] {
        self.reader.last_id()
    }

    /// Parses a run of body bytes, calling `sink` for every dispatched block.
    pub fn feed(&mut self, input: &[u8], sink: &mut impl FnMut(SseItem<'_>)) {
        let stamp = &mut self.stamp;
        self.reader.feed(input, &mut |token| match token {
            SseToken::Data(value) => {
                if stamp.seq.is_none() || stamp.ts.is_none() {
                    let found = extract(value);
                    stamp.seq = stamp.seq.or(found.seq);
                    stamp.ts = stamp.ts.or(found.ts);
                }
            }
            SseToken::Dispatch(block) => {
                let stamp = std::mem::take(stamp);
                if block.has_data {
                    sink(SseItem::Event {
                        id: block.last_id,
                        id_in_block: block.id_in_block,
                        name: block.event,
                        stamp,
                    });
                } else if block.id_in_block {
                    sink(SseItem::Marker { id: block.last_id });
                }
            }
            SseToken::Comment(_) | SseToken::Retry(_) => {}
        });
    }
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

    fn parse_split(p: &mut SseParser, bytes: &[u8], splits: &[usize]) -> Vec<Owned> {
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
        out
    }

    /// A gateway-like stream built with the gateway's own encoder.
    fn gateway_stream() -> (Vec<u8>, Vec<Owned>) {
        let mut out = Vec::new();
        shared::sse::write_retry(&mut out, 2000);
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
        // Multi-line data (an id-less event keeps the previous id): the stamp spans lines.
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
    fn stamps_ids_and_names_at_every_split() {
        let (bytes, expected) = gateway_stream();
        for i in 0..=bytes.len() {
            assert_eq!(
                parse_split(&mut SseParser::new(), &bytes, &[i]),
                expected,
                "split at {i}"
            );
        }
        let every: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(parse_split(&mut SseParser::new(), &bytes, &every), expected);
    }

    #[test]
    fn resumed_parser_keeps_its_id_until_a_new_one() {
        let mut p = SseParser::with_last_id(b"a:5");
        let got = parse_split(&mut p, b"data: {\"seq\":1,\"ts\":2}\n\n", &[]);
        assert_eq!(
            got,
            vec![Owned::Event(
                "a:5".into(),
                false,
                "".into(),
                Stamp {
                    seq: Some(1),
                    ts: Some(2)
                }
            )]
        );
        assert_eq!(p.last_id(), b"a:5");
    }
}
