//! Operational endpoints: liveness, readiness and Prometheus metrics.

use std::time::Duration;

use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::response::{self, Body};
use crate::state::AppState;

/// `GET /healthz`: the process is alive and serving HTTP.
pub fn healthz() -> Response<Body> {
    response::json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 only while the engine answers and its live path is connected, so a load
/// balancer stops sending clients to an instance that could not deliver to them.
pub async fn readyz(state: &AppState) -> Response<Body> {
    let hub = &state.hub;
    let problem = if hub.is_shutting_down() {
        Some("shutting down".to_owned())
    } else if !hub.is_live() {
        Some("engine live path is down".to_owned())
    } else {
        match tokio::time::timeout(Duration::from_secs(2), hub.engine().ping()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("engine did not answer within 2s".to_owned()),
        }
    };
    match problem {
        None => response::json(
            StatusCode::OK,
            &serde_json::json!({ "status": "ready", "engine": hub.engine().kind() }),
        ),
        Some(detail) => {
            let mut res = response::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({ "error": "not_ready", "detail": detail, "engine": hub.engine().kind() }),
            );
            res.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            res
        }
    }
}

/// `GET /metrics`: Prometheus text format.
pub fn metrics(state: &AppState) -> Response<Body> {
    let mut res = Response::new(response::full(state.metrics.render()));
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}
