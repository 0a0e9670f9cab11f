//! The limits and framing rules every request head must meet, whichever path reads it: the raw
//! SSE path checks them with these functions, hyper is configured with these numbers and the
//! HTTP service runs the same checks, so a head is accepted or refused (400 with a JSON body)
//! identically on both.

use http::header::{HOST, HeaderMap};
use http::{StatusCode, Version};
use shared::ErrorCode;

use crate::error::ApiError;

/// Largest request head (request line and headers); hyper answers 431 beyond it.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header lines in a head (browsers send about 15).
pub const MAX_HEADERS: usize = 64;

/// RFC 9112's rule for a request head that the parser does not enforce itself: an HTTP/1.1
/// request names exactly one `Host` (an HTTP/1.0 one at most one).
///
/// How a body is framed is the parser's (hyper's) business, and the same for every request:
/// identical duplicate `Content-Length`s count as one, different ones are refused with 400, and
/// with `Transfer-Encoding` the `Content-Length` is ignored and the connection closed after the
/// answer (RFC 9112 §6.3), so no request can be smuggled behind it. The raw SSE path never reads
/// a body: a head with either header goes to hyper.
pub fn check_head(version: Version, headers: &HeaderMap) -> Result<(), ApiError> {
    let hosts = headers.get_all(HOST).iter().count();
    if hosts > 1 || (hosts == 0 && version == Version::HTTP_11) {
        return Err(bad_head("an HTTP/1.1 request names exactly one Host"));
    }
    Ok(())
}

fn bad_head(detail: &'static str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequestHead, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(version: Version, headers: &[(&str, &str)]) -> Result<(), ErrorCode> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        check_head(version, &map).map_err(|e| e.code())
    }

    #[test]
    fn host_is_required_once_on_http_1_1() {
        assert_eq!(check(Version::HTTP_11, &[("host", "a")]), Ok(()));
        assert!(check(Version::HTTP_11, &[]).is_err());
        assert!(check(Version::HTTP_11, &[("host", "a"), ("host", "b")]).is_err());
        assert!(check(Version::HTTP_11, &[("host", "a"), ("host", "a")]).is_err());
        assert_eq!(check(Version::HTTP_10, &[]), Ok(()));
        assert!(check(Version::HTTP_10, &[("host", "a"), ("host", "b")]).is_err());
        // HTTP/2 carries the authority in `:authority`.
        assert_eq!(check(Version::HTTP_2, &[]), Ok(()));
    }
}
