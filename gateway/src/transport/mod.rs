//! Client transports: thin adapters that parse requests, attach connections to the hub and
//! write frames. No engine code lives here.

pub mod history;
pub mod page;
pub mod params;
pub mod poll;
pub mod presence;
pub mod request;
pub mod sse;
pub mod ws;

use http::Response;

use crate::error::ApiError;
use crate::response::Body;
use crate::state::AppState;

/// A read endpoint's answer: its response, or its refusal counted in `gateway_rejected_total`
/// and rendered as the JSON error.
pub(crate) fn answered(
    state: &AppState,
    result: Result<Response<Body>, ApiError>,
) -> Response<Body> {
    result.unwrap_or_else(|e| {
        state.metrics.rejected.with_label_values(&[e.code()]).inc();
        e.into_response()
    })
}
