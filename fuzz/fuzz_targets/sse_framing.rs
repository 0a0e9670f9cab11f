//! SSE framing: any payload, event name and id encode to a frame a spec-following decoder turns
//! back into exactly one event with the same data (line breaks normalised to LF), whatever the
//! chunking, and no input makes the encoder or decoder panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::sse::{SseDecoder, write_event};

fuzz_target!(|input: (&[u8], &str, &str, u16)| {
    let (data, event, id, split) = input;
    let Ok(text) = std::str::from_utf8(data) else {
        // Arbitrary bytes: the decoder must still not panic.
        let mut d = SseDecoder::new();
        d.feed(data);
        while d.next_event().is_some() {}
        return;
    };
    // Fields are single-line by construction in the gateway; the encoder cuts at a break.
    let event = event.split(['\n', '\r', '\0']).next().unwrap_or("");
    let id = id.split(['\n', '\r', '\0']).next().unwrap_or("");
    let mut frame = Vec::new();
    write_event(&mut frame, Some(id), (!event.is_empty()).then_some(event), text.as_bytes());
    let split = usize::from(split) % (frame.len() + 1);
    let mut d = SseDecoder::new();
    d.feed(&frame[..split]);
    d.feed(&frame[split..]);
    let got = d.next_event().expect("one event");
    assert!(d.next_event().is_none());
    assert_eq!(got.data, text.replace("\r\n", "\n").replace('\r', "\n"));
    // The encoder writes "name: value" and the decoder strips exactly that one space, so
    // values come back verbatim (even ones that start with a space).
    assert_eq!(got.id, id);
    assert_eq!(got.event, if event.is_empty() { "message" } else { event });
});
