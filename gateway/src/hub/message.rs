//! An event as the hub shares it: one allocation per event per instance, with each transport's
//! frame encoded at most once, on first use, and then shared by every subscriber.

use std::sync::{Arc, OnceLock, Weak};

use base64::Engine as _;
use bytes::Bytes;
use bytestring::ByteString;
use shared::{Event, PayloadKind, Position};

use super::ws_frame;
use crate::compression::deflate;

/// One worker's handle on a [`Message`]. Every queued item holds a reference; with one handle
/// per worker, the reference count a worker bumps for each of its subscribers lives in a cache
/// line no other core touches, while the frames are still encoded once, in the shared message.
#[derive(Debug)]
pub struct Delivery(pub Arc<Message>);

impl std::ops::Deref for Delivery {
    type Target = Message;
    fn deref(&self) -> &Message {
        &self.0
    }
}

/// An event plus its lazily encoded frames.
#[derive(Debug)]
pub struct Message {
    /// The event.
    pub event: Event,
    sse: OnceLock<SseFrame>,
    /// The whole WebSocket frame (header and payload), text or binary.
    ws: OnceLock<Bytes>,
    /// The compressed forms (`compression.*`), each built once, by the first subscriber that
    /// needs it, and shared like the frames above.
    deflated: Deflated,
    /// The channel's event before this one, as fan-out handed them out: its position, and the
    /// event while anyone still holds it (weak: no chain of events is kept alive).
    previous: OnceLock<(Position, Weak<Message>)>,
}

#[derive(Debug, Default)]
struct Deflated {
    sse_frame: OnceLock<Bytes>,
    sse_body: OnceLock<Bytes>,
    /// The SSE frame compressed after the previous event's (see [`Message::follow`]); `None`
    /// when that event is gone or it would not be smaller.
    sse_frame_after: OnceLock<Option<Bytes>>,
    /// The whole compressed WebSocket frame; `None`: compressing did not make the message
    /// smaller, so it goes uncompressed.
    ws: OnceLock<Option<Bytes>>,
    /// The WebSocket frame compressed after the previous event's message (see
    /// [`Message::ws_deflated_frame_after`]); `None` when that event is gone or it would not be
    /// smaller.
    ws_after: OnceLock<Option<Bytes>>,
}

#[derive(Debug)]
struct SseFrame {
    bytes: Bytes,
    body_start: usize,
}

impl Message {
    /// Wraps an event; nothing is encoded yet.
    pub fn new(event: Event) -> Self {
        Self {
            event,
            sse: OnceLock::new(),
            ws: OnceLock::new(),
            deflated: Deflated::default(),
            previous: OnceLock::new(),
        }
    }

    /// Records that fan-out hands this event out right after `previous` (at `position`), so a
    /// compressed stream that just carried it can be sent the smaller piece that refers back
    /// into it ([`Message::sse_frame_deflated_after`]). Set once.
    pub fn follow(&self, position: Position, previous: Weak<Message>) {
        let _ = self.previous.set((position, previous));
    }

    /// [`Message::sse_frame_deflated`], or — for a stream whose inflated output ends with the
    /// frame of the event at `after`, when that is the event this one follows — the piece
    /// compressed against that frame: a third the size for events that repeat their
    /// predecessor's keys. Built once, shared like every piece.
    pub fn sse_frame_deflated_after(&self, level: u32, after: Position) -> &Bytes {
        self.built_after(&self.deflated.sse_frame_after, after, |previous| {
            let piece = deflate::compressed_after(previous.sse_frame(), self.sse_frame(), level)?;
            (piece.len() < self.sse_frame_deflated(level).len()).then(|| Bytes::from(piece))
        })
        .unwrap_or_else(|| self.sse_frame_deflated(level))
    }

