//! The writing half of a WebSocket: frames are written with actix-http's [`Parser`] into one
//! buffer per batch, kept only until written, and a close after a stalled write still leaves the
//! client whole frames.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use actix_http::ws::{CloseReason, OpCode, Parser};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::frame::boundary_from;
use super::{Closed, WriteIo};

/// RFC 6455 §5.5: control frame payloads are at most 125 bytes.
pub(super) const MAX_CONTROL_PAYLOAD: usize = 125;
/// A close payload is a 2-byte code and the reason.
const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;
/// Buffered output is written once it reaches this size, even in the middle of a batch: bounds
/// the copy a large batch makes, and how much one timed write has to move.
const FLUSH_AT: usize = 64 * 1024;

/// RSV1: the message is compressed (RFC 7692 §6).
const RSV1: u8 = 0x40;

/// The writing half of a WebSocket: frames buffered into one write per batch.
pub struct Session {
    io: WriteIo,
    /// Frames not yet completely written; starts at a frame boundary.
    out: BytesMut,
    /// How much of `out` is already written.
    written: usize,
    /// A flush started and has not finished: it was cancelled (timed out) or failed.
    stalled: bool,
    /// With `permessage-deflate`: the client's window for our messages, in bits; 0 without.
    deflate_bits: u8,
}

impl Session {
    /// Wraps the write half of an upgraded socket.
    pub fn new(io: WriteIo) -> Self {
        Self {
            io,
            out: BytesMut::new(),
            written: 0,
            stalled: false,
            deflate_bits: 0,
        }
    }

    /// Sends compressed messages (`permessage-deflate` was negotiated) of at most `2^bits`
    /// bytes uncompressed: a message compressed from scratch refers back no further.
    pub fn deflate(&mut self, bits: u8) {
        self.deflate_bits = bits.min(15);
    }

    /// The longest message that may be sent compressed; `None` without `permessage-deflate`.
    pub fn compress_up_to(&self) -> Option<usize> {
        (self.deflate_bits > 0).then(|| 1 << self.deflate_bits)
    }

    /// Queues a message compressed for `permessage-deflate` (RSV1 set), like
    /// [`Session::feed_text`]; the caller checks [`Session::compress_up_to`].
    pub async fn feed_deflated(&mut self, payload: &[u8], binary: bool) -> Result<(), Closed> {
        let at = self.out.len();
        let op = if binary { OpCode::Binary } else { OpCode::Text };
        Parser::write_message(&mut self.out, payload, op, true, false);
        if let Some(first) = self.out.get_mut(at) {
            *first |= RSV1;
        }
        if self.out.len() >= FLUSH_AT {
            self.write_out().await.map_err(|_| Closed)?;
        }
        Ok(())
    }

    /// Queues a text frame, written by [`Session::flush`] (or once enough is buffered).
    pub async fn feed_text(&mut self, text: ByteString) -> Result<(), Closed> {
        self.feed(text.as_bytes(), OpCode::Text).await
    }

    /// Queues a binary frame, like [`Session::feed_text`].
    pub async fn feed_binary(&mut self, bytes: Bytes) -> Result<(), Closed> {
        self.feed(&bytes, OpCode::Binary).await
    }

    /// Writes whatever was fed, so a batch of frames becomes one write.
    pub async fn flush(&mut self) -> Result<(), Closed> {
        self.write_out().await.map_err(|_| Closed)
    }

    /// Pings the client (heartbeat); payloads beyond 125 bytes are cut.
    pub async fn ping(&mut self, payload: &[u8]) -> Result<(), Closed> {
        self.control(payload, OpCode::Ping).await
    }

    /// Answers a client's ping; payloads beyond 125 bytes are cut.
    pub async fn pong(&mut self, payload: &[u8]) -> Result<(), Closed> {
        self.control(payload, OpCode::Pong).await
    }

    /// Sends a close frame and ends the writing side; reasons beyond 123 bytes are cut.
    pub async fn close(self, reason: Option<CloseReason>) -> Result<(), Closed> {
        self.finish(reason).await.map_err(|_| Closed)
    }

    async fn feed(&mut self, payload: &[u8], op: OpCode) -> Result<(), Closed> {
        Parser::write_message(&mut self.out, payload, op, true, false);
        if self.out.len() >= FLUSH_AT {
            self.write_out().await.map_err(|_| Closed)?;
        }
        Ok(())
    }

    async fn control(&mut self, payload: &[u8], op: OpCode) -> Result<(), Closed> {
        let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
        Parser::write_message(&mut self.out, payload, op, true, false);
        self.write_out().await.map_err(|_| Closed)
    }

    /// Writes everything buffered, then frees the buffer: an idle connection holds none.
    /// Cancel-safe: progress is recorded after every write.
    async fn write_out(&mut self) -> io::Result<()> {
        self.stalled = true;
        poll_fn(|cx| self.poll_write_out(cx)).await?;
        // A TLS stream holds written records until flushed; TCP has nothing to flush.
        poll_fn(|cx| Pin::new(&mut self.io).poll_flush(cx)).await
    }

    /// Polled, not awaited through a future that would add to the session task's size.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.written += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.out = BytesMut::new();
        self.written = 0;
        self.stalled = false;
        Poll::Ready(Ok(()))
    }

    /// After a write that stalled (a slow consumer), drops the buffered frames not yet begun,
    /// so the close frame goes out next, right after the one partly written.
    fn discard_unsent(&mut self) {
        if !self.stalled {
            return;
        }
        // `None` cannot happen: `out` holds whole frames.
        if let Some(boundary) = boundary_from(&self.out, self.written) {
            self.out.truncate(boundary);
        }
    }

    async fn finish(mut self, reason: Option<CloseReason>) -> io::Result<()> {
        self.discard_unsent();
        let reason = reason.map(|mut r| {
            if let Some(text) = r.description.as_mut() {
                truncate_at_char(text, MAX_CLOSE_REASON);
            }
            r
        });
        Parser::write_close(&mut self.out, reason, false);
        self.write_out().await?;
        self.io.shutdown().await
    }
}

