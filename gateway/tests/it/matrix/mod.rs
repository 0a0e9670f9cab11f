//! The arrival matrix: every behaviour a client can observe, checked on every way a request can
//! reach the gateway (`common::arrival`: a first plain request served raw, a later keep-alive
//! request served by hyper, HTTP/1.1 and HTTP/2 over TLS, cleartext h2c), so none differs by
//! path. Each test runs its arrivals at once, each against a gateway of its own, and names every
//! arrival that failed.
//!
//! - `delivery`: resume, gaps, slow consumers, the SIGTERM drain.
//! - `admission`: tokens, origins and CORS, the connection limit, WebSockets over HTTP/2.
//! - `hostile`: oversized heads and frames, head rules, trickled heads and bodies.
//! - `token_expiry`: streams at a token's `exp`, WebSocket refresh and first-message auth.
//! - `publishing`: API keys, cross-site publishes, the Host allowlist.
//! - `publish_thread`: publishers' connections moved off the workers, and their drain.
//! - `reads`: `GET /history` and the long poll `GET /poll`.
//! - `presence`: `GET /presence`, `/presence/stats` and the WebSocket `presence` command.
//! - `compression`, `compression_ws`: gzip and deflate SSE streams, WebSocket permessage-deflate
//!   (issue 15).
//! - `curl`: a real HTTP/2 client (Debian's curl) over TLS and h2c.

mod admission;
mod compression;
mod compression_ws;
mod curl;
mod delivery;
mod hostile;
mod presence;
mod publish_thread;
mod publishing;
mod reads;
mod token_expiry;

/// The WebSocket close code of an upgrade whose token was refused.
pub const CLOSE_UNAUTHORIZED: u16 = 4500;
/// The WebSocket close code of a frame or message that is too big.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// The HS256 secret of gateways with authentication on.
pub const SECRET: &str = "a-matrix-secret-of-enough-length";
/// The RFC 6455 example key.
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// `(id, data)` of SSE events, for compact assertions.
pub fn pairs(events: &[shared::sse::SseEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| (e.id.clone(), e.data.clone()))
        .collect()
}

/// One expected `(id, data)`.
pub fn ev(id: &str, data: &str) -> (String, String) {
    (id.to_owned(), data.to_owned())
}

/// A token for `channels`, signed with [`SECRET`].
pub fn token(channels: &[&str]) -> String {
    token_until(channels, 4_000_000_000)
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A token for `channels` that expires at `exp` (Unix seconds), signed with [`SECRET`].
pub fn token_until(channels: &[&str], exp: u64) -> String {
    let claims = gateway::auth::Claims {
        sub: Some("matrix".into()),
        exp,
        channels: channels.iter().map(|c| c.to_string()).collect(),
        publish: Vec::new(),
        info: None,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

/// Asserts a JSON error body `{"error": code, "detail": <text>}`.
pub fn assert_error(body: &serde_json::Value, code: &str) {
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "a human detail: {body}"
    );
}
