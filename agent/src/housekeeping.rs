//! What the coordinator asks of this host's caches (`archfarm agents du`, `prune`, `inspect`):
//! the engine's build cache and the agent's context cache, read and freed.

use crate::executor::Executor;
use archfarm_shared::protocol::{DiskUsage, Housekeeping, HousekeepingReply, Pruned};
use tracing::info;

impl Executor {
    /// Answers one housekeeping request.
    pub async fn housekeeping(&self, request: Housekeeping) -> HousekeepingReply {
        let answer = match request {
            Housekeeping::DiskUsage => self.usage().await.map(HousekeepingReply::Usage),
            Housekeeping::Prune { all, keep_storage } => {
                self.prune(all, keep_storage).await.map(HousekeepingReply::Pruned)
            }
        };
        answer.unwrap_or_else(HousekeepingReply::Failed)
    }

    async fn usage(&self) -> Result<DiskUsage, String> {
        let mut usage = self.engine.build_cache().await?;
        let cache = self.cache.clone();
        let (bytes, entries) = tokio::task::spawn_blocking(move || cache.usage())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("reading the context cache: {e}"))?;
        usage.context_cache_bytes = bytes;
        usage.context_cache_entries = entries;
        Ok(usage)
    }

    async fn prune(&self, all: bool, keep_storage: Option<u64>) -> Result<Pruned, String> {
        let build_cache_freed = self.engine.prune(all, keep_storage).await?;
        let cache = self.cache.clone();
        let context_cache_freed = tokio::task::spawn_blocking(move || cache.clear())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("clearing the context cache: {e}"))?;
        // What the agent remembers of pushed layers and images goes too: the next push asks the
        // registry again.
        self.layers.clear();
        self.images.clear();
        info!(build_cache_freed, context_cache_freed, all, ?keep_storage, "pruned");
        Ok(Pruned { build_cache_freed, context_cache_freed, after: self.usage().await? })
    }
}