    /// What `cell` holds (built on first use by `build` from the event this one follows) when
    /// the receiver's decompressor saw the event at `after` last and that is the event this one
    /// follows; `None` otherwise. The one place a form that refers back is checked, not
    /// assumed: the event must still be held and be exactly the one at `after`.
    fn built_after<'a>(
        &'a self,
        cell: &'a OnceLock<Option<Bytes>>,
        after: Position,
        build: impl FnOnce(&Message) -> Option<Bytes>,
    ) -> Option<&'a Bytes> {
        match self.previous.get() {
            Some((position, previous)) if *position == after => cell
                .get_or_init(|| {
                    let previous = previous.upgrade().filter(|p| p.position() == after)?;
                    build(&previous)
                })
                .as_ref(),
            _ => None,
        }
    }

    /// The position of the event this one follows (see [`Message::follow`]).
    pub fn follows(&self) -> Option<Position> {
        self.previous.get().map(|(position, _)| *position)
    }

    /// The event's position.
    pub fn position(&self) -> Position {
        self.event.position
    }

    /// Whether WebSocket clients get this event as a binary frame.
    pub fn is_binary(&self) -> bool {
        self.event.kind == PayloadKind::Binary
    }

    /// The complete SSE frame with `id: <position>` — what a single-channel stream writes.
    pub fn sse_frame(&self) -> &Bytes {
        &self.sse_encoded().bytes
    }

    /// The SSE frame without its `id:` line — multi-channel streams prepend their own cursor.
    pub fn sse_body(&self) -> Bytes {
        let frame = self.sse_encoded();
        frame.bytes.slice(frame.body_start..)
    }

    /// The whole WebSocket frame of the event (header included: server frames are unmasked,
    /// so every subscriber can be sent the same bytes).
    pub fn ws_frame(&self) -> &Bytes {
        self.ws.get_or_init(|| {
            let e = &self.event;
            if self.is_binary() {
                let id = e.position.to_string();
                // Channel names, ids and event names are at most 128, 37 and 64 bytes, so
                // the one-byte length prefixes always fit.
                let payload = shared::ws::encode_binary_event(
                    e.channel.as_str(),
                    &id,
                    e.name.as_ref().map(|n| n.as_str()),
                    &e.data,
                )
                .unwrap_or_default();
                ws_frame::encode(&payload, true, false)
            } else {
                ws_frame::encode(encode_ws_text(e).as_bytes(), false, false)
            }
        })
    }

    /// The length of the WebSocket message before any compression.
    pub fn ws_payload_len(&self) -> usize {
        ws_frame::payload(self.ws_frame()).len()
    }

    /// The WebSocket text message `{"type":"event",...}` (text and JSON payloads).
    pub fn ws_text(&self) -> ByteString {
        ByteString::try_from(ws_frame::payload(self.ws_frame())).unwrap_or_default()
    }

    /// The WebSocket binary message (binary payloads); see `shared::ws` for the layout.
    pub fn ws_binary(&self) -> Bytes {
        ws_frame::payload(self.ws_frame())
    }

    /// [`Message::sse_frame`] as a self-contained deflate piece for gzip and deflate streams
    /// (`compression::deflate`), compressed at `level` once for every subscriber.
    pub fn sse_frame_deflated(&self, level: u32) -> &Bytes {
        self.deflated
            .sse_frame
            .get_or_init(|| Bytes::from(deflate::piece(self.sse_frame(), level)))
    }

    /// [`Message::sse_body`] as a deflate piece, for multi-channel streams.
    pub fn sse_body_deflated(&self, level: u32) -> Bytes {
        self.deflated
            .sse_body
            .get_or_init(|| Bytes::from(deflate::piece(&self.sse_body(), level)))
            .clone()
    }

    /// The WebSocket message (text or binary, as [`Message::is_binary`] says) compressed for
    /// `permessage-deflate` without context takeover: sync-flushed, `00 00 ff ff` stripped.
    /// `None` when compressing does not make it smaller: it is sent uncompressed.
    pub fn ws_deflated(&self, level: u32) -> Option<Bytes> {
        self.ws_deflated_frame(level).map(ws_frame::payload)
    }

    /// [`Message::ws_deflated`] as a whole frame with RSV1 set, shared like
    /// [`Message::ws_frame`].
    pub fn ws_deflated_frame(&self, level: u32) -> Option<&Bytes> {
        self.deflated
            .ws
            .get_or_init(|| {
                let plain = ws_frame::payload(self.ws_frame());
                let out = deflate::compressed(&plain, level)?;
                self.ws_compressed_frame(out, plain.len())
            })
            .as_ref()
    }

    /// A compressed message as its frame (`00 00 ff ff` stripped, RSV1 set) when the frame is
    /// smaller than `than` bytes would be, the same way; `None` otherwise.
    fn ws_compressed_frame(&self, mut out: Vec<u8>, than: usize) -> Option<Bytes> {
        out.truncate(out.len().checked_sub(deflate::SYNC_TAIL.len())?);
        (out.len() < than).then(|| ws_frame::encode(&out, self.is_binary(), true))
    }

    /// [`Message::ws_deflated_frame`], or — for a client that keeps its window between messages
    /// (server context takeover) and inflated the message of the event at `after` last, when
    /// that is the event this one follows — the message compressed against that one: what it
    /// repeats of its predecessor costs a few bits. Built once, shared like every frame; `None`
    /// when neither is smaller than the plain message.
    pub fn ws_deflated_frame_after(&self, level: u32, after: Position) -> Option<&Bytes> {
        self.built_after(&self.deflated.ws_after, after, |previous| {
            let plain = ws_frame::payload(self.ws_frame());
            let before = ws_frame::payload(previous.ws_frame());
            let out = deflate::compressed_after(&before, &plain, level)?;
            // Only if smaller than what goes otherwise: the message alone, or plain.
            let best = self.ws_deflated(level).map_or(plain.len(), |z| z.len());
            self.ws_compressed_frame(out, best)
        })
        .or_else(|| self.ws_deflated_frame(level))
    }

    fn sse_encoded(&self) -> &SseFrame {
        self.sse.get_or_init(|| {
            let e = &self.event;
            let mut out = Vec::with_capacity(e.data.len() + 48);
            shared::sse::write_field(&mut out, b"id", e.position.to_string().as_bytes());
            let body_start = out.len();
            match e.kind {
                PayloadKind::Binary => {
                    // Binary payloads travel base64-encoded under a reserved event type, so an
                    // app can tell them from text without guessing.
                    let kind = match &e.name {
                        Some(name) => format!("{}{}", shared::event::BINARY_EVENT_PREFIX, name),
                        None => "binary".to_owned(),
                    };
                    shared::sse::write_field(&mut out, b"event", kind.as_bytes());
                    let text = base64::engine::general_purpose::STANDARD.encode(&e.data);
                    shared::sse::write_data(&mut out, text.as_bytes());
                }
                PayloadKind::Text | PayloadKind::Json => {
                    if let Some(name) = &e.name {
                        shared::sse::write_field(&mut out, b"event", name.as_str().as_bytes());
                    }
                    shared::sse::write_data(&mut out, &e.data);
                }
            }
            out.push(b'\n');
            SseFrame {
                bytes: Bytes::from(out),
                body_start,
            }
        })
    }
}

