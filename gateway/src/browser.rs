//! The rules that protect the gateway from the browsers of its users: which `Host`s it answers
//! to (DNS rebinding), and which `Origin`s may open a WebSocket or publish (cross-site
//! WebSocket hijacking, cross-site form posts). One allowlist, `cors.allow_origins`, decides
//! for CORS, WebSockets and publishing alike; an origin equal to `Host` counts as the
//! gateway's own only when that host is allowed.

use http::StatusCode;
use http::header::{HOST, HeaderMap, ORIGIN};
use shared::ErrorCode;

use crate::config::Settings;
use crate::error::ApiError;

/// Names that only ever reach this machine: the gateway's own origin when no
/// `server.allowed_hosts` is set (a rebinding attacker's page carries its own name in `Host`).
const LOOPBACK: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// Paths served whatever the `Host`: probes and scrapers address instances by IP, and these
/// answers carry no user data.
const ANY_HOST: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The request's host: HTTP/1.1's `Host` header, or HTTP/2's `:authority`.
pub fn host_of<'a>(headers: &'a HeaderMap, authority: Option<&'a str>) -> Option<&'a str> {
    headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .or(authority)
}

/// 403 when `server.allowed_hosts` is set and names no host of the request.
pub fn check_host(settings: &Settings, path: &str, host: Option<&str>) -> Result<(), ApiError> {
    let allowed = &settings.server.allowed_hosts;
    if allowed.is_empty() || ANY_HOST.contains(&path) {
        return Ok(());
    }
    if host.is_some_and(|h| host_listed(allowed, h)) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        ErrorCode::HostNotAllowed,
        "this gateway does not answer to that Host",
    ))
}

/// 403 unless [`origin_allowed`]: for WebSocket upgrades and publishes, which CORS does not
/// protect (a browser sends a cross-site WebSocket handshake and a `text/plain` POST without
/// asking first).
pub fn check_origin(
    settings: &Settings,
    headers: &HeaderMap,
    host: Option<&str>,
    what: &str,
) -> Result<(), ApiError> {
    let origin = headers.get(ORIGIN).map(|v| v.to_str().unwrap_or("invalid"));
    // A browser that names no Origin but says the request is cross-site.
    let cross_site = headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    let allowed = match origin {
        None => !cross_site,
        Some(_) => origin_allowed(settings, origin, host),
    };
    if allowed {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        ErrorCode::OriginNotAllowed,
        format!(
            "origin {} may not {what} here",
            origin.unwrap_or("(cross-site)")
        ),
    ))
}

/// Whether a browser from `origin` may use the gateway: listed in `cors.allow_origins` (or `*`
/// is), or the gateway's own origin on an allowed host. Non-browser clients send no Origin.
pub fn origin_allowed(settings: &Settings, origin: Option<&str>, host: Option<&str>) -> bool {
    let Some(origin) = origin else { return true };
    let listed = &settings.cors.allow_origins;
    if listed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let authority = origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'));
    let (Some(authority), Some(host)) = (authority, host) else {
        return false;
    };
    authority.eq_ignore_ascii_case(host) && own_host(&settings.server.allowed_hosts, host)
}

/// Whether `host` may count as the gateway's own: allowed by `server.allowed_hosts`, or (when
/// none are set) a loopback name.
fn own_host(allowed: &[String], host: &str) -> bool {
    if allowed.is_empty() {
        let name = split_port(host).0;
        return LOOPBACK.iter().any(|l| l.eq_ignore_ascii_case(name));
    }
    host_listed(allowed, host)
}

/// Whether an entry of `allowed` names `host` (`Host` value, maybe with a port): `name`
/// matches on any port, `name:port` on that port, `*.example.com` any subdomain.
fn host_listed(allowed: &[String], host: &str) -> bool {
    let (name, port) = split_port(host);
    allowed.iter().any(|entry| {
        let (want, want_port) = split_port(entry);
        if want_port.is_some() && want_port != port {
            return false;
        }
        match want.strip_prefix("*.") {
            Some(suffix) => name.len().checked_sub(suffix.len() + 1).is_some_and(|at| {
                name.as_bytes()[at] == b'.' && name[at + 1..].eq_ignore_ascii_case(suffix)
            }),
            None => name.eq_ignore_ascii_case(want),
        }
    })
}

