//! Verifying keys: each with the ONE algorithm it verifies and an optional `kid`. The key decides
//! the algorithm, never the token: a token whose `alg` differs from its key's is refused, so an
//! HS256 token "signed" with an RSA public key as the HMAC secret (algorithm confusion) never
//! reaches a verifier, and `alg: none` matches no key at all.

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::error::TokenError;
use crate::config::{ConfigError, PublicKeySettings};

/// A key that verifies tokens.
#[derive(Clone)]
pub struct Key {
    /// The `kid` tokens signed with it carry, if it has one.
    pub kid: Option<String>,
    /// The one algorithm it verifies.
    pub alg: Algorithm,
    /// The key material.
    pub decoding: DecodingKey,
}

impl std::fmt::Debug for Key {
    /// Names the key, never its material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// The algorithms the gateway verifies, by their JOSE names.
const ALGORITHMS: [(&str, Algorithm); 12] = [
    ("HS256", Algorithm::HS256),
    ("HS384", Algorithm::HS384),
    ("HS512", Algorithm::HS512),
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

/// The algorithm named `name` (exact JOSE spelling), if the gateway verifies it.
pub fn algorithm(name: &str) -> Option<Algorithm> {
    ALGORITHMS.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
}

/// `auth.jwt_secret_algorithm`: an HMAC algorithm.
pub fn secret_algorithm(name: &str) -> Result<Algorithm, String> {
    algorithm(name)
        .filter(|a| a.family() == AlgorithmFamily::Hmac)
        .ok_or_else(|| format!("{name:?} is not HS256, HS384 or HS512"))
}

/// The HMAC key of the secret.
pub fn secret_key(secret: &[u8], alg: Algorithm) -> Key {
    Key {
        kid: None,
        alg,
        decoding: DecodingKey::from_secret(secret),
    }
}

/// `auth.public_keys`: every entry read and parsed, or the first problem, naming the entry.
pub fn public_keys(entries: &[PublicKeySettings]) -> Result<Vec<Key>, ConfigError> {
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            public_key(entry).map_err(|problem| ConfigError::Invalid {
                key: "auth.public_keys",
                problem: format!(
                    "entry {i} ({}): {problem}",
                    entry.kid.as_deref().unwrap_or("no kid")
                ),
            })
        })
        .collect()
}

fn public_key(entry: &PublicKeySettings) -> Result<Key, String> {
    let alg = algorithm(&entry.alg)
        .filter(|a| a.family() != AlgorithmFamily::Hmac)
        .ok_or_else(|| {
            format!(
                "alg {:?} is not one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, \
                 EdDSA (HMAC secrets go in auth.jwt_secret)",
                entry.alg
            )
        })?;
    let pem = match (&entry.pem, &entry.pem_file) {
        (Some(pem), None) => pem.as_bytes().to_vec(),
        (None, Some(path)) => {
            std::fs::read(path).map_err(|e| format!("cannot read pem_file {path}: {e}"))?
        }
        _ => return Err("set exactly one of pem and pem_file".into()),
    };
    let decoding = match alg.family() {
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&pem),
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem),
        AlgorithmFamily::Ed => DecodingKey::from_ed_pem(&pem),
        AlgorithmFamily::Hmac => return Err("HMAC secrets go in auth.jwt_secret".into()),
    }
    .map_err(|_| format!("the PEM is not a public key for {}", entry.alg))?;
    Ok(Key {
        kid: entry.kid.clone(),
        alg,
        decoding,
    })
}

