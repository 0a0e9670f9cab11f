//! A JWKS document (RFC 7517) as signing keys, and where it comes from (`https://`, `http://`,
//! `file://`). Each usable key gets exactly one algorithm: its `alg`, or for keys without one
//! the only sensible choice (RS256 for RSA, the curve's ES algorithm, EdDSA for Ed25519).
//! Symmetric (`oct`) keys are never taken from a JWKS: a published HMAC secret verifies
//! anything anyone signs with it.

use std::io::Read;
use std::path::PathBuf;

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::Value;

use super::fetch::{HttpGet, MAX_BYTES as MAX_DOCUMENT_BYTES};
use super::keys::{Key, algorithm};

/// Most keys kept from one document (the rest are ignored, with a warning).
pub const MAX_KEYS: usize = 32;

/// Where the JWKS is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An `http://` or `https://` URL.
    Http(String),
    /// A local file (`file:///path`).
    File(PathBuf),
}

impl Location {
    /// `auth.jwks_url`, checked.
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(
                    "a file URL needs an absolute path: file:///etc/gateway/jwks.json".into(),
                );
            }
            return Ok(Self::File(PathBuf::from(path)));
        }
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err("must start with https://, http:// or file://".into());
        }
        HttpGet::new(url)?;
        Ok(Self::Http(url.to_owned()))
    }
}

/// Reads the document at a [`Location`], bounded in time and size.
pub struct Fetcher {
    location: Location,
    http: Option<HttpGet>,
}

impl Fetcher {
    /// A fetcher for `location`.
    pub fn new(location: Location) -> Result<Self, String> {
        let http = match &location {
            Location::File(_) => None,
            Location::Http(url) => Some(HttpGet::new(url)?),
        };
        Ok(Self { location, http })
    }

    /// Fetches and parses the document.
    pub async fn fetch(&self) -> Result<Vec<Key>, String> {
        let doc = match (&self.location, &self.http) {
            (_, Some(http)) => http.run().await?,
            (Location::File(path), None) => read_file(path)?,
            (Location::Http(_), None) => return Err("no HTTP client".into()),
        };
        parse(&doc)
    }
}

fn read_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut doc = Vec::new();
    file.take(MAX_DOCUMENT_BYTES as u64 + 1)
        .read_to_end(&mut doc)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if doc.len() > MAX_DOCUMENT_BYTES {
        return Err(format!(
            "{} is over {MAX_DOCUMENT_BYTES} bytes",
            path.display()
        ));
    }
    Ok(doc)
}

/// The signing keys of a JWKS document; keys the gateway cannot use are skipped (logged).
/// A document without any usable key is an error, so a broken refresh keeps the last keys.
pub fn parse(doc: &[u8]) -> Result<Vec<Key>, String> {
    let doc: Value = serde_json::from_slice(doc).map_err(|_| "the document is not JSON")?;
    let entries = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("the document has no \"keys\" list")?;
    let mut keys = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        match jwk(entry) {
            Ok(Some(key)) if keys.len() < MAX_KEYS => keys.push(key),
            Ok(Some(_)) => {
                tracing::warn!(
                    index = i,
                    "JWKS: more than {MAX_KEYS} keys, ignoring the rest"
                );
                break;
            }
            Ok(None) => {}
            Err(problem) => tracing::warn!(index = i, "JWKS: skipping a key: {problem}"),
        }
    }
    if keys.is_empty() {
        return Err("the document has no usable signing key".into());
    }
    Ok(keys)
}

/// One JWK as a [`Key`]; `None` for keys that are not for signatures.
fn jwk(entry: &Value) -> Result<Option<Key>, String> {
    let field = |name: &str| entry.get(name).and_then(Value::as_str);
    if field("use").is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    let kty = field("kty").ok_or("no kty")?;
    let crv = field("crv");
    let inferred = match (kty, crv) {
        ("RSA", _) => Algorithm::RS256,
        ("EC", Some("P-256")) => Algorithm::ES256,
        ("EC", Some("P-384")) => Algorithm::ES384,
        ("OKP", Some("Ed25519")) => Algorithm::EdDSA,
        ("oct", _) => return Err("symmetric (oct) keys are never taken from a JWKS".into()),
        _ => return Err(format!("unsupported key type {kty} {}", crv.unwrap_or(""))),
    };
    let alg = match field("alg") {
        None => inferred,
        Some(name) => {
            let alg = algorithm(name).ok_or_else(|| format!("unsupported alg {name}"))?;
            let fits = match kty {
                "RSA" => alg.family() == AlgorithmFamily::Rsa,
                _ => alg == inferred,
            };
            if !fits {
                return Err(format!("alg {name} does not fit a {kty} key"));
            }
            alg
        }
    };
    let part = |name: &str| field(name).ok_or_else(|| format!("no {name}"));
    let decoding = match kty {
        "RSA" => DecodingKey::from_rsa_components(part("n")?, part("e")?),
        "EC" => DecodingKey::from_ec_components(part("x")?, part("y")?),
        _ => DecodingKey::from_ed_components(part("x")?),
    }
    .map_err(|_| "the key parameters are not base64url")?;
    Ok(Some(Key {
        kid: field("kid").map(str::to_owned),
        alg,
        decoding,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn locations() {
        assert_eq!(
            Location::parse("https://idp.example/.well-known/jwks.json"),
            Ok(Location::Http(
                "https://idp.example/.well-known/jwks.json".into()
            ))
        );
        assert_eq!(
            Location::parse("file:///etc/jwks.json"),
            Ok(Location::File("/etc/jwks.json".into()))
        );
        for bad in ["ftp://x", "file://relative", "https://", "/etc/jwks.json"] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn documents_give_one_algorithm_per_key() {
        let doc = json!({"keys": [
            {"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "p", "alg": "PS256", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "e", "crv": "P-384", "x": "AQAB", "y": "AQAB"},
            {"kty": "OKP", "kid": "d", "crv": "Ed25519", "x": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "oct", "kid": "s", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "bad", "crv": "P-256", "alg": "ES384", "x": "AQAB", "y": "AQAB"},
            {"kty": "RSA", "kid": "hs", "alg": "HS256", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AQAB", "y": "AQAB"},
            {"kty": "RSA", "kid": "no-n", "e": "AQAB"},
        ]});
        let keys = parse(doc.to_string().as_bytes()).unwrap();
        let got: Vec<_> = keys
            .iter()
            .map(|k| (k.kid.clone().unwrap(), k.alg))
            .collect();
        assert_eq!(
            got,
            [
                ("r".to_owned(), Algorithm::RS256),
                ("p".to_owned(), Algorithm::PS256),
                ("e".to_owned(), Algorithm::ES384),
                ("d".to_owned(), Algorithm::EdDSA),
            ]
        );
        for bad in [
            "not json".to_owned(),
            json!({"no": "keys"}).to_string(),
            json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).to_string(),
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
        let many: Vec<_> = (0..MAX_KEYS + 5)
            .map(|i| json!({"kty": "RSA", "kid": i.to_string(), "n": "AQAB", "e": "AQAB"}))
            .collect();
        let keys = parse(json!({ "keys": many }).to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), MAX_KEYS, "the cache is bounded");
    }
}
