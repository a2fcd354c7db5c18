//! Build contexts fetched from the coordinator by digest and kept on disk, so a context shared
//! by several platforms or rebuilds crosses the network once per agent. A context comes as
//! content-defined chunks: each one kept has its chunk list beside it (`lists/<hex>`), and a new
//! context takes from the coordinator only the chunks no kept context holds; the rest is copied
//! from disk. A rebuild after a small change moves the change, not the context. The cache has a
//! size: past it the contexts used least recently are deleted, never one used in the last
//! [`IN_USE`] (a build may still be reading it).

use crate::link::{CoordinatorLink, FetchError};
use archfarm_shared::chunk_lists::ChunkLists;
use archfarm_shared::content::{ContentStore, Unstored, Written, RECEIVE_IDLE};
use archfarm_shared::Digest;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::io::AsyncReadExt;
use tracing::{info, warn};

/// A context used this recently may belong to a running build, and is never evicted.
pub const IN_USE: Duration = Duration::from_secs(600);

/// Where each chunk of the kept contexts lies: the context's file and the offset in it.
type ChunkIndex = HashMap<Digest, (PathBuf, u64)>;

/// The local context cache.
#[derive(Debug, Clone)]
pub struct ContextCache {
    store: ContentStore,
    /// The chunk list of each context held.
    lists: ChunkLists,
    dir: PathBuf,
    max_bytes: u64,
}

impl ContextCache {
    /// Opens (and creates) the cache directory, which may hold `max_bytes`.
    pub fn open(dir: PathBuf, max_bytes: u64) -> std::io::Result<Self> {
        // The coordinator enforces the size limit when a context is uploaded.
        // A cache: what a power loss spoils is hashed before use and fetched again.
        let store = ContentStore::open(&dir, u64::MAX)?.volatile();
        let lists = ChunkLists::open(&dir.join("lists"))?;
        Ok(ContextCache { store, lists, dir, max_bytes })
    }

    /// The context's path, fetching it through `link` first if it is not cached.
    pub async fn get(&self, link: &dyn CoordinatorLink, digest: &Digest) -> Result<PathBuf, FetchError> {
        let path = self.store.path(digest);
        // Marking it used fails when another job's eviction just took it: fetch it again.
        if self.store.verified(digest).await && touch(&path).is_ok() {
            return Ok(path);
        }
        let index = {
            let cache = self.clone();
            tokio::task::spawn_blocking(move || cache.index()).await.unwrap_or_default()
        };
        let fetched = match self.fetch(link, digest, &index).await {
            Ok(fetched) => fetched,
            // A kept context that changed or went since the index was read: everything again,
            // once the kept contexts that gave chunks are checked (a damaged one is deleted).
            Err((FetchError::Failed(e), Some(sources))) => {
                warn!(context = %digest, "putting the context together from kept chunks failed ({e}); fetching it whole");
                for source in sources {
                    self.store.verified(&source).await;
                }
                self.fetch(link, digest, &ChunkIndex::new()).await.map_err(|(e, _)| e)?
            }
            Err((e, _)) => return Err(e),
        };
        let (dir, max) = (self.dir.clone(), self.max_bytes);
        match tokio::task::spawn_blocking(move || evict(&dir, max, SystemTime::now())).await {
            Ok(Ok(gone)) if !gone.is_empty() => info!(contexts = gone.len(), "evicted contexts used least recently"),
            Ok(Err(e)) => warn!("cannot keep the context cache under its size: {e}"),
            _ => {}
        }
        Ok(fetched)
    }

