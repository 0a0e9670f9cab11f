//! Accepting a WebSocket: the origin, token and capacity checks and the RFC 6455 upgrade, on
//! actix (a keep-alive connection's later request) or on the raw socket the front door hands
//! over; both then run the same session.

use actix_web::http::header::{HOST, HeaderMap, ORIGIN, SEC_WEBSOCKET_KEY};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{CloseCode, CloseReason as WsClose};
use futures_util::FutureExt;
use futures_util::future::OptionFuture;
use shared::ws::close;
use tokio::net::TcpStream;

use super::io::{MessageStream, RawReader, RawWriter, Session};
use super::{Running, close_with};
use crate::error::ApiError;
use crate::front::head::RequestHead;
use crate::state::AppState;

/// The `GET /ws` handler: checks origin, token and capacity before upgrading.
pub async fn handler(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let metrics = &state.metrics;
    check_origin(req.headers(), &state)?;
    let grant = match state.auth.authenticate(req.headers(), req.query_string()) {
        Ok(grant) => grant,
        // Browsers cannot read the status of a refused upgrade (they only see 1006 and would
        // retry forever), so an auth failure is told with close code 4500 after the upgrade.
        Err(e) => {
            metrics.rejected.with_label_values(&["unauthorized"]).inc();
            let (response, session, _stream) = actix_ws::handle(&req, body)
                .map_err(|e| ApiError::bad_request("not_websocket", e.to_string()))?;
            let reason = unauthorized_reason(&e);
            actix_web::rt::spawn(async move {
                let close = WsClose {
                    code: CloseCode::from(close::UNAUTHORIZED),
                    description: Some(reason),
                };
                let _ = session.close(Some(close)).await;
            });
            return Ok(response);
        }
    };
    let guard = state.limiter.admit(metrics, "ws")?;
    let (response, session, stream) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::bad_request("not_websocket", e.to_string()))?;
    let limit = state.settings.ws.max_message_bytes;
    let stream = stream
        .max_frame_size(limit)
        .aggregate_continuations()
        .max_continuation_size(limit);
    let connection = Running::new(state.get_ref().clone(), grant, guard);
    actix_web::rt::spawn(connection.run(
        Session::Actix(session),
        MessageStream::Actix(Box::new(stream)),
    ));
    Ok(response)
}

/// Serves a WebSocket whose upgrade request the front door read from the raw socket: the same
/// checks and outcomes as [`handler`], then the session on the socket itself, so an idle
/// connection holds no HTTP dispatcher or buffers. Completes when the connection ends.
pub fn serve_raw(
    state: AppState,
    head: RequestHead,
    stream: TcpStream,
) -> impl Future<Output = ()> {
    // The handshake runs boxed and is freed when done, and the session future then takes its
    // place: written as an `async` block, the head, the socket and the admitted parts would
    // each keep a slot in the task for the connection's whole life.
    // The session is awaited, not spawned: the front door's task lives as long as the
    // connection, so graceful shutdown waits for it.
    Box::pin(admit(state, head, stream))
        .then(|admitted| OptionFuture::from(admitted.map(|(c, s, m)| c.run(s, m))))
        .map(|_: Option<()>| ())
}

/// The checks of [`handler`] and the upgrade, on a raw socket; `None` when the connection was
/// refused (and answered).
async fn admit(
    state: AppState,
    head: RequestHead,
    stream: TcpStream,
) -> Option<(Running, Session, MessageStream)> {
    let metrics = &state.metrics;
    let RequestHead {
        query,
        headers,
        rest,
        ..
    } = head;
    let pending = bytes::BytesMut::from(rest);
    if let Err(e) = check_origin(&headers, &state) {
        crate::front::refuse(&stream, &e, "").await;
        return None;
    }
    let limit = state.settings.ws.max_message_bytes;
    let grant = match state.auth.authenticate(&headers, &query) {
        Ok(grant) => grant,
        // As in `handler`: upgrade, then tell with close code 4500.
        Err(e) => {
            metrics.rejected.with_label_values(&["unauthorized"]).inc();
            if !upgrade(&stream, headers).await {
                return None;
            }
            let (read, write) = stream.into_split();
            let mut reader = MessageStream::Raw(RawReader::with_pending(read, limit, pending));
            let session = Session::Raw(RawWriter::new(write));
            close_with(
                session,
                &mut reader,
                close::UNAUTHORIZED,
                unauthorized_reason(&e),
            )
            .await;
            return None;
        }
    };
    let guard = match state.limiter.admit(metrics, "ws") {
        Ok(guard) => guard,
        Err(e) => {
            crate::front::refuse(&stream, &e, "").await;
            return None;
        }
    };
    if !upgrade(&stream, headers).await {
        return None;
    }
    let (read, write) = stream.into_split();
    Some((
        Running::new(state, grant, guard),
        Session::Raw(RawWriter::new(write)),
        MessageStream::Raw(RawReader::with_pending(read, limit, pending)),
    ))
}

