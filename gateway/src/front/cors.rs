//! Cross-origin resource sharing (`cors.allow_origins`): the one implementation behind every
//! response, whether hyper or the raw SSE path writes it. A request from a listed origin gets
//! `Access-Control-Allow-Origin`; any other origin gets no grant (the browser then withholds the
//! response), never an error.

use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, HeaderMap, HeaderName, HeaderValue,
    ORIGIN, VARY,
};
use http::{Method, Response, StatusCode};

use crate::response::{self, Body};

/// Responses differ by these request headers when CORS is on (caches must key on them).
const VARY_ON: &str = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";
/// What a preflight allows.
const METHODS: &str = "GET, POST";
const HEADERS: &str = "authorization, content-type, last-event-id";
/// How long a browser may cache a preflight answer, in seconds.
const MAX_AGE: &str = "3600";

/// The `Access-Control-Allow-Origin` value for a request from `origin`, if it is allowed.
fn allowed_origin(allowed: &[String], origin: Option<&HeaderValue>) -> Option<HeaderValue> {
    let origin = origin?;
    if allowed.iter().any(|a| a == "*") {
        return Some(HeaderValue::from_static("*"));
    }
    let text = origin.to_str().ok()?;
    allowed.iter().any(|a| a == text).then(|| origin.clone())
}

/// The CORS headers for a response to a request from `origin` (none when CORS is off).
pub fn headers(allowed: &[String], origin: Option<&HeaderValue>) -> Vec<(HeaderName, HeaderValue)> {
    if allowed.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(2);
    if let Some(origin) = allowed_origin(allowed, origin) {
        out.push((ACCESS_CONTROL_ALLOW_ORIGIN, origin));
    }
    out.push((VARY, HeaderValue::from_static(VARY_ON)));
    out
}

/// Adds the CORS headers for a request from `origin` to `response`.
pub fn apply(allowed: &[String], origin: Option<&HeaderValue>, response: &mut HeaderMap) {
    for (name, value) in headers(allowed, origin) {
        response.insert(name, value);
    }
}

/// The same headers as lines (each ending in CRLF) for a response written on the raw socket.
pub fn lines(allowed: &[String], request: &HeaderMap) -> String {
    let mut out = String::new();
    for (name, value) in headers(allowed, request.get(ORIGIN)) {
        out.push_str(name.as_str());
        out.push_str(": ");
        out.push_str(value.to_str().unwrap_or_default());
        out.push_str("\r\n");
    }
    out
}

/// The answer to a CORS preflight (`OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`), when CORS is on; `None` for any other request.
pub fn preflight(
    allowed: &[String],
    method: &Method,
    request: &HeaderMap,
) -> Option<Response<Body>> {
    if allowed.is_empty()
        || method != Method::OPTIONS
        || !request.contains_key(ORIGIN)
        || !request.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
    {
        return None;
    }
    let mut res = Response::new(response::full(""));
    *res.status_mut() = StatusCode::OK;
    let headers = res.headers_mut();
    if allowed_origin(allowed, request.get(ORIGIN)).is_some() {
        headers.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(METHODS),
        );
        headers.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(HEADERS),
        );
        headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
    }
    Some(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(origin: Option<&str>) -> HeaderMap {
        let mut map = HeaderMap::new();
        if let Some(o) = origin {
            map.insert(ORIGIN, o.parse().unwrap());
        }
        map
    }

    #[test]
    fn listed_origins_are_granted_others_only_vary() {
        let allowed = vec!["https://app.example".to_owned()];
        let granted = lines(&allowed, &request(Some("https://app.example")));
        assert!(granted.contains("access-control-allow-origin: https://app.example\r\n"));
        assert!(granted.contains("vary: Origin"));
        let other = lines(&allowed, &request(Some("https://evil.example")));
        assert!(!other.contains("access-control-allow-origin"), "{other}");
        assert!(other.contains("vary: Origin"));
        assert!(lines(&[], &request(Some("https://app.example"))).is_empty());
        let any = lines(&["*".to_owned()], &request(Some("https://x.example")));
        assert!(any.contains("access-control-allow-origin: *\r\n"));
    }

    #[test]
    fn preflights_are_answered_only_when_cors_is_on() {
        let allowed = vec!["https://app.example".to_owned()];
        let mut req = request(Some("https://app.example"));
        req.insert(ACCESS_CONTROL_REQUEST_METHOD, "POST".parse().unwrap());
        let res = preflight(&allowed, &Method::OPTIONS, &req).unwrap();
        assert_eq!(
            res.headers()[ACCESS_CONTROL_ALLOW_METHODS],
            HeaderValue::from_static(METHODS)
        );
        assert!(preflight(&[], &Method::OPTIONS, &req).is_none());
        assert!(preflight(&allowed, &Method::GET, &req).is_none());
        let evil = {
            let mut r = request(Some("https://evil.example"));
            r.insert(ACCESS_CONTROL_REQUEST_METHOD, "POST".parse().unwrap());
            r
        };
        let res = preflight(&allowed, &Method::OPTIONS, &evil).unwrap();
        assert!(!res.headers().contains_key(ACCESS_CONTROL_ALLOW_METHODS));
    }
}
