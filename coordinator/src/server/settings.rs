//! What the coordinator's configuration decides for every part of the server: frame and
//! heartbeat limits, attempts and timeouts, the CA, and what garbage collection keeps.

use archfarm_shared::pki::CertifiedKey;
use std::path::PathBuf;
use std::time::Duration;

/// Settings every session needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest frame accepted.
    pub max_frame: u32,
    /// How often agents must send heartbeats.
    pub heartbeat_interval: Duration,
    /// Silence after which an agent is dropped.
    pub heartbeat_timeout: Duration,
    /// File of accepted client token hashes.
    pub tokens_file: PathBuf,
    /// Attempts per platform.
    pub max_attempts: u32,
    /// Consecutive failures before quarantine.
    pub quarantine_after: u32,
    /// How long one attempt may run, unless a build asks otherwise.
    pub job_timeout: Duration,
    /// How long one attempt may go without output, unless a build asks otherwise.
    pub job_idle_timeout: Duration,
    /// The farm CA with its key, when this coordinator enrolls agents.
    pub ca: Option<CertifiedKey>,
    /// What garbage collection keeps, and the free space new work needs.
    pub retention: Retention,
}

/// What is kept, from the configuration.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Contexts and handed-over image blobs: days after their last use.
    pub days: u32,
    /// Finished builds: days after submission.
    pub history_days: u32,
    /// Finished builds: the newest this many.
    pub history_builds: u32,
    /// Free space below which new work is refused.
    pub min_free: u64,
    /// The data directory.
    pub data_dir: PathBuf,
}

/// Loads the CA certificate and key used to sign enrolled agents.
pub fn load_ca(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<CertifiedKey> {
    use anyhow::Context as _;
    Ok(CertifiedKey {
        cert_pem: std::fs::read_to_string(cert).with_context(|| format!("cannot read {}", cert.display()))?,
        key_pem: std::fs::read_to_string(key).with_context(|| format!("cannot read {}", key.display()))?,
    })
}
