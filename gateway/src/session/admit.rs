//! Admission: the checks every streaming connection passes before it holds anything, in one
//! order for both transports: the Origin (WebSocket only: a browser's cross-site WebSocket is
//! not subject to CORS), the token, then the connection limit.

use http::header::HeaderMap;
use shared::ErrorCode;

use crate::auth::Grant;
use crate::browser;
use crate::error::ApiError;
use crate::state::{AppState, ConnectionGuard, Transport};

/// A connection that passed admission: what its token grants, and its slot under the limit.
pub struct Admitted {
    /// What the token grants (nothing yet while `awaiting_token`).
    pub grant: Grant,
    /// A WebSocket opened without a token, which must send one as its first message.
    pub awaiting_token: bool,
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
        let host = browser::host_of(headers, None);
        browser::check_origin(&state.settings, headers, host, "open WebSockets").map_err(|e| {
            metrics.rejected.with_label_values(&[e.code()]).inc();
            Refusal::Origin(e)
        })?;
    }
    let mut awaiting_token = false;
    let grant = match state.auth.authenticate(headers, query) {
        Ok(grant) => grant,
        // No token at all on a WebSocket: it may come as the first message instead (a token
        // in an `auth` message stays out of URLs and access logs).
        Err(e)
            if transport == Transport::Ws
                && e.code() == ErrorCode::Unauthorized
                && state.settings.ws.auth_timeout_seconds > 0 =>
        {
            awaiting_token = true;
            Grant::nothing()
        }
        Err(e) => {
            metrics.rejected.with_label_values(&[e.code()]).inc();
            return Err(Refusal::Unauthorized(e));
        }
    };
    let guard = state
        .limiter
        .admit(metrics, transport)
        .map_err(Refusal::Full)?;
    Ok(Admitted {
        grant,
        awaiting_token,
        guard,
    })
}
