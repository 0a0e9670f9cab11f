//! The writing half of a WebSocket: queued frames go out in one vectored write per batch.
//! Event frames are encoded once per event (header included: server frames are unmasked) and
//! shared by every subscriber, so a delivery queues a reference, not a copy; replies and
//! control frames are encoded here. A close after a stalled write still leaves the client
//! whole frames.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use actix_http::ws::{CloseReason, OpCode, Parser};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{Closed, WriteIo};

/// RFC 6455 §5.5: control frame payloads are at most 125 bytes.
pub(super) const MAX_CONTROL_PAYLOAD: usize = 125;
/// A close payload is a 2-byte code and the reason.
const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;
/// Queued output is written once it reaches this size, even in the middle of a batch: bounds
/// how much one timed write has to move.
const FLUSH_AT: usize = 64 * 1024;
/// Frames gathered into one vectored write at most.
const MAX_SLICES: usize = 64;

/// Encodes one unmasked frame (see `hub::ws_frame`), for replies and tests.
pub fn encode_frame(payload: &[u8], binary: bool, compressed: bool) -> Bytes {
    crate::hub::ws_frame::encode(payload, binary, compressed)
}

/// The writing half of a WebSocket: whole frames queued, written in one go per batch.
pub struct Session {
    io: WriteIo,
    /// Whole frames not yet completely written, oldest first.
    out: VecDeque<Bytes>,
    /// How much of the first frame is already written.
    written: usize,
    /// Bytes queued in `out`, written or not (saturating: only compared with `FLUSH_AT`);
    /// 32 bits keep the session in one cache line.
    queued: u32,
    /// A flush started and has not finished: it was cancelled (timed out) or failed.
    stalled: bool,
    /// With `permessage-deflate`: the client's window for our messages, in bits; 0 without.
    deflate_bits: u8,
    /// The client keeps its window between our messages (server context takeover).
    deflate_context: bool,
    /// The first queued frame was begun by fan-out (`hub::direct`): like one partly written
    /// here, it goes out whole even when the connection closes after a stalled write.
    begun: bool,
}

impl Session {
    /// Wraps the write half of an upgraded socket.
    pub fn new(io: WriteIo) -> Self {
        Self {
            io,
            out: VecDeque::new(),
            written: 0,
            queued: 0,
            stalled: false,
            deflate_bits: 0,
            deflate_context: false,
            begun: false,
        }
    }

    /// Sends compressed messages (`permessage-deflate` was negotiated) of at most `2^bits`
    /// bytes uncompressed: a message compressed from scratch refers back no further.
    /// `context`: the client keeps its window, so a message may refer back into the last one.
    pub fn deflate(&mut self, bits: u8, context: bool) {
        self.deflate_bits = bits.min(15);
        self.deflate_context = context;
    }

    /// Whether compressed messages may refer back into the last compressed one.
    pub fn deflate_context(&self) -> bool {
        self.deflate_context
    }

    /// The longest message that may be sent compressed; `None` without `permessage-deflate`.
    pub fn compress_up_to(&self) -> Option<usize> {
        (self.deflate_bits > 0).then(|| 1 << self.deflate_bits)
    }

    /// Queues a whole frame made by [`encode_frame`] (an event's, shared by every
    /// subscriber), written by [`Session::flush`] or once enough is queued.
    pub async fn feed_frame(&mut self, frame: Bytes) -> Result<(), Closed> {
        self.push(frame);
        if self.queued as usize >= FLUSH_AT {
            self.write_out().await.map_err(|_| Closed)?;
        }
        Ok(())
    }

    /// Queues the rest of bytes fan-out began writing to the socket itself (`hub::direct`);
    /// only into an empty session, as fan-out writes only while the session is idle.
    pub async fn feed_tail(&mut self, rest: Bytes) -> Result<(), Closed> {
        self.begun = self.out.is_empty();
        self.feed_frame(rest).await
    }

    /// Queues a text frame (a reply), like [`Session::feed_frame`].
    pub async fn feed_text(&mut self, text: ByteString) -> Result<(), Closed> {
        self.feed_frame(encode_frame(text.as_bytes(), false, false))
            .await
    }

