//! Optional subscriber authentication with signed JSON Web Tokens (JWS compact form).
//!
//! Authentication is on as soon as any key is configured: an HMAC secret (`auth.jwt_secret` or
//! `auth.jwt_secret_file`), PEM public keys (`auth.public_keys`), a JWKS (`auth.jwks_url`). SSE
//! and WebSocket connections then need a token (`token`: where a request carries it). Claims:
//!
//! ```json
//! {"sub": "user-42", "exp": 1767225600, "channels": ["news", "chat:room-*"],
//!  "publish": ["chat:room-*"], "info": {"name": "Ada"}}
//! ```
//!
//! `channels` lists what the holder may subscribe to and `publish` what it may publish to over
//! WebSocket; an entry is an exact name, a prefix ending in `*`, or `*` for everything. `exp`
//! is required. Backends keep using the publish API key; tokens are for end users.
//!
//! One concept per file: `token` (sources, JOSE header), `keys` (a key decides its algorithm),
//! `jwks`, `fetch` and `refresh` (keys from a JWKS, fetched, kept fresh), `claims` (grants and claim rules),
//! `verify` (all of it for one token), `error` (each refusal's code and words).

mod claims;
mod error;
mod fetch;
pub(crate) mod jwks;
pub(crate) mod keys;
mod refresh;
#[cfg(test)]
mod test_keys;
mod token;
mod verify;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::HeaderMap;

pub use claims::{Claims, Grant};
pub use error::TokenError;

use crate::config::{AuthSettings, ConfigError};
use crate::error::ApiError;
use claims::ClaimRules;
use keys::Key;
use refresh::LiveJwks;

/// Why authentication could not be set up; start-up stops with it.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A key or secret in the settings is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The JWKS could not be fetched or used at start.
    #[error("configuration error: auth.jwks_url: {0}")]
    Jwks(String),
}

/// Verifies tokens; lets everyone in when no key is configured.
pub struct Authenticator {
    enabled: bool,
    /// Keys from the settings: the secret, the PEM keys.
    keys: Vec<Key>,
    /// Keys from the JWKS, if one is configured.
    jwks: Option<Arc<LiveJwks>>,
    rules: ClaimRules,
    cookie: Option<String>,
    started: AtomicBool,
}

impl Authenticator {
    /// Reads the secret and PEM keys; a JWKS is fetched by [`Authenticator::start`].
    pub fn new(settings: &AuthSettings) -> Result<Self, AuthError> {
        let mut keys = Vec::new();
        if let Some(secret) = settings.secret()? {
            let alg =
                keys::secret_algorithm(&settings.jwt_secret_algorithm).map_err(|problem| {
                    ConfigError::Invalid {
                        key: "auth.jwt_secret_algorithm",
                        problem,
                    }
                })?;
            keys.push(keys::secret_key(&secret, alg));
        }
        keys.extend(keys::public_keys(&settings.public_keys)?);
        let jwks = match &settings.jwks_url {
            None => None,
            Some(url) => {
                let fetcher = jwks::Location::parse(url)
                    .and_then(jwks::Fetcher::new)
                    .map_err(AuthError::Jwks)?;
                Some(Arc::new(LiveJwks::new(
                    fetcher,
                    Duration::from_secs(settings.jwks_refresh_seconds),
                    Duration::from_secs(settings.jwks_cooldown_seconds),
                )))
            }
        };
        Ok(Self {
            enabled: settings.enabled(),
            keys,
            jwks,
            rules: ClaimRules {
                leeway: settings.leeway_seconds,
                audience: settings.audience.clone(),
                issuer: settings.issuer.clone(),
            },
            cookie: settings.cookie_name.clone(),
            started: AtomicBool::new(false),
        })
    }

    /// Fetches the JWKS (an error if that fails: better not to start than to refuse every
    /// token) and spawns its refresher on the current Tokio runtime. A no-op without a JWKS or
    /// when already started.
    pub async fn start(&self) -> Result<(), AuthError> {
        let Some(jwks) = &self.jwks else {
            return Ok(());
        };
        if self.started.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let n = jwks.load().await.map_err(AuthError::Jwks)?;
        tracing::info!(keys = n, "auth.jwks_url: keys loaded");
        tokio::spawn(jwks.clone().run());
        Ok(())
    }

    /// Whether subscribers must present a token.
    pub fn required(&self) -> bool {
        self.enabled
    }

