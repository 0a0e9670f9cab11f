//! Optional subscriber authentication with HS256 JSON Web Tokens.
//!
//! When `auth.jwt_secret` is set, SSE and WebSocket connections need a token, passed as
//! `Authorization: Bearer <token>` or `?token=<token>` (browsers cannot set headers on
//! `EventSource` or `WebSocket`). Claims:
//!
//! ```json
//! {"sub": "user-42", "exp": 1767225600, "channels": ["news", "chat:room-*"], "publish": ["chat:room-*"]}
//! ```
//!
//! `channels` lists what the holder may subscribe to and `publish` what it may publish to over
//! WebSocket; an entry is an exact name, a prefix ending in `*`, or `*` for everything. `exp`
//! is required. Backends keep using the publish API key; tokens are for end users.

use std::sync::Arc;

use http::StatusCode;
use http::header::{AUTHORIZATION, HeaderMap};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use shared::ChannelName;
use shared::ErrorCode;

use crate::config::AuthSettings;
use crate::error::ApiError;

/// What a token grants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token was issued to (for logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Channel patterns the holder may subscribe to.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Channel patterns the holder may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
}

/// The access a connection was granted.
#[derive(Debug, Clone)]
pub enum Grant {
    /// Authentication is off: every channel is open.
    Anyone,
    /// A verified token.
    Token(Arc<Claims>),
}

impl Grant {
    /// Whether the holder may subscribe to `channel`.
    pub fn may_subscribe(&self, channel: &ChannelName) -> bool {
        match self {
            Self::Anyone => true,
            Self::Token(c) => c.channels.iter().any(|p| matches(p, channel.as_str())),
        }
    }

    /// Whether the holder may publish to `channel` (client publishing must also be enabled).
    pub fn may_publish(&self, channel: &ChannelName) -> bool {
        match self {
            Self::Anyone => true,
            Self::Token(c) => c.publish.iter().any(|p| matches(p, channel.as_str())),
        }
    }
}

fn matches(pattern: &str, channel: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => pattern == channel,
    }
}

/// Verifies tokens; a no-op when no secret is configured.
pub struct Authenticator {
    verifier: Option<(DecodingKey, Validation)>,
}

impl Authenticator {
    /// Builds the verifier from settings.
    pub fn new(settings: &AuthSettings) -> Self {
        let verifier = settings.jwt_secret.as_ref().map(|secret| {
            let mut validation = Validation::new(Algorithm::HS256);
            validation.leeway = 5;
            validation.set_required_spec_claims(&["exp"]);
            (DecodingKey::from_secret(secret.as_bytes()), validation)
        });
        Self { verifier }
    }

    /// Checks the request's token, if authentication is on. Takes the head's parts, as every way
    /// a request arrives (raw socket, HTTP/1.1, HTTP/2) has them.
    pub fn authenticate(&self, headers: &HeaderMap, query: &str) -> Result<Grant, ApiError> {
        let Some((key, validation)) = &self.verifier else {
            return Ok(Grant::Anyone);
        };
        let token = token_of(headers, query).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "a token is required: Authorization: Bearer <token> or ?token=<token>",
            )
        })?;
        jsonwebtoken::decode::<Claims>(&token, key, validation)
            .map(|data| Grant::Token(Arc::new(data.claims)))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::Unauthorized,
                    format!("the token is not valid: {e}"),
                )
            })
    }
}

fn token_of(headers: &HeaderMap, query: &str) -> Option<String> {
    let header = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned());
    header.or_else(|| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    const SECRET: &str = "0123456789abcdef0123";

    fn token(claims: &Claims) -> String {
        jsonwebtoken::encode(
            &Header::default(),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    /// A request's parts, as the handlers pass them: headers and the query string.
    struct TestRequest {
        headers: HeaderMap,
        query: String,
    }

    impl TestRequest {
        fn default() -> Self {
            Self {
                headers: HeaderMap::new(),
                query: String::new(),
            }
        }

        fn with_query(query: &str) -> Self {
            Self {
                query: query.to_owned(),
                ..Self::default()
            }
        }

        fn with_authorization(value: &str) -> Self {
            let mut req = Self::default();
            req.headers.insert(AUTHORIZATION, value.parse().unwrap());
            req
        }
    }

    trait FromRequest {
        fn authenticate_req(&self, req: &TestRequest) -> Result<Grant, ApiError>;
    }

    impl FromRequest for Authenticator {
        fn authenticate_req(&self, req: &TestRequest) -> Result<Grant, ApiError> {
            self.authenticate(&req.headers, &req.query)
        }
    }

    fn auth() -> Authenticator {
        Authenticator::new(&AuthSettings {
            jwt_secret: Some(SECRET.into()),
        })
    }

    fn far_future() -> u64 {
        4_000_000_000
    }

    #[test]
    fn patterns() {
        assert!(matches("news", "news"));
        assert!(!matches("news", "newsy"));
        assert!(matches("chat:*", "chat:room-1"));
        assert!(!matches("chat:*", "chatter"));
        assert!(matches("*", "anything"));
    }

    #[test]
    fn tokens_from_header_or_query_grant_their_channels() {
        let claims = Claims {
            exp: far_future(),
            channels: vec!["news".into(), "chat:*".into()],
            publish: vec!["chat:*".into()],
            ..Default::default()
        };
        let t = token(&claims);
        for req in [
            TestRequest::with_authorization(&format!("bearer {t}")),
            TestRequest::with_query(&format!("token={t}")),
        ] {
            let grant = auth().authenticate_req(&req).unwrap();
            assert!(grant.may_subscribe(&ChannelName::new("news").unwrap()));
            assert!(grant.may_subscribe(&ChannelName::new("chat:1").unwrap()));
            assert!(!grant.may_subscribe(&ChannelName::new("admin").unwrap()));
            assert!(grant.may_publish(&ChannelName::new("chat:1").unwrap()));
            assert!(!grant.may_publish(&ChannelName::new("news").unwrap()));
        }
    }

    #[test]
    fn missing_expired_forged_and_unsigned_tokens_are_refused() {
        let req = |t: &str| TestRequest::with_query(&format!("token={t}"));
        assert!(auth().authenticate_req(&TestRequest::default()).is_err());
        let expired = token(&Claims {
            exp: 1,
            ..Default::default()
        });
        assert!(auth().authenticate_req(&req(&expired)).is_err());
        let forged = jsonwebtoken::encode(
            &Header::default(),
            &Claims {
                exp: far_future(),
                channels: vec!["*".into()],
                ..Default::default()
            },
            &EncodingKey::from_secret(b"another secret of 20b"),
        )
        .unwrap();
        assert!(auth().authenticate_req(&req(&forged)).is_err());
        // alg "none" with the claims a forger would want.
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJleHAiOjQwMDAwMDAwMDAsImNoYW5uZWxzIjpbIioiXX0.";
        assert!(auth().authenticate_req(&req(none)).is_err());
        assert!(auth().authenticate_req(&req("garbage")).is_err());
    }

    #[test]
    fn without_a_secret_everyone_may_do_everything() {
        let grant = Authenticator::new(&AuthSettings::default())
            .authenticate_req(&TestRequest::default())
            .unwrap();
        assert!(grant.may_subscribe(&ChannelName::new("x").unwrap()));
    }
}
