//! A server TLS stream that holds no buffer while its connection is idle.
//!
//! tokio-rustls keeps rustls' buffered connection, whose 4 KiB receive buffer stays allocated
//! for the connection's whole life once a read has been tried, and a stream that waits for its
//! client's next bytes always has. Idle SSE and WebSocket connections are the product's normal
//! state, so that buffer was the largest part of what TLS cost per connection. This stream
//! drives rustls' unbuffered API instead and owns its three buffers (TLS bytes received, TLS
//! bytes to send, plaintext not yet read), each freed as soon as it is empty.
//!
//! Bounds: the socket is read only when no plaintext is waiting, and rustls consumes every
//! complete record at once, so what is held is at most one partial record plus one read; a
//! write is accepted only once earlier ciphertext has been sent.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 4096;

/// Ciphertext that answers to what was read may queue up to this before reading waits for it
/// to be sent.
const MAX_UNSENT_BY_READS: usize = 16 * 1024;

/// Plaintext encrypted per `poll_write` at most: four full records.
const MAX_WRITE: usize = 4 * 16 * 1024;

/// What processing the received bytes left to do.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// The handshake needs more bytes from the client.
    Handshake,
    /// The handshake is done; application data can be written, more can be read.
    Traffic,
    /// Both sides have closed.
    Closed,
}

/// A TLS connection on a TCP socket, server side.
pub struct TlsStream {
    tcp: TcpStream,
    s: Session,
}

/// Everything of a [`TlsStream`] but its socket (what moves with it to another thread).
struct Session {
    conn: UnbufferedServerConnection,
    /// Received TLS bytes not yet processed (a partial record at most, between reads).
    incoming: Vec<u8>,
    /// Encrypted bytes for the client; the first `sent` of them are written.
    outgoing: Vec<u8>,
    sent: usize,
    /// Decrypted bytes for the application; the first `taken` of them are read.
    plain: Vec<u8>,
    taken: usize,
    /// The client sent `close_notify`, or closed the socket.
    eof: bool,
    /// Our `close_notify` is queued.
    close_sent: bool,
}

impl TlsStream {
    /// Runs the handshake on `tcp`; the caller bounds it in time.
    pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<Self> {
        let conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
        let mut stream = Self {
            tcp,
            s: Session {
                conn,
                incoming: Vec::new(),
                outgoing: Vec::new(),
                sent: 0,
                plain: Vec::new(),
                taken: 0,
                eof: false,
                close_sent: false,
            },
        };
        std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }

