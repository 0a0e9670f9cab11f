//! An event as the hub shares it: one allocation per event per instance, with each transport's
//! frame encoded at most once, on first use, and then shared by every subscriber.

use std::sync::OnceLock;

use base64::Engine as _;
use bytes::Bytes;
use shared::{Event, PayloadKind, Position};

/// An event plus its lazily encoded frames.
#[derive(Debug)]
pub struct Message {
    /// The event.
    pub event: Event,
    sse: OnceLock<SseFrame>,
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
        }
    }

    /// The event's position.
    pub fn position(&self) -> Position {
        self.event.position
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

    fn sse_encoded(&self) -> &SseFrame {
        self.sse.get_or_init(|| {
            let e = &self.event;
            let mut out = Vec::with_capacity(e.data.len() + 48);
            shared::sse::write_field(&mut out, b"id", e.position.to_string().as_bytes());
            let body_start = out.len();
            if let Some(name) = &e.name {
                shared::sse::write_field(&mut out, b"event", name.as_str().as_bytes());
            }
            match e.kind {
                PayloadKind::Binary => {
                    let text = base64::engine::general_purpose::STANDARD.encode(&e.data);
                    shared::sse::write_data(&mut out, text.as_bytes());
                }
                PayloadKind::Text | PayloadKind::Json => shared::sse::write_data(&mut out, &e.data),
            }
            out.push(b'\n');
            SseFrame {
                bytes: Bytes::from(out),
                body_start,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::{ChannelName, Epoch, EventName};

    #[test]
    fn frame_is_encoded_once_and_body_excludes_the_id() {
        let m = Message::new(Event {
            channel: ChannelName::new("c").unwrap(),
            position: Position::new(Epoch(0xa), 3),
            name: Some(EventName::new("up").unwrap()),
            kind: PayloadKind::Text,
            data: Bytes::from_static(b"x\ny"),
            published_ms: 0,
        });
        assert_eq!(
            &m.sse_frame()[..],
            b"id: a:3\nevent: up\ndata: x\ndata: y\n\n"
        );
        assert_eq!(&m.sse_body()[..], b"event: up\ndata: x\ndata: y\n\n");
        assert_eq!(m.sse_frame().as_ptr(), m.sse_frame().as_ptr());
    }
}
