//! Verifying one token against a set of keys at a given time: the header, the key and algorithm
//! the key allows, the signature, then the claim rules. Pure (the clock is a parameter), so
//! every rule is tested without waiting.

use jsonwebtoken::errors::ErrorKind;

use super::claims::{self, ClaimRules, Claims};
use super::error::TokenError;
use super::keys::{self, Key};
use super::token;

/// The claims of `token` if it is signed by one of `keys` (as [`keys::candidates`] chooses)
/// and passes `rules` at `now` (Unix seconds).
pub fn verify<'k>(
    token: &str,
    keys: impl Iterator<Item = &'k Key> + Clone,
    rules: &ClaimRules,
    now: u64,
) -> Result<Claims, TokenError> {
    let parts = token::split(token)?;
    let candidates = keys::candidates(keys, &parts.header.alg, parts.header.kid.as_deref())?;
    let mut verified = false;
    for key in candidates {
        // The algorithm is the key's (equal to the header's, as candidates checked).
        match jsonwebtoken::crypto::verify(
            parts.signature,
            parts.message.as_bytes(),
            &key.decoding,
            key.alg,
        ) {
            Ok(true) => {
                verified = true;
                break;
            }
            Ok(false) => {}
            Err(e) if matches!(e.kind(), ErrorKind::Base64(_)) => {
                return Err(TokenError::Malformed(
                    "the token's signature is not base64url",
                ));
            }
            // A key that cannot verify this signature (a wrong-curve EC key, a short RSA
            // signature): as good as a mismatch.
            Err(_) => {}
        }
    }
    if !verified {
        return Err(TokenError::BadSignature);
    }
    claims::check(&token::payload(&parts)?, rules, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_keys::{KeyPair, pair, sign, sign_with_header};
    use jsonwebtoken::{Algorithm, DecodingKey, Header};
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn claims() -> serde_json::Value {
        json!({"sub": "u1", "exp": NOW + 60, "channels": ["news"]})
    }

    fn rules() -> ClaimRules {
        ClaimRules {
            leeway: 5,
            ..Default::default()
        }
    }

    fn key(pair: &KeyPair, kid: Option<&str>) -> Key {
        Key {
            kid: kid.map(str::to_owned),
            alg: pair.alg,
            decoding: pair.decoding(),
        }
    }

    const ALL: [Algorithm; 12] = [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    #[test]
    fn every_algorithm_verifies_with_its_key_and_not_with_another() {
        for alg in ALL {
            let right = pair(alg, "a");
            let wrong = pair(alg, "b");
            let token = sign(&right, None, &claims());
            let got = verify(&token, [key(&right, None)].iter(), &rules(), NOW)
                .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
            assert_eq!(got.sub.as_deref(), Some("u1"));
            assert_eq!(
                verify(&token, [key(&wrong, None)].iter(), &rules(), NOW),
                Err(TokenError::BadSignature),
                "{alg:?} with another key"
            );
        }
    }

    #[test]
    fn an_hs_token_is_refused_by_an_rsa_key_whose_pem_it_used_as_secret() {
        let rsa = pair(Algorithm::RS256, "a");
        // The classic attack: HMAC over the token with the public key's bytes as the secret.
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &jsonwebtoken::EncodingKey::from_secret(rsa.public_pem.as_bytes()),
        )
        .unwrap();
        let keys = [key(&rsa, Some("k1"))];
        assert_eq!(
            verify(&forged, keys.iter(), &rules(), NOW),
            Err(TokenError::AlgorithmNotAllowed)
        );
        let with_kid = sign_with_header(
            &pair(Algorithm::HS256, "x"),
            json!({"alg": "HS256", "kid": "k1"}),
            &claims(),
        );
        assert_eq!(
            verify(&with_kid, keys.iter(), &rules(), NOW),
            Err(TokenError::AlgorithmNotAllowed)
        );
        // Even a secret key holding those very bytes would not make an RS token valid.
        let secret = Key {
            kid: None,
            alg: Algorithm::HS256,
            decoding: DecodingKey::from_secret(rsa.public_pem.as_bytes()),
        };
        let rs_token = sign(&pair(Algorithm::RS256, "b"), None, &claims());
        assert_eq!(
            verify(&rs_token, [secret].iter(), &rules(), NOW),
            Err(TokenError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn none_and_crit_are_refused() {
        let hs = pair(Algorithm::HS256, "a");
        let keys = [key(&hs, None)];
        let b64 = |v: serde_json::Value| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let none = format!("{}.{}.", b64(json!({"alg": "none"})), b64(claims()));
        assert_eq!(
            verify(&none, keys.iter(), &rules(), NOW),
            Err(TokenError::AlgorithmNotAllowed)
        );
        let crit = sign_with_header(
            &hs,
            json!({"alg": "HS256", "crit": ["http://example.com/ext"], "http://example.com/ext": true}),
            &claims(),
        );
        assert_eq!(
            verify(&crit, keys.iter(), &rules(), NOW),
            Err(TokenError::UnsupportedCrit)
        );
        let bad_sig = format!("{}!!", sign(&hs, None, &claims()));
        assert!(matches!(
            verify(&bad_sig, keys.iter(), &rules(), NOW),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn claims_are_checked_after_the_signature() {
        let es = pair(Algorithm::ES256, "a");
        let keys = [key(&es, None)];
        let at = |claims: serde_json::Value| {
            verify(&sign(&es, None, &claims), keys.iter(), &rules(), NOW)
        };
        assert_eq!(at(json!({"exp": NOW - 10})), Err(TokenError::Expired));
        assert!(at(json!({"exp": NOW - 2})).is_ok(), "leeway");
        assert_eq!(
            at(json!({"exp": NOW + 60, "nbf": NOW + 30})),
            Err(TokenError::NotYetValid)
        );
        assert!(at(json!({"exp": NOW + 60, "aud": "anyone"})).is_ok());
        let strict = ClaimRules {
            audience: vec!["gw".into()],
            issuer: vec!["idp".into()],
            ..rules()
        };
        let token = sign(
            &es,
            None,
            &json!({"exp": NOW + 60, "aud": "x", "iss": "idp"}),
        );
        assert_eq!(
            verify(&token, keys.iter(), &strict, NOW),
            Err(TokenError::WrongAudience)
        );
        let token = sign(
            &es,
            None,
            &json!({"exp": NOW + 60, "aud": "gw", "iss": "x"}),
        );
        assert_eq!(
            verify(&token, keys.iter(), &strict, NOW),
            Err(TokenError::WrongIssuer)
        );
        // A forged expired token is a bad signature, not "expired": nothing unverified is read.
        let other = sign(&pair(Algorithm::ES256, "b"), None, &json!({"exp": 1}));
        assert_eq!(
            verify(&other, keys.iter(), &rules(), NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn keys_rotate_by_kid() {
        let old = pair(Algorithm::RS256, "a");
        let new = pair(Algorithm::RS256, "b");
        let by_old = sign(&old, Some("2024"), &claims());
        let by_new = sign(&new, Some("2025"), &claims());
        let both = [key(&old, Some("2024")), key(&new, Some("2025"))];
        assert!(verify(&by_old, both.iter(), &rules(), NOW).is_ok());
        assert!(verify(&by_new, both.iter(), &rules(), NOW).is_ok());
        let only_new = [key(&new, Some("2025"))];
        assert_eq!(
            verify(&by_old, only_new.iter(), &rules(), NOW),
            Err(TokenError::UnknownKey)
        );
        // A kid naming the wrong key does not fall through to the right one.
        let mislabelled = sign(&old, Some("2025"), &claims());
        assert_eq!(
            verify(&mislabelled, both.iter(), &rules(), NOW),
            Err(TokenError::BadSignature)
        );
        // Without a kid, every key of the algorithm is tried.
        let anonymous = sign(&new, None, &claims());
        assert!(verify(&anonymous, both.iter(), &rules(), NOW).is_ok());
    }
}