    /// Checks the request's token, if authentication is on. Takes the head's parts, as every way
    /// a request arrives (raw socket, HTTP/1.1, HTTP/2) has them.
    pub fn authenticate(&self, headers: &HeaderMap, query: &str) -> Result<Grant, ApiError> {
        if !self.enabled {
            return Ok(Grant::Anyone);
        }
        let token =
            token::token_of(headers, query, self.cookie.as_deref()).ok_or(TokenError::Missing)?;
        self.verify(&token)
    }

    /// Verifies a token however it arrived (a WebSocket `auth` message, a refresh): the grant,
    /// or the 401 saying which rule failed. Everyone is let in when authentication is off.
    pub fn verify(&self, token: &str) -> Result<Grant, ApiError> {
        if !self.enabled {
            return Ok(Grant::Anyone);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.verify_at(token, now)
            .map(|claims| Grant::Token(Arc::new(claims)))
            .map_err(|e| {
                tracing::debug!(code = %e.code(), "token refused");
                ApiError::from(e)
            })
    }

    /// [`Authenticator::verify`] at `now`; an unknown `kid` asks the JWKS for a refresh.
    fn verify_at(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let jwks = self.jwks.as_ref().map(|j| j.keys());
        let all = self.keys.iter().chain(jwks.iter().flat_map(|k| k.iter()));
        let result = verify::verify(token, all, &self.rules, now);
        if result == Err(TokenError::UnknownKey)
            && let Some(jwks) = &self.jwks
        {
            jwks.request_refresh();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PublicKeySettings;
    use http::header::{AUTHORIZATION, COOKIE};
    use jsonwebtoken::Algorithm;
    use serde_json::json;
    use shared::{ChannelName, ErrorCode};
    use test_keys::{pair, sign};

    const SECRET: &str = "0123456789abcdef0123";

    fn far_future() -> u64 {
        4_000_000_000
    }

    fn hs_token(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn settings() -> AuthSettings {
        AuthSettings {
            jwt_secret: Some(SECRET.into()),
            ..Default::default()
        }
    }

    fn auth() -> Authenticator {
        Authenticator::new(&settings()).unwrap()
    }

    fn code(r: Result<Grant, ApiError>) -> ErrorCode {
        r.unwrap_err().code()
    }

    fn headers(name: http::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, value.parse().unwrap());
        h
    }

    #[test]
    fn tokens_from_header_query_or_cookie_grant_their_channels() {
        let t = hs_token(json!({
            "exp": far_future(), "channels": ["news", "chat:*"], "publish": ["chat:*"]
        }));
        let auth = Authenticator::new(&AuthSettings {
            cookie_name: Some("gw_token".into()),
            ..settings()
        })
        .unwrap();
        for (headers, query) in [
            (
                headers(AUTHORIZATION, &format!("bearer {t}")),
                String::new(),
            ),
            (HeaderMap::new(), format!("token={t}")),
            (headers(COOKIE, &format!("gw_token={t}")), String::new()),
        ] {
            let grant = auth.authenticate(&headers, &query).unwrap();
            assert!(grant.may_subscribe(&ChannelName::new("news").unwrap()));
            assert!(grant.may_subscribe(&ChannelName::new("chat:1").unwrap()));
            assert!(!grant.may_subscribe(&ChannelName::new("admin").unwrap()));
            assert!(grant.may_publish(&ChannelName::new("chat:1").unwrap()));
            assert!(!grant.may_publish(&ChannelName::new("news").unwrap()));
        }
    }

    #[test]
    fn refusals_say_which_rule_failed() {
        let a = auth();
        let q = |t: &str| a.authenticate(&HeaderMap::new(), &format!("token={t}"));
        assert_eq!(
            code(a.authenticate(&HeaderMap::new(), "")),
            ErrorCode::Unauthorized
        );
        assert_eq!(
            code(q(&hs_token(json!({"exp": 1})))),
            ErrorCode::TokenExpired
        );
        let soon = far_future() - 1;
        assert_eq!(
            code(q(&hs_token(json!({"exp": far_future(), "nbf": soon})))),
            ErrorCode::TokenNotYetValid
        );
        let forged = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"exp": far_future(), "channels": ["*"]}),
            &jsonwebtoken::EncodingKey::from_secret(b"another secret of 20b"),
        )
        .unwrap();
        assert_eq!(code(q(&forged)), ErrorCode::TokenBadSignature);
        // alg "none" with the claims a forger would want.
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJleHAiOjQwMDAwMDAwMDAsImNoYW5uZWxzIjpbIioiXX0.";
        assert_eq!(code(q(none)), ErrorCode::TokenAlgorithmNotAllowed);
        assert_eq!(code(q("garbage")), ErrorCode::TokenMalformed);
        // A refusal's words are the gateway's own.
        let e = q("garbage").unwrap_err();
        assert!(!e.detail().contains("InvalidToken"), "{}", e.detail());
    }

