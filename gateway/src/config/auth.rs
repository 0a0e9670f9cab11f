//! `[auth]`: where token-verifying keys come from (a shared secret, PEM public keys, a JWKS),
//! which claims are required of a token, and where a request carries it. The checks serde
//! cannot express live here; messages name the key and file, never a secret.

use serde::{Deserialize, Serialize};

use super::redis_topology::serialize_redacted;
use super::secret::Secret;
use super::{ConfigError, Settings, string_or_list};

/// `[auth]`: token authentication of subscribers; on as soon as any key is configured.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Shared HMAC secret (at least 16 bytes) verifying tokens signed with
    /// `jwt_secret_algorithm`; when any key is set, subscribers need a token whose `channels`
    /// claim covers every channel they subscribe to (and `publish` for client publishing).
    pub jwt_secret: Option<Secret>,
    /// File holding the HMAC secret instead of `jwt_secret` (read at start; one trailing newline
    /// trimmed), so the secret need not sit in the environment.
    pub jwt_secret_file: Option<String>,
    /// The one algorithm the secret verifies: `HS256`, `HS384` or `HS512`.
    pub jwt_secret_algorithm: String,
    /// Public keys from PEM files, each with its algorithm and optional `kid` (TOML only: an
    /// array of tables).
    pub public_keys: Vec<PublicKeySettings>,
    /// JWKS document: `https://...`, `http://...` or `file:///path`; fetched at start,
    /// refreshed every `jwks_refresh_seconds` and when a token names an unknown `kid`.
    #[serde(serialize_with = "serialize_redacted")]
    pub jwks_url: Option<String>,
    /// Seconds between JWKS refreshes.
    pub jwks_refresh_seconds: u64,
    /// Least seconds between two JWKS fetches, whatever asks for them (tokens with unknown
    /// `kid`s cannot make the gateway fetch more often).
    pub jwks_cooldown_seconds: u64,
    /// Clock skew tolerated on `exp` and `nbf`, seconds.
    pub leeway_seconds: u64,
    /// Accepted audiences: when set, a token's `aud` must name one of them; unset, `aud` is not
    /// checked. In the environment, a comma-separated list.
    #[serde(deserialize_with = "string_or_list")]
    pub audience: Vec<String>,
    /// Accepted issuers: when set, a token's `iss` must be one of them. In the environment, a
    /// comma-separated list.
    #[serde(deserialize_with = "string_or_list")]
    pub issuer: Vec<String>,
    /// Name of a cookie that may carry the token (after `Authorization` and `?token=`); unset:
    /// cookies are not read.
    pub cookie_name: Option<String>,
    /// The backend's authorization endpoint: a connection without a token is allowed by what
    /// it answers for the client's cookies and `Authorization` header (see Security).
    #[serde(serialize_with = "serialize_redacted")]
    pub hook_url: Option<String>,
    /// How long the hook may take before the client gets 503, milliseconds.
    pub hook_timeout_ms: u64,
    /// Seconds an allowing answer is reused for the same credentials and channels.
    pub hook_cache_seconds: u64,
    /// Seconds a refusing answer is reused.
    pub hook_negative_cache_seconds: u64,
    /// Most answers kept (bounded memory whatever clients send).
    pub hook_cache_entries: usize,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            jwt_secret_file: None,
            jwt_secret_algorithm: "HS256".into(),
            public_keys: Vec::new(),
            jwks_url: None,
            jwks_refresh_seconds: 300,
            jwks_cooldown_seconds: 10,
            leeway_seconds: 5,
            audience: Vec::new(),
            issuer: Vec::new(),
            cookie_name: None,
            hook_url: None,
            hook_timeout_ms: 2000,
            hook_cache_seconds: 30,
            hook_negative_cache_seconds: 5,
            hook_cache_entries: 10_000,
        }
    }
}

/// One `[[auth.public_keys]]` entry: a public key, the algorithm it verifies, its `kid`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublicKeySettings {
    /// The `kid` tokens signed with it carry; unset: tried for tokens whose `kid` no key has.
    pub kid: Option<String>,
    /// The one algorithm this key verifies: `RS256`, `RS384`, `RS512`, `PS256`, `PS384`,
    /// `PS512`, `ES256`, `ES384` or `EdDSA`.
    pub alg: String,
    /// PEM file of the public key (`-----BEGIN PUBLIC KEY-----`, or PKCS#1 RSA).
    pub pem_file: Option<String>,
    /// The PEM text itself, instead of `pem_file`.
    pub pem: Option<String>,
}

impl AuthSettings {
    /// Whether tokens are required: any key source is configured.
    pub fn enabled(&self) -> bool {
        self.jwt_secret.is_some()
            || self.jwt_secret_file.is_some()
            || !self.public_keys.is_empty()
            || self.jwks_url.is_some()
    }

    /// The HMAC secret, from `jwt_secret` or read from `jwt_secret_file` (one trailing newline
    /// trimmed), if either is set.
    pub fn secret(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        if let Some(secret) = &self.jwt_secret {
            return Ok(Some(secret.expose().as_bytes().to_vec()));
        }
        let Some(path) = &self.jwt_secret_file else {
            return Ok(None);
        };
        let mut bytes = std::fs::read(path).map_err(|e| ConfigError::Invalid {
            key: "auth.jwt_secret_file",
            problem: format!("cannot read {path}: {e}"),
        })?;
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        Ok(Some(bytes))
    }
}

