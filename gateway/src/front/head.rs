//! Reading a connection's first bytes, just far enough to tell a first `GET /sse` (served on the
//! raw socket) and the HTTP/2 preface from anything else (handed to hyper with the bytes already
//! read).

use std::io;

use bytes::Bytes;
use http::Version;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::limits::{self, MAX_HEAD, MAX_HEADERS};
use super::tls_stream::TlsStream;

/// The HTTP/2 connection preface (RFC 9113 §3.4): a client speaking h2c with prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A parsed `GET /sse` head: what the transport needs, owned, so the read buffer is freed
/// before the stream starts.
#[derive(Debug)]
pub struct RequestHead {
    /// The raw query string (no `?`), still percent-encoded.
    pub query: String,
    /// Every header, in order.
    pub headers: HeaderMap,
}

/// What the first bytes of a connection turned out to be.
#[derive(Debug)]
pub enum Sniffed {
    /// A complete, valid `GET /sse` head with nothing after it.
    Sse(RequestHead),
    /// The HTTP/2 preface: these bytes were read and must be replayed to hyper's HTTP/2.
    Http2(Bytes),
    /// A first request that starts `POST /publish`: served by hyper's HTTP/1.1 like `Other`,
    /// on the publish thread when there is one (`front::handoff`).
    Publish(Bytes),
    /// Anything else: these bytes were read and must be replayed to hyper's HTTP/1.1.
    Other(Bytes),
    /// The head did not arrive before the deadline (slowloris).
    TimedOut,
    /// The peer closed or the socket failed before a decision.
    Closed,
}

/// Reads until the first request's kind is known. Only `GET /sse` heads are read whole; any
/// other request is handed over as soon as its first bytes say so, so hyper applies the limits
/// and errors it applies to every request.
pub async fn sniff(stream: &TcpStream, deadline: Instant) -> Sniffed {
    let mut sniffer = HeadSniffer::new(MAX_HEAD);
    loop {
        if let Some(decided) = sniffer.decide() {
            return decided;
        }
        match tokio::time::timeout_at(deadline, stream.readable()).await {
            Err(_) => return Sniffed::TimedOut,
            Ok(Err(_)) => return Sniffed::Closed,
            Ok(Ok(())) => {}
        }
        match fill(stream, &mut sniffer) {
            Ok(0) => return Sniffed::Closed,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Sniffed::Closed,
        }
    }
}

/// [`sniff`] over TLS: the same decision on the decrypted bytes (the TLS stream frees its own
/// buffers; this read's chunk lives only while the head is read).
pub async fn sniff_tls(stream: &mut TlsStream, deadline: Instant) -> Sniffed {
    use tokio::io::AsyncReadExt;
    let mut sniffer = HeadSniffer::new(MAX_HEAD);
    let mut chunk = vec![0u8; 4096];
    loop {
        if let Some(decided) = sniffer.decide() {
            return decided;
        }
        let room = sniffer.room().clamp(1, chunk.len());
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk[..room])).await {
            Err(_) => return Sniffed::TimedOut,
            Ok(Ok(0) | Err(_)) => return Sniffed::Closed,
            Ok(Ok(n)) => sniffer.push(&chunk[..n]),
        }
    }
}

/// One non-blocking read fed to the sniffer, through a stack buffer so nothing is reserved
/// while waiting, and never more than the sniffer has room for.
fn fill(stream: &TcpStream, sniffer: &mut HeadSniffer) -> io::Result<usize> {
    let mut chunk = [0u8; 4096];
    let room = sniffer.room().clamp(1, chunk.len());
    let n = stream.try_read(&mut chunk[..room])?;
    sniffer.push(&chunk[..n]);
    Ok(n)
}

/// A connection's first bytes, gathered until they tell what the first request is: the
/// decision half of [`sniff`], without the socket, so that any way the bytes arrive can be
/// checked (unit tests, `fuzz/fuzz_targets/head_sniff.rs`).
#[derive(Debug)]
pub struct HeadSniffer {
    /// Bytes pushed and not yet handed over.
    buf: Vec<u8>,
    /// The most bytes looked at before giving up on a `GET /sse` head.
    limit: usize,
}

