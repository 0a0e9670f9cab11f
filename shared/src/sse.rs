//! Server-Sent Events framing: an encoder for the gateway and a decoder for tests and the load
//! generator, both following the WHATWG `text/event-stream` rules.
//!
//! Lines may end in CRLF, LF or CR. A payload containing any of them is split into several
//! `data:` lines, which a conforming client joins back with LF. The encoder never lets a line
//! break reach an `id:` or `event:` field (callers pass validated values; the encoder still
//! refuses to emit a broken frame rather than trust them).

/// Appends one event frame: optional `id:`, optional `event:`, one `data:` line per payload line,
/// and the blank line that dispatches it.
pub fn write_event(out: &mut Vec<u8>, id: Option<&str>, event: Option<&str>, data: &[u8]) {
    if let Some(id) = id {
        write_field(out, b"id", id.as_bytes());
    }
    if let Some(event) = event {
        write_field(out, b"event", event.as_bytes());
    }
    write_data(out, data);
    out.push(b'\n');
}

/// Appends the `data:` lines of a payload (without the dispatching blank line).
pub fn write_data(out: &mut Vec<u8>, data: &[u8]) {
    let mut rest = data;
    loop {
        let end = rest
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(rest.len());
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&rest[..end]);
        out.push(b'\n');
        if end == rest.len() {
            break;
        }
        // Skip the terminator; CRLF counts as one line break.
        let skip = if rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
    }
}

/// Appends a single-line field; a value with a line break is cut at the break so the frame stays
/// well-formed (callers validate ids and event names, so this only guards against bugs).
pub fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let end = value
        .iter()
        .position(|&b| b == b'\n' || b == b'\r' || b == 0)
        .unwrap_or(value.len());
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(&value[..end]);
    out.push(b'\n');
}

/// Appends a comment line (`: text`), which clients ignore: heartbeats and human hints.
pub fn write_comment(out: &mut Vec<u8>, text: &str) {
    write_field(out, b"", text.as_bytes());
    out.push(b'\n');
}

/// Appends a `retry:` field in its own block, telling the client how long to wait before
/// reconnecting.
pub fn write_retry(out: &mut Vec<u8>, millis: u64) {
    out.extend_from_slice(format!("retry: {millis}\n\n").as_bytes());
}

/// Longest line [`SseReader`] keeps by default: unbounded, so the exact [`SseDecoder`] sees every
/// byte; a reader facing untrusted streams sets a bound with [`SseReader::with_max_line`].
pub const UNBOUNDED_LINE: usize = usize::MAX;

