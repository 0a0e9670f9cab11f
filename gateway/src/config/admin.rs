//! `[admin]`: the operators' live status page at `/admin`. Off unless enabled, and then only for
//! holders of a publish API key that covers every channel (the page names every busy channel).

use serde::{Deserialize, Serialize};

use super::{ConfigError, Settings};

/// `[admin]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Serve `/admin` and its feed `/admin/feed`; off: both answer 404 like any unknown path.
    pub enabled: bool,
    /// Feeds open at once; each costs one scan of the channels per second, so a small number
    /// keeps the page from being a way to burn CPU.
    pub max_feeds: usize,
    /// Channels listed in the busiest-channels table.
    pub top_channels: usize,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            max_feeds: 4,
            top_channels: 10,
        }
    }
}

impl Settings {
    /// `admin.*`: the page needs a key to protect it, and sane bounds.
    pub(super) fn validate_admin(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: &str| ConfigError::Invalid {
            key,
            problem: problem.to_owned(),
        };
        if !self.admin.enabled {
            return Ok(());
        }
        if !self.publish.has_keys() {
            return Err(invalid(
                "admin.enabled",
                "needs publish.api_key (or publish.keys): the page is protected by the API key",
            ));
        }
        if !(1..=64).contains(&self.admin.max_feeds) {
            return Err(invalid("admin.max_feeds", "must be between 1 and 64"));
        }
        if !(1..=100).contains(&self.admin.top_channels) {
            return Err(invalid("admin.top_channels", "must be between 1 and 100"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::load_with_env(None, Some(env))
    }

    #[test]
    fn off_by_default_and_needs_a_key_when_on() {
        assert!(!load(&[]).unwrap().admin.enabled);
        let err = load(&[("GATEWAY__ADMIN__ENABLED", "true")]).unwrap_err();
        assert!(err.to_string().contains("admin.enabled"), "{err}");
        let on = load(&[
            ("GATEWAY__ADMIN__ENABLED", "true"),
            ("GATEWAY__PUBLISH__API_KEY", "an-admin-test-key-0123"),
        ])
        .unwrap();
        assert!(on.admin.enabled);
        let err = load(&[
            ("GATEWAY__ADMIN__ENABLED", "true"),
            ("GATEWAY__PUBLISH__API_KEY", "an-admin-test-key-0123"),
            ("GATEWAY__ADMIN__MAX_FEEDS", "0"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("admin.max_feeds"), "{err}");
    }
}
