//! Requests that take over their connection (a WebSocket upgrade, `CONNECT`) after actix has
//! read them, e.g. a later request on a keep-alive connection. actix hands the socket back and it
//! is served exactly as a first request would be: the same raw WebSocket session (frame sizes
//! checked from the frame header before any payload is buffered), the same raw SSE stream, the
//! same JSON refusals. actix's own WebSocket support is never used.

use actix_codec::Framed;
use actix_http::{HttpMessage, Method, Request, h1};
use bytes::BytesMut;
use tokio::net::TcpStream;

use super::head::{RequestHead, Route};
use super::{Prefixed, refuse, write_all};
use crate::state::AppState;
use crate::transport;

/// Serves an upgrade request actix decoded, on the raw socket, to the connection's end.
pub async fn serve(state: AppState, req: Request, framed: Framed<Prefixed, h1::Codec>) {
    let parts = framed.into_parts();
    let (replay, stream) = parts.io.into_parts();
    // A response actix had not finished writing goes first.
    if !parts.write_buf.is_empty() && write_all(&stream, &parts.write_buf).await.is_err() {
        return;
    }
    // What actix read past the head (e.g. frames sent with the upgrade), then what it never read.
    let mut rest = parts.read_buf;
    rest.extend_from_slice(&replay);
    let route = match (req.method(), req.path()) {
        (&Method::GET, "/ws") => Route::Ws,
        (&Method::GET, "/sse") => Route::Sse,
        _ => return refuse_other(&stream, &req).await,
    };
    let head = RequestHead {
        route,
        query: req.uri().query().unwrap_or("").to_owned(),
        headers: req.headers().clone(),
        peer: req.peer_addr(),
        rest: BytesMut::freeze(rest),
    };
    match route {
        Route::Ws => transport::ws::serve_raw(state, head, stream).await,
        Route::Sse => transport::sse::serve_raw(state, head, stream).await,
    }
}

/// What the actix app answers to the same request on any other path or method.
async fn refuse_other(stream: &TcpStream, req: &Request) {
    let e = match req.path() {
        "/ws" | "/sse" | "/publish" => crate::server::method_not_allowed(),
        _ => crate::server::not_found_error(),
    };
    refuse(stream, &e, "").await;
}