    /// Fetches `digest`, taking from the coordinator only the chunks `index` does not hold, and
    /// keeps its chunk list. A failure that a whole fetch may mend names the kept contexts that
    /// gave chunks.
    async fn fetch(
        &self,
        link: &dyn CoordinatorLink,
        digest: &Digest,
        index: &ChunkIndex,
    ) -> Result<PathBuf, (FetchError, Option<Vec<Digest>>)> {
        let held = |d: &Digest| index.contains_key(d);
        let download = link.fetch_context(digest, &held).await.map_err(|e| (e, None))?;
        let mut sources: Vec<Digest> = Vec::new();
        for (chunk, _) in download.chunks.iter().zip(&download.sent).filter(|(_, sent)| !**sent) {
            let from = index.get(&chunk.digest).and_then(|(path, _)| ContentStore::digest_of(path));
            if let Some(from) = from.filter(|f| !sources.contains(f)) {
                sources.push(from);
            }
        }
        let sources = (!sources.is_empty()).then_some(sources);
        let chunks = download.chunks.clone();
        let sent: u64 = chunks.iter().zip(&download.sent).filter(|(_, s)| **s).map(|(c, _)| u64::from(c.size)).sum();
        let size = download.size;
        // Where each chunk comes from: the link's bytes (None), or a kept context.
        let mut plan = Vec::with_capacity(chunks.len());
        for (chunk, sent) in chunks.iter().zip(&download.sent) {
            plan.push(match *sent {
                true => None,
                false => Some(
                    index
                        .get(&chunk.digest)
                        .cloned()
                        .ok_or_else(|| (FetchError::Failed("a chunk no kept context holds".into()), sources.clone()))?,
                ),
            });
        }
        let sent_sizes: Vec<u32> =
            chunks.iter().zip(&download.sent).filter(|(_, s)| **s).map(|(c, _)| c.size).collect();
        let (tx, rx) = tokio::sync::mpsc::channel(PIECES_AHEAD);
        // The file is written on one thread of the blocking pool, which reads the kept chunks
        // itself; the link's bytes reach it through `tx`. The store checks the whole digest as
        // it writes: neither the link's bytes nor the kept chunks are trusted before that.
        let writer = {
            let (store, digest, sizes) =
                (self.store.clone(), digest.clone(), chunks.iter().map(|c| c.size).collect::<Vec<u32>>());
            tokio::task::spawn_blocking(move || {
                store.receive_written(&digest, size, |out| put_together(&sizes, &plan, rx, out))
            })
        };
        let read = read_sent(download.bytes, &sent_sizes, size, tx);
        let fetched = match tokio::join!(read, writer) {
            (_, Ok(Ok(fetched))) => fetched,
            // Where the bytes came from failed: the link, or a kept chunk.
            (Err(Stopped::Source(e)), _) | (_, Ok(Err(Unstored::Source(e)))) => {
                return Err((FetchError::Failed(e), sources))
            }
            // The store stopped: a full disk, say (nothing a whole fetch mends), or bytes that
            // do not make the digest (a kept chunk that changed on disk).
            (_, Ok(Err(Unstored::Store(e)))) => {
                let mended = sources.filter(|_| e.contains("corrupt"));
                return Err((FetchError::Failed(e), mended));
            }
            (_, Err(e)) => return Err((FetchError::Failed(format!("putting the context together: {e}")), None)),
        };
        info!(context = %digest, bytes = size, sent, held = size - sent, "fetched build context");
        if let Err(e) = self.lists.save(digest, &chunks) {
            warn!(context = %digest, "cannot keep the context's chunk list: {e}");
        }
        Ok(fetched)
    }

