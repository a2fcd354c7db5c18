//! What every part of the server shares: its settings and the state of the farm (connected
//! agents, running builds, stored contexts, the state database, registry clients).

use super::chunk_store::ChunkStore;
use super::farm::Farm;
use super::live::LiveBuilds;
use super::store::Store;
use archfarm_shared::content::ContentStore;
use archfarm_shared::pki::CertifiedKey;
use archfarm_shared::registry::RegistryClients;
use std::path::PathBuf;
use std::sync::Arc;
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
    pub retention: super::gc::Retention,
}

/// What the sessions share.
#[derive(Debug)]
pub struct Shared {
    /// Live agents and the scheduler.
    pub farm: Arc<Farm>,
    /// Uploaded build contexts.
    pub contexts: ContentStore,
    /// Blobs of images agents handed over, for builds that name no registry.
    pub images: ContentStore,
    /// Chunks of uploaded contexts, for uploads of changed contexts.
    pub chunks: ChunkStore,
    /// Durable state.
    pub store: Store,
    /// Builds running now.
    pub live: LiveBuilds,
    /// Context uploads running now.
    pub uploads: super::uploads::Uploads,
    /// Held per tag while a build decides and writes it.
    pub tag_locks: super::build::tagging::TagLocks,
    /// One client per registry, kept between builds.
    pub registries: Arc<RegistryClients>,
    /// What Prometheus scrapes.
    pub metrics: super::metrics::Metrics,
    /// Settings.
    pub settings: Settings,
}
