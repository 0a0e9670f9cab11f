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

/// Incremental `text/event-stream` parser: feed it bytes as they arrive, take events out.
#[derive(Debug, Default)]
pub struct SseDecoder {
    line: Vec<u8>,
    after_cr: bool,
    started: bool,
    data: String,
    has_data: bool,
    event: String,
    last_id: String,
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
        for &byte in chunk {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\n' => self.end_line(),
                b'\r' => {
                    self.after_cr = true;
                    self.end_line();
                }
                _ => self.line.push(byte),
            }
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

    fn end_line(&mut self) {
        let mut line = std::mem::take(&mut self.line);
        if !self.started {
            self.started = true;
            if line.starts_with("\u{feff}".as_bytes()) {
                line.drain(..3);
            }
        }
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if line[0] == b':' {
            self.comments += 1;
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                let value = value.strip_prefix(b" ").unwrap_or(value);
                (&line[..i], value)
            }
            None => (&line[..], &[][..]),
        };
        let value = String::from_utf8_lossy(value);
        match name {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&value);
                self.has_data = true;
            }
            b"event" => self.event = value.into_owned(),
            b"id" if !value.contains('\0') => self.last_id = value.into_owned(),
            b"retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok();
            }
            _ => {}
        }
    }

    fn dispatch(&mut self) {
        let event = std::mem::take(&mut self.event);
        if !self.has_data {
            return;
        }
        self.has_data = false;
        self.ready.push_back(SseEvent {
            id: self.last_id.clone(),
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            data: std::mem::take(&mut self.data),
        });
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
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut d = SseDecoder::new();
            d.feed(&bytes);
            while d.next_event().is_some() {}
        }
    }
}
