//! The one error shape every HTTP endpoint returns: a status and `{"error": code, "detail": text}`.
//! `error` is a stable machine-readable code; `detail` is for humans.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};

use crate::engine::EngineError;
use crate::hub::HubError;

/// An HTTP error with a JSON body.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    retry_after: Option<u32>,
}

impl ApiError {
    /// Any status with a code and a human explanation.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 503 with `Retry-After`: try again (possibly on another instance).
    pub fn unavailable(code: &'static str, detail: impl Into<String>, retry_after: u32) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
        }
    }

    /// The stable code, for tests and logs.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The human explanation.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl ApiError {
    /// The whole HTTP/1.1 response, for requests served outside actix (`front`): the same
    /// status, headers and body as [`ResponseError::error_response`], plus `extra` header lines
    /// (each ending in CRLF), and `Connection: close`.
    pub fn to_http1(&self, extra: &str) -> Vec<u8> {
        use std::fmt::Write as _;
        let body = serde_json::json!({ "error": self.code, "detail": self.detail }).to_string();
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncache-control: no-store\r\ncontent-length: {}\r\nconnection: close\r\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            body.len()
        );
        if let Some(secs) = self.retry_after {
            let _ = write!(head, "retry-after: {secs}\r\n");
        }
        if self.status == StatusCode::UNAUTHORIZED {
            head.push_str("www-authenticate: Bearer\r\n");
        }
        head.push_str(extra);
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body.as_bytes());
        out
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.status.as_u16(),
            self.code,
            self.detail
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after {
            res.insert_header((header::RETRY_AFTER, HeaderValue::from(secs)));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        res.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        res.json(serde_json::json!({ "error": self.code, "detail": self.detail }))
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Unavailable(_) => {
                Self::unavailable("engine_unavailable", e.to_string(), 1)
            }
            EngineError::Protocol(_) | EngineError::Refused(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "engine_error",
                e.to_string(),
            ),
        }
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        match e {
            HubError::Engine(e) => e.into(),
            HubError::Timeout => Self::unavailable("engine_unavailable", e.to_string(), 1),
            HubError::ShuttingDown => Self::unavailable("shutting_down", e.to_string(), 0),
            HubError::Closed => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "closed", e.to_string())
            }
        }
    }
}
