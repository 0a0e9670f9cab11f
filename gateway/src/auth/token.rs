//! Where a request carries its token, and a token's parts: the JOSE header (only `alg`, `kid`
//! and `crit` matter), the signed message and the signature.
//!
//! Sources, first found wins (a present but invalid token is refused, not skipped):
//! `Authorization: Bearer <token>`, then `?token=<token>`, then the cookie named by
//! `auth.cookie_name`. Explicit credentials beat the ambient cookie.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{AUTHORIZATION, COOKIE, HeaderMap};
use serde::Deserialize;
use serde_json::Value;

use super::error::TokenError;

/// Longest token accepted; a request head is bounded anyway, this bounds the work per token.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The token of a request, from the first source that has one.
pub fn token_of(headers: &HeaderMap, query: &str, cookie: Option<&str>) -> Option<String> {
    bearer(headers)
        .or_else(|| {
            form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
        })
        .or_else(|| cookie.and_then(|name| cookie_value(headers, name)))
        .filter(|t| !t.is_empty())
}

/// `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned())
}

/// The value of cookie `name` in any `Cookie` header (HTTP/2 may split them).
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
}

/// The header parameters the gateway acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoseHeader {
    /// The algorithm the signer claims; only trusted when it equals the key's.
    pub alg: String,
    /// The key the signer names.
    pub kid: Option<String>,
}

/// A compact JWS split into its parts.
#[derive(Debug)]
pub struct Parts<'a> {
    /// The decoded header.
    pub header: JoseHeader,
    /// `base64url(header) "." base64url(payload)`: what was signed.
    pub message: &'a str,
    /// The payload, still base64url.
    pub payload: &'a str,
    /// The signature, still base64url.
    pub signature: &'a str,
}

/// The JSON header as sent; `crit` is captured to refuse it.
#[derive(Deserialize)]
struct RawHeader {
    alg: Option<Value>,
    kid: Option<Value>,
    crit: Option<Value>,
}

/// Splits `token` and reads its header. A `crit` header is refused whatever it lists: the
/// gateway implements no JWS extension (RFC 7515 §4.1.11).
pub fn split(token: &str) -> Result<Parts<'_>, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed("the token is too long"));
    }
    let shape = TokenError::Malformed("the token is not a JWT (header.payload.signature)");
    let (message, signature) = token.rsplit_once('.').ok_or(shape)?;
    let (header, payload) = message.split_once('.').ok_or(shape)?;
    if payload.contains('.') {
        return Err(shape);
    }
    let json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed("the token's header is not base64url"))?;
    let raw: RawHeader = serde_json::from_slice(&json)
        .map_err(|_| TokenError::Malformed("the token's header is not a JSON object"))?;
    if raw.crit.is_some() {
        return Err(TokenError::UnsupportedCrit);
    }
    let alg = match raw.alg {
        Some(Value::String(alg)) => alg,
        _ => return Err(TokenError::Malformed("the token's header has no alg")),
    };
    let kid = match raw.kid {
        None | Some(Value::Null) => None,
        Some(Value::String(kid)) => Some(kid),
        Some(_) => return Err(TokenError::Malformed("the token's kid is not a string")),
    };
    Ok(Parts {
        header: JoseHeader { alg, kid },
        message,
        payload,
        signature,
    })
}

/// The payload's bytes (after the signature verified).
pub fn payload(parts: &Parts<'_>) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(parts.payload)
        .map_err(|_| TokenError::Malformed("the token's payload is not base64url"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn sources_in_order_header_query_cookie() {
        let all = headers(&[("authorization", "Bearer H"), ("cookie", "gw_token=C")]);
        assert_eq!(
            token_of(&all, "token=Q", Some("gw_token")).as_deref(),
            Some("H")
        );
        let no_header = headers(&[("cookie", "a=1; gw_token=C; b=2")]);
        assert_eq!(
            token_of(&no_header, "token=Q", Some("gw_token")).as_deref(),
            Some("Q")
        );
        assert_eq!(
            token_of(&no_header, "x=1", Some("gw_token")).as_deref(),
            Some("C")
        );
        assert_eq!(
            token_of(&no_header, "", None),
            None,
            "cookies off by default"
        );
        let split = headers(&[("cookie", "a=1"), ("cookie", "gw_token=\"C2\"")]);
        assert_eq!(
            token_of(&split, "", Some("gw_token")).as_deref(),
            Some("C2")
        );
        let basic = headers(&[("authorization", "Basic dXNlcjpwdw==")]);
        assert_eq!(token_of(&basic, "", None), None);
        assert_eq!(token_of(&HeaderMap::new(), "token=", None), None);
    }

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn headers_are_read_strictly() {
        let body = b64("{}");
        let tok = |h: &str| format!("{}.{body}.c2ln", b64(h));
        let good = tok(r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#);
        let parts = split(&good).unwrap();
        assert_eq!(parts.header.alg, "RS256");
        assert_eq!(parts.header.kid.as_deref(), Some("k1"));
        assert_eq!(payload(&parts).unwrap(), b"{}");
        assert_eq!(
            split(&tok(r#"{"alg":"HS256","crit":["exp"],"exp":1}"#)).unwrap_err(),
            TokenError::UnsupportedCrit
        );
        assert_eq!(
            split(&tok(r#"{"alg":"HS256","b64":false,"crit":["b64"]}"#)).unwrap_err(),
            TokenError::UnsupportedCrit
        );
        for bad in [
            "garbage".to_owned(),
            "a.b".to_owned(),
            "a.b.c.d".to_owned(),
            format!("!!.{body}.c2ln"),
            tok(r#"["alg"]"#),
            tok(r#"{"typ":"JWT"}"#),
            tok(r#"{"alg":7}"#),
            tok(r#"{"alg":"HS256","kid":7}"#),
            "x".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert!(
                matches!(split(&bad), Err(TokenError::Malformed(_))),
                "{bad:.40}"
            );
        }
    }
}
