//! Drives a streaming response body straight into a raw connection (a socket, or TLS on one).
//!
//! Whatever chunks the body has ready go out in one vectored write, without copying them (an
//! SSE frame is shared by every subscriber of its channel). While a write is blocked the body is
//! not polled, so the connection's queue fills up and the hub closes it as a slow consumer;
//! the kernel's `TCP_USER_TIMEOUT` ends a peer that stops acknowledging altogether. A client
//! that closes its side ends the stream at once. While the pump is parked with everything
//! written, fan-out writes events to a plain socket itself (`hub::direct`): the pump arms the
//! body's queue when it parks and disarms it whenever it wakes.

use std::convert::Infallible;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::Stream;

use super::raw_io::RawIo;
use crate::hub::direct::Parking;
use crate::hub::queue::Arm;

/// Chunks gathered into one write at most.
const MAX_CHUNKS: usize = 64;

/// Writes `first` (the response head), then `body`, to `stream` until the body ends (then
/// closes the socket) or the client leaves.
pub fn pump<S, B>(stream: S, first: Bytes, body: B) -> Pump<S, B>
where
    S: RawIo,
    B: Stream<Item = Result<Bytes, Infallible>> + Parking + Unpin,
{
    Pump {
        body,
        stream,
        out: vec![first],
        state: State::Streaming,
        armed: false,
    }
}

/// The future returned by [`pump`].
pub struct Pump<S, B> {
    /// Dropped first: its queue lets go of the socket before the socket closes.
    body: B,
    stream: S,
    /// Chunks not yet (fully) written, oldest first.
    out: Vec<Bytes>,
    state: State,
    /// The body's queue is armed: fan-out writes to the socket until the pump wakes.
    armed: bool,
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
    B: Stream<Item = Result<Bytes, Infallible>> + Parking + Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.armed {
            // Whatever woke us may write (a heartbeat, the close): fan-out queues from now on.
            this.armed = false;
            this.body.disarm();
        }
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
                match this.body.arm() {
                    Arm::Armed => {
                        this.armed = true;
                        return Poll::Pending;
                    }
                    Arm::Off => return Poll::Pending,
                    // Items arrived since the body was polled: write them first.
                    Arm::Busy => {}
                }
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
