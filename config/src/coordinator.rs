//! `archfarm serve` configuration.

use crate::loading::{resolve_path, TlsFiles, Validate};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Coordinator settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// UDP address to serve QUIC on. Required. Example: `0.0.0.0:7000`.
    pub listen: String,
    /// Where build contexts are stored. Default: `data` beside the configuration file.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Largest protocol frame accepted, in bytes. Default: 1 MiB.
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: u32,
    /// Largest build context accepted, in bytes. Default: 4 GiB.
    #[serde(default = "default_max_context")]
    pub max_context_bytes: u64,
    /// How often agents must send a heartbeat, in seconds. Default: 5.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval_secs: u64,
    /// An agent silent for this long is dropped, in seconds. Default: 15.
    #[serde(default = "default_heartbeat_timeout")]
    pub heartbeat_timeout_secs: u64,
    /// Attempts per platform before the build fails (a lost agent or an infrastructure failure
    /// uses one; a failing Dockerfile fails at once). Default: 3.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Consecutive infrastructure failures after which an agent is quarantined. Default: 3.
    #[serde(default = "default_quarantine_after")]
    pub quarantine_after_failures: u32,
    /// Where the coordinator serves Prometheus metrics (`/metrics`) and its status page (`/`)
    /// over HTTP, for example `"127.0.0.1:9464"`. Open on a loopback address; on any other,
    /// every request needs a client token (bearer, or the password of basic authentication).
    /// Default: off.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Cache affinity: a job goes to the agent that last built the same repository's
    /// Dockerfile for its platform (its BuildKit cache is warm) while that agent's load
    /// (running ÷ capacity) is at most this much above the least-loaded agent's; otherwise to
    /// the least loaded. 0 prefers it only among equally loaded agents. Default: 0.5.
    #[serde(default = "default_affinity_margin")]
    pub affinity_margin: f64,
    /// Turns cache affinity off: every job goes to the least-loaded agent. Default: true.
    #[serde(default = "default_true")]
    pub cache_affinity: bool,
    /// How long a job waits for an agent of its platform to (re)connect before it fails, in
    /// seconds (covers agent restarts and coordinator restarts). Default: 60.
    #[serde(default = "default_agent_wait")]
    pub agent_wait_secs: u64,
    /// Longest an attempt at a job may run on an agent, in seconds; past it the job is stopped
    /// on the agent and the attempt ends `timed-out`. A build may ask for another limit
    /// (`archfarm build --job-timeout`). Default: 3600.
    #[serde(default = "default_job_timeout")]
    pub job_timeout_secs: u64,
    /// Longest an attempt may run without a line of build output, in seconds; past it the job
    /// is stopped the same way (`--idle-timeout`). Default: 900.
    #[serde(default = "default_job_idle_timeout")]
    pub job_idle_timeout_secs: u64,
    /// Registries (host:port) to reach over plain http although they are not on loopback.
    /// Default: none; loopback registries always use http, every other one https.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// Connections that have not authenticated yet (clients before their token is checked,
    /// enrolling agents), at most. Past half of it, new peers must first prove their address
    /// (a QUIC retry); past all of it, they are refused until some authenticate or time out.
    /// Default: 256.
    #[serde(default = "default_max_unauthenticated")]
    pub max_unauthenticated_connections: u32,
    /// Days a build context (and its chunks, and image blobs handed over by agents) is kept
    /// after the last build that used it was submitted. Contexts of unfinished builds are always
    /// kept. 0 keeps only those. Default: 7.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// Days a finished build stays in the history (`builds ls`). Default: 90.
    #[serde(default = "default_history_days")]
    pub history_days: u32,
    /// Finished builds kept in the history at most, the newest. Default: 10000.
    #[serde(default = "default_history_builds")]
    pub history_builds: u32,
    /// New builds and uploads are refused while the data directory's file system has less
    /// free space than this, for example `"2GiB"`. Default: 1 GiB.
    #[serde(default = "default_min_free")]
    pub min_free_space: bytesize::ByteSize,
    /// TLS material and the client token list.
    pub tls: CoordinatorTls,
}

