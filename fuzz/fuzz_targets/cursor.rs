//! The cursor codec on arbitrary input: never panics, and whatever parses re-encodes to a
//! cursor that parses to the same positions (Last-Event-ID comes straight from clients).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::Cursor;

fuzz_target!(|input: (u8, &str)| {
    let (channels, text) = input;
    let channels = usize::from(channels % 64) + 1;
    if let Ok(cursor) = Cursor::parse(text, channels) {
        assert_eq!(cursor.0.len(), channels);
        let again = Cursor::parse(&cursor.to_string(), channels).expect("re-encoded cursor parses");
        assert_eq!(again, cursor);
    }
});