    /// The protocol ALPN agreed on, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.s.conn.alpn_protocol()
    }

    /// The socket under the TLS layer (for readiness).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Takes the session off this thread's runtime, to be served on another thread's
    /// ([`DetachedTls::attach`]); everything received and not yet read goes with it.
    pub fn detach(self) -> io::Result<DetachedTls> {
        Ok(DetachedTls {
            tcp: self.tcp.into_std()?,
            session: Box::new(self.s),
        })
    }

    /// Whether decrypted bytes are waiting to be read.
    pub fn has_plaintext(&self) -> bool {
        self.s.taken < self.s.plain.len()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let next = self.process(None)?.0;
            // The client needs our flight before it sends its next one.
            ready!(self.poll_send(cx))?;
            match next {
                Next::Traffic => return Poll::Ready(Ok(())),
                Next::Closed => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Next::Handshake => {
                    if self.s.eof {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                    ready!(self.poll_receive(cx))?;
                }
            }
        }
    }

    /// Lets rustls consume every complete record received; with `write`, encrypts (a prefix
    /// of) it once the handshake allows. Returns the state reached and the bytes encrypted.
    fn process(&mut self, mut write: Option<&[u8]>) -> io::Result<(Next, usize)> {
        let mut written = 0;
        loop {
            let UnbufferedStatus { discard, state } =
                self.s.conn.process_tls_records(&mut self.s.incoming);
            let reached = match state.map_err(invalid)? {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(invalid)?;
                        self.s.plain.extend_from_slice(record.payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append(&mut self.s.outgoing, |buf| match encode.encode(buf) {
                        Ok(n) => Ok(n),
                        Err(EncodeError::InsufficientSize(e)) => Err(Fill::Need(e)),
                        Err(EncodeError::AlreadyEncoded) => Err(Fill::Nothing),
                    })?;
                    None
                }
                // The records are in `outgoing`, in order; they are sent before anything else.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::BlockedHandshake => Some(Next::Handshake),
                ConnectionState::WriteTraffic(mut traffic) => {
                    if let Some(data) = write.take() {
                        let data = &data[..data.len().min(MAX_WRITE)];
                        append(&mut self.s.outgoing, |buf| {
                            match traffic.encrypt(data, buf) {
                                Ok(n) => Ok(n),
                                Err(EncryptError::InsufficientSize(e)) => Err(Fill::Need(e)),
                                Err(EncryptError::EncryptExhausted) => Err(Fill::Fail),
                            }
                        })?;
                        written = data.len();
                    }
                    Some(Next::Traffic)
                }
                ConnectionState::PeerClosed => {
                    self.s.eof = true;
                    None
                }
                ConnectionState::Closed => Some(Next::Closed),
                // Early data is never enabled; anything new is a state this code does not know.
                _ => return Err(invalid("unexpected TLS state")),
            };
            self.s.incoming.drain(..discard);
            if let Some(next) = reached {
                if self.s.incoming.is_empty() {
                    self.s.incoming = Vec::new();
                }
                return Ok((next, written));
            }
        }
    }

    /// Queues our `close_notify` once the handshake is done.
    fn queue_close(&mut self) -> io::Result<()> {
        // Whatever rustls still has to say goes first; then nothing is pending.
        self.process(None)?;
        if let Ok(ConnectionState::WriteTraffic(mut traffic)) =
            self.s.conn.process_tls_records(&mut []).state
        {
            append(&mut self.s.outgoing, |buf| {
                match traffic.queue_close_notify(buf) {
                    Ok(n) => Ok(n),
                    Err(EncryptError::InsufficientSize(e)) => Err(Fill::Need(e)),
                    Err(EncryptError::EncryptExhausted) => Err(Fill::Nothing),
                }
            })?;
        }
        self.s.close_sent = true;
        Ok(())
    }

    /// Writes queued ciphertext until none is left.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.s.sent < self.s.outgoing.len() {
            let n =
                ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.s.outgoing[self.s.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.s.sent += n;
        }
        self.s.outgoing = Vec::new();
        self.s.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads one chunk from the socket into `incoming`; at end of stream, sets `eof`. While the
    /// socket has nothing, no receive buffer is held.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let held = self.s.incoming.len();
        self.s.incoming.resize(held + READ_CHUNK, 0);
        let mut buf = ReadBuf::new(&mut self.s.incoming[held..]);
        let polled = Pin::new(&mut self.tcp).poll_read(cx, &mut buf);
        let got = buf.filled().len();
        self.s.incoming.truncate(held + got);
        if self.s.incoming.is_empty() {
            self.s.incoming = Vec::new();
        }
        ready!(polled)?;
        if got == 0 {
            self.s.eof = true;
        }
        Poll::Ready(Ok(()))
    }
}

/// A TLS session off any runtime, on its way to another thread.
pub struct DetachedTls {
    tcp: std::net::TcpStream,
    session: Box<Session>,
}

