//! Targets: URLs and templates, resolved to socket addresses that must be loopback. Load is
//! only ever sent to this machine: anything but 127.0.0.0/8, ::1 and `localhost` is refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context, bail, ensure};

/// A parsed `scheme://host[:port]/path` URL pointing at loopback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// `http`, `https`, `ws` or `redis`.
    pub scheme: String,
    /// Where to connect.
    pub addr: SocketAddr,
    /// The `Host` header value (`host[:port]` as written).
    pub host: String,
    /// Path and query, starting with `/` (`/` when absent).
    pub path: String,
}

impl Url {
    /// Whether connections to it speak TLS (`https://`).
    pub fn is_tls(&self) -> bool {
        self.scheme == "https"
    }

    /// Whether it is an HTTP(S) URL.
    pub fn is_http(&self) -> bool {
        self.scheme == "http" || self.scheme == "https"
    }
}

/// Whether an address is loopback (127.0.0.0/8 or ::1).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 127,
        IpAddr::V6(v6) => v6 == Ipv6Addr::LOCALHOST,
    }
}

/// Parses a URL and refuses anything that is not loopback. `{channel}` may appear in the path
/// (templates); it is kept as-is.
pub fn parse_url(text: &str) -> anyhow::Result<Url> {
    let (scheme, rest) = text
        .split_once("://")
        .with_context(|| format!("{text:?} is not a URL (scheme://host:port/...)"))?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" | "ws" => 80,
        "https" => 443,
        "redis" => 6379,
        "wss" | "rediss" => bail!("{text:?}: unsupported scheme (use https:// for TLS)"),
        other => bail!("{text:?}: unsupported scheme {other:?}"),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    // Credentials (redis://:password@host) are allowed, and not part of the host.
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .with_context(|| format!("{text:?}: unterminated [IPv6] host"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().with_context(|| format!("{text:?}: bad port"))?,
            None if after.is_empty() => default_port,
            None => bail!("{text:?}: bad host"),
        };
        (h, port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().with_context(|| format!("{text:?}: bad port"))?),
            None => (hostport, default_port),
        }
    };
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().with_context(|| {
            format!("{text:?}: host must be an IP address or localhost (loopback only)")
        })?
    };
    ensure!(
        is_loopback(ip),
        "refusing {text:?}: loadtest only targets loopback addresses (127.0.0.0/8, ::1, localhost)"
    );
    Ok(Url {
        scheme,
        addr: SocketAddr::new(ip, port),
        host: hostport.to_owned(),
        path,
    })
}

/// Parses `--source-ips`: comma-separated addresses and `a-b` ranges of IPv4 loopback addresses.
pub fn parse_sources(text: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: Ipv4Addr = a
            .trim()
            .parse()
            .with_context(|| format!("bad address {a:?}"))?;
        let b: Ipv4Addr = b
            .trim()
            .parse()
            .with_context(|| format!("bad address {b:?}"))?;
        ensure!(
            is_loopback(a.into()) && is_loopback(b.into()),
            "source addresses must be in 127.0.0.0/8: {part:?}"
        );
        let (a, b) = (u32::from(a), u32::from(b));
        ensure!(a <= b, "empty range {part:?}");
        ensure!(
            out.len() as u64 + u64::from(b - a) < 65_536,
            "too many source addresses"
        );
        out.extend((a..=b).map(Ipv4Addr::from));
    }
    ensure!(!out.is_empty(), "no source addresses in {text:?}");
    Ok(out)
}

/// Replaces `{channel}` in a template.
pub fn fill(template: &str, channel: &str) -> String {
    template.replace("{channel}", channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_parse() {
        let u = parse_url("http://127.0.0.1:8080").unwrap();
        assert_eq!(u.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!((u.host.as_str(), u.path.as_str()), ("127.0.0.1:8080", "/"));
        let u = parse_url("http://localhost/sub/{channel}?x=1").unwrap();
        assert_eq!(u.addr.port(), 80);
        assert_eq!(u.path, "/sub/{channel}?x=1");
        let u = parse_url("http://[::1]:9000/x").unwrap();
        assert_eq!(u.addr, "[::1]:9000".parse().unwrap());
        let u = parse_url("redis://:secret@127.0.0.2/0").unwrap();
        assert_eq!(u.addr, "127.0.0.2:6379".parse().unwrap());
        assert_eq!(u.host, "127.0.0.2");
        let u = parse_url("http://127.0.0.1:8080?a=b").unwrap();
        assert_eq!(u.path, "/?a=b");
        assert!(!u.is_tls() && u.is_http());
        let u = parse_url("https://127.0.0.1").unwrap();
        assert_eq!(u.addr.port(), 443);
        assert!(u.is_tls() && u.is_http());
    }

    #[test]
    fn everything_else_is_refused() {
        for bad in [
            "http://10.0.0.1:8080",
            "http://example.com",
            "http://[::2]:80",
            "http://0.0.0.0:80",
            "https://10.0.0.1",
            "wss://127.0.0.1",
            "rediss://127.0.0.1",
            "127.0.0.1:8080",
            "http://127.0.0.1:99999",
            "redis://192.168.1.1:6379",
            "http://127.0.0.1.evil.com/",
        ] {
            assert!(parse_url(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn source_ranges() {
        let s = parse_sources("127.0.0.1-127.0.0.3, 127.0.1.1").unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[3], Ipv4Addr::new(127, 0, 1, 1));
        assert_eq!(parse_sources("127.0.0.1-127.0.0.50").unwrap().len(), 50);
        assert!(parse_sources("10.0.0.1").is_err());
        assert!(parse_sources("127.0.0.5-127.0.0.1").is_err());
        assert!(parse_sources("").is_err());
    }

    #[test]
    fn templates() {
        assert_eq!(fill("/sub/{channel}", "a-1"), "/sub/a-1");
    }
}
