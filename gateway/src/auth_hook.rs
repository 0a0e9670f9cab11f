//! The backend authorization hook (`auth.hook_url`), for apps whose users hold session cookies
//! rather than tokens, as Nchan's `nchan_authorize_request` and Centrifugo's connect proxy do.
//!
//! For a connection without a token, the gateway `POST`s to the hook the client's `Cookie` and
//! `Authorization` headers and a JSON body `{"transport": "sse"|"ws", "channels": [...]}` (the
//! channels an SSE request names; none for a WebSocket, which subscribes later). A 2xx answer
//! is a grant, in the claims' shape — `{"channels": [...], "publish": [...], "sub": ..., "exp":
//! ...}`, every field optional (no `exp`: the grant does not end); 401 and 403 refuse; anything
//! else, a timeout or no answer is 503, so a backend outage never opens the door. Answers are
//! cached for a short while per credentials and channels, in a bounded map.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use http::header::{AUTHORIZATION, COOKIE, HeaderMap};
use parking_lot::Mutex;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use shared::{ChannelName, ErrorCode};

use crate::auth::{Claims, Grant};
use crate::config::AuthSettings;
use crate::error::ApiError;
use crate::state::Transport;

/// Largest hook answer read, bytes.
const MAX_ANSWER: usize = 64 * 1024;

/// The hook client and its answer cache.
pub struct AuthHook {
    url: String,
    client: reqwest::Client,
    positive: Duration,
    negative: Duration,
    capacity: usize,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    /// When a failure was last logged at WARN (an outage must not log once per client).
    last_warning: Mutex<Option<Instant>>,
}

struct Cached {
    answer: Answer,
    until: Instant,
}

/// What the backend said, as kept in the cache.
#[derive(Clone)]
enum Answer {
    Allow(Arc<Claims>),
    Refuse(StatusCode),
}

/// A 2xx answer's body.
#[derive(Deserialize)]
struct Allowed {
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    info: Option<serde_json::Map<String, serde_json::Value>>,
}

impl AuthHook {
    /// The hook of `settings`, if one is configured.
    pub fn new(settings: &AuthSettings) -> Option<Self> {
        let url = settings.hook_url.clone()?;
        let timeout = Duration::from_millis(settings.hook_timeout_ms);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .ok()?;
        Some(Self {
            url,
            client,
            positive: Duration::from_secs(settings.hook_cache_seconds),
            negative: Duration::from_secs(settings.hook_negative_cache_seconds),
            capacity: settings.hook_cache_entries,
            cache: Mutex::new(HashMap::new()),
            last_warning: Mutex::new(None),
        })
    }

    /// The grant for a connection's credentials and channels: from the cache, or the backend.
    pub async fn authorize(
        &self,
        transport: Transport,
        headers: &HeaderMap,
        channels: &[ChannelName],
    ) -> Result<Grant, ApiError> {
        let key = cache_key(transport, headers, channels);
        let cached = {
            let cache = self.cache.lock();
            cache
                .get(&key)
                .filter(|c| c.until > Instant::now())
                .map(|c| c.answer.clone())
        };
        let answer = match cached {
            Some(answer) => answer,
            None => {
                let answer = self.ask(transport, headers, channels).await?;
                self.remember(key, &answer);
                answer
            }
        };
        match answer {
            Answer::Allow(claims) => Ok(Grant::Token(claims)),
            Answer::Refuse(status) => {
                let code = match status {
                    StatusCode::FORBIDDEN => ErrorCode::Forbidden,
                    _ => ErrorCode::Unauthorized,
                };
                let detail = "the backend did not authorize this connection";
                Err(ApiError::new(status, code, detail))
            }
        }
    }

