//! WebSocket I/O on a socket hyper handed back after the upgrade (plain TCP or TLS).
//!
//! Built to cost nothing while idle: the reader waits for bytes without a buffer and reads
//! through a stack array, the writer keeps its output only until it is written, and both release
//! their allocations as soon as they are empty. Frames are parsed and written with actix-http's
//! [`Parser`]; a frame's length is checked from its header before any payload is kept.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use actix_http::ws::{CloseReason, OpCode, Parser, ProtocolError};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// RFC 6455 §5.5: control frame payloads are at most 125 bytes.
const MAX_CONTROL_PAYLOAD: usize = 125;
/// A close payload is a 2-byte code and the reason.
const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;
/// Buffered output is written once it reaches this size, even in the middle of a batch: bounds
/// the copy a large batch makes, and how much one timed write has to move.
const FLUSH_AT: usize = 64 * 1024;
/// Bytes read per read call, through a stack array.
const READ_CHUNK: usize = 4096;

/// The socket's reading half, whatever the transport underneath (TCP, TLS).
pub type ReadIo = Box<dyn AsyncRead + Unpin>;
/// The socket's writing half.
pub type WriteIo = Box<dyn AsyncWrite + Unpin>;

/// The connection is gone: nothing more can be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// One complete message from the client (fragments joined).
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// A text message (valid UTF-8).
    Text(ByteString),
    /// A binary message.
    Binary(Bytes),
    /// A ping, to be answered with its payload.
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// The client's close frame.
    Close(Option<CloseReason>),
}

/// The writing half of a WebSocket: frames buffered into one write per batch.
pub struct Session {
    io: WriteIo,
    /// Frames not yet completely written; starts at a frame boundary.
    out: BytesMut,
    /// How much of `out` is already written.
    written: usize,
    /// A flush started and has not finished: it was cancelled (timed out) or failed.
    stalled: bool,
}

impl Session {
    /// Wraps the write half of an upgraded socket.
    pub fn new(io: WriteIo) -> Self {
        Self {
            io,
            out: BytesMut::new(),
            written: 0,
            stalled: false,
        }
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
        let mut boundary = 0;
        while boundary < self.written {
            match frame_len(&self.out[boundary..]) {
                Some(len) => boundary += len,
                None => return, // cannot happen: `out` holds whole frames
            }
        }
        self.out.truncate(boundary);
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

fn truncate_at_char(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// Header and payload length of the frame `buf` starts with, if its header is complete.
fn header_and_payload(buf: &[u8]) -> Option<(usize, u64)> {
    let second = *buf.get(1)?;
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    match second & 0x7F {
        126 => {
            let len = u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]);
            Some((4 + mask, u64::from(len)))
        }
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            Some((10 + mask, u64::from_be_bytes(bytes)))
        }
        len => Some((2 + mask, u64::from(len))),
    }
}

/// Total length of the (complete) frame `buf` starts with.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let (header, payload) = header_and_payload(buf)?;
    header.checked_add(usize::try_from(payload).ok()?)
}

/// The reading half of a WebSocket: frames decoded and fragmented messages joined.
pub struct MessageStream {
    io: ReadIo,
    /// Bytes read but not yet decoded; unallocated while idle.
    buf: BytesMut,
    /// The largest frame, and the largest aggregated message.
    max: usize,
    /// The fragments of a message in progress.
    partial: BytesMut,
    /// What the message in progress is; `Some` while one is open.
    partial_kind: Option<Kind>,
}

#[derive(Clone, Copy)]
enum Kind {
    Text,
    Binary,
}

impl MessageStream {
    /// Wraps the read half of an upgraded socket; `max` bounds frames and messages (bigger
    /// ones are [`ProtocolError::Overflow`]).
    pub fn new(io: ReadIo, max: usize) -> Self {
        Self::with_pending(io, max, BytesMut::new())
    }

    /// Like [`MessageStream::new`], for a socket whose first bytes were already read with the
    /// upgrade request (a client may send frames in the same packet): they are decoded first.
    pub fn with_pending(io: ReadIo, max: usize, pending: BytesMut) -> Self {
        Self {
            io,
            buf: pending,
            max,
            partial: BytesMut::new(),
            partial_kind: None,
        }
    }

