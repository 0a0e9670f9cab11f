//! Reading a connection's first request head, just far enough to tell a streaming request
//! (served natively) from anything else (handed to actix with the bytes already read).

use std::io;
use std::net::SocketAddr;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Largest head served natively; a longer one is handed to actix, which applies its own limits.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header lines served natively (browsers send about 15).
const MAX_HEADERS: usize = 64;

/// The streaming endpoints served natively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /sse`
    Sse,
    /// `GET /ws`
    Ws,
}

/// A parsed streaming request head: what the transports need, owned, so the read buffer is
/// freed before the stream starts.
#[derive(Debug)]
pub struct RequestHead {
    /// Which endpoint.
    pub route: Route,
    /// The raw query string (no `?`), still percent-encoded.
    pub query: String,
    /// Every header, as actix would have parsed them.
    pub headers: HeaderMap,
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// Bytes the client sent after the head (frames sent with a WebSocket upgrade).
    pub rest: Bytes,
}

/// What the first bytes of a connection turned out to be.
#[derive(Debug)]
pub enum Sniffed {
    /// A complete `GET /sse` or `GET /ws` head with nothing after it.
    Streaming(RequestHead),
    /// Anything else: these bytes were read and must be replayed to actix.
    Other(Bytes),
    /// The head did not arrive before the deadline (slowloris).
    TimedOut,
    /// The peer closed or the socket failed before a decision.
    Closed,
}

/// Reads until the first request's kind is known. Only streaming heads are read whole; any
/// other request is handed over as soon as its request line says so, so actix applies its own
/// limits and errors to it exactly as before.
pub async fn sniff(stream: &TcpStream, peer: Option<SocketAddr>, deadline: Instant) -> Sniffed {
    let mut buf = Vec::new();
    loop {
        if !buf.is_empty() {
            match classify(&buf, peer) {
                Decision::Other => return Sniffed::Other(Bytes::from(buf)),
                Decision::Streaming(head) => return Sniffed::Streaming(head),
                Decision::NeedMore if buf.len() >= MAX_HEAD => {
                    return Sniffed::Other(Bytes::from(buf));
                }
                Decision::NeedMore => {}
            }
        }
        match tokio::time::timeout_at(deadline, stream.readable()).await {
            Err(_) => return Sniffed::TimedOut,
            Ok(Err(_)) => return Sniffed::Closed,
            Ok(Ok(())) => {}
        }
        match fill(stream, &mut buf) {
            Ok(0) => return Sniffed::Closed,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Sniffed::Closed,
        }
    }
}

/// One non-blocking read appended to `buf`, through a stack buffer so nothing is reserved
/// while waiting.
fn fill(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 4096];
    let room = (MAX_HEAD - buf.len().min(MAX_HEAD)).clamp(1, chunk.len());
    let n = stream.try_read(&mut chunk[..room])?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

enum Decision {
    Streaming(RequestHead),
    Other,
    NeedMore,
}

/// The request lines served natively start with one of these, followed by `?` or a space.
const PREFIXES: [(&[u8], Route); 2] = [(b"GET /sse", Route::Sse), (b"GET /ws", Route::Ws)];

fn classify(buf: &[u8], peer: Option<SocketAddr>) -> Decision {
    let mut candidate = None;
    for (prefix, route) in PREFIXES {
        let n = buf.len().min(prefix.len());
        if buf[..n] != prefix[..n] {
            continue;
        }
        match buf.get(prefix.len()) {
            None => return Decision::NeedMore,
            Some(b'?' | b' ') => candidate = Some(route),
            Some(_) => {}
        }
    }
    let Some(route) = candidate else {
        return Decision::Other;
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Decision::NeedMore,
        // Malformed or too many headers: actix answers those.
        Err(_) => return Decision::Other,
    };
    // Bytes after the head (a body, a pipelined request) are actix's business.
    if len != buf.len() {
        return Decision::Other;
    }
    let target = req.path.unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let expected = match route {
        Route::Sse => "/sse",
        Route::Ws => "/ws",
    };
    if path != expected {
        return Decision::Other;
    }
    let mut map = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Decision::Other;
        };
        map.append(name, value);
    }
    let has_body = map.contains_key("transfer-encoding")
        || map
            .get("content-length")
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        return Decision::Other;
    }
    Decision::Streaming(RequestHead {
        route,
        query: query.to_owned(),
        headers: map,
        peer,
        rest: Bytes::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a client sends first, the sniffer decides without panicking, and never
        /// claims a request that is not a complete streaming head.
        #[test]
        fn any_bytes_get_a_decision(
            prefix in prop::sample::select(vec!["", "GET /sse", "GET /ws", "GET /sse?channel=a HTTP/1.1\r\n"]),
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut buf = prefix.as_bytes().to_vec();
            buf.extend_from_slice(&bytes);
            if let Decision::Streaming(head) = classify(&buf, None) {
                prop_assert!(buf.ends_with(b"\r\n\r\n") || buf.ends_with(b"\n\n"));
                prop_assert!(buf.starts_with(b"GET /sse") || buf.starts_with(b"GET /ws"));
                prop_assert!(head.query.len() < buf.len());
            }
        }
    }

    fn decide(text: &str) -> &'static str {
        match classify(text.as_bytes(), None) {
            Decision::Streaming(h) if h.route == Route::Sse => "sse",
            Decision::Streaming(_) => "ws",
            Decision::Other => "other",
            Decision::NeedMore => "more",
        }
    }

    #[test]
    fn only_complete_streaming_heads_are_kept() {
        assert_eq!(decide("GET /s"), "more");
        assert_eq!(decide("GET /sse"), "more");
        assert_eq!(decide("GET /sse?channel=a HTTP/1.1\r\nHost: x\r\n"), "more");
        assert_eq!(
            decide("GET /sse?channel=a HTTP/1.1\r\nHost: x\r\n\r\n"),
            "sse"
        );
        assert_eq!(decide("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"), "ws");
        assert_eq!(decide("GET /ws?token=t HTTP/1.0\r\n\r\n"), "ws");
    }

    #[test]
    fn everything_else_goes_to_actix_at_once() {
        assert_eq!(decide("P"), "other");
        assert_eq!(decide("POST /publish HTTP/1.1\r\n"), "other");
        assert_eq!(decide("GET /ssex HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(decide("GET /wsx"), "other");
        assert_eq!(decide("GET /metrics HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(
            decide("GET /sse HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
            "other"
        );
        assert_eq!(
            decide("GET /sse HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
            "other"
        );
        assert_eq!(decide("GET /sse HTTP/1.1\r\nbad header\r\n\r\n"), "other");
    }

    #[test]
    fn the_head_is_parsed_into_owned_parts() {
        let Decision::Streaming(head) = classify(
            b"GET /sse?channel=a&channel=b HTTP/1.1\r\nLast-Event-ID: 1:2\r\nX-A: 1\r\nX-A: 2\r\n\r\n",
            None,
        ) else {
            panic!("not streaming");
        };
        assert_eq!(head.query, "channel=a&channel=b");
        assert_eq!(head.headers.get("last-event-id").unwrap(), "1:2");
        assert_eq!(head.headers.get_all("x-a").count(), 2);
    }
}
