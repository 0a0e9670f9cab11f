//! Checks of the Redis topology settings that serde cannot express: one way to find Redis (a
//! URL or sentinels), a monitored name with sentinels, and TLS files that are readable PEM of
//! the right kind. Messages name the key and the file, never a URL's password or a key.

use std::fmt;
use std::path::Path;

use super::{ConfigError, RedisSettings, Settings};

impl fmt::Debug for RedisSettings {
    /// Like a derived `Debug`, but URL passwords are shown as `<redacted>` (`check-config` prints it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            url,
            sentinels,
            sentinel_master,
            cluster_nodes,
            password_file,
            tls_ca,
            tls_cert,
            tls_key,
            key_prefix,
            pool_size,
            timeout_seconds,
            probe_seconds,
            head_check_seconds,
            durable,
        } = self;
        let sentinels: Vec<String> = sentinels.iter().map(|u| redact(u)).collect();
        f.debug_struct("RedisSettings")
            .field("url", &url.as_deref().map(redact))
            .field("sentinels", &sentinels)
            .field("sentinel_master", sentinel_master)
            .field(
                "cluster_nodes",
                &cluster_nodes.iter().map(|u| redact(u)).collect::<Vec<_>>(),
            )
            .field("password_file", password_file)
            .field("tls_ca", tls_ca)
            .field("tls_cert", tls_cert)
            .field("tls_key", tls_key)
            .field("key_prefix", key_prefix)
            .field("pool_size", pool_size)
            .field("timeout_seconds", timeout_seconds)
            .field("probe_seconds", probe_seconds)
            .field("head_check_seconds", head_check_seconds)
            .field("durable", durable)
            .finish()
    }
}

/// Serializes a URL setting with its password shown as `<redacted>` (`check-config`).
pub(super) fn serialize_redacted<S: serde::Serializer>(
    url: &Option<String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&url.as_deref().map(redact), s)
}

/// Serializes a list of URL settings with their passwords shown as `<redacted>`.
pub(super) fn serialize_redacted_list<S: serde::Serializer>(
    urls: &[String],
    s: S,
) -> Result<S::Ok, S::Error> {
    let urls: Vec<String> = urls.iter().map(|u| redact(u)).collect();
    serde::Serialize::serialize(&urls, s)
}

/// `url` with the password of its user info (`scheme://user:password@host`) replaced by `<redacted>`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let Some((user, _password)) = userinfo.split_once(':') else {
        return url.to_owned();
    };
    format!(
        "{scheme}://{user}:{}@{}",
        super::secret::REDACTED,
        &rest[userinfo.len() + 1..]
    )
}