impl DetachedTls {
    /// The session again, its socket registered with the calling thread's runtime.
    pub fn attach(self) -> io::Result<TlsStream> {
        Ok(TlsStream {
            tcp: TcpStream::from_std(self.tcp)?,
            s: *self.session,
        })
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.s.taken < this.s.plain.len() {
                let n = buf.remaining().min(this.s.plain.len() - this.s.taken);
                buf.put_slice(&this.s.plain[this.s.taken..this.s.taken + n]);
                this.s.taken += n;
                if this.s.taken == this.s.plain.len() {
                    this.s.plain = Vec::new();
                    this.s.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.s.eof {
                return Poll::Ready(Ok(()));
            }
            if this.process(None)?.0 == Next::Closed {
                return Poll::Ready(Ok(()));
            }
            // What reading made rustls queue (a key update's answer, an alert) goes out with
            // the next write or flush: the read side does not wait on the socket's write side,
            // where it would take the writer's wake-up if the halves are polled apart. Unless a
            // client makes it pile up without ever reading: then reading stops until it does.
            if this.s.outgoing.len() - this.s.sent > MAX_UNSENT_BY_READS {
                ready!(this.poll_send(cx))?;
            }
            if this.s.taken < this.s.plain.len() || this.s.eof {
                continue;
            }
            ready!(this.poll_receive(cx))?;
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Earlier ciphertext first: this is the stream's backpressure.
        ready!(this.poll_send(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let (next, written) = this.process(Some(data))?;
        if next != Next::Traffic || written == 0 {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // Start sending now; what the socket does not take yet is sent by the next call.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(written))
    }

    /// Gathers the slices into one run of records: an SSE burst is many small chunks, and each
    /// would otherwise be its own record and its own `write`.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        match bufs.iter().find(|b| !b.is_empty()) {
            None => return Poll::Ready(Ok(0)),
            Some(only) if only.len() == total => return self.poll_write(cx, only),
            Some(_) => {}
        }
        let mut gathered = Vec::with_capacity(total.min(MAX_WRITE));
        for b in bufs {
            let room = MAX_WRITE - gathered.len();
            gathered.extend_from_slice(&b[..b.len().min(room)]);
            if gathered.len() == MAX_WRITE {
                break;
            }
        }
        self.poll_write(cx, &gathered)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.s.close_sent {
            ready!(this.poll_send(cx))?;
            this.queue_close()?;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// Why rustls wrote nothing into the room it was given.
enum Fill {
    /// It needs this much room.
    Need(InsufficientSizeError),
    /// There was nothing to write.
    Nothing,
    /// It cannot write any more on this connection (its keys are used up).
    Fail,
}

/// Appends what `fill` writes to `out`, growing the room it is given until it fits.
fn append(
    out: &mut Vec<u8>,
    mut fill: impl FnMut(&mut [u8]) -> Result<usize, Fill>,
) -> io::Result<()> {
    let start = out.len();
    let mut room = 1024;
    loop {
        out.resize(start + room, 0);
        let filled = fill(&mut out[start..]);
        out.truncate(start + *filled.as_ref().unwrap_or(&0));
        match filled {
            Ok(_) | Err(Fill::Nothing) => return Ok(()),
            Err(Fill::Need(InsufficientSizeError { required_size })) if required_size > room => {
                room = required_size;
            }
            Err(Fill::Need(_)) => return Err(invalid("a TLS record does not fit its room")),
            Err(Fill::Fail) => return Err(invalid("the TLS connection cannot encrypt more")),
        }
    }
}

fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A server configuration and a client that trusts it, over TLS 1.2 or 1.3.
    fn pair(
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (Arc<ServerConfig>, tokio_rustls::TlsConnector) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let der = CertificateDer::from(certified.cert.der().to_vec());
        let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (
            Arc::new(server),
            tokio_rustls::TlsConnector::from(Arc::new(client)),
        )
    }

    fn held(s: &TlsStream) -> usize {
        s.s.incoming.capacity() + s.s.outgoing.capacity() + s.s.plain.capacity()
    }

    async fn echo_and_idle(version: &'static rustls::SupportedProtocolVersion) {
        let (server_config, connector) = pair(version);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            // 1 MiB in odd-sized writes, echoed back whole.
            let sent: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
            let (mut rd, mut wr) = tokio::io::split(tls);
            let writer = {
                let sent = sent.clone();
                tokio::spawn(async move {
                    for piece in sent.chunks(7_777) {
                        wr.write_all(piece).await.unwrap();
                    }
                    wr.flush().await.unwrap();
                    wr
                })
            };
            let mut back = vec![0u8; sent.len()];
            rd.read_exact(&mut back).await.unwrap();
            assert!(back == sent, "the echo differs");
            let wr = writer.await.unwrap();
            tls = rd.unsplit(wr);
            // Then many small chunks in one vectored write, read back whole.
            let mut rest = Vec::new();
            tls.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, b"event 0\nevent 1\nevent 2\n".repeat(100));
        });

        let (tcp, _) = listener.accept().await.unwrap();
        let mut server = TlsStream::accept(tcp, server_config).await.unwrap();
        let mut buf = vec![0u8; 10_000];
        let mut echoed = 0;
        while echoed < 1 << 20 {
            let n = server.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {echoed} bytes");
            server.write_all(&buf[..n]).await.unwrap();
            echoed += n;
        }
        server.flush().await.unwrap();
        // Idle: nothing received, nothing to send, nothing unread. No buffer is held.
        assert_eq!(held(&server), 0, "buffers held while idle");
        let events: Vec<Vec<u8>> = (0..300)
            .map(|i| format!("event {}\n", i % 3).into_bytes())
            .collect();
        let mut slices: Vec<IoSlice<'_>> = events.iter().map(|e| IoSlice::new(e)).collect();
        let mut slices = &mut slices[..];
        while !slices.is_empty() {
            let n = server.write_vectored(slices).await.unwrap();
            IoSlice::advance_slices(&mut slices, n);
        }
        server.shutdown().await.unwrap();
        assert_eq!(held(&server), 0, "buffers held after the last write");
        client.await.unwrap();
    }

    #[tokio::test]
    async fn echoes_over_tls13_and_holds_nothing_while_idle() {
        echo_and_idle(&rustls::version::TLS13).await;
    }

    #[tokio::test]
    async fn echoes_over_tls12_and_holds_nothing_while_idle() {
        echo_and_idle(&rustls::version::TLS12).await;
    }
}
