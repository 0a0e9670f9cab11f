//! The reading half of a WebSocket: waits for bytes without holding a buffer, reads through a
//! stack array, and hands what arrived to the decoder (`decode`).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use actix_http::ws::ProtocolError;
use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};

use super::decode::Decoder;
use super::{Message, ReadIo};

/// Bytes read per read call, through a stack array.
const READ_CHUNK: usize = 4096;

/// The reading half of a WebSocket: frames decoded and fragmented messages joined.
pub struct MessageStream {
    io: ReadIo,
    /// Everything read and not yet returned as a message.
    decoder: Decoder,
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
            decoder: Decoder::new(max, pending),
        }
    }

    /// Accepts messages compressed with `permessage-deflate` (negotiated at the upgrade).
    pub fn inflate_with(&mut self, inflater: crate::compression::Inflater) {
        self.decoder.inflate_with(inflater);
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
            match self.decoder.next_message() {
                Ok(Some(msg)) => return Poll::Ready(Some(Ok(msg))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
            match ready!(fill(&mut self.io, cx, &mut self.decoder)) {
                Ok(0) | Err(_) => return Poll::Ready(None),
                Ok(_) => {}
            }
        }
    }

    /// After our close frame: reads and drops whatever the client still sends until it closes,
    /// so closing the socket with unread input does not reset the connection (which can destroy
    /// the close frame before the client reads it). The caller bounds the wait.
    pub async fn linger(&mut self) {
        self.decoder.release();
        loop {
            match poll_fn(|cx| discard(&mut self.io, cx)).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

/// One read handed to the decoder, through a stack array so nothing is allocated unless bytes
/// arrived; `Ok(0)` at the end of the stream.
fn fill(io: &mut ReadIo, cx: &mut Context<'_>, decoder: &mut Decoder) -> Poll<io::Result<usize>> {
    let mut chunk = [0u8; READ_CHUNK];
    let mut read = ReadBuf::new(&mut chunk);
    ready!(Pin::new(io).poll_read(cx, &mut read))?;
    decoder.push(read.filled());
    Poll::Ready(Ok(read.filled().len()))
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

    use actix_http::ws::{CloseCode, OpCode, Parser};
    use bytes::Bytes;
    use tokio::io::AsyncWriteExt;

    use super::super::testing::{MAX, client_frame, raw};
    use super::*;

    async fn recv(reader: &mut MessageStream) -> Result<Message, ProtocolError> {
        tokio::time::timeout(Duration::from_secs(5), reader.recv())
            .await
            .expect("recv timed out")
            .expect("stream ended")
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
        let partial = &reader.decoder.partial;
        assert!(partial.is_empty() && partial.capacity() == 0);
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
        assert!(!reader.decoder.buf.is_empty());
        assert_eq!(
            recv(&mut reader).await.unwrap(),
            Message::Text("two".into())
        );
        assert_eq!(reader.decoder.buf.capacity(), 0);
        // A partial frame is kept; once completed, released again.
        let frame = client_frame(OpCode::Text, true, b"three");
        client.write_all(&frame[..4]).await.unwrap();
        let pending = tokio::time::timeout(Duration::from_millis(200), reader.recv()).await;
        assert!(pending.is_err(), "no message yet");
        assert_eq!(
            reader.decoder.buf.len(),
            4,
            "the cancelled recv kept its bytes"
        );
        client.write_all(&frame[4..]).await.unwrap();
        assert_eq!(
            recv(&mut reader).await.unwrap(),
            Message::Text("three".into())
        );
        assert_eq!(reader.decoder.buf.capacity(), 0);
        assert_eq!(reader.decoder.partial.capacity(), 0);
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
}
