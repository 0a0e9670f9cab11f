//! Drives a streaming response body straight into a raw connection (a socket, or TLS on one).
//!
//! Whatever chunks the body has ready go out in one vectored write, without copying them (an
//! SSE frame is shared by every subscriber of its channel). While a write is blocked the body is
//! not polled, so the connection's queue fills up and the hub closes it as a slow consumer;
//! the kernel's `TCP_USER_TIMEOUT` ends a peer that stops acknowledging altogether. A client
//! that closes its side ends the stream at once.

use std::convert::Infallible;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::Stream;

use super::raw_io::RawIo;

/// Chunks gathered into one write at most.
const MAX_CHUNKS: usize = 64;

/// Writes `first` (the response head), then `body`, to `stream` until the body ends (then
/// closes the socket) or the client leaves.
pub fn pump<S, B>(stream: S, first: Bytes, body: B) -> Pump<S, B>
where
    S: RawIo,
    B: Stream<Item = Result<Bytes, Infallible>> + Unpin,
{
    Pump {
        stream,
        body,
        out: vec![first],
        state: State::Streaming,
    }
}

/// The future returned by [`pump`].
pub struct Pump<S, B> {
    stream: S,
    body: B,
    /// Chunks not yet (fully) written, oldest first.
    out: Vec<Bytes>,
    state: State,
}

#[derive(PartialEq, Eq)]
enum State {
    Streaming,
    /// The body ended: write what is left, then close.
    Finishing,
}

impl<S: RawIo, B> Pump<S, B> {
    /// Writes queued chunks until done or blocked.
    fn flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_CHUNKS];
            let n = self.out.len().min(MAX_CHUNKS);
            for (slice, chunk) in slices.iter_mut().zip(&self.out) {
                *slice = IoSlice::new(chunk);
            }
            let written = match Pin::new(&mut self.stream).poll_write_vectored(cx, &slices[..n]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(w)) => w,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            advance(&mut self.out, written);
        }
        if self.out.capacity() > MAX_CHUNKS {
            // A burst grew it; an idle stream should not keep that.
            self.out = Vec::new();
        }
        // TLS may hold ciphertext the socket did not take yet (a plain socket holds nothing).
        Pin::new(&mut self.stream).poll_flush(cx)
    }
}

/// Drops the first `n` bytes of `out`.
fn advance(out: &mut Vec<Bytes>, mut n: usize) {
    let mut done = 0;
    for chunk in out.iter_mut() {
        if n >= chunk.len() {
            n -= chunk.len();
            done += 1;
        } else {
            chunk.advance(n);
            break;
        }
    }
    out.drain(..done);
}

impl<S, B> Future for Pump<S, B>
where
    S: RawIo,
    B: Stream<Item = Result<Bytes, Infallible>> + Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            if this.stream.poll_client_gone(cx) {
                return Poll::Ready(());
            }
            match this.flush(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
            if this.state == State::Finishing {
                // Best effort: a FIN (after TLS's close_notify) after the last byte; dropping
                // the socket closes it anyway.
                let _ = Pin::new(&mut this.stream).poll_shutdown(cx);
                return Poll::Ready(());
            }
            while this.out.len() < MAX_CHUNKS {
                match Pin::new(&mut this.body).poll_next(cx) {
                    Poll::Ready(Some(Ok(chunk))) => this.out.push(chunk),
                    Poll::Ready(None) => {
                        this.state = State::Finishing;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            if this.out.is_empty() && this.state == State::Streaming {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_drops_whole_chunks_and_splits_the_next() {
        let mut out = vec![
            Bytes::from_static(b"abc"),
            Bytes::from_static(b"de"),
            Bytes::from_static(b"fgh"),
        ];
        advance(&mut out, 4);
        assert_eq!(out, [Bytes::from_static(b"e"), Bytes::from_static(b"fgh")]);
        advance(&mut out, 1);
        assert_eq!(out, [Bytes::from_static(b"fgh")]);
        advance(&mut out, 3);
        assert!(out.is_empty());
    }
}