/// `host[:port]` or `[v6][:port]` split into name and port.
fn split_port(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => (
                &host[..=end],
                host[end + 1..].strip_prefix(':').filter(|p| !p.is_empty()),
            ),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            (name, Some(port))
        }
        _ => (host, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(origins: &[&str], hosts: &[&str]) -> Settings {
        let mut s = Settings::default();
        s.cors.allow_origins = origins.iter().map(|o| o.to_string()).collect();
        s.server.allowed_hosts = hosts.iter().map(|h| h.to_string()).collect();
        s
    }

    #[test]
    fn hosts() {
        let list: Vec<String> = ["gw.example", "*.push.example", "alt.example:8443"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(host_listed(&list, "gw.example"));
        assert!(host_listed(&list, "GW.example:8080"));
        assert!(host_listed(&list, "a.push.example"));
        assert!(host_listed(&list, "a.b.push.example:1"));
        assert!(!host_listed(&list, "push.example"));
        assert!(!host_listed(&list, "evilpush.example"));
        assert!(host_listed(&list, "alt.example:8443"));
        assert!(!host_listed(&list, "alt.example:8080"));
        assert!(!host_listed(&list, "alt.example"));
        assert!(!host_listed(&list, "rebind.attacker.example:8080"));
        assert_eq!(split_port("[::1]:8080"), ("[::1]", Some("8080")));
        assert_eq!(split_port("[::1]"), ("[::1]", None));
    }

    #[test]
    fn host_check_spares_probes() {
        let s = settings(&[], &["gw.example"]);
        assert!(check_host(&s, "/sse", Some("gw.example:80")).is_ok());
        let e = check_host(&s, "/sse", Some("attacker.example")).unwrap_err();
        assert_eq!(e.code(), ErrorCode::HostNotAllowed);
        assert!(check_host(&s, "/sse", None).is_err());
        assert!(check_host(&s, "/healthz", Some("10.1.2.3:8080")).is_ok());
        assert!(check_host(&settings(&[], &[]), "/sse", Some("any")).is_ok());
    }

    #[test]
    fn origins() {
        let s = settings(&["https://app.example"], &[]);
        assert!(origin_allowed(&s, None, Some("gw:8080")), "non-browser");
        assert!(origin_allowed(&s, Some("https://app.example"), Some("gw")));
        assert!(!origin_allowed(
            &s,
            Some("https://evil.example"),
            Some("gw")
        ));
        assert!(!origin_allowed(&s, Some("null"), Some("gw:8080")));
        // Same origin counts only on an allowed host: a rebound name does not.
        assert!(origin_allowed(
            &s,
            Some("http://localhost:8080"),
            Some("localhost:8080")
        ));
        assert!(!origin_allowed(
            &s,
            Some("http://rebind.example:8080"),
            Some("rebind.example:8080")
        ));
        let s = settings(&[], &["gw.example"]);
        assert!(origin_allowed(
            &s,
            Some("https://gw.example"),
            Some("gw.example")
        ));
        assert!(!origin_allowed(
            &s,
            Some("http://localhost:8080"),
            Some("localhost:8080")
        ));
        assert!(origin_allowed(
            &settings(&["*"], &[]),
            Some("https://evil.example"),
            None
        ));
    }

    #[test]
    fn cross_site_requests_without_origin_are_refused() {
        let s = settings(&[], &[]);
        let mut h = HeaderMap::new();
        assert!(check_origin(&s, &h, None, "publish").is_ok());
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(check_origin(&s, &h, None, "publish").is_err());
        h.insert(ORIGIN, "https://evil.example".parse().unwrap());
        let e = check_origin(&s, &h, Some("gw"), "publish").unwrap_err();
        assert_eq!(e.code(), ErrorCode::OriginNotAllowed);
    }
}
