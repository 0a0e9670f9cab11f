//! After a WebSocket upgrade: takes the socket back from hyper and runs the session on it. On a
//! plain connection the session gets the TCP socket itself (no HTTP layer left in between, so an
//! idle WebSocket holds only its session); on TLS, the TLS stream (ours, whose buffers are
//! freed while idle).

use std::sync::Arc;

use bytes::BytesMut;
use futures_util::future::LocalBoxFuture;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::Prefixed;
use super::parse_errors::JsonParseErrors;
use super::raw_io::{RawIo, SharedTcp};
use super::tls_stream::TlsStream;
use crate::transport::ws::Upgrade;
use crate::transport::ws::io::{ReadIo, WriteIo};

/// The session of an accepted upgrade, once hyper has handed the socket over.
pub fn run(upgrade: Upgrade) -> LocalBoxFuture<'static, ()> {
    Box::pin(async move {
        // Waiting for the socket (with the admitted connection beside it) is boxed and freed
        // once done, and the session is boxed to its own size: what an idle WebSocket holds
        // for its life is the session, not room for this first step too.
        if let Some(session) = Box::pin(take_socket(upgrade)).await {
            session.await;
        }
    })
}

/// Waits for hyper to hand the socket over; the session to run on it.
async fn take_socket(upgrade: Upgrade) -> Option<LocalBoxFuture<'static, ()>> {
    let Upgrade {
        on_upgrade,
        accepted,
    } = upgrade;
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::debug!(error = %e, "the WebSocket upgrade did not complete");
            return None;
        }
    };
    let (read, write, pending, socket) = split(upgraded);
    Some(accepted.run(read, write, pending, socket))
}

/// The socket's halves, the bytes already read past the upgrade request, and the plain socket
/// fan-out may write to directly (`hub::direct`).
fn split(upgraded: Upgraded) -> (ReadIo, WriteIo, BytesMut, Option<Arc<TcpStream>>) {
    match upgraded.downcast::<TokioIo<JsonParseErrors<Prefixed>>>() {
        Ok(parts) => {
            let (replay, stream) = parts.io.into_inner().into_inner().into_parts();
            // What hyper had read past the head, then what it never read.
            let mut pending = BytesMut::from(parts.read_buf);
            pending.extend_from_slice(&replay);
            let (read, socket) = stream.into_streamed();
            let write = SharedTcp::clone(&read);
            (Box::new(read), Box::new(write), pending, socket)
        }
        Err(upgraded) => match upgraded.downcast::<TokioIo<JsonParseErrors<Prefixed<TlsStream>>>>()
        {
            Ok(parts) => {
                let (replay, stream) = parts.io.into_inner().into_inner().into_parts();
                let mut pending = BytesMut::from(parts.read_buf);
                pending.extend_from_slice(&replay);
                let (read, write) = tokio::io::split(stream);
                (Box::new(read), Box::new(write), pending, None)
            }
            Err(upgraded) => {
                let (read, write) = tokio::io::split(TokioIo::new(upgraded));
                (Box::new(read), Box::new(write), BytesMut::new(), None)
            }
        },
    }
}
