//! Operational endpoints: liveness, readiness and Prometheus metrics.

use std::time::Duration;

use actix_web::{HttpResponse, web};

use crate::state::AppState;

/// `GET /healthz`: the process is alive and serving HTTP.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 only while the engine answers and its live path is connected, so a load
/// balancer stops sending clients to an instance that could not deliver to them.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
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
        None => HttpResponse::Ok().json(serde_json::json!({ "status": "ready", "engine": hub.engine().kind() })),
        Some(detail) => HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(serde_json::json!({ "error": "not_ready", "detail": detail, "engine": hub.engine().kind() })),
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}