    /// The next complete message; `None` once the client is gone. Cancel-safe: dropping the
    /// future loses nothing, so it can sit in a `select!`.
    pub async fn recv(&mut self) -> Option<Result<Message, ProtocolError>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polled, not awaited through a future that would sit in every idle connection's task.
    /// All state is in `self`, so a cancelled wait loses nothing.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, ProtocolError>>> {
        loop {
            let decoded = self.decode();
            if self.buf.is_empty() {
                self.buf = BytesMut::new();
            }
            match decoded {
                Ok(Some(msg)) => return Poll::Ready(Some(Ok(msg))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
            match ready!(fill(&mut self.io, cx, &mut self.buf)) {
                Ok(0) | Err(_) => return Poll::Ready(None),
                Ok(_) => {}
            }
        }
    }

    /// The next complete message among the bytes read so far.
    fn decode(&mut self) -> Result<Option<Message>, ProtocolError> {
        loop {
            let Some((fin, op, payload)) = Parser::parse(&mut self.buf, true, self.max)? else {
                // Refuse an oversized frame by its header, before buffering its payload.
                if header_and_payload(&self.buf).is_some_and(|(_, len)| len > self.max as u64) {
                    return Err(ProtocolError::Overflow);
                }
                return Ok(None);
            };
            let payload = payload.map_or_else(Bytes::new, BytesMut::freeze);
            match op {
                OpCode::Continue => {
                    let Some(kind) = self.partial_kind else {
                        return Err(ProtocolError::ContinuationNotStarted);
                    };
                    self.append(&payload)?;
                    if fin {
                        self.partial_kind = None;
                        let whole = std::mem::take(&mut self.partial).freeze();
                        return message(kind, whole).map(Some);
                    }
                }
                OpCode::Text | OpCode::Binary => {
                    if self.partial_kind.is_some() {
                        return Err(ProtocolError::ContinuationStarted);
                    }
                    let kind = if op == OpCode::Text {
                        Kind::Text
                    } else {
                        Kind::Binary
                    };
                    if fin {
                        return message(kind, payload).map(Some);
                    }
                    self.partial_kind = Some(kind);
                    self.append(&payload)?;
                }
                OpCode::Ping | OpCode::Pong | OpCode::Close if !fin => {
                    return Err(ProtocolError::ContinuationFragment(op));
                }
                OpCode::Ping => return Ok(Some(Message::Ping(payload))),
                OpCode::Pong => return Ok(Some(Message::Pong(payload))),
                OpCode::Close => {
                    let reason = Parser::try_parse_close_payload(&payload)?;
                    return Ok(Some(Message::Close(reason)));
                }
                OpCode::Bad => return Err(ProtocolError::BadOpCode),
            }
        }
    }

    fn append(&mut self, fragment: &[u8]) -> Result<(), ProtocolError> {
        if self.partial.len() + fragment.len() > self.max {
            self.partial = BytesMut::new();
            self.partial_kind = None;
            return Err(ProtocolError::Overflow);
        }
        self.partial.extend_from_slice(fragment);
        Ok(())
    }

    /// After our close frame: reads and drops whatever the client still sends until it closes,
    /// so closing the socket with unread input does not reset the connection (which can destroy
    /// the close frame before the client reads it). The caller bounds the wait.
    pub async fn linger(&mut self) {
        self.buf = BytesMut::new();
        self.partial = BytesMut::new();
        loop {
            match poll_fn(|cx| discard(&mut self.io, cx)).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

fn message(kind: Kind, payload: Bytes) -> Result<Message, ProtocolError> {
    match kind {
        Kind::Binary => Ok(Message::Binary(payload)),
        Kind::Text => ByteString::try_from(payload)
            .map(Message::Text)
            .map_err(|e| ProtocolError::Io(io::Error::new(io::ErrorKind::InvalidData, e))),
    }
}

/// One read appended to `buf`, through a stack array so nothing is allocated unless bytes
/// arrived; `Ok(0)` at the end of the stream.
fn fill(io: &mut ReadIo, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
    let mut chunk = [0u8; READ_CHUNK];
    let mut read = ReadBuf::new(&mut chunk);
    ready!(Pin::new(io).poll_read(cx, &mut read))?;
    let n = read.filled().len();
    buf.extend_from_slice(read.filled());
    Poll::Ready(Ok(n))
}

/// One read whose bytes are dropped.
fn discard(io: &mut ReadIo, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    let mut chunk = [0u8; READ_CHUNK];
    let mut read = ReadBuf::new(&mut chunk);
    ready!(Pin::new(io).poll_read(cx, &mut read))?;
    Poll::Ready(Ok(read.filled().len()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use actix_http::ws::CloseCode;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    const MAX: usize = 1024;

    /// A connected loopback pair: (server side, client side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (accepted.unwrap().0, client.unwrap())
    }

    async fn raw() -> (MessageStream, Session, TcpStream) {
        let (server, client) = pair().await;
        let (r, w) = server.into_split();
        (
            MessageStream::new(Box::new(r), MAX),
            Session::new(Box::new(w)),
            client,
        )
    }

    /// A masked client frame.
    fn client_frame(op: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        Parser::write_message(&mut buf, payload, op, fin, true);
        buf.to_vec()
    }

    async fn recv(reader: &mut MessageStream) -> Result<Message, ProtocolError> {
        tokio::time::timeout(Duration::from_secs(5), reader.recv())
            .await
            .expect("recv timed out")
            .expect("stream ended")
    }

    /// Every server frame the client has received until EOF.
    async fn server_frames(client: &mut TcpStream) -> Vec<(OpCode, Vec<u8>)> {
        let mut bytes = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut bytes))
            .await
            .unwrap()
            .unwrap();
        let mut buf = BytesMut::from(&bytes[..]);
        let mut frames = Vec::new();
        while let Some((fin, op, payload)) = Parser::parse(&mut buf, false, usize::MAX).unwrap() {
            assert!(fin);
            frames.push((op, payload.map(|p| p.to_vec()).unwrap_or_default()));
        }
        assert!(buf.is_empty(), "trailing bytes");
        frames
    }

    #[tokio::test]
    async fn single_frames_map_to_messages() {
        let (mut reader, _writer, mut client) = raw().await;
        let mut bytes = client_frame(OpCode::Text, true, b"hello");
        bytes.extend(client_frame(OpCode::Binary, true, &[0, 1, 2]));
        bytes.extend(client_frame(OpCode::Ping, true, b"p"));
        bytes.extend(client_frame(OpCode::Pong, true, b"q"));
        let mut close = BytesMut::new();
        Parser::write_close(&mut close, Some(CloseCode::Normal.into()), true);
        bytes.extend_from_slice(&close);
        client.write_all(&bytes).await.unwrap();
        assert_eq!(
            recv(&mut reader).await.unwrap(),
            Message::Text("hello".into())
        );
        assert_eq!(
            recv(&mut reader).await.unwrap(),
            Message::Binary(Bytes::from_static(&[0, 1, 2]))
        );
        assert_eq!(
            recv(&mut reader).await.unwrap(),
            Message::Ping(Bytes::from_static(b"p"))
        );
        assert_eq!(
            recv(&mut reader).await.unwrap(),
            Message::Pong(Bytes::from_static(b"q"))
        );
        assert_eq!(
            recv(&mut reader).await.unwrap(),
            Message::Close(Some(CloseCode::Normal.into()))
        );
        drop(client);
        assert!(reader.recv().await.is_none(), "EOF ends the stream");
    }

    #[tokio::test]
    async fn continuations_are_aggregated_around_control_frames() {
        let (mut reader, _writer, mut client) = raw().await;
        // "héllo wörld", split inside multi-byte characters.
        let text = "héllo wörld".as_bytes();
        let mut bytes = client_frame(OpCode::Text, false, &text[..2]);
        bytes.extend(client_frame(OpCode::Continue, false, &text[2..8]));
        bytes.extend(client_frame(OpCode::Ping, true, b"mid"));
        bytes.extend(client_frame(OpCode::Continue, false, b""));
        bytes.extend(client_frame(OpCode::Continue, true, &text[8..]));
        bytes.extend(client_frame(OpCode::Binary, false, &[1]));
        bytes.extend(client_frame(OpCode::Continue, true, &[2, 3]));
        // Delivered a byte at a time, to exercise partial headers and payloads.
        for b in bytes {
            client.write_all(&[b]).await.unwrap();
        }
        assert_eq!(
            recv(&mut reader).await.unwrap(),
            Message::Ping(Bytes::from_static(b"mid"))
        );
        assert_eq!(
            recv(&mut reader).await.unwrap(),
            Message::Text("héllo wörld".into())
        );
        assert_eq!(
            recv(&mut reader).await.unwrap(),
            Message::Binary(Bytes::from_static(&[1, 2, 3]))
        );
    }

    #[tokio::test]
    async fn messages_up_to_the_limit_pass_and_bigger_ones_overflow() {
        let (mut reader, _writer, mut client) = raw().await;
        let half = vec![b'a'; MAX / 2];
        let mut bytes = client_frame(OpCode::Text, false, &half);
        bytes.extend(client_frame(OpCode::Continue, true, &half));
        client.write_all(&bytes).await.unwrap();
        let Message::Text(text) = recv(&mut reader).await.unwrap() else {
            panic!("expected text");
        };
        assert_eq!(text.len(), MAX);

        let mut bytes = client_frame(OpCode::Binary, false, &half);
        bytes.extend(client_frame(OpCode::Continue, false, &half));
        bytes.extend(client_frame(OpCode::Continue, true, b"!"));
        client.write_all(&bytes).await.unwrap();
        assert!(matches!(
            recv(&mut reader).await,
            Err(ProtocolError::Overflow)
        ));
        assert!(reader.partial.is_empty() && reader.partial.capacity() == 0);
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_by_its_header() {
        let (mut reader, _writer, mut client) = raw().await;
        let frame = client_frame(OpCode::Binary, true, &vec![0; MAX + 1]);
        // Only the header (2 + 2 length + 4 mask bytes): the payload never needs to arrive.
        client.write_all(&frame[..8]).await.unwrap();
        assert!(matches!(
            recv(&mut reader).await,
            Err(ProtocolError::Overflow)
        ));
    }

    #[tokio::test]
    async fn invalid_utf8_text_is_a_protocol_error() {
        for bytes in [
            client_frame(OpCode::Text, true, &[0xff, 0xfe]),
            [
                client_frame(OpCode::Text, false, b"ok"),
                client_frame(OpCode::Continue, true, &[0xc3]),
            ]
            .concat(),
        ] {
            let (mut reader, _writer, mut client) = raw().await;
            client.write_all(&bytes).await.unwrap();
            let err = recv(&mut reader).await.unwrap_err();
            assert!(
                matches!(&err, ProtocolError::Io(e) if e.kind() == io::ErrorKind::InvalidData),
                "{err:?}"
            );
        }
    }

    type Expect = fn(&ProtocolError) -> bool;

    #[tokio::test]
    async fn framing_errors_are_reported() {
        let cases: [(Vec<u8>, Expect); 4] = [
            // Unmasked client frame.
            (vec![0x81, 0x02, b'h', b'i'], |e| {
                matches!(e, ProtocolError::UnmaskedFrame)
            }),
            (client_frame(OpCode::Continue, true, b"x"), |e| {
                matches!(e, ProtocolError::ContinuationNotStarted)
            }),
            (
                [
                    client_frame(OpCode::Text, false, b"x"),
                    client_frame(OpCode::Text, true, b"y"),
                ]
                .concat(),
                |e| matches!(e, ProtocolError::ContinuationStarted),
            ),
            (client_frame(OpCode::Ping, false, b"x"), |e| {
                matches!(e, ProtocolError::ContinuationFragment(OpCode::Ping))
            }),
        ];
        for (bytes, expected) in cases {
            let (mut reader, _writer, mut client) = raw().await;
            client.write_all(&bytes).await.unwrap();
            let err = recv(&mut reader).await.unwrap_err();
            assert!(expected(&err), "{err:?}");
        }
    }

    #[tokio::test]
    async fn the_read_buffer_is_released_once_decoded() {
        let (mut reader, _writer, mut client) = raw().await;
        let mut bytes = client_frame(OpCode::Text, true, b"one");
        bytes.extend(client_frame(OpCode::Text, true, b"two"));
        client.write_all(&bytes).await.unwrap();
        assert_eq!(
            recv(&mut reader).await.unwrap(),
            Message::Text("one".into())
        );
        // The second frame arrived in the same read: still buffered.
        assert!(!reader.buf.is_empty());
        assert_eq!(
            recv(&mut reader).await.unwrap(),
            Message::Text("two".into())
        );
        assert_eq!(reader.buf.capacity(), 0);
        // A partial frame is kept; once completed, released again.
        let frame = client_frame(OpCode::Text, true, b"three");
        client.write_all(&frame[..4]).await.unwrap();
        let pending = tokio::time::timeout(Duration::from_millis(200), reader.recv()).await;
        assert!(pending.is_err(), "no message yet");
        assert_eq!(reader.buf.len(), 4, "the cancelled recv kept its bytes");
        client.write_all(&frame[4..]).await.unwrap();
        assert_eq!(
            recv(&mut reader).await.unwrap(),
            Message::Text("three".into())
        );
        assert_eq!(reader.buf.capacity(), 0);
        assert_eq!(reader.partial.capacity(), 0);
    }

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

    #[tokio::test]
    async fn linger_reads_until_the_client_closes() {
        let (reader, _writer, mut client) = raw().await;
        let mut stream = reader;
        client.write_all(&[0x81; 10_000]).await.unwrap();
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), stream.linger())
            .await
            .unwrap();
    }

    #[test]
    fn frame_lengths_from_headers() {
        assert_eq!(frame_len(&[0x81, 5]), Some(7));
        assert_eq!(frame_len(&[0x81, 0x85]), Some(11), "masked");
        assert_eq!(frame_len(&[0x82, 126, 1, 0]), Some(4 + 256));
        assert_eq!(frame_len(&[0x82, 126, 1]), None, "incomplete");
        let mut long = vec![0x82, 127];
        long.extend(70_000u64.to_be_bytes());
        assert_eq!(frame_len(&long), Some(10 + 70_000));
        assert_eq!(frame_len(&[0x82]), None);
    }

    #[test]
    fn raw_halves_stay_small() {
        // What every raw connection's session task carries for its socket.
        assert!(
            std::mem::size_of::<Session>() <= 64,
            "{}",
            std::mem::size_of::<Session>()
        );
        assert!(
            std::mem::size_of::<MessageStream>() <= 96,
            "{}",
            std::mem::size_of::<MessageStream>()
        );
    }
}
