//! One accepted connection, from its first byte to its end: TLS if configured, then the raw SSE
//! fast path or hyper (HTTP/1.1, HTTP/2), and after a WebSocket upgrade the session itself. The
//! connection's task lives as long as the connection, so graceful shutdown waits for it.

use std::future::Future;
use std::net::IpAddr;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{LocalBoxFuture, OptionFuture};
use http::StatusCode;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use shared::ErrorCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::handoff::{Detach, Handed, Handoff, Socket};
use super::head::{self, Sniffed};
use super::idle::Tracker;
use super::limits::{MAX_HEAD, MAX_HEADERS};
use super::parse_errors::JsonParseErrors;
use super::proxy_header;
use super::raw_io::RawIo;
use super::service::{Service, UpgradeSlot};
use super::tls_stream::TlsStream;
use super::{Front, Prefixed, raw, refuse};
use crate::error::ApiError;

/// Bytes an HTTP/2 stream may hold unsent (one burst of SSE frames).
const H2_SEND_BUFFER: usize = 64 * 1024;

/// Serves one accepted connection to its end.
pub async fn serve(front: Rc<Front>, stream: TcpStream) {
    // The connection's task lives as long as the connection and is sized for its largest state,
    // so everything before serving (the PROXY header, the TLS handshake, the first head) runs
    // in a box freed once done: from then on the task holds one pointer to what serves it.
    let serving = Box::pin(setup(front, stream)).await;
    serving.await;
}

/// Reads what comes before the first response (PROXY header, TLS handshake, first head) and
/// returns the future that serves the rest of the connection, boxed to its own size: an idle
/// SSE connection must not pay for the larger HTTP state, nor any connection for the steps it
/// has finished.
async fn setup(front: Rc<Front>, mut stream: TcpStream) -> LocalBoxFuture<'static, ()> {
    tune_socket(&stream, front.user_timeout);
    let deadline = Instant::now() + front.request_timeout;
    let Some(peer) = peer_of(&front, &mut stream, deadline).await else {
        return Box::pin(std::future::ready(()));
    };
    if front.tls.is_some() {
        return match open_tls(&front, stream).await {
            Some((stream, None)) => http(front.clone(), stream, Protocol::Http2, peer),
            Some((stream, Some(sniffed))) => route(&front, stream, sniffed, peer),
            None => Box::pin(std::future::ready(())),
        };
    }
    let sniffed = head::sniff(&stream, deadline).await;
    route(&front, stream, sniffed, peer)
}

/// The connection's peer: the socket's, or the client a trusted proxy names in its PROXY
/// header; `None` when that header is broken (the connection is dropped).
async fn peer_of(front: &Front, stream: &mut TcpStream, deadline: Instant) -> Option<IpAddr> {
    let socket = stream
        .peer_addr()
        .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |a| a.ip());
    let trusted = &front.state.trusted;
    if !front.proxy_protocol || !trusted.contains(socket) {
        return Some(socket);
    }
    match proxy_header::read(stream, deadline).await {
        // A header without an address: the proxy's own connection (a health check).
        Ok(client) => Some(client.unwrap_or(socket)),
        Err(e) => {
            crate::telemetry::malformed("proxy", &e);
            None
        }
    }
}

