//! Moving a connection from the worker that accepted it to the publish thread
//! (`front::publish_thread`): the socket leaves this thread's runtime (and, over TLS, the session
//! goes with it) and is registered with the other's.
//!
//! Only HTTP/1.1 connections whose first request is `POST /publish` move: publishers keep one
//! connection for many publishes, and an HTTP/2 connection may carry streams as well.

use std::io;
use std::net::IpAddr;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::tls_stream::{DetachedTls, TlsStream};

/// Connections waiting to be taken up by the publish thread; past this, a worker serves the
/// connection itself (never an unbounded queue, never a refusal).
pub const QUEUE: usize = 1024;

/// A socket off any runtime.
pub enum Socket {
    /// A plain TCP socket.
    Plain(std::net::TcpStream),
    /// A TLS session and its socket.
    Tls(DetachedTls),
}

/// A connection on its way: its socket, the bytes already read from it and its client.
pub struct Handed {
    /// The socket (and TLS session).
    pub socket: Socket,
    /// What the sniffer read: the start of the first request, replayed to hyper.
    pub prefix: Bytes,
    /// The client's address (from a PROXY header when one was read).
    pub peer: IpAddr,
}

/// A stream that can leave its runtime.
pub trait Detach: Sized {
    /// The socket off this thread's runtime (it is closed if that fails).
    fn detach(self) -> io::Result<Socket>;
}

impl Detach for TcpStream {
    fn detach(self) -> io::Result<Socket> {
        self.into_std().map(Socket::Plain)
    }
}

impl Detach for TlsStream {
    fn detach(self) -> io::Result<Socket> {
        TlsStream::detach(self).map(Socket::Tls)
    }
}

/// The workers' end of the queue to the publish thread.
#[derive(Clone)]
pub struct Handoff(mpsc::Sender<Handed>);

impl Handoff {
    /// A queue of [`QUEUE`] connections; the receiver belongs to the publish thread.
    pub fn channel() -> (Self, mpsc::Receiver<Handed>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self(tx), rx)
    }

    /// Whether the publish thread takes connections now (it stops when the instance drains).
    pub fn open(&self) -> bool {
        !self.0.is_closed() && self.0.capacity() > 0
    }

    /// Queues `handed` for the publish thread, or gives it back when the queue is full or
    /// closed, to be served where it is.
    pub fn send(&self, handed: Handed) -> Result<(), Handed> {
        self.0.try_send(handed).map_err(|e| match e {
            mpsc::error::TrySendError::Full(h) | mpsc::error::TrySendError::Closed(h) => h,
        })
    }
}
