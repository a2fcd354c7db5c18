//! Loading a configuration file, the error type, and what both configurations share: path
//! resolution, TLS files, platform lists.

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read configuration: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape (toml's message names line and key).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message.
        message: String,
    },
    /// A value parsed but is not usable.
    #[error("{path}: {key}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The offending key.
        key: &'static str,
        /// Why, and what to do.
        reason: String,
    },
}

/// Reads, parses and validates a configuration file. Relative paths inside it are resolved
/// against the file's directory.
pub fn load<T: DeserializeOwned + Validate>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    let mut config: T = toml::from_str(&text)
        .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string().trim_end().to_owned() })?;
    let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    config.resolve(base);
    config.validate().map_err(|(key, reason)| ConfigError::Invalid { path: path.to_owned(), key, reason })?;
    Ok(config)
}

/// Checks a parsed configuration.
pub trait Validate {
    /// Makes relative paths relative to `base`.
    fn resolve(&mut self, base: &Path);
    /// Returns the offending key and why.
    fn validate(&self) -> Result<(), (&'static str, String)>;
}

pub(crate) fn resolve_path(base: &Path, p: &mut PathBuf) {
    if p.is_relative() {
        *p = base.join(&*p);
    }
}

/// TLS material of a role: the farm CA, and this role's certificate and key.
#[derive(Debug, Clone, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM file of the farm CA certificate (`ca.pem` from `archfarm ca init`).
    pub ca_cert: PathBuf,
    /// PEM certificate of this coordinator or agent.
    pub cert: PathBuf,
    /// PEM private key of this coordinator or agent.
    pub key: PathBuf,
}

impl TlsFiles {
    pub(crate) fn resolve(&mut self, base: &Path) {
        resolve_path(base, &mut self.ca_cert);
        resolve_path(base, &mut self.cert);
        resolve_path(base, &mut self.key);
    }
}

pub(crate) mod serde_platform {
    use archfarm_shared::Platform;
    use serde::{Deserialize, Deserializer};

    pub fn one<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Platform>, D::Error> {
        Option::<String>::deserialize(d)?.map(|s| s.parse().map_err(serde::de::Error::custom)).transpose()
    }

    pub fn many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Platform>, D::Error> {
        Vec::<String>::deserialize(d)?.iter().map(|s| s.parse().map_err(serde::de::Error::custom)).collect()
    }
}