/// What [`SseReader`] hands its sink: the stream's lines, already split into fields, borrowed
/// from the reader's buffers so a consumer that needs only a few fields allocates nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum SseToken<'a> {
    /// The value of one `data:` line; the lines of an event come in order before its
    /// [`SseToken::Dispatch`].
    Data(&'a [u8]),
    /// A comment line (heartbeats, human hints), without the leading colon.
    Comment(&'a [u8]),
    /// A valid `retry:` value (ASCII digits only, as the spec requires).
    Retry(u64),
    /// A blank line ended a block.
    Dispatch(SseBlock<'a>),
}

/// The fields of a block at its dispatching blank line.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct SseBlock<'a> {
    /// The connection's last event id (from this block or an earlier one).
    pub last_id: &'a [u8],
    /// Whether this block carried a (valid) `id:` line; a block with one and no data is how
    /// the gateway hands out a starting cursor.
    pub id_in_block: bool,
    /// The `event:` name, empty when the block had none (an `EventSource` then says `message`).
    pub event: &'a [u8],
    /// Whether the block had a `data:` line: only then is it an event.
    pub has_data: bool,
}

/// Allocation-free incremental `text/event-stream` tokenizer: splits lines across chunks (CR,
/// LF or CRLF, even split between two chunks), strips the BOM, parses fields and keeps the
/// last event id and the event name in buffers reused for the whole stream. The load
/// generator decodes thousands of streams with it; [`SseDecoder`] builds owned events on it.
#[derive(Debug)]
pub struct SseReader {
    carry: Vec<u8>,
    after_cr: bool,
    started: bool,
    last_id: Vec<u8>,
    id_in_block: bool,
    event: Vec<u8>,
    has_data: bool,
    max_line: usize,
}

impl Default for SseReader {
    fn default() -> Self {
        Self {
            carry: Vec::new(),
            after_cr: false,
            started: false,
            last_id: Vec::new(),
            id_in_block: false,
            event: Vec::new(),
            has_data: false,
            max_line: UNBOUNDED_LINE,
        }
    }
}

impl SseReader {
    /// A reader at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// A reader that starts with a known last event id (a resumed connection).
    pub fn with_last_id(id: &[u8]) -> Self {
        Self {
            last_id: id.to_vec(),
            ..Self::default()
        }
    }

    /// Cuts lines longer than `max` bytes (keeping their start), so a stream that never ends a
    /// line cannot grow the reader without bound.
    pub fn with_max_line(mut self, max: usize) -> Self {
        self.max_line = max;
        self
    }

    /// The last event id seen (or given to [`Self::with_last_id`]).
    pub fn last_id(&self) -> &[u8] {
        &self.last_id
    }

    /// Bytes of an unfinished line held across calls.
    pub fn pending(&self) -> usize {
        self.carry.len()
    }

    /// Consumes a chunk of the stream, calling `sink` for every complete line, in order.
    pub fn feed(&mut self, mut input: &[u8], sink: &mut impl FnMut(SseToken<'_>)) {
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
                append_limited(&mut carry, &input[..i], self.max_line);
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
            append_limited(&mut self.carry, input, self.max_line);
        }
    }

    fn line(&mut self, mut line: &[u8], sink: &mut impl FnMut(SseToken<'_>)) {
        if !self.started {
            self.started = true;
            line = line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line);
        }
        if line.is_empty() {
            sink(SseToken::Dispatch(SseBlock {
                last_id: &self.last_id,
                id_in_block: std::mem::take(&mut self.id_in_block),
                event: &self.event,
                has_data: std::mem::take(&mut self.has_data),
            }));
            self.event.clear();
            return;
        }
        if line[0] == b':' {
            sink(SseToken::Comment(&line[1..]));
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
                self.has_data = true;
                sink(SseToken::Data(value));
            }
            b"id" if memchr::memchr(0, value).is_none() => {
                self.last_id.clear();
                self.last_id.extend_from_slice(value);
                self.id_in_block = true;
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                if let Some(ms) = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) {
                    sink(SseToken::Retry(ms));
                }
            }
            _ => {}
        }
    }
}

fn append_limited(buf: &mut Vec<u8>, bytes: &[u8], max: usize) {
    let room = max.saturating_sub(buf.len());
    buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

/// One dispatched event as an `EventSource` would see it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The connection's last event id at dispatch (what a reconnect sends as `Last-Event-ID`).
    pub id: String,
    /// The event type; `message` when the frame had no `event:` field.
    pub event: String,
    /// The data lines joined with LF.
    pub data: String,
}

/// Incremental `text/event-stream` parser with owned events, for tests and tools that want
/// whole events: feed it bytes as they arrive, take events out.
#[derive(Debug, Default)]
pub struct SseDecoder {
    reader: SseReader,
    last_id: String,
    data: String,
    has_data: bool,
    retry: Option<u64>,
    comments: u64,
    ready: std::collections::VecDeque<SseEvent>,
}

