//! `redis.password_file`: the Redis password from a file (Kubernetes/Docker secrets) instead
//! of inside the URLs. It is written into every configured URL at start (percent-encoded into
//! the user info), where the rest of the engine finds it, and where `check-config` and `Debug`
//! already print URL passwords as `<redacted>`.

use super::secret::Secret;
use super::{ConfigError, RedisSettings};

impl RedisSettings {
    /// Puts the password from `password_file` into the URLs; refuses URLs that carry one too.
    pub(super) fn read_password_file(&mut self) -> Result<(), ConfigError> {
        let Some(path) = self.password_file.clone() else {
            return Ok(());
        };
        let invalid = |problem: String| ConfigError::Invalid {
            key: "redis.password_file",
            problem,
        };
        let password = Secret::from_file(&path).map_err(invalid)?;
        let encoded = encode(password.expose());
        let urls = self
            .url
            .iter_mut()
            .chain(self.sentinels.iter_mut())
            .chain(self.cluster_nodes.iter_mut());
        for url in urls {
            *url = with_password(url, &encoded).map_err(invalid)?;
        }
        Ok(())
    }
}

/// `url` with `password` (already encoded) as its user info's password.
fn with_password(url: &str, password: &str) -> Result<String, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("a Redis URL without a scheme".into());
    };
    if scheme == "unix" {
        return Err("a unix:// URL takes no password from a file".into());
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (user, host) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            if userinfo.contains(':') {
                return Err("set the password in the URL or in the file, not both".into());
            }
            (userinfo, host)
        }
        None => ("", authority),
    };
    Ok(format!("{scheme}://{user}:{password}@{host}{tail}"))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_goes_into_every_url() {
        assert_eq!(
            with_password("redis://h:6379/0", "p%40ss").unwrap(),
            "redis://:p%40ss@h:6379/0"
        );
        assert_eq!(
            with_password("rediss://alice@h:6380", "x").unwrap(),
            "rediss://alice:x@h:6380"
        );
        assert!(with_password("redis://u:p@h", "x").is_err());
        assert!(with_password("unix:///run/redis.sock", "x").is_err());
        assert_eq!(encode("a b@c/d:é"), "a%20b%40c%2Fd%3A%C3%A9");
    }

    #[test]
    fn a_password_file_is_read_and_never_printed() {
        let dir = std::env::temp_dir().join(format!("gw-redis-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pw");
        std::fs::write(&path, "s3cret pass\n").unwrap();
        let env: std::collections::HashMap<String, String> = [
            ("GATEWAY__REDIS__URL", "redis://127.0.0.1:6379/0"),
            ("GATEWAY__REDIS__PASSWORD_FILE", path.to_str().unwrap()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s = super::super::Settings::load_with_env(None, Some(env)).unwrap();
        assert_eq!(
            s.redis.url.as_deref(),
            Some("redis://:s3cret%20pass@127.0.0.1:6379/0")
        );
        let info = redis::Client::open(s.redis.url.as_deref().unwrap()).unwrap();
        assert_eq!(
            info.get_connection_info().redis_settings().password(),
            Some("s3cret pass")
        );
        let printed = format!("{:?}", s.redis);
        assert!(!printed.contains("s3cret"), "{printed}");
        std::fs::remove_dir_all(dir).ok();
    }
}