impl Settings {
    /// `redis.sentinels` and `redis.sentinel_master`: one way to find Redis, a name to ask for,
    /// and URLs that agree on TLS (the data nodes are dialled the way the sentinels are).
    pub(super) fn validate_sentinels(&self) -> Result<(), ConfigError> {
        let redis = &self.redis;
        if redis.sentinels.is_empty() {
            if redis.sentinel_master.is_some() {
                return Err(invalid_key(
                    "redis.sentinel_master",
                    "only applies with redis.sentinels",
                ));
            }
            return Ok(());
        }
        if redis.url.is_some() {
            return Err(invalid_key(
                "redis.sentinels",
                "set redis.url or redis.sentinels, not both",
            ));
        }
        if redis
            .sentinel_master
            .as_deref()
            .is_none_or(|m| m.trim().is_empty())
        {
            return Err(invalid_key(
                "redis.sentinel_master",
                "required with redis.sentinels (the name in `sentinel monitor <name> ...`)",
            ));
        }
        for (i, url) in redis.sentinels.iter().enumerate() {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(invalid_key(
                    "redis.sentinels",
                    format!("entry {} must start with redis:// or rediss://", i + 1),
                ));
            }
            // The parse error never repeats the URL, which may hold a password.
            redis::Client::open(url.as_str()).map_err(|e| {
                invalid_key(
                    "redis.sentinels",
                    format!("entry {} cannot be parsed: {e}", i + 1),
                )
            })?;
        }
        let tls = redis.sentinels[0].starts_with("rediss://");
        if redis
            .sentinels
            .iter()
            .any(|u| u.starts_with("rediss://") != tls)
        {
            return Err(invalid_key(
                "redis.sentinels",
                "use rediss:// for all entries or for none",
            ));
        }
        Ok(())
    }

    /// `redis.cluster_nodes`: the only way to find Redis when set, URLs that parse, and all of
    /// them TLS or none.
    pub(super) fn validate_cluster(&self) -> Result<(), ConfigError> {
        let redis = &self.redis;
        let Some(first) = redis.cluster_nodes.first() else {
            return Ok(());
        };
        if redis.url.is_some() || !redis.sentinels.is_empty() {
            return Err(invalid_key(
                "redis.cluster_nodes",
                "set one of redis.url, redis.sentinels or redis.cluster_nodes",
            ));
        }
        let tls = first.starts_with("rediss://");
        for (i, url) in redis.cluster_nodes.iter().enumerate() {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(invalid_key(
                    "redis.cluster_nodes",
                    format!("entry {} must start with redis:// or rediss://", i + 1),
                ));
            }
            if url.starts_with("rediss://") != tls {
                return Err(invalid_key(
                    "redis.cluster_nodes",
                    "use rediss:// for all entries or for none",
                ));
            }
            // The parse error never repeats the URL, which may hold a password.
            redis::Client::open(url.as_str()).map_err(|e| {
                invalid_key(
                    "redis.cluster_nodes",
                    format!("entry {} cannot be parsed: {e}", i + 1),
                )
            })?;
        }
        Ok(())
    }

    /// `redis.tls_*`: only with `rediss://`, the client certificate and key together, and every
    /// file readable PEM of the right kind. Messages name the file, never its contents.
    pub(super) fn validate_redis_tls(&self) -> Result<(), ConfigError> {
        let redis = &self.redis;
        if redis.tls_cert.is_some() != redis.tls_key.is_some() {
            return Err(invalid_key(
                "redis.tls_cert",
                "set both redis.tls_cert and redis.tls_key, or neither",
            ));
        }
        let files = [
            ("redis.tls_ca", &redis.tls_ca, PemKind::Certificates),
            ("redis.tls_cert", &redis.tls_cert, PemKind::Certificates),
            ("redis.tls_key", &redis.tls_key, PemKind::PrivateKey),
        ];
        for (key, path, kind) in files {
            let Some(path) = path else { continue };
            if !redis.uses_tls() {
                return Err(invalid_key(
                    key,
                    "needs a rediss:// redis.url, redis.sentinels or redis.cluster_nodes",
                ));
            }
            check_pem_file(Path::new(path), kind).map_err(|problem| invalid_key(key, problem))?;
        }
        Ok(())
    }
}

