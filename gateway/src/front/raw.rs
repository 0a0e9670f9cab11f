//! A connection's first `GET /sse`, served on the raw socket (or TLS on it): the same stream hyper would serve
//! (`transport::sse::open`), with the response head written here and the body delimited by
//! closing the connection (an SSE stream has no natural end), so no chunked framing is written
//! around each event.

use std::future::Future;
use std::net::IpAddr;

use super::head::RequestHead;
use super::pump::{Pump, pump};
use super::raw_io::RawIo;
use super::{cors, refuse};
use crate::browser;
use crate::state::AppState;
use crate::transport::sse::{SseStream, open};
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::OptionFuture;

/// Serves the stream until the client leaves or the gateway ends it.
pub fn serve<S: RawIo>(
    state: AppState,
    head: RequestHead,
    stream: S,
    peer: IpAddr,
) -> impl Future<Output = ()> {
    // The setup is a large future, boxed and freed once done; after it, the connection's state
    // is the pump alone (an async fn would keep room for both side by side).
    Box::pin(start(state, head, stream, peer))
        .then(OptionFuture::from)
        .map(drop)
}

/// Everything before streaming: the response head and the body, or the error already written.
async fn start<S: RawIo>(
    state: AppState,
    head: RequestHead,
    mut stream: S,
    peer: IpAddr,
) -> Option<Pump<S::Streamed, SseStream>> {
    let cors = cors::lines(&state.settings.cors.allow_origins, &head.headers);
    let started = std::time::Instant::now();
    let host = browser::host_of(&head.headers, None);
    let checked = browser::check_host(&state.settings, "/sse", host);
    let opened = match checked {
        Ok(()) => open(&state, &head.query, &head.headers, peer).await,
        Err(e) => {
            state.metrics.rejected.with_label_values(&[e.code()]).inc();
            Err(e)
        }
    };
    if state.settings.log.access {
        let status = opened
            .as_ref()
            .map_or_else(|e| e.status(), |_| http::StatusCode::OK);
        let client = state.trusted.client(peer, &head.headers);
        crate::telemetry::access(&http::Method::GET, "/sse", status, started, client);
    }
    let body = match opened {
        Ok(body) => body,
        Err(e) => {
            refuse(&mut stream, &e, &cors).await;
            return None;
        }
    };
    let mut response = String::from("HTTP/1.1 200 OK\r\nconnection: close\r\n");
    for (name, value) in body.headers(state.settings.compression.sse) {
        response.push_str(name);
        response.push_str(": ");
        response.push_str(value);
        response.push_str("\r\n");
    }
    response.push_str(&cors);
    response.push_str("\r\n");
    let (stream, socket) = stream.into_streamed();
    if let Some(socket) = socket {
        body.write_through(socket);
    }
    Some(pump(stream, Bytes::from(response), body))
}