impl HeadSniffer {
    /// An empty sniffer that hands over to hyper any head not decided within `limit` bytes
    /// (the gateway uses [`MAX_HEAD`], so hyper answers an oversized head as usual).
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            limit,
        }
    }

    /// How many more bytes the next read may take: reads never take the buffer past the limit.
    pub fn room(&self) -> usize {
        self.limit.saturating_sub(self.buf.len())
    }

    /// Appends bytes read from the connection (at most [`HeadSniffer::room`] of them).
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// What the bytes so far say: `None` while they may still become a `GET /sse` head or the
    /// HTTP/2 preface, else the decision, which takes the bytes (the sniffer is then empty).
    /// Never [`Sniffed::TimedOut`] or [`Sniffed::Closed`]: those are the socket's.
    pub fn decide(&mut self) -> Option<Sniffed> {
        if self.buf.is_empty() {
            return None;
        }
        // Only bytes pushed past the room can exceed the limit; they are never served.
        let decision = if self.buf.len() > self.limit {
            Decision::Other
        } else {
            classify(&self.buf)
        };
        match decision {
            Decision::Other => Some(Sniffed::Other(self.take())),
            Decision::Http2 => Some(Sniffed::Http2(self.take())),
            Decision::Publish => Some(Sniffed::Publish(self.take())),
            Decision::Sse(head) => {
                self.buf = Vec::new();
                Some(Sniffed::Sse(head))
            }
            Decision::NeedMore if self.buf.len() >= self.limit => Some(Sniffed::Other(self.take())),
            Decision::NeedMore => None,
        }
    }

    fn take(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.buf))
    }
}

enum Decision {
    Sse(RequestHead),
    Http2,
    Publish,
    Other,
    NeedMore,
}

/// The request line served on the raw socket starts with this, followed by `?` or a space.
const PREFIX: &[u8] = b"GET /sse";

/// A publisher's request line starts with this, followed by `?` or a space.
const PUBLISH: &[u8] = b"POST /publish";

