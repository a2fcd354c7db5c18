//! Housekeeping of an agent's host: what its build cache and context cache hold, and freeing
//! them (`archfarm agents du`, `prune`, `inspect`). The coordinator asks on a stream of its own
//! ([`super::CoordinatorMessage::Housekeeping`]); the agent answers once and closes it.

use super::{AgentInfo, BuildState};
use crate::{AgentName, BuildId, Platform};
use serde::{Deserialize, Serialize};

/// What the coordinator asks of an agent's host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Housekeeping {
    /// How much the caches hold.
    DiskUsage,
    /// Free the engine's build cache (all of it with `all`, else what no image uses; keeping
    /// `keep_storage` bytes when given) and the agent's context cache.
    Prune {
        /// Also records in use by images (`buildx prune --all`).
        all: bool,
        /// Bytes of build cache to keep (`--keep-storage`).
        keep_storage: Option<u64>,
    },
}

/// What an agent's caches hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsage {
    /// The engine's BuildKit cache, in bytes.
    pub build_cache_bytes: u64,
    /// Its records.
    pub build_cache_records: u64,
    /// Of those bytes, what records in use hold.
    pub build_cache_in_use_bytes: u64,
    /// Build contexts the agent keeps, in bytes.
    pub context_cache_bytes: u64,
    /// Their number.
    pub context_cache_entries: u64,
}

/// What a prune freed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pruned {
    /// Build cache bytes the engine reclaimed.
    pub build_cache_freed: u64,
    /// Context cache bytes removed.
    pub context_cache_freed: u64,
    /// What is left.
    pub after: DiskUsage,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HousekeepingReply {
    /// To [`Housekeeping::DiskUsage`].
    Usage(DiskUsage),
    /// To [`Housekeeping::Prune`].
    Pruned(Pruned),
    /// It could not: why.
    Failed(String),
}

/// One attempt an agent ran, for `agents inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentAttempt {
    /// The build.
    pub build: BuildId,
    /// The platform.
    pub platform: Platform,
    /// Attempt number.
    pub attempt: u32,
    /// Start, ms since the epoch.
    pub started_ms: u64,
    /// End, if it ended.
    pub finished_ms: Option<u64>,
    /// How it ended (`pushed`, `failed`, …), if it did.
    pub outcome: Option<String>,
    /// The build's state now.
    pub build_state: Option<BuildState>,
}

/// `archfarm agents inspect NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentDetail {
    /// What `agents ls` shows.
    pub info: AgentInfo,
    /// Its caches, or why they could not be read.
    pub usage: Result<DiskUsage, String>,
    /// Its most recent attempts, newest first.
    pub recent: Vec<AgentAttempt>,
}

/// One agent's answer to `du` or `prune`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentAnswer {
    /// The agent.
    pub agent: AgentName,
    /// What it said.
    pub reply: HousekeepingReply,
}