/// The keys to try for a token with header `alg` and `kid`, out of `keys`:
///
/// - a `kid` that keys carry: those keys, if one has the token's algorithm;
/// - a `kid` no key carries: the keys without a `kid` that have the algorithm (a secret or PEM
///   key configured without one), else [`TokenError::UnknownKey`];
/// - no `kid`: every key with the algorithm.
///
/// An algorithm no candidate has is [`TokenError::AlgorithmNotAllowed`] (`none` included).
pub fn candidates<'k>(
    keys: impl Iterator<Item = &'k Key> + Clone,
    alg: &str,
    kid: Option<&str>,
) -> Result<Vec<&'k Key>, TokenError> {
    let alg = algorithm(alg);
    let with_alg = |k: &&Key| Some(k.alg) == alg;
    let pick = |named: Vec<&'k Key>| {
        let chosen: Vec<_> = named.into_iter().filter(with_alg).collect();
        if chosen.is_empty() {
            Err(TokenError::AlgorithmNotAllowed)
        } else {
            Ok(chosen)
        }
    };
    match kid {
        Some(kid) => {
            let named: Vec<_> = keys
                .clone()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect();
            if !named.is_empty() {
                return pick(named);
            }
            let anonymous: Vec<_> = keys.filter(|k| k.kid.is_none()).collect();
            if anonymous.is_empty() {
                return Err(TokenError::UnknownKey);
            }
            pick(anonymous).map_err(|_| TokenError::UnknownKey)
        }
        None => pick(keys.collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: Option<&str>, alg: Algorithm) -> Key {
        Key {
            kid: kid.map(str::to_owned),
            alg,
            decoding: DecodingKey::from_secret(b"irrelevant here"),
        }
    }

    fn picked(keys: &[Key], alg: &str, kid: Option<&str>) -> Result<Vec<String>, TokenError> {
        candidates(keys.iter(), alg, kid).map(|ks| {
            ks.iter()
                .map(|k| format!("{}:{:?}", k.kid.as_deref().unwrap_or("-"), k.alg))
                .collect()
        })
    }

    #[test]
    fn the_key_decides_the_algorithm() {
        let keys = [
            key(None, Algorithm::HS256),
            key(Some("r1"), Algorithm::RS256),
            key(Some("r2"), Algorithm::RS256),
            key(Some("e1"), Algorithm::ES256),
        ];
        assert_eq!(
            picked(&keys, "RS256", Some("r2")),
            Ok(vec!["r2:RS256".into()])
        );
        assert_eq!(
            picked(&keys, "HS256", Some("r1")),
            Err(TokenError::AlgorithmNotAllowed),
            "an HS token naming an RSA key"
        );
        assert_eq!(
            picked(&keys, "RS256", None),
            Ok(vec!["r1:RS256".into(), "r2:RS256".into()])
        );
        assert_eq!(picked(&keys, "HS256", None), Ok(vec!["-:HS256".into()]));
        assert_eq!(
            picked(&keys, "HS256", Some("from-another-minting-lib")),
            Ok(vec!["-:HS256".into()])
        );
        assert_eq!(
            picked(&keys, "RS256", Some("r9")),
            Err(TokenError::UnknownKey)
        );
        for alg in ["none", "None", "HS1", "ES512", ""] {
            assert_eq!(
                picked(&keys, alg, None),
                Err(TokenError::AlgorithmNotAllowed)
            );
        }
        assert_eq!(
            picked(&[], "RS256", Some("r1")),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn configured_keys_are_checked() {
        let entry = |alg: &str, pem: Option<&str>, file: Option<&str>| PublicKeySettings {
            kid: Some("k".into()),
            alg: alg.into(),
            pem: pem.map(str::to_owned),
            pem_file: file.map(str::to_owned),
        };
        for bad in [
            entry("HS256", Some("x"), None),
            entry("none", Some("x"), None),
            entry("RS256", None, None),
            entry("RS256", Some("x"), Some("/y")),
            entry("RS256", None, Some("/nonexistent.pem")),
            entry("RS256", Some("not a pem"), None),
        ] {
            let text = public_keys(&[bad]).unwrap_err().to_string();
            assert!(text.contains("auth.public_keys"), "{text}");
        }
        assert!(secret_algorithm("HS512").is_ok());
        assert!(secret_algorithm("RS256").is_err());
    }
}