    async fn ask(
        &self,
        transport: Transport,
        headers: &HeaderMap,
        channels: &[ChannelName],
    ) -> Result<Answer, ApiError> {
        let body = serde_json::json!({
            "transport": transport.label(),
            "channels": channels.iter().map(ChannelName::as_str).collect::<Vec<_>>(),
        });
        let mut request = self.client.post(&self.url).json(&body);
        for name in [COOKIE, AUTHORIZATION] {
            for value in headers.get_all(&name) {
                request = request.header(&name, value);
            }
        }
        let response = request.send().await.map_err(|e| {
            self.failed(&e.without_url(), "the auth hook did not answer");
            unavailable()
        })?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Ok(Answer::Refuse(status));
        }
        if !status.is_success() {
            self.failed(&status, "the auth hook failed");
            return Err(unavailable());
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER as u64)
        {
            return Err(unavailable());
        }
        let bytes = response.bytes().await.map_err(|_| unavailable())?;
        if bytes.len() > MAX_ANSWER {
            return Err(unavailable());
        }
        let allowed: Allowed = if bytes.iter().all(u8::is_ascii_whitespace) {
            Allowed {
                channels: Vec::new(),
                publish: Vec::new(),
                sub: None,
                exp: None,
                info: None,
            }
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                self.failed(&e, "the auth hook's answer is not the documented JSON");
                unavailable()
            })?
        };
        Ok(Answer::Allow(Arc::new(Claims {
            sub: allowed.sub,
            // No expiry: the grant lasts as long as the connection.
            exp: allowed.exp.unwrap_or(u64::MAX),
            channels: allowed.channels,
            publish: allowed.publish,
            info: allowed.info,
        })))
    }

    /// Logs a failure: at WARN at most every ten seconds, else at DEBUG.
    fn failed(&self, error: &dyn std::fmt::Display, what: &'static str) {
        let now = Instant::now();
        let mut last = self.last_warning.lock();
        if last.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(10)) {
            *last = Some(now);
            tracing::warn!(error = %error, "{what} (further failures within 10 s at DEBUG)");
        } else {
            tracing::debug!(error = %error, "{what}");
        }
    }

    /// Keeps an answer for its time; a full cache first drops what expired, then everything
    /// (a flood of distinct credentials must not grow memory).
    fn remember(&self, key: [u8; 32], answer: &Answer) {
        let ttl = match answer {
            Answer::Allow(_) => self.positive,
            Answer::Refuse(_) => self.negative,
        };
        if ttl.is_zero() || self.capacity == 0 {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock();
        if cache.len() >= self.capacity {
            cache.retain(|_, c| c.until > now);
            if cache.len() >= self.capacity {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Cached {
                answer: answer.clone(),
                until: now + ttl,
            },
        );
    }
}

fn unavailable() -> ApiError {
    ApiError::unavailable(
        ErrorCode::AuthUnavailable,
        "the authorization backend is unavailable",
        1,
    )
}

/// The cache key: a digest of everything the answer depends on (the credentials stay out of
/// memory as such).
fn cache_key(transport: Transport, headers: &HeaderMap, channels: &[ChannelName]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(transport.label());
    for name in [COOKIE, AUTHORIZATION] {
        for value in headers.get_all(&name) {
            h.update([0u8]);
            h.update(value.as_bytes());
        }
        h.update([1u8]);
    }
    for c in channels {
        h.update(c.as_str());
        h.update([0u8]);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_tell_credentials_and_channels_apart() {
        let mut a = HeaderMap::new();
        a.insert(COOKIE, "session=alice".parse().unwrap());
        let mut b = HeaderMap::new();
        b.insert(COOKIE, "session=bob".parse().unwrap());
        let news = [ChannelName::new("news").unwrap()];
        let k = |h: &HeaderMap, c: &[ChannelName]| cache_key(Transport::Sse, h, c);
        assert_eq!(k(&a, &news), k(&a, &news));
        assert_ne!(k(&a, &news), k(&b, &news));
        assert_ne!(k(&a, &news), k(&a, &[]));
        // A cookie value cannot pose as an Authorization header.
        let mut c = HeaderMap::new();
        c.insert(AUTHORIZATION, "session=alice".parse().unwrap());
        assert_ne!(k(&a, &news), k(&c, &news));
        assert_ne!(
            cache_key(Transport::Ws, &a, &news),
            cache_key(Transport::Sse, &a, &news)
        );
    }

    #[test]
    fn the_cache_stays_bounded() {
        let hook = AuthHook::new(&AuthSettings {
            hook_url: Some("http://127.0.0.1:9/".into()),
            hook_cache_entries: 3,
            ..AuthSettings::default()
        })
        .unwrap();
        for i in 0..10u8 {
            hook.remember([i; 32], &Answer::Refuse(StatusCode::FORBIDDEN));
            assert!(hook.cache.lock().len() <= 3);
        }
    }
}
