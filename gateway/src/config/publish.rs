//! `[publish]`: who may call `POST /publish`. Backends hold API keys; several keys may be live at
//! once (rotation), each optionally limited to channel patterns and to a publish rate.

use serde::{Deserialize, Serialize};

use super::secret::{Secret, settle};
use super::{ConfigError, Settings};

/// `[publish]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishSettings {
    /// One key for every channel: `POST /publish` needs `Authorization: Bearer <key>`.
    pub api_key: Option<Secret>,
    /// A file holding `api_key` (Kubernetes/Docker secrets); instead of `api_key`.
    pub api_key_file: Option<String>,
    /// More keys, each with a name, optional channel patterns and rate (`[[publish.keys]]`).
    pub keys: Vec<ApiKeySettings>,
    /// Publish without a key even though subscribers must authenticate. Refused at start-up
    /// unless set: an open publish endpoint beside authenticated subscribers is a mistake.
    pub allow_anonymous: bool,
    /// Sustained publishes per second per key (bursts of `burst`); 0: unlimited.
    pub rate_per_second: u32,
    /// Publishes a key may make at once before the rate applies; 0: twice the rate.
    pub burst: u32,
    /// Largest accepted publish request body, bytes (a batch's whole body).
    pub max_bytes: usize,
    /// Most events in one batch (`POST /publish` with a JSON array).
    pub max_batch: usize,
}

impl Default for PublishSettings {
    fn default() -> Self {
        Self {
            api_key: None,
            api_key_file: None,
            keys: Vec::new(),
            allow_anonymous: false,
            rate_per_second: 0,
            burst: 0,
            max_bytes: 64 * 1024,
            max_batch: 1000,
        }
    }
}

/// `[[publish.keys]]`: one backend's key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySettings {
    /// Who holds the key (logs and the `key` label of rate-limit refusals); not secret.
    pub name: String,
    /// The key itself.
    #[serde(default)]
    pub key: Option<Secret>,
    /// A file holding the key; instead of `key`.
    #[serde(default)]
    pub key_file: Option<String>,
    /// Channel patterns this key may publish to (`news`, `chat:*`, `*`); default every channel.
    #[serde(default = "every_channel")]
    pub channels: Vec<String>,
    /// This key's rate, overriding `publish.rate_per_second`.
    #[serde(default)]
    pub rate_per_second: Option<u32>,
}

fn every_channel() -> Vec<String> {
    vec!["*".into()]
}

impl PublishSettings {
    /// Whether any key is configured (then every publish must present one).
    pub fn has_keys(&self) -> bool {
        self.api_key.is_some() || !self.keys.is_empty()
    }

    /// Reads the `*_file` secrets into their keys.
    pub(super) fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        settle(
            &mut self.api_key,
            self.api_key_file.as_deref(),
            "publish.api_key",
            "publish.api_key_file",
        )?;
        for key in &mut self.keys {
            settle(
                &mut key.key,
                key.key_file.as_deref(),
                "publish.keys.key",
                "publish.keys.key_file",
            )?;
        }
        Ok(())
    }
}

impl Settings {
    /// The publish rules: keys that are not blank and not shared, and no open publishing beside
    /// authenticated subscribers unless asked for.
    pub(super) fn validate_publish(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                problem: problem.into(),
            }
        }
        let p = &self.publish;
        if let Some(key) = &p.api_key
            && key.expose().trim().is_empty()
        {
            return Err(invalid(
                "publish.api_key",
                "must not be blank (unset it to disable the check)",
            ));
        }
        let mut seen = Vec::new();
        for k in &p.keys {
            if k.name.trim().is_empty() {
                return Err(invalid("publish.keys.name", "every key needs a name"));
            }
            let Some(secret) = &k.key else {
                return Err(invalid(
                    "publish.keys.key",
                    format!("key {:?} needs key or key_file", k.name),
                ));
            };
            if secret.expose().len() < 16 {
                return Err(invalid(
                    "publish.keys.key",
                    format!("key {:?} must be at least 16 bytes", k.name),
                ));
            }
            if k.channels.is_empty() {
                return Err(invalid(
                    "publish.keys.channels",
                    format!("key {:?} allows no channel; omit channels for all", k.name),
                ));
            }
            if seen.contains(&secret.expose()) || p.api_key.as_ref() == Some(secret) {
                return Err(invalid(
                    "publish.keys.key",
                    format!("key {:?} repeats another key", k.name),
                ));
            }
            seen.push(secret.expose());
        }
        if self.auth_required() && !p.has_keys() && !p.allow_anonymous {
            return Err(invalid(
                "publish.api_key",
                "subscribers must authenticate but anyone may publish: set publish.api_key \
                 (or publish.keys), or publish.allow_anonymous = true to mean it",
            ));
        }
        if p.max_bytes < 64 {
            return Err(invalid("publish.max_bytes", "must be at least 64"));
        }
        if p.max_batch == 0 {
            return Err(invalid("publish.max_batch", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Settings;
    use std::collections::HashMap;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_with_env(None, Some(env)).map_err(|e| e.to_string())
    }

    #[test]
    fn open_publishing_beside_authenticated_subscribers_needs_saying_so() {
        let secret = ("GATEWAY__AUTH__JWT_SECRET", "0123456789abcdef0123");
        let err = load(&[secret]).unwrap_err();
        assert!(err.contains("publish.api_key"), "{err}");
        load(&[secret, ("GATEWAY__PUBLISH__ALLOW_ANONYMOUS", "true")]).unwrap();
        load(&[secret, ("GATEWAY__PUBLISH__API_KEY", "k")]).unwrap();
        load(&[]).unwrap();
    }

    #[test]
    fn keys_from_files() {
        let dir = std::env::temp_dir().join(format!("gw-pubkey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, "from-a-file\n").unwrap();
        let s = load(&[("GATEWAY__PUBLISH__API_KEY_FILE", path.to_str().unwrap())]).unwrap();
        assert_eq!(s.publish.api_key.unwrap().expose(), "from-a-file");
        let err = load(&[
            ("GATEWAY__PUBLISH__API_KEY_FILE", path.to_str().unwrap()),
            ("GATEWAY__PUBLISH__API_KEY", "inline"),
        ])
        .unwrap_err();
        assert!(err.contains("not both"), "{err}");
        let err = load(&[("GATEWAY__PUBLISH__API_KEY_FILE", "/nonexistent/k")]).unwrap_err();
        assert!(err.contains("publish.api_key_file"), "{err}");
        std::fs::remove_dir_all(dir).ok();
    }
}
