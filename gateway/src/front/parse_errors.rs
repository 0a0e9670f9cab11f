//! hyper answers a request head it cannot parse (400), whose URI is too long (414) or that
//! exceeds the head limit (431) by itself, with an empty body, just before it closes the
//! connection; no hook lets a server shape that answer. This wrapper around an HTTP/1.1
//! connection's socket recognises such an automatic answer as hyper writes it and writes the
//! gateway's own in its place: the same status with the JSON error body every other refusal
//! has. Nothing else is touched (the gateway's own responses always carry a body).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::StatusCode;
use shared::ErrorCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::ApiError;

/// A socket whose automatic parse-error answers are rewritten as JSON errors.
pub struct JsonParseErrors<T> {
    inner: T,
    /// The replacement answer, while it is being written.
    pending: Option<Bytes>,
}

impl<T> JsonParseErrors<T> {
    /// Wraps the socket of one HTTP/1.1 connection.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            pending: None,
        }
    }

    /// The socket (after a WebSocket upgrade).
    pub fn into_inner(self) -> T {
        self.inner
    }
}

/// The JSON answer for an automatic one in `buf` (hyper writes it whole, as one buffer).
fn replacement(buf: &[u8]) -> Option<Bytes> {
    let head = std::str::from_utf8(buf).ok()?;
    if !head.ends_with("\r\n\r\n")
        || !head.contains("\r\ncontent-length: 0\r\n")
        || head.contains("\r\ncontent-type:")
    {
        return None;
    }
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| head.strip_prefix("HTTP/1.0 "))?
        .get(..3)?;
    let e = match status {
        "400" => ApiError::bad_request(
            ErrorCode::BadRequestHead,
            "the request head is not valid HTTP/1.1",
        ),
        "414" => ApiError::new(
            StatusCode::URI_TOO_LONG,
            ErrorCode::UriTooLong,
            "the request target is too long",
        ),
        "431" => ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::HeadTooLarge,
            format!(
                "the request head exceeds {} bytes or {} header lines",
                super::limits::MAX_HEAD,
                super::limits::MAX_HEADERS
            ),
        ),
        _ => return None,
    };
    crate::telemetry::malformed("head", &e);
    Some(Bytes::from(e.to_http1("")))
}

impl<T: AsyncWrite + Unpin> JsonParseErrors<T> {
    /// Writes what is left of the replacement; ready once it is all written.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(pending) = &mut self.pending {
            if pending.is_empty() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            pending.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonParseErrors<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        if let Some(answer) = replacement(buf) {
            this.pending = Some(answer);
            // Taken in full: what hyper wrote is answered by the replacement.
            let _ = this.drain(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (filled.next(), filled.next())
            && let Some(answer) = replacement(only)
        {
            this.pending = Some(answer);
            let _ = this.drain(cx)?;
            return Poll::Ready(Ok(only.len()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonParseErrors<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_automatic_answers_are_replaced() {
        let automatic = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 18:00:00 GMT\r\n\r\n";
        let json = replacement(automatic).expect("replaced");
        let text = std::str::from_utf8(&json).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
        assert!(text.contains("content-type: application/json"), "{text}");
        assert!(text.ends_with("}"), "{text}");
        assert!(text.contains("\"head_too_large\""), "{text}");
        let bad = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        assert!(
            std::str::from_utf8(&replacement(bad).unwrap())
                .unwrap()
                .contains("bad_request_head")
        );
        // The gateway's own answers, a body, other statuses, partial heads: untouched.
        for kept in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}",
            b"\x00\xff",
        ] {
            assert!(replacement(kept).is_none(), "{kept:?}");
        }
    }

    #[tokio::test]
    async fn the_replacement_is_written_whole_through_a_slow_socket() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(16);
        let mut wrapped = JsonParseErrors::new(server);
        let automatic = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n";
        let writer = tokio::spawn(async move {
            wrapped.write_all(automatic).await.unwrap();
            wrapped.shutdown().await.unwrap();
        });
        let mut got = String::new();
        let mut client = client;
        client.read_to_string(&mut got).await.unwrap();
        writer.await.unwrap();
        assert!(got.starts_with("HTTP/1.1 414 "), "{got}");
        assert!(got.contains("\"uri_too_long\""), "{got}");
    }
}