    #[test]
    fn any_audience_is_accepted_unless_one_is_configured() {
        let t = hs_token(json!({"exp": far_future(), "aud": "some-app"}));
        assert!(auth().verify(&t).is_ok());
        let strict = Authenticator::new(&AuthSettings {
            audience: vec!["gateway".into()],
            ..settings()
        })
        .unwrap();
        assert_eq!(code(strict.verify(&t)), ErrorCode::TokenWrongAudience);
    }

    #[test]
    fn without_a_key_everyone_may_do_everything() {
        let auth = Authenticator::new(&AuthSettings::default()).unwrap();
        let grant = auth.authenticate(&HeaderMap::new(), "").unwrap();
        assert!(grant.may_subscribe(&ChannelName::new("x").unwrap()));
        assert!(matches!(auth.verify("anything"), Ok(Grant::Anyone)));
    }

    #[test]
    fn pem_keys_and_the_secret_work_side_by_side() {
        let rsa = pair(Algorithm::RS256, "a");
        let ed = pair(Algorithm::EdDSA, "a");
        let auth = Authenticator::new(&AuthSettings {
            public_keys: vec![
                PublicKeySettings {
                    kid: Some("r".into()),
                    alg: "RS256".into(),
                    pem: Some(rsa.public_pem.clone()),
                    pem_file: None,
                },
                PublicKeySettings {
                    kid: None,
                    alg: "EdDSA".into(),
                    pem: Some(ed.public_pem.clone()),
                    pem_file: None,
                },
            ],
            ..settings()
        })
        .unwrap();
        let claims = json!({"exp": far_future(), "sub": "u", "info": {"name": "Ada"}});
        for token in [
            sign(&rsa, Some("r"), &claims),
            sign(&ed, None, &claims),
            sign(&ed, Some("whatever"), &claims),
            hs_token(claims.clone()),
        ] {
            match auth.verify(&token) {
                Ok(Grant::Token(c)) => {
                    assert_eq!(c.sub.as_deref(), Some("u"));
                    assert_eq!(c.info.as_ref().unwrap()["name"], "Ada");
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            code(auth.verify(&sign(&rsa, Some("r2"), &claims))),
            ErrorCode::TokenUnknownKey
        );
    }

    #[tokio::test]
    async fn a_jwks_file_is_loaded_at_start_and_reloaded_for_an_unknown_kid() {
        let dir = std::env::temp_dir().join(format!("gw-auth-jwks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jwks.json");
        let old = pair(Algorithm::ES256, "old");
        let new = pair(Algorithm::ES256, "new");
        let jwk = |p: &test_keys::KeyPair, kid: &str| {
            let mut v = serde_json::to_value(
                jsonwebtoken::jwk::Jwk::from_encoding_key(&p.encoding(), p.alg).unwrap(),
            )
            .unwrap();
            v["kid"] = kid.into();
            v
        };
        std::fs::write(&path, json!({"keys": [jwk(&old, "1")]}).to_string()).unwrap();
        let auth = Authenticator::new(&AuthSettings {
            jwks_url: Some(format!("file://{}", path.display())),
            jwks_cooldown_seconds: 1,
            ..Default::default()
        })
        .unwrap();
        auth.start().await.unwrap();
        let claims = json!({"exp": far_future()});
        assert!(auth.verify(&sign(&old, Some("1"), &claims)).is_ok());
        std::fs::write(
            &path,
            json!({"keys": [jwk(&old, "1"), jwk(&new, "2")]}).to_string(),
        )
        .unwrap();
        let by_new = sign(&new, Some("2"), &claims);
        assert_eq!(code(auth.verify(&by_new)), ErrorCode::TokenUnknownKey);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while auth.verify(&by_new).is_err() {
            assert!(std::time::Instant::now() < deadline, "never refreshed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn an_unreachable_jwks_stops_start_up() {
        let auth = Authenticator::new(&AuthSettings {
            jwks_url: Some("file:///nonexistent/jwks.json".into()),
            ..Default::default()
        })
        .unwrap();
        let err = auth.start().await.unwrap_err().to_string();
        assert!(err.contains("auth.jwks_url"), "{err}");
    }
}
