//! The one error shape every HTTP endpoint returns: a status and `{"error": code, "detail": text}`.
//! `error` is a stable machine-readable code; `detail` is for humans.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use shared::ErrorCode;

use crate::engine::EngineError;
use crate::hub::HubError;
use crate::response::{self, Body};

/// An HTTP error with a JSON body.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    detail: String,
    retry_after: Option<u32>,
}

impl ApiError {
    /// Any status with a code and a human explanation.
    pub fn new(status: StatusCode, code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 503 with `Retry-After`: try again (possibly on another instance).
    pub fn unavailable(code: ErrorCode, detail: impl Into<String>, retry_after: u32) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
        }
    }

    /// The same error telling the client when to try again (`Retry-After`, seconds).
    pub fn with_retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The HTTP status (a batch's answer takes its first failure's).
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable code, for tests and logs.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The human explanation.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl ApiError {
    /// The headers both responses carry besides the content type: one list, so the actix and
    /// the raw response cannot drift apart.
    fn headers(&self) -> Vec<(header::HeaderName, HeaderValue)> {
        let mut headers = Vec::with_capacity(3);
        if let Some(secs) = self.retry_after {
            headers.push((header::RETRY_AFTER, HeaderValue::from(secs)));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.push((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        headers.push((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        headers
    }

    /// The JSON body of both responses.
    fn body(&self) -> String {
        serde_json::json!({ "error": self.code.as_str(), "detail": self.detail }).to_string()
    }

    /// The whole HTTP/1.1 response, for requests served outside actix (`front`): the same
    /// status, headers and body as [`ResponseError::error_response`], plus `extra` header lines
    /// (each ending in CRLF), and `Connection: close`.
    pub fn to_http1(&self, extra: &str) -> Vec<u8> {
        let body = self.body();
        let mut out = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            body.len()
        )
        .into_bytes();
        for (name, value) in self.headers() {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(extra.as_bytes());
        out.extend_from_slice(b"\r\n");
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

impl ApiError {
    /// The HTTP response: status, headers and JSON body.
    pub fn into_response(&self) -> Response<Body> {
        let mut res = Response::new(response::full(self.body()));
        *res.status_mut() = self.status;
        let headers = res.headers_mut();
        for (name, value) in self.headers() {
            headers.insert(name, value);
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        res
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Unavailable(_) => {
                Self::unavailable(ErrorCode::EngineUnavailable, e.to_string(), 1)
            }
            EngineError::Protocol(_) | EngineError::Refused(_) | EngineError::Rejected(_) => {
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::EngineError,
                    e.to_string(),
                )
            }
        }
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        match e {
            HubError::Engine(e) => e.into(),
            HubError::Timeout => Self::unavailable(ErrorCode::EngineUnavailable, e.to_string(), 1),
            HubError::ShuttingDown => Self::unavailable(ErrorCode::ShuttingDown, e.to_string(), 0),
            HubError::Closed => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Closed,
                e.to_string(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The raw response carries exactly the hyper response's status, headers and body.
    #[test]
    fn both_responses_say_the_same() {
        let mut unauthorized = ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "no token",
        );
        unauthorized.retry_after = Some(3);
        for e in [
            unauthorized,
            ApiError::unavailable(ErrorCode::ConnectionLimit, "full", 1),
            ApiError::bad_request(ErrorCode::MissingChannel, "name one"),
        ] {
            let raw = String::from_utf8(e.to_http1("x-extra: 1\r\n")).unwrap();
            let (head, body) = raw.split_once("\r\n\r\n").unwrap();
            let res = e.into_response();
            assert!(
                head.starts_with(&format!("HTTP/1.1 {}", res.status())),
                "{head}"
            );
            for (name, value) in res.headers() {
                let line = format!("{}: {}", name.as_str(), value.to_str().unwrap());
                assert!(head.lines().any(|l| l == line), "{line} missing in {head}");
            }
            assert!(head.lines().any(|l| l == "x-extra: 1"), "{head}");
            assert!(head.lines().any(|l| l == "connection: close"), "{head}");
            assert_eq!(body, e.body());
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(json["error"], e.code().as_str());
        }
    }
}
