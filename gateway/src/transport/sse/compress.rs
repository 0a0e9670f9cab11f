//! A compressed SSE stream's own writes: the coding chosen for it, and what one connection
//! writes alone (preamble, cursor lines, gaps, heartbeats, closing comments) as stored deflate
//! blocks between the shared, compressed event pieces (`hub::message`).

use bytes::Bytes;
use http::HeaderMap;
use http::header::ACCEPT_ENCODING;

use crate::compression::{SseEncoding, deflate};
use crate::config::CompressionSettings;

/// The stream's coding: none unless `compression.sse` is on and the client accepts one.
pub(super) fn choose(settings: &CompressionSettings, headers: &HeaderMap) -> Option<SseEncoding> {
    if !settings.sse {
        return None;
    }
    SseEncoding::choose(
        headers
            .get_all(ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
}

/// The stream's first bytes: the coding's header (once per connection), then `prelude`.
pub(super) fn preamble(encoding: Option<SseEncoding>, prelude: &[u8]) -> Bytes {
    match encoding {
        None => Bytes::copy_from_slice(prelude),
        Some(e) => {
            let mut out = e.stream_header().to_vec();
            deflate::stored(prelude, &mut out);
            Bytes::from(out)
        }
    }
}

/// Bytes only this connection writes, in its coding: as they are, or as stored blocks.
pub(super) fn own(encoding: Option<SseEncoding>, plain: &[u8]) -> Vec<u8> {
    match encoding {
        None => plain.to_vec(),
        Some(_) => {
            let mut out = Vec::with_capacity(deflate::stored_len(plain.len()));
            deflate::stored(plain, &mut out);
            out
        }
    }
}

/// The heartbeat comment, in the stream's coding.
pub(super) fn ping(encoding: Option<SseEncoding>) -> Bytes {
    const PING: &[u8] = b": ping\n\n";
    const STORED: [u8; 13] = [
        0, 8, 0, 0xf7, 0xff, b':', b' ', b'p', b'i', b'n', b'g', b'\n', b'\n',
    ];
    match encoding {
        None => Bytes::from_static(PING),
        Some(_) => Bytes::from_static(&STORED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_heartbeat_is_the_heartbeat() {
        assert_eq!(
            &ping(Some(SseEncoding::Gzip))[..],
            own(Some(SseEncoding::Gzip), b": ping\n\n")
        );
        assert_eq!(&ping(None)[..], b": ping\n\n");
    }

    #[test]
    fn only_accepted_codings_when_on() {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT_ENCODING, "gzip, deflate, br".parse().unwrap());
        let mut settings = CompressionSettings::default();
        assert_eq!(choose(&settings, &headers), None, "off by default");
        settings.sse = true;
        assert_eq!(choose(&settings, &headers), Some(SseEncoding::Gzip));
        assert_eq!(choose(&settings, &HeaderMap::new()), None);
    }
}