fn classify(buf: &[u8]) -> Decision {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Decision::Http2
        } else {
            Decision::NeedMore
        };
    }
    let n = buf.len().min(PUBLISH.len());
    if buf[..n] == PUBLISH[..n] {
        return match buf.get(PUBLISH.len()) {
            None => Decision::NeedMore,
            Some(b'?' | b' ') => Decision::Publish,
            Some(_) => Decision::Other,
        };
    }
    let n = buf.len().min(PREFIX.len());
    if buf[..n] != PREFIX[..n] {
        return Decision::Other;
    }
    match buf.get(PREFIX.len()) {
        None => return Decision::NeedMore,
        Some(b'?' | b' ') => {}
        Some(_) => return Decision::Other,
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Decision::NeedMore,
        // Malformed or too many headers: hyper answers those.
        Err(_) => return Decision::Other,
    };
    // Bytes after the head (a body, a pipelined request) are hyper's business.
    if len != buf.len() {
        return Decision::Other;
    }
    let target = req.path.unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/sse" {
        return Decision::Other;
    }
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
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
    // A head that breaks the rules (or has a body) is refused by the HTTP service, with the
    // same check and answer as on any other request.
    if has_body || limits::check_head(version, &map).is_err() {
        return Decision::Other;
    }
    Decision::Sse(RequestHead {
        query: query.to_owned(),
        headers: map,
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
            prefix in prop::sample::select(vec!["", "GET /sse", "PRI * HTTP/2.0", "GET /sse?channel=a HTTP/1.1\r\nHost: x\r\n"]),
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut buf = prefix.as_bytes().to_vec();
            buf.extend_from_slice(&bytes);
            if let Decision::Sse(head) = classify(&buf) {
                prop_assert!(buf.ends_with(b"\r\n\r\n") || buf.ends_with(b"\n\n"));
                prop_assert!(buf.starts_with(b"GET /sse"));
                prop_assert!(head.query.len() < buf.len());
            }
        }
    }

    fn decide(text: &str) -> &'static str {
        match classify(text.as_bytes()) {
            Decision::Sse(_) => "sse",
            Decision::Http2 => "h2",
            Decision::Publish => "publish",
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
        assert_eq!(decide("GET /sse?channel=a HTTP/1.0\r\n\r\n"), "sse");
        assert_eq!(decide("PRI * HTTP/2"), "more");
        assert_eq!(decide("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), "h2");
    }

    #[test]
    fn everything_else_goes_to_hyper_at_once() {
        assert_eq!(decide("X"), "other");
        assert_eq!(decide("P"), "more", "maybe the HTTP/2 preface");
        assert_eq!(decide("POST /publish HTTP/1.1\r\n"), "publish");
        assert_eq!(decide("POST /publish?x=1 HTTP/1.1\r\n"), "publish");
        assert_eq!(decide("POST /pub"), "more");
        assert_eq!(decide("POST /publishx HTTP/1.1\r\n"), "other");
        assert_eq!(decide("POST /history HTTP/1.1\r\n"), "other");
        assert_eq!(decide("GET /publish HTTP/1.1\r\n"), "other");
        assert_eq!(decide("GET /ssex HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(decide("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"), "other");
        assert_eq!(decide("PRX"), "other");
        // Heads the rules refuse go to the HTTP service, which answers 400.
        assert_eq!(decide("GET /sse HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(
            decide("GET /sse HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            "other"
        );
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

    /// Feeds `bytes` in pieces of `step` (as reads would, never past the room) until decided.
    fn sniff_in(bytes: &[u8], step: usize, limit: usize) -> (usize, Option<Sniffed>) {
        let mut sniffer = HeadSniffer::new(limit);
        let mut fed = 0;
        while fed < bytes.len() && sniffer.room() > 0 {
            let n = step.min(sniffer.room()).min(bytes.len() - fed);
            sniffer.push(&bytes[fed..fed + n]);
            fed += n;
            if let Some(decided) = sniffer.decide() {
                return (fed, Some(decided));
            }
        }
        (fed, None)
    }

    #[test]
    fn the_sniffer_decides_the_same_in_any_pieces() {
        let head = b"GET /sse?channel=a HTTP/1.1\r\nHost: x\r\n\r\n";
        for step in [1, 2, 5, head.len()] {
            let (fed, decided) = sniff_in(head, step, MAX_HEAD);
            assert_eq!(fed, head.len());
            assert!(matches!(decided, Some(Sniffed::Sse(h)) if h.query == "channel=a"));
            let (fed, decided) = sniff_in(b"POST /publish HTTP/1.1\r\n", step, MAX_HEAD);
            assert!(matches!(decided, Some(Sniffed::Publish(b)) if b.len() == fed));
            let (fed, decided) = sniff_in(b"POST /history HTTP/1.1\r\n", step, MAX_HEAD);
            assert!(matches!(decided, Some(Sniffed::Other(b)) if b.len() == fed));
        }
        assert!(matches!(
            sniff_in(H2_PREFACE, 3, MAX_HEAD),
            (24, Some(Sniffed::Http2(b))) if b == H2_PREFACE
        ));
        assert!(matches!(
            sniff_in(b"GET /sse HTTP/1.1\r\n", 4, MAX_HEAD),
            (_, None)
        ));
    }

    #[test]
    fn a_head_that_reaches_the_limit_goes_to_hyper() {
        let head = b"GET /sse?channel=a HTTP/1.1\r\nHost: x\r\n\r\n";
        let (fed, decided) = sniff_in(head, 7, head.len());
        assert_eq!(fed, head.len());
        assert!(
            matches!(decided, Some(Sniffed::Sse(_))),
            "exactly the limit is read"
        );
        let (fed, decided) = sniff_in(head, 7, head.len() - 1);
        assert_eq!(fed, head.len() - 1, "no read goes past the limit");
        assert!(matches!(decided, Some(Sniffed::Other(b)) if b.len() == fed));
        // Bytes pushed past the room are never served either.
        let mut sniffer = HeadSniffer::new(8);
        sniffer.push(head);
        assert!(matches!(sniffer.decide(), Some(Sniffed::Other(b)) if b.len() == head.len()));
        assert!(sniffer.decide().is_none(), "the bytes were handed over");
    }

    #[test]
    fn the_head_is_parsed_into_owned_parts() {
        let Decision::Sse(head) = classify(
            b"GET /sse?channel=a&channel=b HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 1:2\r\nX-A: 1\r\nX-A: 2\r\n\r\n",
        ) else {
            panic!("not streaming");
        };
        assert_eq!(head.query, "channel=a&channel=b");
        assert_eq!(head.headers.get("last-event-id").unwrap(), "1:2");
        assert_eq!(head.headers.get_all("x-a").iter().count(), 2);
    }
}
