//! HTTP/1.1 written and read by hand, for requests no client library would send.

use super::*;

/// A connection on which the request under test is written by hand (HTTP/1.1 arrivals only):
/// for the later arrivals, one `GET /healthz` has been served on it already.
pub async fn raw(arrival: Arrival, gw: &Gateway) -> BoxIo {
    assert!(
        !arrival.http2(),
        "{arrival} requests are not written by hand"
    );
    let mut io = connect(arrival, gw).await;
    if arrival.later() {
        serve_one(&mut io).await;
    }
    io
}

/// Sends `GET /healthz` on `io` and reads its whole answer: the connection is idle again.
pub async fn serve_one(io: &mut BoxIo) {
    write_flush(io, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let res = read_response(io).await;
    assert_eq!(res.status, 200, "GET /healthz: {}", res.head);
}

/// Writes all of `bytes` and flushes (TLS buffers records otherwise).
pub async fn write_flush(io: &mut BoxIo, bytes: &[u8]) {
    io.write_all(bytes).await.expect("write");
    io.flush().await.expect("flush");
}

/// An HTTP/1.1 response read by hand.
#[derive(Debug)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// The head, lowercased.
    pub head: String,
    /// The body (by `Content-Length`, chunked, or up to the end of the connection); of a
    /// streaming (chunked) body, what arrived before it paused for half a second.
    pub body: String,
}

impl RawResponse {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not a JSON body ({e}): {}\n{}", self.head, self.body))
    }
}

/// Reads one response from `io` (panics after [`WAIT`] or if the connection ends first).
pub async fn read_response(io: &mut BoxIo) -> RawResponse {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = read_some(io, &mut buf, deadline).await;
        assert!(
            n > 0,
            "closed before a complete response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().expect("content-length"));
    let chunked = head
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    let mut rest = buf.split_off(head_end);
    let body = if chunked {
        read_chunked(io, &mut rest).await
    } else {
        loop {
            if length.is_some_and(|len| rest.len() >= len) {
                break;
            }
            if read_some(io, &mut rest, deadline).await == 0 {
                assert!(length.is_none(), "closed before the whole body: {head}");
                break;
            }
        }
        rest.truncate(length.unwrap_or(rest.len()));
        rest
    };
    RawResponse {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        head,
    }
}

/// Decodes a chunked body from `buf` and `io`, until its last chunk, the end of the connection,
/// or a pause of half a second (a stream).
pub(super) async fn read_chunked(io: &mut BoxIo, buf: &mut Vec<u8>) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        if let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") {
            let size = std::str::from_utf8(&buf[..line_end])
                .ok()
                .and_then(|l| usize::from_str_radix(l.split(';').next()?.trim(), 16).ok())
                .unwrap_or_else(|| {
                    panic!("bad chunk size line: {:?}", String::from_utf8_lossy(buf))
                });
            if size == 0 {
                return body;
            }
            let need = line_end + 2 + size + 2;
            if buf.len() >= need {
                body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
                buf.drain(..need);
                continue;
            }
        }
        let pause = tokio::time::Instant::now() + Duration::from_millis(500);
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(pause, io.read(&mut chunk)).await {
            Err(_) | Ok(Ok(0) | Err(_)) => return body,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

pub(super) async fn read_some(
    io: &mut BoxIo,
    buf: &mut Vec<u8>,
    deadline: tokio::time::Instant,
) -> usize {
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout_at(deadline, io.read(&mut chunk))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no complete response within {WAIT:?}: {:?}",
                String::from_utf8_lossy(buf)
            )
        })
        .unwrap_or(0);
    buf.extend_from_slice(&chunk[..n]);
    n
}