/// The rest of the connection's life, as the first head asks (plain or TLS).
fn route<S: RawIo + Send + Detach>(
    front: &Rc<Front>,
    mut stream: S,
    sniffed: Sniffed,
    peer: IpAddr,
) -> LocalBoxFuture<'static, ()> {
    match sniffed {
        Sniffed::Sse(head) => Box::pin(raw::serve(front.state.clone(), head, stream, peer)),
        Sniffed::Http2(prefix) if front.http2 => http(
            front.clone(),
            Prefixed::new(prefix, stream),
            Protocol::Http2,
            peer,
        ),
        Sniffed::Publish(prefix) => match &front.handoff {
            Some(handoff) if handoff.open() => hand_off(front, handoff, stream, prefix, peer),
            _ => http(
                front.clone(),
                Prefixed::new(prefix, stream),
                Protocol::Http1,
                peer,
            ),
        },
        Sniffed::Http2(prefix) | Sniffed::Other(prefix) => http(
            front.clone(),
            Prefixed::new(prefix, stream),
            Protocol::Http1,
            peer,
        ),
        Sniffed::TimedOut => Box::pin(async move {
            let e = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::RequestTimeout,
                "the request head did not arrive in time",
            );
            refuse(&mut stream, &e, "").await;
        }),
        Sniffed::Closed => Box::pin(std::future::ready(())),
    }
}

/// Moves a publisher's connection to the publish thread; served here if it cannot go.
fn hand_off<S: Detach>(
    front: &Rc<Front>,
    handoff: &Handoff,
    stream: S,
    prefix: Bytes,
    peer: IpAddr,
) -> LocalBoxFuture<'static, ()> {
    let socket = match stream.detach() {
        Ok(socket) => socket,
        Err(e) => {
            tracing::debug!(error = %e, "could not take a socket off this worker");
            return Box::pin(std::future::ready(()));
        }
    };
    match handoff.send(Handed {
        socket,
        prefix,
        peer,
    }) {
        Ok(()) => {
            front.state.metrics.publish_thread_connections.inc();
            Box::pin(std::future::ready(()))
        }
        Err(handed) => serve_handed(front.clone(), handed),
    }
}

/// Serves a connection handed over from another thread (or given back): HTTP/1.1 from the
/// bytes already read, on this thread's runtime.
pub(super) fn serve_handed(front: Rc<Front>, handed: Handed) -> LocalBoxFuture<'static, ()> {
    let Handed {
        socket,
        prefix,
        peer,
    } = handed;
    let attached = match socket {
        Socket::Plain(s) => TcpStream::from_std(s)
            .map(|s| http(front, Prefixed::new(prefix, s), Protocol::Http1, peer)),
        Socket::Tls(t) => t
            .attach()
            .map(|s| http(front, Prefixed::new(prefix, s), Protocol::Http1, peer)),
    };
    attached.unwrap_or_else(|e| {
        tracing::debug!(error = %e, "could not register a handed-over socket");
        Box::pin(std::future::ready(()))
    })
}

/// The handshake and, unless ALPN chose HTTP/2, the first request's head, both within the
/// request timeout (as the plain path's head deadline also covers a PROXY header).
async fn open_tls(front: &Front, stream: TcpStream) -> Option<(TlsStream, Option<Sniffed>)> {
    let deadline = Instant::now() + front.request_timeout;
    let tls = front.tls.as_ref()?;
    let accept = TlsStream::accept(stream, tls.config());
    let mut stream = match tokio::time::timeout_at(deadline, accept).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            crate::telemetry::malformed("tls", &e);
            return None;
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            return None;
        }
    };
    if front.http2 && stream.alpn_protocol() == Some(b"h2") {
        return Some((stream, None));
    }
    let sniffed = head::sniff_tls(&mut stream, deadline).await;
    Some((stream, Some(sniffed)))
}