impl Settings {
    /// The `[auth]` checks: one secret source, a strong secret, known algorithms, readable
    /// keys (parsed by the same code that uses them), a JWKS URL the gateway can fetch.
    pub(super) fn validate_auth(&self) -> Result<(), ConfigError> {
        let auth = &self.auth;
        let invalid = |key: &'static str, problem: String| ConfigError::Invalid { key, problem };
        if auth.jwt_secret.is_some() && auth.jwt_secret_file.is_some() {
            return Err(invalid(
                "auth.jwt_secret_file",
                "set auth.jwt_secret or auth.jwt_secret_file, not both".into(),
            ));
        }
        if let Some(secret) = auth.secret()?
            && secret.len() < 16
        {
            let key = match auth.jwt_secret {
                Some(_) => "auth.jwt_secret",
                None => "auth.jwt_secret_file",
            };
            return Err(invalid(key, "must be at least 16 bytes".into()));
        }
        crate::auth::keys::secret_algorithm(&auth.jwt_secret_algorithm)
            .map_err(|problem| invalid("auth.jwt_secret_algorithm", problem))?;
        crate::auth::keys::public_keys(&auth.public_keys)?;
        if let Some(url) = &auth.jwks_url {
            crate::auth::jwks::Location::parse(url)
                .map_err(|problem| invalid("auth.jwks_url", problem))?;
        }
        if auth.jwks_refresh_seconds == 0 {
            return Err(invalid(
                "auth.jwks_refresh_seconds",
                "must be at least 1".into(),
            ));
        }
        if auth.jwks_cooldown_seconds == 0 {
            return Err(invalid(
                "auth.jwks_cooldown_seconds",
                "must be at least 1".into(),
            ));
        }
        if let Some(name) = &auth.cookie_name
            && (name.is_empty() || !name.bytes().all(is_cookie_name_byte))
        {
            return Err(invalid(
                "auth.cookie_name",
                "must be a cookie name (letters, digits and !#$%&'*+-.^_`|~)".into(),
            ));
        }
        if auth
            .audience
            .iter()
            .chain(&auth.issuer)
            .any(String::is_empty)
        {
            return Err(invalid(
                "auth.audience",
                "audiences and issuers must not be empty strings".into(),
            ));
        }
        if let Some(url) = &auth.hook_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(
                "auth.hook_url",
                "must start with http:// or https://".into(),
            ));
        }
        if auth.hook_timeout_ms == 0 {
            return Err(invalid("auth.hook_timeout_ms", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// RFC 6265 cookie-name (an RFC 7230 token) byte.
fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([(
                "GATEWAY__PUBLISH__ALLOW_ANONYMOUS".to_string(),
                "true".to_string(),
            )])
            .collect();
        Settings::load_with_env(None, Some(env))
    }

    #[test]
    fn secrets_come_from_settings_or_a_file_and_are_never_printed() {
        let dir = std::env::temp_dir().join(format!("gw-auth-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, "a-secret-from-a-file-0123\n").unwrap();
        let s = load(&[("GATEWAY__AUTH__JWT_SECRET_FILE", file.to_str().unwrap())]).unwrap();
        assert!(s.auth.enabled());
        assert_eq!(
            s.auth.secret().unwrap().as_deref(),
            Some(&b"a-secret-from-a-file-0123"[..])
        );
        let s = load(&[("GATEWAY__AUTH__JWT_SECRET", "an-inline-secret-0123")]).unwrap();
        assert!(!format!("{:?}", s.auth).contains("an-inline-secret"));
        std::fs::write(&file, "short\n").unwrap();
        let err = load(&[("GATEWAY__AUTH__JWT_SECRET_FILE", file.to_str().unwrap())]);
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("auth.jwt_secret_file")
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn bad_auth_values_name_their_key() {
        let cases = [
            ("GATEWAY__AUTH__JWT_SECRET", "short", "auth.jwt_secret"),
            (
                "GATEWAY__AUTH__JWT_SECRET_FILE",
                "/nonexistent/secret",
                "auth.jwt_secret_file",
            ),
            (
                "GATEWAY__AUTH__JWT_SECRET_ALGORITHM",
                "RS256",
                "auth.jwt_secret_algorithm",
            ),
            ("GATEWAY__AUTH__JWKS_URL", "ftp://x/keys", "auth.jwks_url"),
            (
                "GATEWAY__AUTH__JWKS_REFRESH_SECONDS",
                "0",
                "auth.jwks_refresh",
            ),
            ("GATEWAY__AUTH__COOKIE_NAME", "a b", "auth.cookie_name"),
        ];
        for (key, value, expect) in cases {
            let text = load(&[(key, value)]).unwrap_err().to_string();
            assert!(text.contains(expect), "{key}={value}: {text}");
        }
        let both = load(&[
            ("GATEWAY__AUTH__JWT_SECRET", "an-inline-secret-0123"),
            ("GATEWAY__AUTH__JWT_SECRET_FILE", "/x"),
        ]);
        assert!(both.is_err());
    }

    #[test]
    fn lists_and_defaults() {
        let s = load(&[
            ("GATEWAY__AUTH__AUDIENCE", "gw, gw2"),
            ("GATEWAY__AUTH__ISSUER", "https://idp.example"),
        ])
        .unwrap();
        assert_eq!(s.auth.audience, ["gw", "gw2"]);
        assert_eq!(s.auth.issuer, ["https://idp.example"]);
        assert_eq!(s.auth.leeway_seconds, 5);
        assert!(!s.auth.enabled());
    }
}