/// Validates an RFC 6455 upgrade as `actix_ws::handle` does and answers 101, or 400
/// `not_websocket`; `false` when the connection is done.
async fn upgrade(stream: &TcpStream, headers: HeaderMap) -> bool {
    let mut req = actix_http::RequestHead::default();
    req.method = Method::GET;
    req.headers = headers;
    let accept = actix_http::ws::verify_handshake(&req).and_then(|()| {
        req.headers
            .get(SEC_WEBSOCKET_KEY)
            .map(|key| actix_http::ws::hash_key(key.as_bytes()))
            .ok_or(actix_http::ws::HandshakeError::BadWebsocketKey)
    });
    drop(req);
    let response = match &accept {
        Ok(accept) => {
            // Base64, so always ASCII.
            let accept = std::str::from_utf8(accept).unwrap_or_default();
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
            )
            .into_bytes()
        }
        Err(e) => ApiError::bad_request("not_websocket", e.to_string()).to_http1(""),
    };
    crate::front::write_all(stream, &response).await.is_ok() && accept.is_ok()
}

/// The reason of the 4500 close both paths send after upgrading a request with a bad token,
/// short enough for a close frame.
fn unauthorized_reason(e: &ApiError) -> String {
    format!("unauthorized: {}", e.detail())
        .chars()
        .take(120)
        .collect()
}

/// The origin check both paths make first, counted when it refuses.
fn check_origin(headers: &HeaderMap, state: &AppState) -> Result<(), ApiError> {
    let origin = headers.get(ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(HOST).and_then(|v| v.to_str().ok());
    if origin_allowed(origin, host, &state.settings.cors.allow_origins) {
        return Ok(());
    }
    state.metrics.rejected.with_label_values(&["origin"]).inc();
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        format!(
            "origin {} may not open WebSockets here",
            origin.unwrap_or("")
        ),
    ))
}

/// Cross-site WebSocket hijacking defence: a browser always sends `Origin`; it must be listed,
/// or be the gateway's own origin. Non-browser clients send none.
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else { return true };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let authority = origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'));
    matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let allowed = vec!["https://app.example".to_owned()];
        assert!(
            origin_allowed(None, Some("gw:8080"), &allowed),
            "non-browser clients"
        );
        assert!(origin_allowed(
            Some("https://app.example"),
            Some("gw:8080"),
            &allowed
        ));
        assert!(
            origin_allowed(Some("http://gw:8080"), Some("gw:8080"), &allowed),
            "same origin"
        );
        assert!(!origin_allowed(
            Some("https://evil.example"),
            Some("gw:8080"),
            &allowed
        ));
        assert!(!origin_allowed(Some("null"), Some("gw:8080"), &allowed));
        assert!(origin_allowed(
            Some("https://evil.example"),
            None,
            &["*".to_owned()]
        ));
    }

    /// What `upgrade` answers to these request headers.
    async fn upgrade_reply(headers: &[(&str, &str)]) -> (bool, String) {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(name.parse().unwrap(), value.parse().unwrap());
        }
        let upgraded = upgrade(&server, map).await;
        drop(server);
        let mut reply = String::new();
        client.read_to_string(&mut reply).await.unwrap();
        (upgraded, reply)
    }

    /// A tripwire for per-connection memory: the whole state of a raw WebSocket connection's
    /// task, bar heap allocations, is this future (it was 1.8 KiB before the handshake moved out
    /// of it). Raise the bound only knowingly.
    #[test]
    fn the_raw_session_future_stays_small() {
        fn size_of_output<A, B, C, F>(_: fn(A, B, C) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let size = size_of_output::<AppState, RequestHead, TcpStream, _>(serve_raw);
        assert!(size <= 1280, "serve_raw's future is {size} bytes");
    }

    #[tokio::test]
    async fn raw_upgrades_are_checked_like_actix_ws() {
        let valid = [
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            // The example of RFC 6455 §1.3.
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        let (upgraded, reply) = upgrade_reply(&valid).await;
        assert!(upgraded);
        assert!(
            reply.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{reply}"
        );
        assert!(reply.contains("\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(reply.ends_with("\r\n\r\n"));

        for broken in 0..valid.len() {
            let headers: Vec<_> = valid
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != broken)
                .map(|(_, h)| *h)
                .collect();
            let (upgraded, reply) = upgrade_reply(&headers).await;
            assert!(!upgraded);
            assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
            assert!(reply.contains(r#""error":"not_websocket""#), "{reply}");
        }
        let mut old = valid;
        old[2].1 = "8";
        assert!(!upgrade_reply(&old).await.0, "only version 13");
        let mut closing = valid;
        closing[1].1 = "upgrade, close";
        assert!(!upgrade_reply(&closing).await.0);
    }
}
