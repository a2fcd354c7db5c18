//! `archfarm-agent` configuration.

use crate::loading::{resolve_path, serde_platform, TlsFiles, Validate};
use archfarm_shared::Platform;
use bytesize::ByteSize;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Agent settings. The agent's name is the common name of its certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Coordinator address, `host:port`. Required.
    pub coordinator: String,
    /// Name to enroll under with `--join-token`. Default: the host name. (Once enrolled, the
    /// agent's name is the common name of its certificate.)
    #[serde(default)]
    pub name: Option<String>,
    /// Name to expect on the coordinator's certificate. Default: the host part of `coordinator`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Builds run at once. Default: 1.
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// The platform this host builds natively. Default: detected from the Docker Engine
    /// (`x86_64` is `linux/amd64`, `aarch64` is `linux/arm64`). Set it only when the engine
    /// misreports, or to let a host stand in for another in a test farm.
    #[serde(default, deserialize_with = "serde_platform::one")]
    pub native_platform: Option<Platform>,
    /// More platforms this host runs natively, for example `linux/386` on amd64, or
    /// `linux/arm/v7` on an arm64 CPU with AArch32. Default: none. Never assumed.
    #[serde(default, deserialize_with = "serde_platform::many")]
    pub extra_platforms: Vec<Platform>,
    /// Docker Engine address (`unix:///var/run/docker.sock`, `tcp://...`).
    /// Default: `DOCKER_HOST`, else the local socket.
    #[serde(default)]
    pub docker_host: Option<String>,
    /// Where fetched build contexts are cached. Default: `cache` beside the configuration file.
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
    /// Most the context cache may hold, for example `"20GiB"`; past it the contexts used least
    /// recently are deleted (never one used in the last ten minutes). Default: 10 GiB.
    #[serde(default = "default_cache_max")]
    pub cache_max: ByteSize,
    /// Most the engine's BuildKit cache may hold, for example `"100GiB"`; the agent checks every
    /// minute and prunes the records used least recently down to it (`docker builder prune
    /// --all --keep-storage`).
    /// Default: 50 GiB.
    #[serde(default = "default_build_cache_max")]
    pub build_cache_max: ByteSize,
    /// Largest protocol frame accepted, in bytes. Default: 1 MiB.
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: u32,
    /// Longest wait between reconnection attempts, in seconds. Default: 30.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_secs: u64,
    /// On SIGTERM the agent takes no new jobs and finishes what it runs for at most this long,
    /// in seconds; then it stops what is left (the coordinator reruns it elsewhere). Default: 600.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout_secs: u64,
    /// How often the engine's health is probed (`/_ping` and a one-line BuildKit build), in
    /// seconds. Default: 30.
    #[serde(default = "default_health_interval")]
    pub health_interval_secs: u64,
    /// How long a probe may take before the engine counts as unhealthy, in seconds. Default: 60.
    #[serde(default = "default_health_timeout")]
    pub health_timeout_secs: u64,
    /// A command that restarts the engine, for an agent that manages its dockerd (for example
    /// `["systemctl", "restart", "docker"]`): run after three failed health probes in a row, at
    /// most every ten minutes. Default: none (a sick engine only makes the agent unhealthy).
    #[serde(default)]
    pub engine_restart_command: Vec<String>,
    /// Labels that builds may require (`archfarm build --require region=eu`), for example
    /// `labels = { region = "eu", disk = "nvme" }`. Default: none.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The x86-64 level (1-4) this agent offers for linux/amd64 builds
    /// (`--platform linux/amd64/v3`). Default: the highest its CPU supports. Set it lower to
    /// offer what every host of a pool supports; a higher one than the CPU's is refused.
    #[serde(default)]
    pub x86_64_level: Option<u8>,
    /// Registries (host:port) to push to over plain http although they are not on loopback.
    /// Default: none.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// TLS material: the farm CA and this agent's certificate and key.
    pub tls: TlsFiles,
}

fn default_capacity() -> u32 {
    1
}
fn default_cache_dir() -> PathBuf {
    PathBuf::from("cache")
}
fn default_cache_max() -> ByteSize {
    ByteSize::gib(10)
}
fn default_build_cache_max() -> ByteSize {
    ByteSize::gib(50)
}
fn default_max_frame() -> u32 {
    archfarm_shared::codec::DEFAULT_MAX_FRAME
}
fn default_max_backoff() -> u64 {
    30
}
fn default_health_interval() -> u64 {
    30
}
fn default_health_timeout() -> u64 {
    60
}
fn default_drain_timeout() -> u64 {
    600
}

impl Validate for AgentConfig {
    fn resolve(&mut self, base: &Path) {
        resolve_path(base, &mut self.cache_dir);
        self.tls.resolve(base);
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.coordinator.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
            return Err((
                "coordinator",
                format!("{:?} is not host:port, for example farm.example.com:7000", self.coordinator),
            ));
        }
        if self.capacity == 0 {
            return Err(("capacity", "must be at least 1".into()));
        }
        // The coordinator refuses a registration of more (`agent_link::limits::MAX_CAPACITY`).
        if self.capacity > 256 {
            return Err(("capacity", "must be at most 256".into()));
        }
        if !(1024..=archfarm_shared::codec::MAX_FRAME_LIMIT).contains(&self.max_frame_bytes) {
            return Err(("max_frame_bytes", "must be between 1024 and 16777216".into()));
        }
        if self.health_interval_secs == 0 || self.health_timeout_secs == 0 {
            return Err((
                "health_interval_secs",
                "health_interval_secs and health_timeout_secs must be at least 1".into(),
            ));
        }
        if self.max_backoff_secs == 0 {
            return Err(("max_backoff_secs", "must be at least 1".into()));
        }
        if let Some(level) = self.x86_64_level.filter(|l| !(1..=4).contains(l)) {
            return Err(("x86_64_level", format!("{level}: must be 1, 2, 3 or 4")));
        }
        archfarm_shared::capabilities::check_labels(&self.labels).map_err(|e| ("labels", e))?;
        Ok(())
    }
}
