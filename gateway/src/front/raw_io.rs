//! What the raw SSE path needs of a connection, so a first `GET /sse` is served the same way
//! on a plain socket and over TLS.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

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

    /// What the stream is served on, and the plain socket fan-out may write to directly
    /// (`hub::direct`), if there is one.
    type Streamed: RawIo;
    /// Turns the connection into what its stream is served on.
    fn into_streamed(self) -> (Self::Streamed, Option<Arc<TcpStream>>);
}

impl RawIo for TcpStream {
    fn poll_client_gone(&mut self, cx: &mut Context<'_>) -> bool {
        client_gone(self, cx)
    }

    type Streamed = SharedTcp;
    fn into_streamed(self) -> (SharedTcp, Option<Arc<TcpStream>>) {
        let socket = Arc::new(self);
        (SharedTcp(socket.clone()), Some(socket))
    }
}

/// Reads and discards what a client sends on a response stream; `true` once it closed.
fn client_gone(socket: &TcpStream, cx: &mut Context<'_>) -> bool {
    for _ in 0..MAX_DISCARDS {
        match socket.poll_read_ready(cx) {
            Poll::Pending => return false,
            Poll::Ready(Err(_)) => return true,
            Poll::Ready(Ok(())) => {}
        }
        let mut sink = [0u8; 512];
        match socket.try_read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return true,
        }
    }
    cx.waker().wake_by_ref();
    false
}

/// A plain socket shared with the connection's queue, which writes events to it while the
/// stream is idle (`hub::direct`); reads and writes go through the shared reference, as
/// tokio's own socket methods would.
#[derive(Clone)]
pub struct SharedTcp(Arc<TcpStream>);

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}

impl RawIo for SharedTcp {
    fn poll_client_gone(&mut self, cx: &mut Context<'_>) -> bool {
        client_gone(&self.0, cx)
    }

    type Streamed = Self;
    fn into_streamed(self) -> (Self, Option<Arc<TcpStream>>) {
        let socket = self.0.clone();
        (self, Some(socket))
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

    type Streamed = Self;
    fn into_streamed(self) -> (Self, Option<Arc<TcpStream>>) {
        // TLS records need the connection's own state: no direct writes.
        (self, None)
    }
}