impl SseDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes a chunk of the stream; complete events become available from [`Self::next_event`].
    pub fn feed(&mut self, chunk: &[u8]) {
        let Self {
            reader,
            last_id,
            data,
            has_data,
            retry,
            comments,
            ready,
        } = self;
        reader.feed(chunk, &mut |token| match token {
            SseToken::Data(value) => {
                if *has_data {
                    data.push('\n');
                }
                data.push_str(&String::from_utf8_lossy(value));
                *has_data = true;
            }
            SseToken::Comment(_) => *comments += 1,
            SseToken::Retry(ms) => *retry = Some(ms),
            SseToken::Dispatch(block) => {
                if !block.has_data {
                    return;
                }
                *has_data = false;
                ready.push_back(SseEvent {
                    id: String::from_utf8_lossy(block.last_id).into_owned(),
                    event: if block.event.is_empty() {
                        "message".to_owned()
                    } else {
                        String::from_utf8_lossy(block.event).into_owned()
                    },
                    data: std::mem::take(data),
                });
            }
        });
        if last_id.as_bytes() != reader.last_id() {
            *last_id = String::from_utf8_lossy(reader.last_id()).into_owned();
        }
    }

    /// The next complete event, in stream order.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        self.ready.pop_front()
    }

    /// The last event id seen, as a reconnecting `EventSource` would send it; updated even by
    /// frames without data (the gateway uses those to hand out a starting cursor).
    pub fn last_event_id(&self) -> &str {
        &self.last_id
    }

    /// The last `retry:` value received, if any.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// How many comment lines (heartbeats) were seen.
    pub fn comments(&self) -> u64 {
        self.comments
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(bytes: &[u8]) -> (Vec<SseEvent>, SseDecoder) {
        let mut d = SseDecoder::new();
        d.feed(bytes);
        let mut out = Vec::new();
        while let Some(e) = d.next_event() {
            out.push(e);
        }
        (out, d)
    }

    #[test]
    fn multi_line_data_becomes_several_data_lines() {
        let mut out = Vec::new();
        write_event(
            &mut out,
            Some("a:1"),
            Some("update"),
            b"one\ntwo\r\nthree\rfour",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "id: a:1\nevent: update\ndata: one\ndata: two\ndata: three\ndata: four\n\n"
        );
    }

    #[test]
    fn empty_and_trailing_newline_payloads_survive() {
        for payload in ["", "\n", "x\n", "\n\nx"] {
            let mut out = Vec::new();
            write_event(&mut out, None, None, payload.as_bytes());
            let (events, _) = decode_all(&out);
            let expected = payload.replace("\r\n", "\n").replace('\r', "\n");
            assert_eq!(events[0].data, expected, "{payload:?}");
        }
    }

    #[test]
    fn fields_cannot_be_broken_by_line_breaks() {
        let mut out = Vec::new();
        write_event(&mut out, Some("1\nevent: evil"), Some("a\rb"), b"x");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "id: 1\nevent: a\ndata: x\n\n"
        );
    }

    #[test]
    fn decoder_follows_the_spec() {
        let stream =
            "\u{feff}retry: 1500\n: ping\n\nid: 7\n\ndata: a\r\ndata: b\r\n\r\nevent: x\ndata\n\n";
        let (events, d) = decode_all(stream.as_bytes());
        assert_eq!(d.retry(), Some(1500));
        assert_eq!(d.comments(), 1);
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0],
            SseEvent {
                id: "7".into(),
                event: "message".into(),
                data: "a\nb".into()
            }
        );
        assert_eq!(events[1].event, "x");
        assert_eq!(events[1].data, "");
    }

    #[test]
    fn id_without_data_updates_last_event_id_only() {
        let (events, d) = decode_all(b"id: e:5\n\n");
        assert!(events.is_empty());
        assert_eq!(d.last_event_id(), "e:5");
    }

    /// A token with owned bytes, to compare runs.
    #[derive(Debug, PartialEq, Eq, Clone)]
    enum Owned {
        Data(Vec<u8>),
        Comment(Vec<u8>),
        Retry(u64),
        Dispatch(Vec<u8>, bool, Vec<u8>, bool),
    }

    fn read_split(reader: &mut SseReader, bytes: &[u8], splits: &[usize]) -> Vec<Owned> {
        let mut out = Vec::new();
        let mut last = 0;
        for &s in splits.iter().chain(std::iter::once(&bytes.len())) {
            reader.feed(&bytes[last..s], &mut |t| {
                out.push(match t {
                    SseToken::Data(v) => Owned::Data(v.to_vec()),
                    SseToken::Comment(v) => Owned::Comment(v.to_vec()),
                    SseToken::Retry(ms) => Owned::Retry(ms),
                    SseToken::Dispatch(b) => Owned::Dispatch(
                        b.last_id.to_vec(),
                        b.id_in_block,
                        b.event.to_vec(),
                        b.has_data,
                    ),
                })
            });
            last = s;
        }
        out
    }

    /// A gateway-like stream built with the encoder: a starting cursor, events (one named,
    /// one multi-line and id-less), a heartbeat.
    fn gateway_stream() -> (Vec<u8>, Vec<Owned>) {
        let d = |v: &[u8]| Owned::Data(v.to_vec());
        let end = |id: &[u8], in_block, event: &[u8], data| {
            Owned::Dispatch(id.to_vec(), in_block, event.to_vec(), data)
        };
        let mut out = Vec::new();
        write_retry(&mut out, 2000);
        out.extend_from_slice(b"id: 1f:0\n\n");
        write_event(&mut out, Some("1f:1"), None, b"{\"seq\":0}");
        write_event(&mut out, Some("1f:2"), Some("price"), b"x");
        write_comment(&mut out, "ping");
        write_event(&mut out, None, None, b"a\nb");
        let expected = vec![
            Owned::Retry(2000),
            end(b"", false, b"", false),
            end(b"1f:0", true, b"", false),
            d(b"{\"seq\":0}"),
            end(b"1f:1", true, b"", true),
            d(b"x"),
            end(b"1f:2", true, b"price", true),
            Owned::Comment(b" ping".to_vec()),
            end(b"1f:2", false, b"", false),
            d(b"a"),
            d(b"b"),
            end(b"1f:2", false, b"", true),
        ];
        (out, expected)
    }

    #[test]
    fn reader_gives_the_same_tokens_at_every_split_and_line_ending() {
        let (lf, expected) = gateway_stream();
        for ending in [&b"\n"[..], b"\r\n", b"\r"] {
            let mut bytes = Vec::new();
            for &b in &lf {
                if b == b'\n' {
                    bytes.extend_from_slice(ending);
                } else {
                    bytes.push(b);
                }
            }
            for i in 0..=bytes.len() {
                let got = read_split(&mut SseReader::new(), &bytes, &[i]);
                assert_eq!(got, expected, "{ending:?} split at {i}");
            }
            let every: Vec<usize> = (1..bytes.len()).collect();
            assert_eq!(read_split(&mut SseReader::new(), &bytes, &every), expected);
        }
    }

    #[test]
    fn reader_resumes_with_a_known_id_and_ignores_odd_fields() {
        let mut r = SseReader::with_last_id(b"a:5");
        let got = read_split(
            &mut r,
            b"\xef\xbb\xbfdata\nid: x\0y\nfoo: bar\nretry: 1x\n\n",
            &[],
        );
        assert_eq!(
            got,
            vec![
                Owned::Data(Vec::new()),
                Owned::Dispatch(b"a:5".to_vec(), false, Vec::new(), true)
            ]
        );
        assert_eq!(r.last_id(), b"a:5");
    }

    #[test]
    fn reader_bounds_a_line_that_never_ends() {
        let mut r = SseReader::new().with_max_line(1000);
        let chunk = vec![b'x'; 700];
        for _ in 0..10 {
            r.feed(&chunk, &mut |_| {});
        }
        assert!(r.pending() <= 1000);
        let got = read_split(&mut r, b"\n\ndata: y\n\n", &[]);
        assert_eq!(got.len(), 3, "the cut line, then an event: {got:?}");
        assert_eq!(got[1], Owned::Data(b"y".to_vec()));
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip_in_any_chunking(
            payload in "[a-z\r\n ]{0,40}",
            event in proptest::option::of("[a-z]{1,8}"),
            split in 0usize..200,
        ) {
            let mut out = Vec::new();
            write_event(&mut out, Some("e:1"), event.as_deref(), payload.as_bytes());
            let split = split.min(out.len());
            let mut d = SseDecoder::new();
            d.feed(&out[..split]);
            d.feed(&out[split..]);
            let got = d.next_event().expect("one event");
            let expected = payload.replace("\r\n", "\n").replace('\r', "\n");
            prop_assert_eq!(got.data, expected);
            prop_assert_eq!(got.id, "e:1");
            prop_assert_eq!(got.event, event.unwrap_or_else(|| "message".into()));
        }

        #[test]
        fn reader_tokens_do_not_depend_on_chunking(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    &b"data"[..], b"id", b"event", b"retry", b":", b" ", b"7", b"x", b"\r",
                    b"\n", b"\0", "\u{feff}".as_bytes(),
                ]),
                0..80,
            ),
            split in 0usize..400,
        ) {
            let bytes = pieces.concat();
            let split = split.min(bytes.len());
            let whole = read_split(&mut SseReader::new(), &bytes, &[]);
            let halves = read_split(&mut SseReader::new(), &bytes, &[split]);
            prop_assert_eq!(whole, halves);
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut d = SseDecoder::new();
            d.feed(&bytes);
            while d.next_event().is_some() {}
        }
    }
}
