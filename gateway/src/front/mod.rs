//! The front door: every accepted connection starts here.
//!
//! A connection whose first request is `GET /sse` or a `GET /ws` upgrade is served natively on
//! the raw socket, so an idle stream holds only its own state (a few hundred bytes) instead of
//! actix's HTTP/1 dispatcher with its two 8 KiB buffers. Everything else, including any later
//! request on a keep-alive connection, goes to the actix-web app with the bytes already read
//! replayed in front of the socket, so those routes behave exactly as before.

pub mod head;
mod prefixed;
pub mod pump;
pub mod upgrade;

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use actix_web::http::header::{HeaderMap, ORIGIN};
use futures_util::future::LocalBoxFuture;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::state::AppState;
use crate::transport;
use head::{Route, Sniffed};
pub use prefixed::Prefixed;

/// Writes all of `bytes` to a raw socket (responses that are not part of a stream's hot path).
pub async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Answers a raw request with `e` (plus `extra` header lines) before the connection closes. A
/// client that is already gone has nothing left to be told, so a failed write is ignored.
pub async fn refuse(stream: &TcpStream, e: &ApiError, extra: &str) {
    let _ = write_all(stream, &e.to_http1(extra)).await;
}

/// The CORS header lines (each ending in CRLF) for a natively served response, matching what
/// the actix-cors middleware adds to the same response on the actix path.
pub fn cors_headers(headers: &HeaderMap, allowed: &[String]) -> String {
    if allowed.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let origin = headers.get(ORIGIN).and_then(|v| v.to_str().ok());
    if let Some(origin) = origin {
        if allowed.iter().any(|a| a == "*") {
            out.push_str("access-control-allow-origin: *\r\n");
        } else if let Some(listed) = allowed.iter().find(|a| *a == origin) {
            out.push_str("access-control-allow-origin: ");
            out.push_str(listed);
            out.push_str("\r\n");
        }
    }
    out.push_str("vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers\r\n");
    out
}

/// Type-erased actix HTTP service for one worker: serves a whole connection.
pub type Legacy = Rc<dyn Fn(Prefixed, Option<SocketAddr>) -> LocalBoxFuture<'static, ()>>;

/// What every connection on one worker needs.
pub struct Front {
    /// Handlers' state.
    pub state: AppState,
    /// The actix app, for every connection not served natively.
    pub legacy: Legacy,
    /// How long a client has to send its request head.
    pub request_timeout: Duration,
    /// `TCP_USER_TIMEOUT` for accepted sockets.
    pub user_timeout: Option<Duration>,
}

/// Serves one accepted connection to its end.
pub async fn serve(front: Rc<Front>, stream: TcpStream) {
    tune_socket(&stream, front.user_timeout);
    let peer = stream.peer_addr().ok();
    let deadline = Instant::now() + front.request_timeout;
    // Boxed, like every step after it: the connection's future is sized for its largest state
    // and lives as long as the connection, so a large step that finishes early (reading the
    // head, attaching channels) must not be stored inline.
    let sniffed = Box::pin(head::sniff(&stream, peer, deadline)).await;
    route(&front, stream, peer, sniffed).await;
}

/// The rest of a connection's life, boxed to its own size: an idle SSE connection must not pay
/// for the larger WebSocket state, nor any connection for the steps it has finished.
fn route(
    front: &Front,
    stream: TcpStream,
    peer: Option<SocketAddr>,
    sniffed: Sniffed,
) -> LocalBoxFuture<'static, ()> {
    match sniffed {
        Sniffed::Other(prefix) => (front.legacy)(Prefixed::new(prefix, stream), peer),
        Sniffed::Streaming(head) => match head.route {
            Route::Sse => Box::pin(transport::sse::serve_raw(front.state.clone(), head, stream)),
            Route::Ws => Box::pin(transport::ws::serve_raw(front.state.clone(), head, stream)),
        },
        Sniffed::TimedOut => Box::pin(async move {
            let _ = write_all(
                &stream,
                b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
            .await;
        }),
        Sniffed::Closed => Box::pin(std::future::ready(())),
    }
}

/// Events are small frames that must leave at once (no Nagle), and the kernel drops peers that
/// stop acknowledging our writes: a stalled client would otherwise hold its socket forever.
fn tune_socket(stream: &TcpStream, user_timeout: Option<Duration>) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
    let sock = socket2::SockRef::from(stream);
    if let Err(e) = sock.set_tcp_user_timeout(user_timeout) {
        tracing::debug!(error = %e, "could not set TCP_USER_TIMEOUT");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tripwire for per-connection memory: an idle stream's task is these futures (plus the
    /// heap state they point to). Raise the bounds only knowingly.
    #[test]
    fn connection_futures_stay_small() {
        fn size2<A, B, F>(_: fn(A, B) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        fn size3<A, B, C, F>(_: fn(A, B, C) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let front = size2::<Rc<Front>, TcpStream, _>(serve);
        assert!(front <= 192, "the front door's future is {front} bytes");
        let sse = size3::<AppState, head::RequestHead, TcpStream, _>(transport::sse::serve_raw);
        assert!(sse <= 320, "a raw SSE stream's future is {sse} bytes");
    }
}
