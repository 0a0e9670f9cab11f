//! Who may publish: the API keys of `[publish]`, each with the channels it may publish to and a
//! token-bucket rate. A caller is identified once per request, from `Authorization: Bearer`,
//! by comparing SHA-256 digests in constant time against every key, so neither the timing nor
//! the order of the keys tells an attacker anything about a key.

use std::time::Instant;

use http::StatusCode;
use http::header::{AUTHORIZATION, HeaderMap};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use shared::{ChannelName, ErrorCode, pattern_matches};
use subtle::ConstantTimeEq;

use crate::bucket::TokenBucket;
use crate::config::PublishSettings;
use crate::error::ApiError;

/// The configured keys; with none, publishing is anonymous.
pub struct Publishers {
    keys: Vec<Key>,
}

struct Key {
    name: String,
    digest: [u8; 32],
    channels: Vec<String>,
    bucket: Option<Mutex<TokenBucket>>,
}

/// Who is publishing: a key, or anyone when no key is configured.
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    key: Option<&'a Key>,
}

impl Publishers {
    /// The keys of `settings` (`api_key` is named `default` and covers every channel).
    pub fn new(settings: &PublishSettings) -> Self {
        let rate = |own: Option<u32>| {
            let per_second = own.unwrap_or(settings.rate_per_second);
            (per_second > 0).then(|| {
                let burst = match settings.burst {
                    0 => per_second.saturating_mul(2),
                    b => b,
                };
                Mutex::new(TokenBucket::new(f64::from(per_second), f64::from(burst)))
            })
        };
        let mut keys = Vec::new();
        if let Some(secret) = &settings.api_key {
            keys.push(Key {
                name: "default".into(),
                digest: digest(secret.expose().as_bytes()),
                channels: vec!["*".into()],
                bucket: rate(None),
            });
        }
        for k in &settings.keys {
            if let Some(secret) = &k.key {
                keys.push(Key {
                    name: k.name.clone(),
                    digest: digest(secret.expose().as_bytes()),
                    channels: k.channels.clone(),
                    bucket: rate(k.rate_per_second),
                });
            }
        }
        Self { keys }
    }

    /// The caller behind `headers`: 401 when keys are configured and none matches. A known key
    /// over its rate gets 429 with `Retry-After`.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Caller<'_>, ApiError> {
        if self.keys.is_empty() {
            return Ok(Caller { key: None });
        }
        let given = bearer(headers).ok_or_else(|| {
            unauthorized("publishing needs the header Authorization: Bearer <api key>")
        })?;
        let given = digest(given.as_bytes());
        // Every key is compared, whatever matched first.
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.digest.ct_eq(&given)) {
                found = Some(key);
            }
        }
        let key = found.ok_or_else(|| unauthorized("the API key is wrong"))?;
        if let Some(bucket) = &key.bucket
            && let Err(wait) = bucket.lock().take_n(1, Instant::now())
        {
            return Err(over_rate(key, wait));
        }
        Ok(Caller { key: Some(key) })
    }

    /// Whether `Authorization: Bearer` names one of the configured keys (compared like
    /// [`Publishers::identify`] does): a backend reading history with its API key rather than
    /// a subscriber with a token.
    pub fn holds_key(&self, headers: &HeaderMap) -> bool {
        let Some(given) = bearer(headers) else {
            return false;
        };
        let given = digest(given.as_bytes());
        let mut found = false;
        for key in &self.keys {
            found |= bool::from(key.digest.ct_eq(&given));
        }
        found
    }
}

impl Caller<'_> {
    /// Charges `extra` more publishes (a batch's events beyond its first) to the key's rate:
    /// 429 with `Retry-After` when the bucket does not hold them all (then none is taken).
    pub fn charge(&self, extra: usize) -> Result<(), ApiError> {
        let Some(key) = self.key else { return Ok(()) };
        let Some(bucket) = &key.bucket else {
            return Ok(());
        };
        let extra = u32::try_from(extra).unwrap_or(u32::MAX);
        bucket
            .lock()
            .take_n(extra, Instant::now())
            .map_err(|wait| over_rate(key, wait))
    }

    /// Whether this caller may publish everywhere (a key with the pattern `*`, or no keys at
    /// all): what seeing every channel's name on the status page takes.
    pub fn covers_every_channel(&self) -> bool {
        self.key
            .is_none_or(|key| key.channels.iter().any(|p| p == "*"))
    }

    /// 403 unless this caller's key covers `channel`.
    pub fn may_publish(&self, channel: &ChannelName) -> Result<(), ApiError> {
        let Some(key) = self.key else { return Ok(()) };
        if key
            .channels
            .iter()
            .any(|p| pattern_matches(p, channel.as_str()))
        {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::PublishForbidden,
            format!("the API key {:?} may not publish to {channel}", key.name),
        ))
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        // The scheme name is case-insensitive (RFC 9110, section 11.1).
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

fn over_rate(key: &Key, wait: u32) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::RateLimited,
        format!("the API key {:?} is over its publish rate", key.name),
    )
    .with_retry_after(wait)
}

fn unauthorized(detail: &'static str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiKeySettings, Secret};

    fn headers(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
        h
    }

    fn settings() -> PublishSettings {
        PublishSettings {
            api_key: Some(Secret::new("the-default-key")),
            keys: vec![ApiKeySettings {
                name: "chat".into(),
                key: Some(Secret::new("a-chat-only-key-0123")),
                key_file: None,
                channels: vec!["chat:*".into()],
                rate_per_second: Some(1),
            }],
            ..PublishSettings::default()
        }
    }

    #[test]
    fn keys_identify_callers_and_limit_channels() {
        let p = Publishers::new(&settings());
        let news = ChannelName::new("news").unwrap();
        let chat = ChannelName::new("chat:1").unwrap();
        let default = p.identify(&headers("the-default-key")).unwrap();
        assert!(default.may_publish(&news).is_ok());
        let chat_key = p.identify(&headers("a-chat-only-key-0123")).unwrap();
        assert!(chat_key.may_publish(&chat).is_ok());
        assert_eq!(
            chat_key.may_publish(&news).unwrap_err().code(),
            ErrorCode::PublishForbidden
        );
        for wrong in [headers("nope"), HeaderMap::new(), headers("the-default-ke")] {
            assert_eq!(
                p.identify(&wrong).err().map(|e| e.code()),
                Some(ErrorCode::Unauthorized)
            );
        }
    }

    #[test]
    fn without_keys_anyone_publishes_anywhere() {
        let p = Publishers::new(&PublishSettings::default());
        let caller = p.identify(&HeaderMap::new()).unwrap();
        assert!(caller.may_publish(&ChannelName::new("x").unwrap()).is_ok());
    }

    #[test]
    fn a_key_over_its_rate_is_told_when_to_come_back() {
        let p = Publishers::new(&settings());
        // Rate 1/s, burst 2.
        assert!(p.identify(&headers("a-chat-only-key-0123")).is_ok());
        assert!(p.identify(&headers("a-chat-only-key-0123")).is_ok());
        let e = p.identify(&headers("a-chat-only-key-0123")).err().unwrap();
        assert_eq!(e.code(), ErrorCode::RateLimited);
        // The default key has no rate.
        for _ in 0..10 {
            assert!(p.identify(&headers("the-default-key")).is_ok());
        }
    }
}