/// `{"type":"event","channel":..,"id":..,"event":..,"data":..}` with JSON payloads inserted
/// verbatim (they are compact JSON already) instead of being parsed and re-serialised.
fn encode_ws_text(e: &Event) -> ByteString {
    let mut out = String::with_capacity(e.data.len() + 96);
    out.push_str(r#"{"type":"event","channel":"#);
    push_json_string(&mut out, e.channel.as_str());
    out.push_str(r#","id":""#);
    out.push_str(&e.position.to_string());
    out.push('"');
    if let Some(name) = &e.name {
        out.push_str(r#","event":"#);
        push_json_string(&mut out, name.as_str());
    }
    out.push_str(r#","data":"#);
    let is_json = e.kind == PayloadKind::Json
        && serde_json::from_slice::<serde::de::IgnoredAny>(&e.data).is_ok();
    match std::str::from_utf8(&e.data) {
        // A JSON payload published straight into Redis is checked here, once per instance;
        // if it is not valid JSON it is delivered as a string rather than corrupt the frame.
        Ok(json) if is_json => out.push_str(json),
        Ok(text) => push_json_string(&mut out, text),
        Err(_) => push_json_string(&mut out, &String::from_utf8_lossy(&e.data)),
    }
    out.push('}');
    ByteString::from(out)
}

fn push_json_string(out: &mut String, s: &str) {
    // Serialising a &str into a String cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::{ChannelName, Epoch, EventName};

    fn message(kind: PayloadKind, name: Option<&str>, data: &'static [u8]) -> Message {
        Message::new(Event {
            channel: ChannelName::new("c").unwrap(),
            position: Position::new(Epoch(0xa), 3),
            name: name.map(|n| EventName::new(n).unwrap()),
            kind,
            data: Bytes::from_static(data),
            published_ms: 0,
        })
    }

    #[test]
    fn sse_frame_is_encoded_once_and_body_excludes_the_id() {
        let m = message(PayloadKind::Text, Some("up"), b"x\ny");
        assert_eq!(
            &m.sse_frame()[..],
            b"id: a:3\nevent: up\ndata: x\ndata: y\n\n"
        );
        assert_eq!(&m.sse_body()[..], b"event: up\ndata: x\ndata: y\n\n");
        assert_eq!(m.sse_frame().as_ptr(), m.sse_frame().as_ptr());
    }

    #[test]
    fn binary_payloads_are_base64_under_a_reserved_type_on_sse() {
        let m = message(PayloadKind::Binary, None, &[0, 1, 2]);
        assert_eq!(
            &m.sse_frame()[..],
            b"id: a:3\nevent: binary\ndata: AAEC\n\n"
        );
        let m = message(PayloadKind::Binary, Some("img"), &[255]);
        assert_eq!(
            &m.sse_frame()[..],
            b"id: a:3\nevent: binary:img\ndata: /w==\n\n"
        );
    }

    #[test]
    fn ws_text_inserts_json_and_quotes_text() {
        let j = message(PayloadKind::Json, None, br#"{"a":[1,2]}"#);
        let v: serde_json::Value = serde_json::from_str(&j.ws_text()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"event","channel":"c","id":"a:3","data":{"a":[1,2]}})
        );
        let t = message(PayloadKind::Text, Some("n"), b"say \"hi\"\n");
        let v: serde_json::Value = serde_json::from_str(&t.ws_text()).unwrap();
        assert_eq!(v["data"], "say \"hi\"\n");
        assert_eq!(v["event"], "n");
        let bad = message(PayloadKind::Json, None, b"{not json");
        let v: serde_json::Value = serde_json::from_str(&bad.ws_text()).unwrap();
        assert_eq!(v["data"], "{not json");
    }

    #[test]
    fn compressed_forms_are_built_once_and_inflate_to_the_frames() {
        use flate2::{Decompress, FlushDecompress};
        let inflate = |bytes: &[u8]| {
            let mut out = Vec::with_capacity(4096);
            Decompress::new(false)
                .decompress_vec(bytes, &mut out, FlushDecompress::Sync)
                .unwrap();
            out
        };
        let m = message(
            PayloadKind::Json,
            None,
            br#"{"price":42,"symbol":"ACME","note":"ACME ACME ACME ACME"}"#,
        );
        let piece = m.sse_frame_deflated(6);
        assert_eq!(inflate(piece), &m.sse_frame()[..]);
        assert_eq!(m.sse_frame_deflated(6).as_ptr(), piece.as_ptr(), "shared");
        assert_eq!(inflate(&m.sse_body_deflated(6)), &m.sse_body()[..]);
        let ws = m.ws_deflated(6).unwrap();
        let mut wire = ws.to_vec();
        wire.extend_from_slice(&deflate::SYNC_TAIL);
        assert_eq!(inflate(&wire), m.ws_text().as_bytes()[..]);
        let tiny = message(PayloadKind::Binary, None, &[1]);
        assert_eq!(tiny.ws_deflated(6), None, "not worth compressing");
    }

    #[test]
    fn ws_messages_that_follow_refer_back_only_into_the_message_before() {
        use flate2::{Decompress, FlushDecompress};
        let at = |offset, data: String| {
            Arc::new(Message::new(Event {
                channel: ChannelName::new("c").unwrap(),
                position: Position::new(Epoch(0xa), offset),
                name: None,
                kind: PayloadKind::Json,
                data: Bytes::from(data),
                published_ms: 0,
            }))
        };
        let state = |n: u32| {
            format!(
                r#"{{"symbol":"ACME","price":{n},"volume":{},"venue":"XNAS","flags":["a","b"]}}"#,
                n * 7
            )
        };
        let first = at(1, state(100));
        let second = at(2, state(101));
        second.follow(first.position(), Arc::downgrade(&first));
        let alone = second.ws_deflated_frame(6).unwrap().clone();
        let chained = second.ws_deflated_frame_after(6, first.position()).unwrap();
        assert!(
            chained.len() < alone.len(),
            "{} !< {}",
            chained.len(),
            alone.len()
        );
        assert!(ws_frame::is_compressed(chained));
        // A client keeping its window inflates the first message, then the chained one.
        let mut d = Decompress::new(false);
        for (frame, message) in [
            (first.ws_deflated_frame(6).unwrap(), &first),
            (chained, &second),
        ] {
            let mut wire = ws_frame::payload(frame).to_vec();
            wire.extend_from_slice(&deflate::SYNC_TAIL);
            let mut out = Vec::with_capacity(4096);
            d.decompress_vec(&wire, &mut out, FlushDecompress::Sync)
                .unwrap();
            assert_eq!(out[..], message.ws_text().as_bytes()[..]);
        }
        // Anything else than the event it follows gets the self-contained message.
        assert_eq!(
            second.ws_deflated_frame_after(6, second.position()),
            Some(&alone)
        );
        let third = at(3, state(102));
        third.follow(second.position(), Arc::downgrade(&second));
        drop(second);
        assert_eq!(
            third.ws_deflated_frame_after(6, Position::new(Epoch(0xa), 2)),
            third.ws_deflated_frame(6),
            "the previous event is gone: nothing to check the window against"
        );
    }

    #[test]
    fn ws_binary_uses_the_shared_layout() {
        let m = message(PayloadKind::Binary, Some("img"), &[9, 8]);
        let frame = m.ws_binary();
        assert_eq!(
            shared::ws::decode_binary(&frame),
            Ok(shared::ws::BinaryFrame::Event {
                channel: "c",
                id: "a:3",
                event: Some("img"),
                data: &[9, 8]
            })
        );
    }
}
