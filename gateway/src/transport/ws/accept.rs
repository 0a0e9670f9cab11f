//! Accepting a WebSocket: the origin, handshake, token and capacity checks on the upgrade
//! request, the 101 answer, and once hyper hands the socket back, the session (or the 4500
//! close of a request whose token was refused).

use std::net::IpAddr;
use std::sync::Arc;

use bytes::BytesMut;
use http::header::{
    CONNECTION, HeaderMap, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS,
    SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use shared::{Disconnect, ErrorCode};
use tokio::net::TcpStream;

use super::io::{MessageStream, ReadIo, Session, WriteIo};
use super::session::{Running, close_with};
use crate::compression::{Allow, Inflater, PerMessageDeflate};
use crate::error::ApiError;
use crate::response::{self, Body};
use crate::session::{self, Admitted, Refusal, Transport};
use crate::state::AppState;

/// An accepted upgrade: the 101 is on its way, the socket comes when hyper hands it over.
pub struct Upgrade {
    /// Resolves to the upgraded connection.
    pub on_upgrade: OnUpgrade,
    /// What to run on it.
    pub accepted: Accepted,
}

/// What runs on an upgraded socket.
pub struct Accepted {
    state: AppState,
    /// `permessage-deflate`, when negotiated.
    deflate: Option<PerMessageDeflate>,
    /// The admitted connection, or the reason of the 4500 close.
    admitted: Result<Admitted, String>,
}

impl Accepted {
    /// The session to run on the upgraded socket (`pending`: bytes the client sent after the
    /// upgrade request, decoded first), or the 4500 close when the token was refused; boxed
    /// to its own size. `socket`: the plain socket under both halves, for fan-out to write
    /// events to directly while the session is idle (`hub::direct`).
    pub fn run(
        self,
        read: ReadIo,
        write: WriteIo,
        pending: BytesMut,
        socket: Option<Arc<TcpStream>>,
    ) -> futures_util::future::LocalBoxFuture<'static, ()> {
        let limit = self.state.settings.ws.max_message_bytes;
        let mut stream = MessageStream::with_pending(read, limit, pending);
        let mut session = Session::new(write);
        if let Some(deflate) = self.deflate {
            let takeover = !deflate.client_no_context_takeover;
            stream.inflate_with(Inflater::new(takeover));
            session.deflate(
                deflate.server_window_bits(),
                deflate.server_context_takeover,
            );
        }
        match self.admitted {
            Ok(admitted) => {
                let running = Running::new(self.state, admitted);
                if let Some(socket) = socket {
                    running.write_through(socket, &session);
                }
                Box::pin(running.run(session, stream))
            }
            Err(reason) => Box::pin(async move {
                close_with(session, &mut stream, Disconnect::Unauthorized, Some(reason)).await
            }),
        }
    }
}

/// The `GET /ws` handler: origin, handshake, token and capacity, then 101 and the upgrade to
/// run; or the refusal, as an HTTP error.
pub async fn respond(
    state: &AppState,
    req: &mut Request<Incoming>,
    peer: IpAddr,
) -> (Response<Body>, Option<Upgrade>) {
    match admit(state, req, peer).await {
        Ok((accept, accepted)) => {
            let upgrade = Upgrade {
                on_upgrade: hyper::upgrade::on(req),
                accepted,
            };
            let mut res = Response::new(response::full(""));
            *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let headers = res.headers_mut();
            headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
            if let Some(deflate) = &upgrade.accepted.deflate {
                // Built from a fixed template and digits: always a valid header value.
                if let Ok(value) = HeaderValue::from_str(&deflate.response()) {
                    headers.insert(SEC_WEBSOCKET_EXTENSIONS, value);
                }
            }
            (res, Some(upgrade))
        }
        Err(e) => (e.into_response(), None),
    }
}

/// The handshake (400), then admission: the origin (403), the token (refused after the upgrade
/// with close code 4500: browsers cannot read the status of a refused upgrade, they only see 1006
/// and would retry forever), the connection limit (503).
async fn admit(
    state: &AppState,
    req: &Request<Incoming>,
    peer: IpAddr,
) -> Result<(HeaderValue, Accepted), ApiError> {
    let headers = req.headers();
    let accept = handshake(headers)?;
    let query = req.uri().query().unwrap_or("");
    let admitted = match session::admit(state, Transport::Ws, headers, query, &[], peer).await {
        Ok(admitted) => Ok(admitted),
        Err(Refusal::Unauthorized(e)) => Err(unauthorized_reason(&e)),
        Err(refusal) => return Err(refusal.into_error()),
    };
    let compression = &state.settings.compression;
    let deflate = compression
        .ws
        .then(|| {
            let offers = headers.get_all(SEC_WEBSOCKET_EXTENSIONS);
            let offers = offers.iter().filter_map(|v| v.to_str().ok());
            let allow = Allow {
                client_takeover: compression.ws_client_context_takeover,
                server_takeover: compression.ws_server_context_takeover,
            };
            PerMessageDeflate::negotiate(offers, allow)
        })
        .flatten();
    let accepted = Accepted {
        state: state.clone(),
        deflate,
        admitted,
    };
    Ok((accept, accepted))
}

/// Whether a header lists `token` among its comma-separated values (case-insensitively).
fn lists(headers: &HeaderMap, name: http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Validates an RFC 6455 opening handshake (§4.2.1) and computes `Sec-WebSocket-Accept`.
fn handshake(headers: &HeaderMap) -> Result<HeaderValue, ApiError> {
    let refuse = |what: &str| ApiError::bad_request(ErrorCode::NotWebsocket, what.to_owned());
    if !lists(headers, UPGRADE, "websocket") {
        return Err(refuse("a WebSocket upgrade needs Upgrade: websocket"));
    }
    if !lists(headers, CONNECTION, "upgrade") || lists(headers, CONNECTION, "close") {
        return Err(refuse("a WebSocket upgrade needs Connection: Upgrade"));
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(refuse("only WebSocket version 13 is supported"));
    }
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .ok_or_else(|| refuse("Sec-WebSocket-Key is missing"))?;
    let accept = actix_http::ws::hash_key(key.as_bytes());
    // Base64, so always a valid header value.
    HeaderValue::from_bytes(&accept).map_err(|_| refuse("Sec-WebSocket-Key is not valid"))
}

/// The reason of the 4500 close sent after upgrading a request with a bad token, short enough
/// for a close frame.
fn unauthorized_reason(e: &ApiError) -> String {
    format!("{}: {}", e.code().as_str(), e.detail())
        .chars()
        .take(120)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake_of(headers: &[(&str, &str)]) -> Result<String, ApiError> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        handshake(&map).map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn handshakes_are_checked_as_rfc_6455_says() {
        let valid = [
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            // The example of RFC 6455 §1.3.
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        assert_eq!(
            handshake_of(&valid).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        for broken in 0..valid.len() {
            let headers: Vec<_> = valid
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != broken)
                .map(|(_, h)| *h)
                .collect();
            assert_eq!(
                handshake_of(&headers).unwrap_err().code(),
                ErrorCode::NotWebsocket
            );
        }
        let mut old = valid;
        old[2].1 = "8";
        assert!(handshake_of(&old).is_err(), "only version 13");
        let mut closing = valid;
        closing[1].1 = "upgrade, close";
        assert!(handshake_of(&closing).is_err());
    }
}
