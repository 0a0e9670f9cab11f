//! Secret settings (API keys, token secrets): a value that can come from the configuration or
//! from a file (`*_file`, for Kubernetes and Docker secrets), and that never prints — `Debug`
//! and `check-config` show `<redacted>` — so it cannot leak into a log line by accident.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What every secret prints as.
pub const REDACTED: &str = "<redacted>";

/// A secret string; compare it with [`Secret::expose`] only where it is used.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value read from somewhere other than the settings (tests, files).
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that checks or sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads a secret from `path`: the whole file, without the trailing newline that editors
    /// and `echo` add. The error names the file, never its content.
    pub fn from_file(path: &str) -> Result<Self, String> {
        let text = std::fs::read_to_string(Path::new(path))
            .map_err(|e| format!("cannot read {path}: {e}"))?;
        let value = text.trim_end_matches(['\n', '\r']);
        if value.trim().is_empty() {
            return Err(format!("{path} is empty"));
        }
        Ok(Self(value.to_owned()))
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

/// Settles a secret that may be given inline or as a file: at most one of the two, and the
/// file's content replaces the inline value. `key` and `file_key` name the settings in errors.
pub fn settle(
    inline: &mut Option<Secret>,
    file: Option<&str>,
    key: &'static str,
    file_key: &'static str,
) -> Result<(), super::ConfigError> {
    let Some(path) = file else { return Ok(()) };
    if inline.is_some() {
        return Err(super::ConfigError::Invalid {
            key,
            problem: format!("set {key} or {file_key}, not both"),
        });
    }
    let secret = Secret::from_file(path).map_err(|problem| super::ConfigError::Invalid {
        key: file_key,
        problem,
    })?;
    *inline = Some(secret);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints() {
        let s = Secret::new("hunter2-hunter2");
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"<redacted>\"");
        assert_eq!(s.expose(), "hunter2-hunter2");
    }

    #[test]
    fn files_lose_their_trailing_newline_and_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("gw-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, "s3cret-value\n").unwrap();
        let path = path.to_str().unwrap();
        assert_eq!(Secret::from_file(path).unwrap().expose(), "s3cret-value");
        let mut inline = None;
        settle(&mut inline, Some(path), "a.key", "a.key_file").unwrap();
        assert_eq!(inline.unwrap().expose(), "s3cret-value");
        let mut both = Some(Secret::new("x"));
        assert!(settle(&mut both, Some(path), "a.key", "a.key_file").is_err());
        std::fs::write(dir.join("empty"), "\n").unwrap();
        let err = Secret::from_file(dir.join("empty").to_str().unwrap()).unwrap_err();
        assert!(err.contains("empty"), "{err}");
        std::fs::remove_dir_all(dir).ok();
    }
}