    /// Whether everything fed has been written (nothing is half-way out), so that someone
    /// else may write whole frames to the socket (`hub::direct`).
    pub fn is_idle(&self) -> bool {
        self.out.is_empty() && !self.stalled
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

    fn push(&mut self, frame: Bytes) {
        self.queued = self.queued.saturating_add(len32(&frame));
        self.out.push_back(frame);
    }

    async fn control(&mut self, payload: &[u8], op: OpCode) -> Result<(), Closed> {
        let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
        let mut frame = BytesMut::with_capacity(payload.len() + 2);
        Parser::write_message(&mut frame, payload, op, true, false);
        self.push(frame.freeze());
        self.write_out().await.map_err(|_| Closed)
    }

    /// Writes everything queued, then frees the queue: an idle connection holds none.
    /// Cancel-safe: progress is recorded after every write.
    async fn write_out(&mut self) -> io::Result<()> {
        self.stalled = true;
        poll_fn(|cx| self.poll_write_out(cx)).await?;
        // A TLS stream holds written records until flushed; TCP has nothing to flush.
        poll_fn(|cx| Pin::new(&mut self.io).poll_flush(cx)).await
    }

    /// Polled, not awaited through a future that would add to the session task's size.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut n = 0;
            for (slot, frame) in slices.iter_mut().zip(&self.out) {
                let from = if n == 0 { self.written } else { 0 };
                *slot = IoSlice::new(&frame[from..]);
                n += 1;
            }
            let wrote = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]))?;
            if wrote == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(wrote);
        }
        self.out = VecDeque::new();
        self.written = 0;
        self.queued = 0;
        self.stalled = false;
        Poll::Ready(Ok(()))
    }

    /// Records `n` more bytes written: whole frames leave the queue.
    fn advance(&mut self, mut n: usize) {
        while let Some(first) = self.out.front() {
            let left = first.len() - self.written;
            if n < left {
                self.written += n;
                return;
            }
            n -= left;
            self.queued = self.queued.saturating_sub(len32(first));
            self.written = 0;
            self.begun = false;
            self.out.pop_front();
        }
    }

    /// After a write that stalled (a slow consumer), drops the queued frames not yet begun,
    /// so the close frame goes out next, right after the one partly written.
    fn discard_unsent(&mut self) {
        if !self.stalled {
            return;
        }
        let keep = usize::from(self.written > 0 || self.begun).min(self.out.len());
        for frame in self.out.drain(keep..) {
            self.queued = self.queued.saturating_sub(len32(&frame));
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
        let mut frame = BytesMut::new();
        Parser::write_close(&mut frame, reason, false);
        self.push(frame.freeze());
        self.write_out().await?;
        self.io.shutdown().await
    }
}

/// A frame's length for [`Session::queued`].
fn len32(frame: &Bytes) -> u32 {
    u32::try_from(frame.len()).unwrap_or(u32::MAX)
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
            .feed_frame(encode_frame(&[1, 2], true, false))
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
        let frame = encode_frame(&chunk, true, false);
        for _ in 0..7 {
            writer.feed_frame(frame.clone()).await.unwrap();
        }
        // 7 frames of 10 004 bytes crossed FLUSH_AT once.
        assert!(writer.out.is_empty(), "flushed at the threshold");
        writer.feed_frame(frame).await.unwrap();
        assert_eq!(writer.queued, 10_004);
        writer.close(None).await.unwrap();
        assert_eq!(drain.await.unwrap(), 8 * 10_004 + 2);
    }

    #[tokio::test]
    async fn a_close_after_a_stalled_write_keeps_framing() {
        let (_reader, mut writer, mut client) = raw().await;
        for payload in [&b"first"[..], b"second", b"third"] {
            writer.push(encode_frame(payload, false, false));
        }
        // As if a write had stalled inside the second frame (7 + 8 + 7 bytes).
        let first = writer.out[0].clone();
        let second = writer.out[1].clone();
        writer.io.write_all(&first).await.unwrap();
        writer.io.write_all(&second[..2]).await.unwrap();
        writer.advance(9);
        writer.stalled = true;
        writer.discard_unsent();
        assert_eq!(
            (writer.out.len(), writer.written, writer.queued),
            (1, 2, 8),
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
    async fn a_close_after_a_stalled_write_finishes_a_frame_fan_out_began() {
        let (_reader, mut writer, mut client) = raw().await;
        // Fan-out wrote the first 3 bytes of a frame itself (`hub::direct`); the session is
        // given the rest, then more frames, and closes after a stalled write that sent none.
        let begun = encode_frame(b"begun", false, false);
        writer.io.write_all(&begun[..3]).await.unwrap();
        writer.feed_tail(begun.slice(3..)).await.unwrap();
        writer.push(encode_frame(b"later", false, false));
        writer.stalled = true;
        writer.discard_unsent();
        assert_eq!(writer.out.len(), 1, "the rest of the begun frame stays");
        writer.close(None).await.unwrap();
        let frames = server_frames(&mut client).await;
        assert_eq!(
            frames,
            [(OpCode::Text, b"begun".to_vec()), (OpCode::Close, vec![]),]
        );
    }

    #[tokio::test]
    async fn a_flush_to_a_client_that_does_not_read_stalls_then_closes_cleanly() {
        let (_reader, mut writer, mut client) = raw().await;
        let payload = vec![b'x'; 100_000];
        // Far more than loopback socket buffers hold.
        let fed = 200;
        let frame = encode_frame(&payload, true, false);
        for _ in 0..fed {
            writer.push(frame.clone());
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

    #[tokio::test]
    async fn many_shared_frames_go_out_whole_and_in_order() {
        let (_reader, mut writer, mut client) = raw().await;
        // More frames than one vectored write gathers, sharing one allocation.
        let frame = encode_frame(b"shared", false, false);
        for _ in 0..(MAX_SLICES * 2 + 3) {
            writer.feed_frame(frame.clone()).await.unwrap();
        }
        writer.close(None).await.unwrap();
        let frames = server_frames(&mut client).await;
        assert_eq!(frames.len(), MAX_SLICES * 2 + 4);
        assert!(
            frames[..frames.len() - 1]
                .iter()
                .all(|f| *f == (OpCode::Text, b"shared".to_vec()))
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
