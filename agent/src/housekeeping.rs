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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{self, FakeEngine, FakeLink};
    use archfarm_shared::oci::{self, Blob};
    use archfarm_shared::Digest;
    use std::sync::Arc;

    #[tokio::test]
    async fn usage_adds_the_context_cache_to_the_engines_and_a_prune_frees_both_and_forgets_pushes() {
        let cache = DiskUsage { build_cache_bytes: 500, build_cache_records: 3, ..Default::default() };
        let engine = Arc::new(FakeEngine { cache, reclaims: 400, ..Default::default() });
        let dir = tempfile::tempdir().unwrap();
        let executor = fakes::executor(engine.clone(), dir.path());
        let link = FakeLink::serving(Ok(b"ctx".to_vec()));
        executor.cache.get(&link, &Digest::of(b"ctx")).await.unwrap();
        let blob = Blob { media_type: oci::OCI_LAYER_GZIP.into(), digest: Digest::of(b"gz"), size: 2 };
        executor.layers.insert(Digest::of(b"raw"), blob, "r:5000/a");

        let HousekeepingReply::Usage(usage) = executor.housekeeping(Housekeeping::DiskUsage).await else {
            panic!("no usage")
        };
        assert_eq!((usage.build_cache_bytes, usage.context_cache_bytes, usage.context_cache_entries), (500, 3, 1));
        let prune = Housekeeping::Prune { all: false, keep_storage: Some(100) };
        let HousekeepingReply::Pruned(pruned) = executor.housekeeping(prune).await else { panic!("not pruned") };
        assert_eq!((pruned.build_cache_freed, pruned.context_cache_freed), (400, 3));
        assert_eq!(pruned.after.context_cache_entries, 0);
        assert_eq!(engine.calls(), ["prune false Some(100)"], "the engine is asked with the request's terms");
        assert!(executor.layers.get(&Digest::of(b"raw")).is_none(), "the next push asks the registry again");
    }
}
