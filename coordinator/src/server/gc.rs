//! Garbage collection and disk space. Every hour, and on `archfarm builds prune`:
//!
//! - finished builds past `history_days`, or beyond the newest `history_builds`, leave the
//!   database with their jobs and attempts;
//! - build contexts no unfinished build uses, and that no build submitted in the last
//!   `retention_days` used, are deleted, then the chunk references into them; image blobs
//!   agents handed over go after the same time;
//! - partial files of transfers that died go after a day.
//!
//! A context in use is never deleted: an unfinished build's is kept whatever its age, and one
//! uploaded or used since the cut-off is newer than it. New builds and uploads are refused
//! while the data directory has less than `min_free_space` free, so a full disk never fails a
//! commit of state the coordinator already acknowledged.

use super::disk::free_bytes;
use super::settings::Retention;
use super::state::Shared;
use archfarm_shared::clock::now_ms;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// How often the coordinator collects on its own.
const EVERY: Duration = Duration::from_secs(3600);
/// Partial files this old belong to no transfer that still runs.
const PARTIAL_AGE: Duration = Duration::from_secs(86_400);
/// A context uploaded or asked about this recently may be about to be named by a build.
const FRESH: Duration = Duration::from_secs(600);
const DAY_MS: u64 = 86_400_000;

/// What a collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Builds removed from the history.
    pub builds: usize,
    /// Context files deleted.
    pub contexts: usize,
    /// Image blobs deleted.
    pub blobs: usize,
    /// Chunk references forgotten.
    pub chunks: usize,
    /// Bytes freed on disk.
    pub bytes: u64,
}

impl std::fmt::Display for Swept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "removed {} builds from the history, {} build contexts, {} image blobs and {} chunk references; \
             freed {}",
            self.builds,
            self.contexts,
            self.blobs,
            self.chunks,
            bytesize::ByteSize::b(self.bytes)
        )
    }
}

/// One collection at a time: the hourly one and `builds prune` may meet.
static SWEEPING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Collects once.
pub async fn sweep(shared: &Shared) -> Result<Swept, String> {
    let _one = SWEEPING.lock().await;
    let keep = &shared.settings.retention;
    let now = now_ms();
    let builds = shared
        .store
        .prune_history(now.saturating_sub(u64::from(keep.history_days) * DAY_MS), keep.history_builds)
        .await
        .map_err(|e| e.to_string())?;
    let cutoff_ms = now.saturating_sub(u64::from(keep.days) * DAY_MS);
    let in_use: HashSet<_> =
        shared.store.contexts_in_use(cutoff_ms).await.map_err(|e| e.to_string())?.into_iter().collect();
    let (contexts, images, chunks, lists) = (
        shared.contexts.files.clone(),
        shared.handovers.store().clone(),
        shared.contexts.chunks.clone(),
        shared.contexts.lists.clone(),
    );
    let now = SystemTime::now();
    let cutoff = (SystemTime::UNIX_EPOCH + Duration::from_millis(cutoff_ms)).min(now - FRESH);
    let partial = now - PARTIAL_AGE;
    let files = tokio::task::spawn_blocking(move || -> std::io::Result<Swept> {
        let (c, c_bytes) = contexts.sweep(cutoff, partial, |d| in_use.contains(d))?;
        // Handed-over blobs wait at least a day for their client to fetch them.
        let (b, b_bytes) = images.sweep(cutoff.min(partial), partial, |_| false)?;
        let chunks = chunks.sweep()?;
        lists.sweep(&contexts)?;
        Ok(Swept { builds: 0, contexts: c, blobs: b, chunks, bytes: c_bytes + b_bytes })
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("sweeping {}: {e}", keep.data_dir.display()))?;
    shared.handovers.forget_removed();
    // Who uploaded a context that is gone no longer matters.
    for digest in shared.store.owned_contexts().await.map_err(|e| e.to_string())? {
        if !shared.contexts.files.contains(&digest) {
            shared.store.forget_context(&digest).await.map_err(|e| e.to_string())?;
        }
    }
    let swept = Swept { builds, ..files };
    info!("garbage collection: {swept}");
    Ok(swept)
}

/// Collects every hour until the coordinator stops.
pub fn start(shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(EVERY);
        loop {
            every.tick().await;
            if let Err(e) = sweep(&shared).await {
                warn!("garbage collection failed: {e}");
            }
        }
    })
}

/// `Err` with what to do when the data directory has less than `min_free_space` free.
pub fn room_for_new_work(keep: &Retention) -> Result<(), String> {
    let free = free_bytes(&keep.data_dir)
        .map_err(|e| format!("cannot read free space of {}: {e}", keep.data_dir.display()))?;
    if free < keep.min_free {
        return Err(format!(
            "the coordinator's disk is nearly full ({} free in {}, under min_free_space {}); it takes no new builds \
             or uploads until an admin frees space (`archfarm builds prune` deletes what retention allows)",
            bytesize::ByteSize::b(free),
            keep.data_dir.display(),
            bytesize::ByteSize::b(keep.min_free)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_and_a_floor_above_it_refuses_new_work() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        let keep = |min_free| Retention {
            days: 7,
            history_days: 90,
            history_builds: 10,
            min_free,
            data_dir: dir.path().to_owned(),
        };
        assert!(room_for_new_work(&keep(0)).is_ok());
        let err = room_for_new_work(&keep(u64::MAX)).unwrap_err();
        assert!(err.contains("disk is nearly full") && err.contains("builds prune"), "{err}");
    }
}
