//! The front door: every accepted connection starts here, and every request on it, however it
//! arrives, is answered by the same handlers.
//!
//! - A connection whose first request is a complete `GET /sse` head is served on the raw socket
//!   (`pump`): an idle stream then holds only its own state (a few hundred bytes), not an HTTP
//!   connection's buffers. It is the same stream the HTTP service would open (`transport::sse`),
//!   written close-delimited instead of chunked.
//! - Everything else is served by hyper (`service`): HTTP/1.1 with keep-alive, cleartext HTTP/2
//!   (h2c with prior knowledge, told by its preface), and both over TLS (`tls`, ALPN). hyper
//!   times out every request head, not only the first; WebSocket upgrades are handed back as the
//!   raw socket and run the same session as ever.
//!
//! - A connection whose first request is `POST /publish` (HTTP/1.1, plain or TLS) moves to the
//!   publish thread (`publish_thread`), so publishing stays quick while workers fan out.
//!
//! The rules a head must follow (`limits`) are checked once for both, so a request is refused
//! or served the same way whichever path reads it.

mod conn;
pub mod cors;
pub mod handoff;
pub mod head;
mod idle;
pub mod limits;
mod parse_errors;
mod prefixed;
mod proxy_header;
pub mod publish_thread;
pub mod pump;
mod raw;
mod raw_io;
pub mod service;
pub mod tls;
mod tls_stream;
mod upgraded;

use std::time::Duration;

use tokio::io::AsyncWrite;

use crate::error::ApiError;
use crate::state::AppState;
pub use conn::serve;
pub use prefixed::Prefixed;

/// Answers a raw request with `e` (plus `extra` header lines), then closes our side; on a plain
/// socket or TLS. A client that is already gone has nothing left to be told, so a failed write
/// is ignored.
pub async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, e: &ApiError, extra: &str) {
    use tokio::io::AsyncWriteExt;
    if stream.write_all(&e.to_http1(extra)).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}

/// What every connection on one worker needs.
#[derive(Clone)]
pub struct Front {
    /// Handlers' state.
    pub state: AppState,
    /// How long a client has to send each request head (and a request body).
    pub request_timeout: Duration,
    /// `TCP_USER_TIMEOUT` for accepted sockets.
    pub user_timeout: Option<Duration>,
    /// The TLS acceptor when `server.tls_cert` is set (reloadable).
    pub tls: Option<tls::Tls>,
    /// Whether HTTP/2 is offered (ALPN `h2`, h2c prior knowledge).
    pub http2: bool,
    /// Whether trusted peers start with a PROXY protocol header (`server.proxy_protocol`).
    pub proxy_protocol: bool,
    /// Where publishers' connections go (`publish_thread`); `None` serves them here.
    pub handoff: Option<handoff::Handoff>,
}