fn invalid_key(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

/// What a PEM file given in the settings must hold.
#[derive(Clone, Copy)]
enum PemKind {
    /// One or more certificates.
    Certificates,
    /// One private key (PKCS#8, PKCS#1 or SEC1).
    PrivateKey,
}

/// Reads `path` and checks it holds `kind`; the problem, if any, names the file only.
fn check_pem_file(path: &Path, kind: PemKind) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let ok = match kind {
        PemKind::Certificates => {
            let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
            certs.is_ok_and(|c| !c.is_empty())
        }
        PemKind::PrivateKey => PrivateKeyDer::from_pem_slice(&bytes).is_ok(),
    };
    if ok {
        Ok(())
    } else {
        let what = match kind {
            PemKind::Certificates => "a PEM certificate",
            PemKind::PrivateKey => "a PEM private key",
        };
        Err(format!("{} does not hold {what}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn load_err(pairs: &[(&str, &str)]) -> String {
        Settings::load_with_env(None, env(pairs))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn sentinels_come_as_a_comma_separated_list_or_a_toml_array() {
        let s = Settings::load_with_env(
            None,
            env(&[
                (
                    "GATEWAY__REDIS__SENTINELS",
                    "redis://127.0.0.1:26379, redis://127.0.0.1:26380",
                ),
                ("GATEWAY__REDIS__SENTINEL_MASTER", "mymaster"),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.redis.sentinels,
            ["redis://127.0.0.1:26379", "redis://127.0.0.1:26380"]
        );
        assert_eq!(s.redis.sentinel_master.as_deref(), Some("mymaster"));
        assert!(s.redis.enabled() && !s.redis.uses_tls());

        let dir = std::env::temp_dir().join(format!("gw-config-s-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("g.toml");
        std::fs::write(
            &path,
            "[redis]\nsentinels = [\"rediss://a:26379\", \"rediss://b:26379\"]\nsentinel_master = \"m\"\n",
        )
        .unwrap();
        let s = Settings::load_with_env(Some(&path), env(&[])).unwrap();
        assert_eq!(s.redis.sentinels.len(), 2);
        assert!(s.redis.enabled() && s.redis.uses_tls());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn sentinel_settings_are_checked_together() {
        let sentinels = ("GATEWAY__REDIS__SENTINELS", "redis://127.0.0.1:26379");
        let master = ("GATEWAY__REDIS__SENTINEL_MASTER", "mymaster");
        let url = ("GATEWAY__REDIS__URL", "redis://127.0.0.1:6379");
        assert!(load_err(&[sentinels, master, url]).contains("not both"));
        assert!(load_err(&[sentinels]).contains("redis.sentinel_master"));
        assert!(
            load_err(&[sentinels, ("GATEWAY__REDIS__SENTINEL_MASTER", " ")])
                .contains("redis.sentinel_master")
        );
        assert!(load_err(&[master]).contains("redis.sentinel_master"));
        assert!(load_err(&[master, url]).contains("redis.sentinel_master"));
        assert!(
            load_err(&[("GATEWAY__REDIS__SENTINELS", "http://x:1"), master])
                .contains("redis.sentinels")
        );
        let mixed = (
            "GATEWAY__REDIS__SENTINELS",
            "redis://127.0.0.1:26379,rediss://127.0.0.1:26380",
        );
        assert!(load_err(&[mixed, master]).contains("rediss:// for all entries"));
    }

    #[test]
    fn cluster_nodes_are_a_list_and_the_only_way_to_find_redis() {
        let nodes = (
            "GATEWAY__REDIS__CLUSTER_NODES",
            "redis://127.0.0.1:7000,redis://127.0.0.1:7001",
        );
        let s = Settings::load_with_env(None, env(&[nodes])).unwrap();
        assert_eq!(s.redis.cluster_nodes.len(), 2);
        assert!(s.redis.enabled() && !s.redis.uses_tls());
        let url = ("GATEWAY__REDIS__URL", "redis://127.0.0.1:6379");
        assert!(load_err(&[nodes, url]).contains("redis.cluster_nodes"));
        let bad = ("GATEWAY__REDIS__CLUSTER_NODES", "http://x:1");
        assert!(load_err(&[bad]).contains("redis.cluster_nodes"));
        let mixed = (
            "GATEWAY__REDIS__CLUSTER_NODES",
            "redis://a:7000,rediss://b:7001",
        );
        assert!(load_err(&[mixed]).contains("rediss:// for all entries"));
    }

    /// A CA certificate and a client certificate and key, as PEM files in a fresh directory.
    fn tls_files(tag: &str) -> (std::path::PathBuf, [String; 3]) {
        let dir = std::env::temp_dir().join(format!("gw-config-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["redis".to_owned()]).unwrap();
        let client = rcgen::generate_simple_self_signed(vec!["client".to_owned()]).unwrap();
        let paths = ["ca.pem", "cert.pem", "key.pem"].map(|n| dir.join(n));
        std::fs::write(&paths[0], ca.cert.pem()).unwrap();
        std::fs::write(&paths[1], client.cert.pem()).unwrap();
        std::fs::write(&paths[2], client.signing_key.serialize_pem()).unwrap();
        (dir, paths.map(|p| p.display().to_string()))
    }

    #[test]
    fn redis_tls_files_are_read_and_checked() {
        let (dir, [ca, cert, key]) = tls_files("tls");
        let url = ("GATEWAY__REDIS__URL", "rediss://127.0.0.1:6380");
        let s = Settings::load_with_env(
            None,
            env(&[
                url,
                ("GATEWAY__REDIS__TLS_CA", &ca),
                ("GATEWAY__REDIS__TLS_CERT", &cert),
                ("GATEWAY__REDIS__TLS_KEY", &key),
            ]),
        )
        .unwrap();
        assert_eq!(s.redis.tls_ca.as_deref(), Some(ca.as_str()));
        // Both or neither.
        assert!(load_err(&[url, ("GATEWAY__REDIS__TLS_CERT", &cert)]).contains("redis.tls_cert"));
        assert!(load_err(&[url, ("GATEWAY__REDIS__TLS_KEY", &key)]).contains("redis.tls_cert"));
        // Only with rediss://.
        let plain = ("GATEWAY__REDIS__URL", "redis://127.0.0.1:6379");
        assert!(load_err(&[plain, ("GATEWAY__REDIS__TLS_CA", &ca)]).contains("rediss://"));
        // Readable, and of the right kind.
        let missing = format!("{ca}.missing");
        let text = load_err(&[url, ("GATEWAY__REDIS__TLS_CA", &missing)]);
        assert!(
            text.contains("redis.tls_ca") && text.contains("cannot read"),
            "{text}"
        );
        let text = load_err(&[
            url,
            ("GATEWAY__REDIS__TLS_CERT", &cert),
            ("GATEWAY__REDIS__TLS_KEY", &cert),
        ]);
        assert!(
            text.contains("redis.tls_key") && text.contains("private key"),
            "{text}"
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn printed_settings_hide_url_passwords() {
        let s = Settings::load_with_env(
            None,
            env(&[
                (
                    "GATEWAY__REDIS__SENTINELS",
                    "redis://:s3cret@127.0.0.1:26379,redis://user:p%40ss@h:1/2,redis://h:3",
                ),
                ("GATEWAY__REDIS__SENTINEL_MASTER", "m"),
            ]),
        )
        .unwrap();
        let text = format!("{s:?}");
        assert!(
            !text.contains("s3cret") && !text.contains("p%40ss"),
            "{text}"
        );
        assert!(
            text.contains("redis://:<redacted>@127.0.0.1:26379"),
            "{text}"
        );
        assert!(text.contains("redis://user:<redacted>@h:1/2"), "{text}");
        assert!(text.contains("redis://h:3"), "{text}");
        assert_eq!(
            redact("rediss://u:x@h:6380/0?a=b"),
            "rediss://u:<redacted>@h:6380/0?a=b"
        );
        assert_eq!(redact("unix:///run/redis.sock"), "unix:///run/redis.sock");
    }

    #[test]
    fn a_bad_key_file_is_named_but_never_printed() {
        let (dir, [_, cert, _]) = tls_files("secret");
        let secret = dir.join("bad-key.pem");
        std::fs::write(&secret, "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LXNlY3JldA\n").unwrap();
        let text = load_err(&[
            ("GATEWAY__REDIS__URL", "rediss://127.0.0.1:6380"),
            ("GATEWAY__REDIS__TLS_CERT", &cert),
            ("GATEWAY__REDIS__TLS_KEY", &secret.display().to_string()),
        ]);
        assert!(text.contains("bad-key.pem"), "{text}");
        assert!(!text.contains("c2VjcmV0"), "{text}");
        std::fs::remove_dir_all(dir).ok();
    }
}
