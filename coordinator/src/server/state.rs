//! What every part of the server shares: its settings, and each concept's state (connected
//! agents, running builds, build contexts, handed-over images, tags, the state database, the
//! registries). Each field is owned by the module named beside it; this is only where they meet.

use super::contexts::Contexts;
use super::farm::Farm;
use super::handover::budget::HandOvers;
use super::live::LiveBuilds;
use super::metrics::Metrics;
use super::ports::ImageStore;
use super::registry_images::RegistryImages;
use super::sessions::Sessions;
use super::settings::{Retention, Settings};
use super::store::Store;
use super::tags::locks::TagLocks;
use super::tags::writes::TagWriter;
use anyhow::Context as _;
use archfarm_config::CoordinatorConfig;
use archfarm_shared::content::ContentStore;
use archfarm_shared::registry::RegistryClients;
use std::sync::Arc;
use std::time::Duration;

/// What the sessions share.
#[derive(Debug)]
pub struct Shared {
    /// Live agents and the scheduler ([`super::farm`]).
    pub farm: Arc<Farm>,
    /// Build contexts: stored files, their chunks, uploads running ([`super::contexts`]).
    pub contexts: Contexts,
    /// Blobs of images agents handed over, for builds that name no registry, and what each
    /// attempt handed over ([`super::handover`]).
    pub handovers: HandOvers,
    /// Durable state ([`super::store`]).
    pub store: Store,
    /// Builds running now ([`super::live`]).
    pub live: LiveBuilds,
    /// Held per tag while a build decides and writes it ([`super::tags`]).
    pub tag_locks: TagLocks,
    /// The registries ([`super::registry_images`] in production).
    pub registry: Arc<dyn ImageStore>,
    /// What Prometheus scrapes.
    pub metrics: Metrics,
    /// Client sessions open now, by token ([`super::sessions`]).
    pub sessions: Sessions,
    /// Settings.
    pub settings: Settings,
}

impl Shared {
    /// What writing a build's tags takes: the record, the registry, the locks, the metrics.
    pub fn tag_writer(&self) -> TagWriter<'_> {
        TagWriter { store: &self.store, registry: &*self.registry, locks: &self.tag_locks, metrics: &self.metrics }
    }

    /// Opens the state under the configuration's data directory: stores, database, settings.
    pub fn open(config: &CoordinatorConfig) -> anyhow::Result<Shared> {
        let images_dir = config.data_dir.join("images");
        let handed_over = ContentStore::open(&images_dir, config.max_context_bytes)
            .with_context(|| format!("cannot create {}", images_dir.display()))?
            .of_image_blobs();
        let db = config.data_dir.join("state.db");
        let store = Store::open(&db).with_context(|| format!("cannot open the state database {}", db.display()))?;
        let registries = Arc::new(RegistryClients::new(config.insecure_registries.clone()));
        Ok(Shared {
            farm: Farm::new(
                Duration::from_secs(config.agent_wait_secs),
                config.cache_affinity.then_some(config.affinity_margin),
            ),
            contexts: Contexts::open(&config.data_dir, config.max_context_bytes)?,
            handovers: HandOvers::new(handed_over, config.min_free_space.as_u64()),
            store,
            live: LiveBuilds::default(),
            tag_locks: TagLocks::default(),
            registry: Arc::new(RegistryImages::new(registries)),
            metrics: Metrics::new(),
            sessions: Sessions::default(),
            settings: Settings {
                max_frame: config.max_frame_bytes,
                heartbeat_interval: Duration::from_secs(config.heartbeat_interval_secs),
                heartbeat_timeout: Duration::from_secs(config.heartbeat_timeout_secs),
                tokens_file: config.tls.client_tokens.clone(),
                max_attempts: config.max_attempts,
                quarantine_after: config.quarantine_after_failures,
                job_timeout: Duration::from_secs(config.job_timeout_secs),
                job_idle_timeout: Duration::from_secs(config.job_idle_timeout_secs),
                ca: match &config.tls.ca_key {
                    Some(key) => Some(super::settings::load_ca(&config.tls.ca_cert, key)?),
                    None => None,
                },
                retention: Retention {
                    days: config.retention_days,
                    history_days: config.history_days,
                    history_builds: config.history_builds,
                    min_free: config.min_free_space.as_u64(),
                    data_dir: config.data_dir.clone(),
                },
            },
        })
    }
}
