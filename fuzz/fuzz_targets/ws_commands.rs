//! The WebSocket command parser and binary frame decoder on arbitrary client input: never
//! panic, and binary publish frames that decode re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::ws::{BinaryFrame, decode_binary, encode_binary_event, encode_binary_publish, parse_client};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_client(text);
    }
    match decode_binary(data) {
        Ok(BinaryFrame::Publish { channel, event, req, data: payload }) => {
            let again = encode_binary_publish(channel, event, req, payload).expect("fields fit");
            assert_eq!(decode_binary(&again), decode_binary(data));
        }
        Ok(BinaryFrame::Event { channel, id, event, data: payload }) => {
            let again = encode_binary_event(channel, id, event, payload).expect("fields fit");
            assert_eq!(decode_binary(&again), decode_binary(data));
        }
        Err(_) => {}
    }
});