/// The coordinator's TLS files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorTls {
    /// Farm CA certificate, PEM. Agents' certificates must be signed by it.
    pub ca_cert: PathBuf,
    /// Coordinator certificate, PEM.
    pub cert: PathBuf,
    /// Coordinator key, PEM.
    pub key: PathBuf,
    /// File of accepted client token hashes (sha256 hex, one a line; `archfarm ca init` writes it).
    /// Tokens made with `archfarm tokens create` live in the state database instead.
    pub client_tokens: PathBuf,
    /// Farm CA key, PEM. Optional: with it the coordinator signs the certificates of agents that
    /// join with a join token; without it agents are enrolled with `archfarm ca issue-agent` only.
    #[serde(default)]
    pub ca_key: Option<PathBuf>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_max_frame() -> u32 {
    archfarm_shared::codec::DEFAULT_MAX_FRAME
}
fn default_max_context() -> u64 {
    4 << 30
}
fn default_heartbeat() -> u64 {
    5
}
fn default_heartbeat_timeout() -> u64 {
    15
}
fn default_max_attempts() -> u32 {
    3
}
fn default_affinity_margin() -> f64 {
    0.5
}
fn default_true() -> bool {
    true
}
fn default_quarantine_after() -> u32 {
    3
}
fn default_agent_wait() -> u64 {
    60
}
fn default_job_timeout() -> u64 {
    3600
}
fn default_job_idle_timeout() -> u64 {
    900
}
fn default_max_unauthenticated() -> u32 {
    256
}
fn default_retention_days() -> u32 {
    7
}
fn default_history_days() -> u32 {
    90
}
fn default_history_builds() -> u32 {
    10_000
}
fn default_min_free() -> bytesize::ByteSize {
    bytesize::ByteSize::gib(1)
}

impl CoordinatorConfig {
    /// The parsed listen address (validated at load).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.parse().expect("validated at load")
    }

    /// The TLS files as the shared shape.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles { ca_cert: self.tls.ca_cert.clone(), cert: self.tls.cert.clone(), key: self.tls.key.clone() }
    }
}

impl Validate for CoordinatorConfig {
    fn resolve(&mut self, base: &Path) {
        resolve_path(base, &mut self.data_dir);
        resolve_path(base, &mut self.tls.ca_cert);
        resolve_path(base, &mut self.tls.cert);
        resolve_path(base, &mut self.tls.key);
        resolve_path(base, &mut self.tls.client_tokens);
        if let Some(k) = &mut self.tls.ca_key {
            resolve_path(base, k);
        }
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.listen.parse::<SocketAddr>().is_err() {
            return Err(("listen", format!("{:?} is not an IP:PORT address, for example 0.0.0.0:7000", self.listen)));
        }
        if !(1024..=archfarm_shared::codec::MAX_FRAME_LIMIT).contains(&self.max_frame_bytes) {
            return Err(("max_frame_bytes", "must be between 1024 and 16777216".into()));
        }
        if self.max_context_bytes == 0 {
            return Err(("max_context_bytes", "must be more than 0".into()));
        }
        if self.heartbeat_interval_secs == 0 {
            return Err(("heartbeat_interval_secs", "must be at least 1".into()));
        }
        if self.max_attempts == 0 {
            return Err(("max_attempts", "must be at least 1".into()));
        }
        if self.job_timeout_secs == 0 {
            return Err(("job_timeout_secs", "must be at least 1".into()));
        }
        if self.job_idle_timeout_secs == 0 {
            return Err(("job_idle_timeout_secs", "must be at least 1".into()));
        }
        if self.max_unauthenticated_connections < 2 {
            return Err(("max_unauthenticated_connections", "must be at least 2".into()));
        }
        if self.quarantine_after_failures == 0 {
            return Err(("quarantine_after_failures", "must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&self.affinity_margin) {
            return Err(("affinity_margin", format!("{}: must be between 0 and 1", self.affinity_margin)));
        }
        if self.heartbeat_timeout_secs < 2 * self.heartbeat_interval_secs {
            return Err(("heartbeat_timeout_secs", "must be at least twice heartbeat_interval_secs".into()));
        }
        Ok(())
    }
}
