//! Typed configuration for the archfarm coordinator and agent, read from TOML files.
//! Unknown keys are errors, every field documents its default, and every error names the file,
//! the key and the reason.
//!
//! # Layout
//! - [`coordinator`]: `archfarm serve` settings.
//! - [`agent`]: `archfarm-agent` settings.
//! - this file: loading, path resolution and the error type.

pub mod agent;
pub mod coordinator;

pub use agent::AgentConfig;
pub use coordinator::CoordinatorConfig;

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

fn resolve_path(base: &Path, p: &mut PathBuf) {
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
    fn resolve(&mut self, base: &Path) {
        resolve_path(base, &mut self.ca_cert);
        resolve_path(base, &mut self.cert);
        resolve_path(base, &mut self.key);
    }
}

mod serde_platform {
    use archfarm_shared::Platform;
    use serde::{Deserialize, Deserializer};

    pub fn one<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Platform>, D::Error> {
        Option::<String>::deserialize(d)?.map(|s| s.parse().map_err(serde::de::Error::custom)).transpose()
    }

    pub fn many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Platform>, D::Error> {
        Vec::<String>::deserialize(d)?.iter().map(|s| s.parse().map_err(serde::de::Error::custom)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn shipped_examples_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let c: CoordinatorConfig = load(&dir.join("coordinator.toml")).unwrap();
        assert_eq!(c.tls.ca_cert, PathBuf::from("/etc/archfarm/ca.pem"));
        let a: AgentConfig = load(&dir.join("agent.toml")).unwrap();
        assert_eq!(a.capacity, 2);
        assert_eq!(a.extra_platforms[0].to_string(), "linux/386");
    }

    #[test]
    fn unknown_keys_name_the_file_and_the_key() {
        let (_d, path) = write(
            "listen = \"127.0.0.1:7000\"\nlisten_port = 1\n[tls]\nca_cert='a'\ncert='b'\nkey='c'\nclient_tokens='t'\n",
        );
        let err = load::<CoordinatorConfig>(&path).unwrap_err().to_string();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert!(err.contains("unknown field `listen_port`") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn bad_platforms_are_refused_at_load() {
        let (_d, path) = write("coordinator = \"127.0.0.1:7000\"\nextra_platforms = [\"linux//v7\"]\n[tls]\nca_cert='a'\ncert='b'\nkey='c'\n");
        let err = load::<AgentConfig>(&path).unwrap_err().to_string();
        assert!(err.contains("extra_platforms") && err.contains("invalid platform \"linux//v7\""), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_key_and_the_fix() {
        let (_d, path) =
            write("coordinator = \"127.0.0.1:7000\"\ncapacity = 0\n[tls]\nca_cert='a'\ncert='b'\nkey='c'\n");
        let err = load::<AgentConfig>(&path).unwrap_err().to_string();
        assert!(err.ends_with("capacity: must be at least 1"), "{err}");

        let (_d, path) =
            write("listen = \"not an address\"\n[tls]\nca_cert='a'\ncert='b'\nkey='c'\nclient_tokens='t'\n");
        let err = load::<CoordinatorConfig>(&path).unwrap_err().to_string();
        assert!(err.contains("listen"), "{err}");

        let (_d, path) = write("listen = \"127.0.0.1:7000\"\nmax_frame_bytes = 10\n[tls]\nca_cert='a'\ncert='b'\nkey='c'\nclient_tokens='t'\n");
        let err = load::<CoordinatorConfig>(&path).unwrap_err().to_string();
        assert!(err.contains("max_frame_bytes: must be between"), "{err}");
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let (d, path) = write(
            "listen = \"127.0.0.1:7000\"\n[tls]\nca_cert='ca.pem'\ncert='/abs/c.pem'\nkey='k'\nclient_tokens='t'\n",
        );
        let c: CoordinatorConfig = load(&path).unwrap();
        assert_eq!(c.tls.ca_cert, d.path().join("ca.pem"));
        assert_eq!(c.tls.cert, PathBuf::from("/abs/c.pem"));
        assert_eq!(c.data_dir, d.path().join("data"));
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let err = load::<AgentConfig>(Path::new("/nonexistent/agent.toml")).unwrap_err().to_string();
        assert!(err.starts_with("/nonexistent/agent.toml: cannot read configuration"), "{err}");
    }
}
