//! The ways a request can arrive at the gateway, and clients for each, so one scenario can be run
//! on every arrival and must behave the same on all of them.
//!
//! - [`Arrival::First`]: the first request on a fresh plain TCP connection (HTTP/1.1); a first
//!   `GET /sse` is served on the raw socket (close-delimited).
//! - [`Arrival::KeepAlive`]: a later request on a keep-alive HTTP/1.1 connection (after one
//!   served `GET /healthz`), served by hyper.
//! - [`Arrival::Tls`]: the first request over TLS, HTTP/1.1 (ALPN `http/1.1`); a first
//!   `GET /sse` is served raw over TLS too.
//! - [`Arrival::TlsKeepAlive`]: a later request on a keep-alive TLS connection, served by hyper.
//! - [`Arrival::Tls2`]: HTTP/2 over TLS (ALPN `h2`).
//! - [`Arrival::H2c`]: cleartext HTTP/2 with prior knowledge.
//!
//! Every response read through [`Client`] is checked to have come the way the arrival says
//! (HTTP version, ALPN, and for SSE the framing of the raw path or hyper), so a scenario cannot
//! silently test another path than the one it names.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use http::{HeaderMap, Method, Request, Response, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use shared::sse::{SseDecoder, SseEvent};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite;

use super::{Gateway, WAIT, Ws, unique};

mod client;
mod control;
mod events;
mod raw;
mod tls;
mod ws;

pub use client::*;
pub use control::*;
pub use events::*;
pub use raw::*;
pub use tls::*;
pub use ws::*;

/// How a request reaches the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First request on a fresh plain TCP connection, HTTP/1.1.
    First,
    /// A later request on a keep-alive HTTP/1.1 connection.
    KeepAlive,
    /// First request on a fresh TLS connection, HTTP/1.1.
    Tls,
    /// A later request on a keep-alive HTTP/1.1 connection over TLS.
    TlsKeepAlive,
    /// HTTP/2 over TLS (ALPN `h2`).
    Tls2,
    /// Cleartext HTTP/2 with prior knowledge.
    H2c,
}

impl Arrival {
    /// Every arrival.
    pub const ALL: [Self; 6] = [
        Self::First,
        Self::KeepAlive,
        Self::Tls,
        Self::TlsKeepAlive,
        Self::Tls2,
        Self::H2c,
    ];
    /// The HTTP/1.1 arrivals (where a request head is written by hand, and where WebSockets
    /// arrive).
    pub const HTTP1: [Self; 4] = [Self::First, Self::KeepAlive, Self::Tls, Self::TlsKeepAlive];
    /// The arrivals a WebSocket can use (an upgrade needs HTTP/1.1).
    pub const WS: [Self; 4] = Self::HTTP1;
    /// The HTTP/2 arrivals.
    pub const HTTP2: [Self; 2] = [Self::Tls2, Self::H2c];

    /// Whether the gateway for this arrival terminates TLS.
    pub fn tls(self) -> bool {
        matches!(self, Self::Tls | Self::TlsKeepAlive | Self::Tls2)
    }

    /// Whether the request under test follows one already served on its connection.
    pub fn later(self) -> bool {
        matches!(self, Self::KeepAlive | Self::TlsKeepAlive)
    }

    /// Whether requests arrive as HTTP/2.
    pub fn http2(self) -> bool {
        matches!(self, Self::Tls2 | Self::H2c)
    }

    /// Whether a WebSocket can arrive this way.
    pub fn websocket(self) -> bool {
        !self.http2()
    }

    /// The HTTP version responses must come back in.
    pub fn version(self) -> Version {
        if self.http2() {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        }
    }

    /// Starts a gateway this arrival can reach (with TLS for the TLS arrivals), with `env` added.
    pub async fn gateway(self, env: &[(&str, &str)]) -> Gateway {
        spawn_gateway(self.tls(), env).await
    }
}

impl fmt::Display for Arrival {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Starts a gateway child process (off the async threads: it waits for its first line), with
/// the test certificate when `tls`.
pub async fn spawn_gateway(tls: bool, env: &[(&str, &str)]) -> Gateway {
    let mut vars: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if tls {
        let cert = test_cert();
        vars.push((
            "GATEWAY__SERVER__TLS_CERT".into(),
            cert.cert_path.display().to_string(),
        ));
        vars.push((
            "GATEWAY__SERVER__TLS_KEY".into(),
            cert.key_path.display().to_string(),
        ));
    }
    let gw = tokio::task::spawn_blocking(move || {
        let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (&**k, &**v)).collect();
        Gateway::spawn(&refs)
    })
    .await
    .expect("spawn gateway");
    assert_eq!(gw.is_tls(), tls, "the gateway's scheme is {}", gw.scheme);
    gw
}

/// How long one arrival's scenario may take in [`each`].
pub const SCENARIO_LIMIT: Duration = Duration::from_secs(18);

/// Runs `scenario` for every arrival in `arrivals` at once, each on its own task and bounded by
/// [`SCENARIO_LIMIT`]; then panics naming every arrival that failed, with its failure.
pub async fn each<F, Fut>(arrivals: &[Arrival], scenario: F)
where
    F: Fn(Arrival) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tasks: Vec<_> = arrivals
        .iter()
        .map(|&arrival| {
            let task = tokio::spawn(tokio::time::timeout(SCENARIO_LIMIT, scenario(arrival)));
            (arrival, task)
        })
        .collect();
    let mut failures = Vec::new();
    for (arrival, task) in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => failures.push(format!(
                "[{arrival}] did not finish within {SCENARIO_LIMIT:?}"
            )),
            Err(e) => failures.push(format!("[{arrival}] {}", panic_text(e))),
        }
    }
    assert!(
        failures.is_empty(),
        "failed on {} of {} arrivals:\n{}",
        failures.len(),
        arrivals.len(),
        failures.join("\n")
    );
}

fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into()),
        Err(e) => e.to_string(),
    }
}
