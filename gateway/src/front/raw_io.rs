//! What the raw SSE path needs of a connection, so a first `GET /sse` is served the same way
//! on a plain socket and over TLS.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::tls_stream::TlsStream;

/// Reads of client bytes per wake-up before yielding (a client has nothing to say on a stream).
const MAX_DISCARDS: usize = 16;

/// A connection the raw path can stream to: a plain socket, or our TLS stream on one.
pub trait RawIo: AsyncRead + AsyncWrite + Unpin + 'static {
    /// Whether the client closed its side (or the connection failed). Anything the client sends
    /// on a response stream is read and discarded; nothing is buffered while it is quiet.
    fn poll_client_gone(&mut self, cx: &mut Context<'_>) -> bool;
}

impl RawIo for TcpStream {
    fn poll_client_gone(&mut self, cx: &mut Context<'_>) -> bool {
        for _ in 0..MAX_DISCARDS {
            match self.poll_read_ready(cx) {
                Poll::Pending => return false,
                Poll::Ready(Err(_)) => return true,
                Poll::Ready(Ok(())) => {}
            }
            let mut sink = [0u8; 512];
            match self.try_read(&mut sink) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return true,
            }
        }
        cx.waker().wake_by_ref();
        false
    }
}

impl RawIo for TlsStream {
    fn poll_client_gone(&mut self, cx: &mut Context<'_>) -> bool {
        for _ in 0..MAX_DISCARDS {
            // Readiness first: a quiet client costs no receive buffer.
            if !self.has_plaintext() {
                match self.tcp().poll_read_ready(cx) {
                    Poll::Pending => return false,
                    Poll::Ready(Err(_)) => return true,
                    Poll::Ready(Ok(())) => {}
                }
            }
            let mut sink = [0u8; 512];
            let mut buf = ReadBuf::new(&mut sink);
            match Pin::new(&mut *self).poll_read(cx, &mut buf) {
                Poll::Pending => return false,
                Poll::Ready(Err(_)) => return true,
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return true,
                Poll::Ready(Ok(())) => {}
            }
        }
        cx.waker().wake_by_ref();
        false
    }
}