/// Which HTTP version a connection speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// Serves HTTP on `io` until the connection ends; after a WebSocket upgrade, runs the session on
/// the socket hyper hands back. The hyper connection is boxed and freed before the session
/// starts, so an idle WebSocket holds only its session.
fn http<I>(front: Rc<Front>, io: I, protocol: Protocol, peer: IpAddr) -> LocalBoxFuture<'static, ()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let upgrade = UpgradeSlot::new();
    let shutdown = front.state.hub.shutdown_signal();
    let served: LocalBoxFuture<'static, ()> = match protocol {
        Protocol::Http1 => {
            let io = TokioIo::new(JsonParseErrors::new(io));
            let service = Service::new(front.state.clone(), upgrade.clone(), None, &front, peer);
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(front.request_timeout)
                .max_buf_size(MAX_HEAD)
                .max_headers(MAX_HEADERS)
                // A client that closes its side is gone; don't keep writing to it.
                .half_close(false)
                .serve_connection(io, service)
                .with_upgrades();
            Box::pin(graceful(conn, shutdown, None))
        }
        Protocol::Http2 => {
            let io = TokioIo::new(io);
            let tracker = Tracker::new();
            let service = Service::new(
                front.state.clone(),
                upgrade.clone(),
                Some(tracker.clone()),
                &front,
                peer,
            );
            let conn = http2::Builder::new(LocalExec)
                .timer(TokioTimer::new())
                .max_header_list_size(MAX_HEAD as u32)
                .max_concurrent_streams(front.state.settings.server.http2_max_streams)
                // What a stream may buffer beyond the client's flow-control window (hyper's
                // default is ~400 KiB): a reader that stops must stall our writes soon, so its
                // queue overflows and it is disconnected as a slow consumer, as on HTTP/1.1.
                .max_send_buf_size(H2_SEND_BUFFER)
                // Streams of idle SSE clients: pings find dead peers behind silent NATs.
                .keep_alive_interval(Some(Duration::from_secs(
                    front.state.settings.sse.heartbeat_seconds.max(1),
                )))
                .serve_connection(io, service);
            let idle = Some((tracker, front.request_timeout));
            Box::pin(graceful(conn, shutdown, idle))
        }
    };
    Box::pin(
        served
            .then(move |()| OptionFuture::from(upgrade.take()))
            .map(drop),
    )
}

/// hyper connections that can be asked to finish gracefully.
trait Graceful: Future {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S> Graceful for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, S, E> Graceful for http2::Connection<I, S, E>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self);
    }
}

/// Runs `conn`; once the instance shuts down, asks it to finish: an idle HTTP/1.1 connection
/// closes, HTTP/2 sends GOAWAY, and streams in flight end as the hub closes them. With `idle`,
/// the connection is also asked to finish once it has had no open stream for that long.
async fn graceful<C>(
    conn: C,
    mut shutdown: watch::Receiver<bool>,
    idle: Option<(Tracker, Duration)>,
) where
    C: Graceful<Output = Result<(), hyper::Error>>,
{
    let mut conn = pin!(conn);
    let idle_out = async {
        let Some((tracker, limit)) = idle else {
            return std::future::pending().await;
        };
        loop {
            let wait = match tracker.idle_for() {
                Some(idle) if idle >= limit => return,
                Some(idle) => limit - idle,
                None => limit,
            };
            tokio::time::sleep(wait).await;
        }
    };
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.wait_for(|down| *down) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = idle_out => {
            tracing::debug!("closing an HTTP/2 connection without open streams");
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_parse() || e.is_parse_too_large() {
            crate::telemetry::malformed("http", &e);
        } else {
            tracing::debug!(error = %e, "HTTP connection ended with an error");
        }
    }
}

/// Runs HTTP/2 stream tasks on the worker's own thread, like everything of its connections.
#[derive(Clone, Copy)]
struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
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
    use crate::front::head::RequestHead;
    use crate::state::AppState;

    /// A tripwire for per-connection memory: an idle stream's task is these futures (plus the
    /// heap state they point to). Raise the bounds only knowingly.
    #[test]
    fn connection_futures_stay_small() {
        fn size2<A, B, F>(_: fn(A, B) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        fn size4<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let front = size2::<Rc<Front>, TcpStream, _>(serve);
        assert!(front <= 96, "the front door's future is {front} bytes");
        let sse = size4::<AppState, RequestHead, TcpStream, IpAddr, _>(raw::serve);
        // 320, plus one pointer for the stream's presence entries.
        assert!(sse <= 328, "a raw SSE stream's future is {sse} bytes");
    }
}
