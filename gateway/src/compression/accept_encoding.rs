//! Which content coding an SSE stream gets, from the request's `Accept-Encoding` (RFC 9110
//! §12.5.3): gzip or deflate, by the client's weights (gzip on a tie), or none. Brotli is not
//! offered: a shared piece must not depend on what the encoder saw before, and the brotli
//! crates' streaming API gives no such independent, concatenable pieces; gzip already gets
//! JSON events most of the way.

use super::deflate::{GZIP_HEADER, ZLIB_HEADER};

/// The coding of a compressed SSE stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseEncoding {
    /// `Content-Encoding: gzip`: the gzip header, then deflate pieces.
    Gzip,
    /// `Content-Encoding: deflate`: the zlib header, then deflate pieces.
    Deflate,
}

impl SseEncoding {
    /// The `Content-Encoding` value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Deflate => "deflate",
        }
    }

    /// What the stream starts with, once.
    pub fn stream_header(self) -> &'static [u8] {
        match self {
            Self::Gzip => &GZIP_HEADER,
            Self::Deflate => &ZLIB_HEADER,
        }
    }

    /// The coding the client prefers among those offered in `Accept-Encoding` values.
    pub fn choose<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let (mut gzip, mut deflate, mut any) = (None, None, None);
        for item in values.into_iter().flat_map(|v| v.split(',')) {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let weight = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, v)| v.trim().parse::<f32>().ok())
                .filter(|q| (0.0..=1.0).contains(q))
                .unwrap_or(0.0);
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                gzip = Some(weight);
            } else if coding.eq_ignore_ascii_case("deflate") {
                deflate = Some(weight);
            } else if coding == "*" {
                any = Some(weight);
            }
        }
        let gzip = gzip.or(any).unwrap_or(0.0);
        let deflate = deflate.or(any).unwrap_or(0.0);
        if gzip > 0.0 && gzip >= deflate {
            Some(Self::Gzip)
        } else if deflate > 0.0 {
            Some(Self::Deflate)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choose(v: &str) -> Option<&'static str> {
        SseEncoding::choose([v]).map(SseEncoding::name)
    }

    #[test]
    fn weights_decide_and_gzip_wins_ties() {
        assert_eq!(choose("gzip, deflate, br"), Some("gzip"));
        assert_eq!(choose("deflate"), Some("deflate"));
        assert_eq!(choose("br"), None);
        assert_eq!(choose(""), None);
        assert_eq!(choose("identity"), None);
        assert_eq!(choose("gzip;q=0.5, deflate"), Some("deflate"));
        assert_eq!(choose("GZIP ; Q=0.8, deflate;q=0.8"), Some("gzip"));
        assert_eq!(choose("gzip;q=0"), None);
        assert_eq!(choose("*"), Some("gzip"));
        assert_eq!(choose("*;q=0.1, gzip;q=0"), Some("deflate"));
        assert_eq!(choose("gzip;q=2"), None, "out of range");
        assert_eq!(choose("gzip;q=abc, deflate"), Some("deflate"));
        assert_eq!(
            SseEncoding::choose(["br", "deflate"]).map(SseEncoding::name),
            Some("deflate"),
            "several header lines"
        );
    }
}