/// Cuts `text` to at most `max` bytes, at a character boundary.
fn truncate_at_char(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use actix_http::ws::CloseCode;
    use tokio::io::AsyncReadExt;

    use super::super::testing::{raw, server_frames};
    use super::*;

    #[tokio::test]
    async fn a_batch_is_one_write_and_the_buffer_is_released() {
        let (_reader, writer, mut client) = raw().await;
        let mut session = writer;
        session.feed_text("a".into()).await.unwrap();
        session
            .feed_binary(Bytes::from_static(&[1, 2]))
            .await
            .unwrap();
        session.feed_text("c".into()).await.unwrap();
        let w = &session;
        assert!(
            !w.out.is_empty() && w.written == 0,
            "nothing written before flush"
        );
        session.flush().await.unwrap();
        let w = &session;
        assert_eq!(w.out.capacity(), 0);
        session.ping(&[7; 200]).await.unwrap();
        session.pong(b"pp").await.unwrap();
        session
            .close(Some(CloseReason {
                code: CloseCode::Away,
                description: Some("é".repeat(100)),
            }))
            .await
            .unwrap();
        let frames = server_frames(&mut client).await;
        assert_eq!(frames[0], (OpCode::Text, b"a".to_vec()));
        assert_eq!(frames[1], (OpCode::Binary, vec![1, 2]));
        assert_eq!(frames[2], (OpCode::Text, b"c".to_vec()));
        assert_eq!(frames[3], (OpCode::Ping, vec![7; MAX_CONTROL_PAYLOAD]));
        assert_eq!(frames[4], (OpCode::Pong, b"pp".to_vec()));
        let (op, payload) = &frames[5];
        assert_eq!(*op, OpCode::Close);
        assert_eq!(&payload[..2], &1001u16.to_be_bytes());
        let reason = std::str::from_utf8(&payload[2..]).unwrap();
        assert_eq!(reason, "é".repeat(61), "cut at a character boundary");
        assert_eq!(
            frames.len(),
            6,
            "the write side is shut after the close frame"
        );
    }

    #[tokio::test]
    async fn large_batches_are_written_as_they_grow() {
        let (_reader, mut writer, mut client) = raw().await;
        let drain = tokio::spawn(async move {
            let mut bytes = Vec::new();
            client.read_to_end(&mut bytes).await.unwrap();
            bytes.len()
        });
        let chunk = Bytes::from(vec![0u8; 10_000]);
        for _ in 0..7 {
            writer.feed(&chunk, OpCode::Binary).await.unwrap();
        }
        // 7 frames of 10 004 bytes crossed FLUSH_AT once.
        assert!(writer.out.is_empty(), "flushed at the threshold");
        writer.feed(&chunk, OpCode::Binary).await.unwrap();
        assert_eq!(writer.out.len(), 10_004);
        writer.close(None).await.unwrap();
        assert_eq!(drain.await.unwrap(), 8 * 10_004 + 2);
    }

    #[tokio::test]
    async fn a_close_after_a_stalled_write_keeps_framing() {
        let (_reader, mut writer, mut client) = raw().await;
        for payload in [&b"first"[..], b"second", b"third"] {
            Parser::write_message(&mut writer.out, payload, OpCode::Text, true, false);
        }
        // As if a write had stalled inside the second frame (7 + 8 + 7 bytes).
        writer.io.write_all(&writer.out[..9]).await.unwrap();
        writer.written = 9;
        writer.stalled = true;
        writer.discard_unsent();
        assert_eq!(
            writer.out.len(),
            15,
            "the second frame is finished, the third dropped"
        );
        writer.close(None).await.unwrap();
        let frames = server_frames(&mut client).await;
        assert_eq!(
            frames,
            [
                (OpCode::Text, b"first".to_vec()),
                (OpCode::Text, b"second".to_vec()),
                (OpCode::Close, vec![]),
            ]
        );
    }

    #[tokio::test]
    async fn a_flush_to_a_client_that_does_not_read_stalls_then_closes_cleanly() {
        let (_reader, mut writer, mut client) = raw().await;
        let payload = vec![b'x'; 100_000];
        // Far more than loopback socket buffers hold.
        let fed = 200;
        for _ in 0..fed {
            Parser::write_message(&mut writer.out, &payload, OpCode::Binary, true, false);
        }
        let stalled = tokio::time::timeout(Duration::from_millis(300), writer.flush()).await;
        assert!(stalled.is_err(), "the flush should have stalled");
        assert!(writer.stalled && writer.written > 0);
        let reading = tokio::spawn(async move { server_frames(&mut client).await });
        tokio::time::timeout(Duration::from_secs(5), writer.close(None))
            .await
            .unwrap()
            .unwrap();
        let frames = reading.await.unwrap();
        let (last, events) = frames.split_last().unwrap();
        assert_eq!(*last, (OpCode::Close, vec![]));
        assert!(events.len() < fed, "unsent events were dropped");
        assert!(
            events
                .iter()
                .all(|f| *f == (OpCode::Binary, payload.clone()))
        );
    }

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        let mut text = "aé".to_owned();
        truncate_at_char(&mut text, 2);
        assert_eq!(text, "a");
        let mut text = "abc".to_owned();
        truncate_at_char(&mut text, 3);
        assert_eq!(text, "abc");
    }
}
