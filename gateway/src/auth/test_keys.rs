//! Test-only keys, generated at test time with the `openssl` CLI (no private key is committed),
//! once per kind and label, and tokens signed with them.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header};

/// A signing key and its public half.
#[derive(Clone)]
pub struct KeyPair {
    /// The algorithm it is for.
    pub alg: Algorithm,
    /// PKCS#8 private key (or the HMAC secret).
    pub private_pem: String,
    /// SPKI public key (or the HMAC secret).
    pub public_pem: String,
}

impl KeyPair {
    /// The verifying key.
    pub fn decoding(&self) -> DecodingKey {
        let pem = self.public_pem.as_bytes();
        match self.alg.family() {
            AlgorithmFamily::Hmac => DecodingKey::from_secret(pem),
            AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem).unwrap(),
            AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem).unwrap(),
            AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem).unwrap(),
        }
    }

    /// The signing key.
    pub fn encoding(&self) -> EncodingKey {
        let pem = self.private_pem.as_bytes();
        match self.alg.family() {
            AlgorithmFamily::Hmac => EncodingKey::from_secret(pem),
            AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(pem).unwrap(),
            AlgorithmFamily::Ec => EncodingKey::from_ec_pem(pem).unwrap(),
            AlgorithmFamily::Ed => EncodingKey::from_ed_pem(pem).unwrap(),
        }
    }
}

fn openssl(args: &[&str], input: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the openssl CLI generates test keys");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Generated `(private, public)` PEMs by key kind and label.
type Generated = HashMap<(&'static str, String), (String, String)>;

/// A key for `alg`; the same `label` gives the same key (RS* and PS* share RSA keys).
pub fn pair(alg: Algorithm, label: &str) -> KeyPair {
    static CACHE: OnceLock<Mutex<Generated>> = OnceLock::new();
    let (kind, args): (&'static str, &[&str]) = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let secret = format!("test-secret-{label}-0123456789abcdef");
            return KeyPair {
                alg,
                private_pem: secret.clone(),
                public_pem: secret,
            };
        }
        Algorithm::ES256 => (
            "p256",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
        Algorithm::ES384 => (
            "p384",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        ),
        Algorithm::EdDSA => ("ed25519", &["-algorithm", "ed25519"]),
        _ => (
            "rsa",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        ),
    };
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap();
    let (private_pem, public_pem) = cache
        .entry((kind, label.to_owned()))
        .or_insert_with(|| {
            let mut gen_args = vec!["genpkey"];
            gen_args.extend_from_slice(args);
            let private = openssl(&gen_args, b"");
            let public = openssl(&["pkey", "-pubout"], private.as_bytes());
            (private, public)
        })
        .clone();
    KeyPair {
        alg,
        private_pem,
        public_pem,
    }
}

/// A token with claims `claims`, signed by `pair` with an optional `kid`.
pub fn sign(pair: &KeyPair, kid: Option<&str>, claims: &serde_json::Value) -> String {
    let mut header = Header::new(pair.alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &pair.encoding()).unwrap()
}

/// A token with a hand-made header (e.g. `crit`), signed by `pair` with its algorithm.
pub fn sign_with_header(
    pair: &KeyPair,
    header: serde_json::Value,
    claims: &serde_json::Value,
) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &pair.encoding(), pair.alg).unwrap();
    format!("{message}.{signature}")
}
