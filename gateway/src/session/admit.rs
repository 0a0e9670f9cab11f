//! Admission: the checks every streaming connection passes before it holds anything, in one
//! order for both transports: the Origin (WebSocket only: a browser's cross-site WebSocket is
//! not subject to CORS), the token (or the authorization hook), the client address's limits,
//! then the instance's connection limit.

use std::net::IpAddr;

use http::header::HeaderMap;
use shared::{ChannelName, ErrorCode};

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
    /// The authorization hook is down (503).
    Unavailable(ApiError),
    /// The client address has too many streams, or opens them too fast (429).
    TooMany(ApiError),
}

impl Refusal {
    /// The HTTP error for this refusal.
    pub fn into_error(self) -> ApiError {
        match self {
            Self::Origin(e)
            | Self::Unauthorized(e)
            | Self::Full(e)
            | Self::Unavailable(e)
            | Self::TooMany(e) => e,
        }
    }

    /// The HTTP error of this refusal.
    pub fn error(&self) -> &ApiError {
        match self {
            Self::Origin(e)
            | Self::Unauthorized(e)
            | Self::Full(e)
            | Self::Unavailable(e)
            | Self::TooMany(e) => e,
        }
    }
}

/// Runs the checks in order; every refusal is counted in `gateway_requests_rejected_total`.
/// `channels` are those the request names (an SSE request's; none for a WebSocket), for the
/// authorization hook.
pub async fn admit(
    state: &AppState,
    transport: Transport,
    headers: &HeaderMap,
    query: &str,
    channels: &[ChannelName],
    peer: IpAddr,
) -> Result<Admitted, Refusal> {
    let metrics = &state.metrics;
    let counted = |e: &ApiError| metrics.rejected.with_label_values(&[e.code()]).inc();
    if transport == Transport::Ws {
        let host = browser::host_of(headers, None);
        browser::check_origin(&state.settings, headers, host, "open WebSockets").map_err(|e| {
            counted(&e);
            Refusal::Origin(e)
        })?;
    }
    let (grant, awaiting_token) = credentials(state, transport, headers, query, channels)
        .await
        .inspect_err(|r| counted(r.error()))?;
    // Per client address, then for the instance (the address's slot is given back if the
    // instance is full).
    let client = state.trusted.client(peer, headers);
    let per_ip = state.ip_limits.admit(client).map_err(|e| {
        counted(&e);
        Refusal::TooMany(e)
    })?;
    let guard = state
        .limiter
        .admit(metrics, transport)
        .map_err(Refusal::Full)?
        .with_ip(per_ip);
    Ok(Admitted {
        grant,
        awaiting_token,
        guard,
    })
}

/// What the connection may do: its token's grant; without a token, the authorization hook's
/// answer; or, on a WebSocket, nothing until its first `auth` message (`true`). Also what a
/// history read may see, so that whoever may subscribe to a channel may read its history.
pub async fn credentials(
    state: &AppState,
    transport: Transport,
    headers: &HeaderMap,
    query: &str,
    channels: &[ChannelName],
) -> Result<(Grant, bool), Refusal> {
    let missing = match state.auth.authenticate(headers, query) {
        Ok(grant) if state.auth.required() => return Ok((grant, false)),
        // Tokens are off: none was looked for.
        Ok(_) => None,
        // No token at all (a bad one is refused: it never falls through to the hook).
        Err(e) if e.code() == ErrorCode::Unauthorized => Some(e),
        Err(e) => return Err(Refusal::Unauthorized(e)),
    };
    if let Some(hook) = &state.hook {
        return match hook.authorize(transport, headers, channels).await {
            Ok(grant) => Ok((grant, false)),
            Err(e) if e.code() == ErrorCode::AuthUnavailable => Err(Refusal::Unavailable(e)),
            Err(e) => Err(Refusal::Unauthorized(e)),
        };
    }
    match missing {
        None => Ok((Grant::Anyone, false)),
        // It may come as the WebSocket's first message instead (a token in an `auth` message
        // stays out of URLs and access logs).
        Some(_) if transport == Transport::Ws && state.settings.ws.auth_timeout_seconds > 0 => {
            Ok((Grant::nothing(), true))
        }
        Some(e) => Err(Refusal::Unauthorized(e)),
    }
}
