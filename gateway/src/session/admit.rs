//! Admission: the checks every streaming connection passes before it holds anything, in one
//! order for both transports: the Origin (WebSocket only: a browser's cross-site WebSocket is
//! not subject to CORS), the token, then the connection limit.

use http::StatusCode;
use http::header::{HOST, HeaderMap, ORIGIN};
use shared::ErrorCode;

use crate::auth::Grant;
use crate::error::ApiError;
use crate::state::{AppState, ConnectionGuard, Transport};

/// A connection that passed admission: what its token grants, and its slot under the limit.
pub struct Admitted {
    /// What the token grants.
    pub grant: Grant,
    /// The connection's slot, released when dropped.
    pub guard: ConnectionGuard,
}

/// Why a connection was refused; each transport renders it (all as HTTP errors, except that a
/// WebSocket tells an auth refusal after the upgrade, with close code 4500).
#[derive(Debug)]
pub enum Refusal {
    /// The Origin may not open WebSockets here (403).
    Origin(ApiError),
    /// No valid token (401).
    Unauthorized(ApiError),
    /// The instance is at its connection limit (503).
    Full(ApiError),
}

impl Refusal {
    /// The HTTP error for this refusal.
    pub fn into_error(self) -> ApiError {
        match self {
            Self::Origin(e) | Self::Unauthorized(e) | Self::Full(e) => e,
        }
    }
}

/// Runs the checks in order; every refusal is counted in `gateway_requests_rejected_total`.
pub fn admit(
    state: &AppState,
    transport: Transport,
    headers: &HeaderMap,
    query: &str,
) -> Result<Admitted, Refusal> {
    let metrics = &state.metrics;
    if transport == Transport::Ws {
        check_origin(headers, &state.settings.cors.allow_origins).map_err(|e| {
            metrics.rejected.with_label_values(&[e.code()]).inc();
            Refusal::Origin(e)
        })?;
    }
    let grant = state.auth.authenticate(headers, query).map_err(|e| {
        metrics.rejected.with_label_values(&[e.code()]).inc();
        Refusal::Unauthorized(e)
    })?;
    let guard = state
        .limiter
        .admit(metrics, transport)
        .map_err(Refusal::Full)?;
    Ok(Admitted { grant, guard })
}

/// The origin check: refused unless [`origin_allowed`].
fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), ApiError> {
    let origin = headers.get(ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(HOST).and_then(|v| v.to_str().ok());
    if origin_allowed(origin, host, allowed) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        ErrorCode::OriginNotAllowed,
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
}
