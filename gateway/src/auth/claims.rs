//! What a token grants ([`Claims`], [`Grant`]) and the claim rules a verified token must pass:
//! `exp` required, `nbf` when present, both with a leeway; `iss` and `aud` when configured.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use shared::ChannelName;

use super::error::TokenError;

/// What a token grants.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token was issued to (logs, presence).
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
    /// App-defined facts about the holder (a display name, say), shown to others by presence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Map<String, Value>>,
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
    /// A grant of no channel at all: a WebSocket's until its first `auth` message.
    pub fn nothing() -> Self {
        Self::Token(Arc::new(Claims::default()))
    }

    /// When the grant ends, Unix seconds: a token's `exp` (streams end there unless refreshed).
    pub fn expires(&self) -> Option<u64> {
        match self {
            Self::Anyone => None,
            // A hook's grant without `exp` does not end.
            Self::Token(c) => (c.exp != u64::MAX).then_some(c.exp),
        }
    }

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

use shared::pattern_matches as matches;

/// The configured claim rules.
#[derive(Debug, Clone, Default)]
pub struct ClaimRules {
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    pub leeway: u64,
    /// Accepted audiences; empty: `aud` is not checked.
    pub audience: Vec<String>,
    /// Accepted issuers; empty: `iss` is not checked.
    pub issuer: Vec<String>,
}

/// A claims set as sent, with the registered claims the rules need.
#[derive(Deserialize)]
struct Raw {
    #[serde(default, deserialize_with = "numeric_date")]
    exp: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    nbf: Option<u64>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    info: Option<Map<String, Value>>,
}

/// `aud`: one string or a list (RFC 7519 §4.1.3).
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn names(&self) -> &[String] {
        match self {
            Self::One(a) => std::slice::from_ref(a),
            Self::Many(a) => a,
        }
    }
}

/// A NumericDate: seconds, possibly with a fraction (dropped).
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(n) = n.as_u64() {
        return Ok(Some(n));
    }
    match n.as_f64() {
        Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => Ok(Some(f as u64)),
        _ => Err(serde::de::Error::custom(
            "a NumericDate is a non-negative number",
        )),
    }
}