    /// Where the chunks of every kept context lie. Lists whose context was evicted go first.
    fn index(&self) -> ChunkIndex {
        let _ = self.lists.sweep(&self.store);
        let mut index = ChunkIndex::new();
        for digest in self.lists.digests() {
            let Some(list) = self.lists.load(&digest) else { continue };
            let context = self.store.path(&digest);
            let mut offset = 0;
            for chunk in list {
                index.entry(chunk.digest).or_insert_with(|| (context.clone(), offset));
                offset += u64::from(chunk.size);
            }
        }
        index
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
        self.lists.clear();
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

/// Why reading the link's bytes stopped.
enum Stopped {
    /// They could not be read.
    Source(String),
    /// The writer stopped taking them; it says why.
    Sink,
}

/// Bytes moved at a time while a context is put together, and pieces of the link's bytes that
/// may wait for the writer: a fetch holds about 6 MiB whatever its chunks' sizes (a buffer per
/// chunk left the allocator holding tens of MiB after a 100 MiB fetch, measured).
const PIECE: usize = 1 << 20;
const PIECES_AHEAD: usize = 4;

/// Reads the bytes of the chunks sent (of `sizes`, in order) from the link, in pieces that never
/// cross a chunk's end, and hands them to the writer.
async fn read_sent(
    mut bytes: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    sizes: &[u32],
    size: u64,
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
) -> Result<(), Stopped> {
    let mut at = 0u64;
    for &chunk in sizes {
        let mut left = chunk as usize;
        while left > 0 {
            let mut piece = vec![0u8; left.min(PIECE)];
            let mut filled = 0;
            // The idle limit holds for each read, not for the whole piece.
            while filled < piece.len() {
                match tokio::time::timeout(RECEIVE_IDLE, bytes.read(&mut piece[filled..])).await {
                    Ok(Ok(0)) => {
                        return Err(Stopped::Source(format!("the context's bytes ended at {at} of {size}")));
                    }
                    Ok(Ok(n)) => {
                        filled += n;
                        at += n as u64;
                    }
                    Ok(Err(e)) => {
                        return Err(Stopped::Source(format!("the context's bytes broke at {at} of {size}: {e}")))
                    }
                    Err(_) => {
                        return Err(Stopped::Source(format!(
                            "the context's bytes stalled at {at} of {size}: nothing for {} s",
                            RECEIVE_IDLE.as_secs()
                        )))
                    }
                }
            }
            left -= piece.len();
            tx.send(piece.into()).await.map_err(|_| Stopped::Sink)?;
        }
    }
    Ok(())
}

/// Writes the context to `out`, chunk by chunk (of `sizes`): those `plan` marks `None` from the
/// link's pieces on `rx`, the others read from the kept context it names.
fn put_together(
    sizes: &[u32],
    plan: &[Option<(PathBuf, u64)>],
    mut rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    out: &mut Written,
) -> Result<(), Unstored> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; PIECE];
    let mut open: Option<(PathBuf, std::fs::File)> = None;
    let kept = |e: std::io::Error| Unstored::Source(format!("reading a kept chunk: {e}"));
    for (&size, from) in sizes.iter().zip(plan) {
        let mut left = size as usize;
        match from {
            None => {
                while left > 0 {
                    let piece =
                        rx.blocking_recv().ok_or_else(|| Unstored::Source("the context's bytes stopped".into()))?;
                    out.put(&piece)?;
                    left = left.saturating_sub(piece.len());
                }
            }
            Some((path, offset)) => {
                if open.as_ref().is_none_or(|(p, _)| p != path) {
                    open = Some((path.clone(), std::fs::File::open(path).map_err(kept)?));
                }
                let file = &open.as_ref().expect("opened above").1;
                while left > 0 {
                    let n = left.min(PIECE);
                    file.read_exact_at(&mut buf[..n], offset + (size as usize - left) as u64).map_err(kept)?;
                    out.put(&buf[..n])?;
                    left -= n;
                }
            }
        }
    }
    Ok(())
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

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; n];
        rand::RngCore::fill_bytes(&mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed), &mut v);
        v
    }

    #[tokio::test]
    async fn a_changed_context_takes_only_its_new_chunks_and_one_put_together_wrong_comes_whole() {
        use crate::fakes::FakeLink;
        let dir = tempfile::tempdir().unwrap();
        let cache = ContextCache::open(dir.path().join("contexts"), u64::MAX).unwrap();
        let first = random(12 << 20, 1);
        let a = FakeLink::serving(Ok(first.clone()));
        let at_a = cache.get(&a, &Digest::of(&first)).await.unwrap();
        assert_eq!(std::fs::read(&at_a).unwrap(), first);
        assert_eq!(*a.sent.lock().unwrap(), [first.len() as u64], "nothing held: all of it is sent");

        // 100 bytes changed in the middle: at most the two chunks around them travel.
        let mut second = first.clone();
        second[6 << 20..(6 << 20) + 100].fill(7);
        let b = FakeLink::serving(Ok(second.clone()));
        let at_b = cache.get(&b, &Digest::of(&second)).await.unwrap();
        assert_eq!(std::fs::read(&at_b).unwrap(), second);
        let sent = b.sent.lock().unwrap()[0];
        assert!(sent > 0 && sent <= 2 * archfarm_shared::chunking::MAX_CHUNK as u64, "{sent} bytes sent");
        assert_eq!(*b.fetches.lock().unwrap(), 1);
        assert_eq!(cache.get(&b, &Digest::of(&second)).await.unwrap(), at_b, "held now: not fetched again");
        assert_eq!(*b.fetches.lock().unwrap(), 1);

        // The kept contexts change on disk under the cache: the context put together from them
        // fails its digest, and is fetched again whole.
        for path in [&at_a, &at_b] {
            std::fs::write(path, random(12 << 20, 9)).unwrap();
        }
        let mut third = second.clone();
        third[..10].fill(1);
        let c = FakeLink::serving(Ok(third.clone()));
        let at_c = cache.get(&c, &Digest::of(&third)).await.unwrap();
        assert_eq!(std::fs::read(&at_c).unwrap(), third);
        let sent = c.sent.lock().unwrap().clone();
        assert_eq!((sent.len(), sent[1]), (2, third.len() as u64), "{sent:?}: a second fetch, whole");
        assert!(
            !dir.path()
                .join("contexts")
                .read_dir()
                .unwrap()
                .any(|e| { e.unwrap().file_name().to_string_lossy().starts_with(".partial") }),
            "the failed attempt left nothing behind"
        );

        // A pruned cache forgets the lists with the contexts.
        cache.clear().unwrap();
        assert!(cache.index().is_empty());
        assert_eq!(dir.path().join("contexts/lists").read_dir().unwrap().count(), 0);
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
