//! Build contexts fetched from the coordinator by digest and kept on disk, so a context shared
//! by several platforms or rebuilds crosses the network once per agent. The cache has a size:
//! past it the contexts used least recently are deleted, never one used in the last
//! [`IN_USE`] (a build may still be reading it).

use crate::link::{CoordinatorLink, FetchError};
use archfarm_shared::content::ContentStore;
use archfarm_shared::Digest;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// A context used this recently may belong to a running build, and is never evicted.
pub const IN_USE: Duration = Duration::from_secs(600);

/// The local context cache.
#[derive(Debug, Clone)]
pub struct ContextCache {
    store: ContentStore,
    dir: PathBuf,
    max_bytes: u64,
}

impl ContextCache {
    /// Opens (and creates) the cache directory, which may hold `max_bytes`.
    pub fn open(dir: PathBuf, max_bytes: u64) -> std::io::Result<Self> {
        // The coordinator enforces the size limit when a context is uploaded.
        Ok(ContextCache { store: ContentStore::open(&dir, u64::MAX)?, dir, max_bytes })
    }

    /// The context's path, fetching it through `link` first if it is not cached.
    pub async fn get(&self, link: &dyn CoordinatorLink, digest: &Digest) -> Result<PathBuf, FetchError> {
        let path = self.store.path(digest);
        // Marking it used fails when another job's eviction just took it: fetch it again.
        if self.store.contains(digest) && touch(&path).is_ok() {
            return Ok(path);
        }
        // The store checks the digest as the bytes arrive: a link delivers them unchecked.
        let mut download = link.fetch_context(digest).await?;
        let fetched =
            self.store.receive(digest, download.size, &mut download.bytes).await.map_err(FetchError::Failed)?;
        let (dir, max) = (self.dir.clone(), self.max_bytes);
        match tokio::task::spawn_blocking(move || evict(&dir, max, SystemTime::now())).await {
            Ok(Ok(gone)) if !gone.is_empty() => info!(contexts = gone.len(), "evicted contexts used least recently"),
            Ok(Err(e)) => warn!("cannot keep the context cache under its size: {e}"),
            _ => {}
        }
        Ok(fetched)
    }

    /// Bytes and number of the contexts held (downloads under way not counted).
    pub fn usage(&self) -> std::io::Result<(u64, u64)> {
        let (mut bytes, mut count) = (0, 0);
        for (len, _) in self.complete()? {
            bytes += len;
            count += 1;
        }
        Ok((bytes, count))
    }

    /// Deletes every context held; returns the bytes freed. A build reading one goes on: the
    /// file it holds open stays readable until it closes it.
    pub fn clear(&self) -> std::io::Result<u64> {
        let mut freed = 0;
        for (len, path) in self.complete()? {
            std::fs::remove_file(&path)?;
            freed += len;
        }
        Ok(freed)
    }

    fn complete(&self) -> std::io::Result<Vec<(u64, PathBuf)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_file() && !entry.file_name().to_string_lossy().starts_with('.') {
                out.push((meta.len(), entry.path()));
            }
        }
        Ok(out)
    }
}

/// Marks a context as used now.
fn touch(path: &Path) -> std::io::Result<()> {
    std::fs::File::options().write(true).open(path)?.set_modified(SystemTime::now())
}

/// Deletes the contexts used least recently in `dir` until it holds at most `max_bytes`, keeping
/// any used within [`IN_USE`] of `now`. Returns what it deleted.
fn evict(dir: &Path, max_bytes: u64, now: SystemTime) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        // Partial downloads belong to a fetch under way, unless one was left behind long ago.
        let partial = entry.file_name().to_string_lossy().starts_with('.');
        let modified = meta.modified()?;
        if meta.is_file() && (!partial || now.duration_since(modified).unwrap_or_default() > 24 * IN_USE) {
            files.push((modified, meta.len(), entry.path()));
        }
    }
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    let mut gone = Vec::new();
    for (used, len, path) in files {
        if total <= max_bytes {
            break;
        }
        if now.duration_since(used).unwrap_or_default() < IN_USE {
            continue;
        }
        std::fs::remove_file(&path)?;
        total -= len;
        gone.push(path);
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, age: Duration) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, [0u8; 100]).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
        path
    }

    #[test]
    fn the_least_recently_used_go_first_and_recent_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let old = file(dir.path(), "old", Duration::from_secs(3600));
        let older = file(dir.path(), "older", Duration::from_secs(7200));
        let recent = file(dir.path(), "recent", Duration::from_secs(60));
        file(dir.path(), ".partial-x", Duration::from_secs(9999));
        let stale = file(dir.path(), ".partial-stale", Duration::from_secs(25 * 3600));
        // 300 bytes of contexts, room for 150: the two old ones go, oldest first.
        // A partial download left a day ago goes first; a recent one is a fetch under way.
        assert_eq!(evict(dir.path(), 150, SystemTime::now()).unwrap(), [stale, older, old]);
        assert!(recent.exists());
        // Over the limit with only recent contexts: nothing is deleted.
        file(dir.path(), "recent2", Duration::from_secs(1));
        assert!(evict(dir.path(), 50, SystemTime::now()).unwrap().is_empty());
        // Using a context makes it recent.
        let used = file(dir.path(), "used", Duration::from_secs(3600));
        touch(&used).unwrap();
        assert!(evict(dir.path(), 0, SystemTime::now()).unwrap().is_empty());
    }
}