/// Reads the (already verified) payload and applies the rules at time `now` (Unix seconds).
pub fn check(payload: &[u8], rules: &ClaimRules, now: u64) -> Result<Claims, TokenError> {
    let raw: Raw = serde_json::from_slice(payload).map_err(|_| {
        TokenError::Malformed(
            "the token's claims are not the documented JSON object (exp and nbf numbers, sub and \
             iss strings, aud a string or list, channels and publish lists, info an object)",
        )
    })?;
    let exp = raw
        .exp
        .ok_or(TokenError::Malformed("the token has no exp claim"))?;
    if now >= exp.saturating_add(rules.leeway) {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = raw.nbf
        && nbf > now.saturating_add(rules.leeway)
    {
        return Err(TokenError::NotYetValid);
    }
    if !rules.issuer.is_empty() && !raw.iss.as_ref().is_some_and(|i| rules.issuer.contains(i)) {
        return Err(TokenError::WrongIssuer);
    }
    if !rules.audience.is_empty()
        && !raw
            .aud
            .as_ref()
            .is_some_and(|a| a.names().iter().any(|n| rules.audience.contains(n)))
    {
        return Err(TokenError::WrongAudience);
    }
    Ok(Claims {
        sub: raw.sub,
        exp,
        channels: raw.channels,
        publish: raw.publish,
        info: raw.info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn run(claims: Value, rules: &ClaimRules) -> Result<Claims, TokenError> {
        check(claims.to_string().as_bytes(), rules, NOW)
    }

    fn leeway(secs: u64) -> ClaimRules {
        ClaimRules {
            leeway: secs,
            ..Default::default()
        }
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
    fn exp_is_required_and_checked_with_the_leeway() {
        let rules = leeway(5);
        assert_eq!(
            run(json!({"sub": "u"}), &rules),
            Err(TokenError::Malformed("the token has no exp claim"))
        );
        assert!(run(json!({"exp": NOW + 1}), &leeway(0)).is_ok());
        assert_eq!(
            run(json!({"exp": NOW}), &leeway(0)),
            Err(TokenError::Expired)
        );
        assert!(
            run(json!({"exp": NOW - 4}), &rules).is_ok(),
            "within leeway"
        );
        assert_eq!(
            run(json!({"exp": NOW - 5}), &rules),
            Err(TokenError::Expired)
        );
        assert!(run(json!({"exp": (NOW + 10) as f64 + 0.5}), &rules).is_ok());
        assert!(matches!(
            run(json!({"exp": "tomorrow"}), &rules),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            run(json!({"exp": -1}), &rules),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn nbf_is_checked_when_present() {
        let exp = NOW + 100;
        assert!(run(json!({"exp": exp, "nbf": NOW}), &leeway(0)).is_ok());
        assert_eq!(
            run(json!({"exp": exp, "nbf": NOW + 1}), &leeway(0)),
            Err(TokenError::NotYetValid)
        );
        assert!(run(json!({"exp": exp, "nbf": NOW + 5}), &leeway(5)).is_ok());
        assert_eq!(
            run(json!({"exp": exp, "nbf": NOW + 6}), &leeway(5)),
            Err(TokenError::NotYetValid)
        );
    }

    #[test]
    fn aud_and_iss_are_checked_only_when_configured() {
        let exp = NOW + 100;
        let open = ClaimRules::default();
        // Any aud is fine when no audience is configured.
        assert!(run(json!({"exp": exp, "aud": "someone"}), &open).is_ok());
        assert!(run(json!({"exp": exp, "aud": ["a", "b"], "iss": "x"}), &open).is_ok());
        let strict = ClaimRules {
            audience: vec!["gw".into()],
            issuer: vec!["https://idp".into()],
            ..Default::default()
        };
        let ok = json!({"exp": exp, "aud": ["other", "gw"], "iss": "https://idp"});
        assert!(run(ok, &strict).is_ok());
        assert!(
            run(
                json!({"exp": exp, "aud": "gw", "iss": "https://idp"}),
                &strict
            )
            .is_ok()
        );
        assert_eq!(
            run(
                json!({"exp": exp, "aud": "other", "iss": "https://idp"}),
                &strict
            ),
            Err(TokenError::WrongAudience)
        );
        assert_eq!(
            run(json!({"exp": exp, "iss": "https://idp"}), &strict),
            Err(TokenError::WrongAudience),
            "no aud when one is required"
        );
        assert_eq!(
            run(
                json!({"exp": exp, "aud": "gw", "iss": "https://evil"}),
                &strict
            ),
            Err(TokenError::WrongIssuer)
        );
        assert_eq!(
            run(json!({"exp": exp, "aud": "gw"}), &strict),
            Err(TokenError::WrongIssuer)
        );
    }

    #[test]
    fn claims_carry_sub_info_and_channels() {
        let claims = run(
            json!({"exp": NOW + 9, "sub": "u1", "info": {"name": "Ada"}, "channels": ["a"], "publish": ["b"]}),
            &ClaimRules::default(),
        )
        .unwrap();
        assert_eq!(claims.sub.as_deref(), Some("u1"));
        assert_eq!(claims.info.unwrap()["name"], "Ada");
        assert_eq!(
            (claims.channels, claims.publish),
            (vec!["a".into()], vec!["b".into()])
        );
        for bad in [
            json!({"exp": NOW + 9, "info": "Ada"}),
            json!({"exp": NOW + 9, "sub": 7}),
            json!({"exp": NOW + 9, "channels": "a"}),
            json!({"exp": NOW + 9, "aud": 3}),
            json!(["not", "an", "object"]),
        ] {
            assert!(matches!(
                run(bad.clone(), &ClaimRules::default()),
                Err(TokenError::Malformed(_))
            ));
        }
    }
}
