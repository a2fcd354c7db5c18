//! A directory of files addressed by their sha256: the coordinator's build-context store and
//! the agents' context cache. A file appears under its digest only after its bytes were checked;
//! a build context a process did not write is trusted only once it hashed it
//! ([`ContentStore::verified`]; a handed-over image blob is checked by the client that fetches it).
//!
//! A file is not flushed to disk before it is used: forcing 100 MiB out took 0.35 s of every
//! context's upload and fetch, measured. A durable store (handed-over image blobs) flushes it in
//! the background after it appears; a volatile one (build contexts, on the coordinator and in the
//! agents' caches) leaves it to the kernel. After a power loss a file
//! may hold other bytes than its name says; the next process hashes it before its first use and
//! drops it if so, so the worst case is a context to upload or fetch again.

use crate::ids::Digest;
use sha2::Digest as _;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A transfer into the store that brings nothing for this long fails.
pub const RECEIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// A content-addressed directory.
#[derive(Debug, Clone)]
pub struct ContentStore {
    dir: PathBuf,
    max_bytes: u64,
    /// What its files are, for messages: build contexts unless [`ContentStore::of_image_blobs`].
    images: bool,
    /// Whether a new file is flushed to disk (in the background) once it is in place.
    durable: bool,
    /// Files this process wrote or hashed: their bytes are their digest.
    verified: Arc<Mutex<HashSet<Digest>>>,
}

/// Digests remembered as verified before the set starts again (each then hashed once more).
const VERIFIED: usize = 100_000;

impl ContentStore {
    /// Opens (and creates) `dir`, accepting files up to `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(ContentStore { dir: dir.to_owned(), max_bytes, images: false, durable: true, verified: Arc::default() })
    }

    /// The same store, whose new files are never flushed to disk by it: files that can be sent
    /// or fetched again.
    pub fn volatile(self) -> Self {
        ContentStore { durable: false, ..self }
    }

    /// The same store, holding blobs of images: its messages say so.
    pub fn of_image_blobs(self) -> Self {
        ContentStore { images: true, ..self }
    }

    /// The largest file accepted.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Where the file of `digest` lives (whether or not it is there).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("sha256-{}.tar", digest.hex()))
    }

    /// The digest a file of a store is named by ([`ContentStore::path`]'s inverse).
    pub fn digest_of(path: &Path) -> Option<Digest> {
        let hex = path.file_name()?.to_str()?.strip_prefix("sha256-")?.strip_suffix(".tar")?;
        format!("sha256:{hex}").parse().ok()
    }

    /// Whether the store holds `digest`.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Whether the store holds `digest` with the bytes its name says: known for a file this
    /// process stored or hashed before, hashed (on the blocking pool) otherwise. A file whose
    /// bytes do not match (left by a power loss, or changed on disk) is deleted.
    pub async fn verified(&self, digest: &Digest) -> bool {
        let path = self.path(digest);
        if !path.is_file() {
            return false;
        }
        if self.verified.lock().unwrap_or_else(|e| e.into_inner()).contains(digest) {
            return true;
        }
        let check = path.clone();
        let hashed = tokio::task::spawn_blocking(move || -> std::io::Result<Digest> {
            let mut file = std::fs::File::open(&check)?;
            let mut hasher = sha2::Sha256::new();
            std::io::copy(&mut file, &mut hasher)?;
            Ok(Digest::from_sha256(hasher.finalize().into()))
        })
        .await;
        match hashed {
            Ok(Ok(got)) if &got == digest => {
                self.remember(digest);
                true
            }
            Ok(Ok(got)) => {
                tracing::warn!(file = %path.display(), "a stored file's bytes are {got}, not its name: it is deleted");
                let _ = std::fs::remove_file(&path);
                false
            }
            Ok(Err(e)) => {
                tracing::warn!(file = %path.display(), "cannot read a stored file to check it: {e}");
                false
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), "checking a stored file failed: {e}");
                false
            }
        }
    }

    fn remember(&self, digest: &Digest) {
        let mut set = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if set.len() >= VERIFIED {
            set.clear();
        }
        set.insert(digest.clone());
    }

    /// Records that `digest`'s file was just put in place with checked bytes (by the store, or by
    /// a caller that wrote it itself), and, in a durable store, flushes it in the background.
    pub fn stored(&self, digest: &Digest) {
        self.remember(digest);
        if self.durable {
            let path = self.path(digest);
            tokio::task::spawn_blocking(move || {
                if let Err(e) = std::fs::File::open(&path).and_then(|f| f.sync_all()) {
                    tracing::warn!(file = %path.display(), "cannot flush a stored file to disk: {e}");
                }
            });
        }
    }

    /// The size of a stored file, if present.
    pub async fn size(&self, digest: &Digest) -> Option<u64> {
        tokio::fs::metadata(self.path(digest)).await.ok().map(|m| m.len())
    }

    /// Stores exactly `size` bytes read from `r`, which must hash to `digest`. Nothing is kept
    /// unless they do. Returns the stored file's path.
    pub async fn receive<R: AsyncRead + Unpin>(
        &self,
        digest: &Digest,
        size: u64,
        r: &mut R,
    ) -> Result<PathBuf, String> {
        self.receive_checked(digest, size, r, |_| Ok(())).await
    }

    /// [`ContentStore::receive`], and `check` (run on the blocking pool) must accept the
    /// received file before it appears under its digest. A read that brings nothing for
    /// [`RECEIVE_IDLE`] fails.
    pub async fn receive_checked<R, C>(
        &self,
        digest: &Digest,
        size: u64,
        r: &mut R,
        check: C,
    ) -> Result<PathBuf, String>
    where
        R: AsyncRead + Unpin,
        C: FnOnce(&Path) -> Result<(), String> + Send + 'static,
    {
        self.admits(size)?;
        let tmp = self.partial(digest);
        let result = async {
            let io = |e: std::io::Error| format!("cannot store {digest}: {e}");
            let mut file = tokio::fs::File::create(&tmp).await.map_err(io)?;
            let mut hasher = sha2::Sha256::new();
            let mut left = size;
            let mut buf = vec![0u8; 256 << 10];
            while left > 0 {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = tokio::time::timeout(RECEIVE_IDLE, r.read(&mut buf[..want]))
                    .await
                    .map_err(|_| format!("transfer of {digest} stalled: nothing for {} s", RECEIVE_IDLE.as_secs()))?
                    .map_err(|e| format!("transfer of {digest} interrupted: {e}"))?;
                if n == 0 {
                    return Err(format!("transfer of {digest} ended after {} of {size} bytes", size - left));
                }
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n]).await.map_err(io)?;
                left -= n as u64;
            }
            file.flush().await.map_err(io)?;
            drop(file);
            let got = Digest::from_sha256(hasher.finalize().into());
            if &got != digest {
                return Err(format!("transfer corrupt: announced {digest}, received {got}"));
            }
            let checked = tmp.clone();
            tokio::task::spawn_blocking(move || check(&checked)).await.map_err(|e| e.to_string())??;
            let path = self.path(digest);
            tokio::fs::rename(&tmp, &path).await.map_err(io)?;
            self.stored(digest);
            Ok(path)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    /// Refuses a file over the store's limit.
    fn admits(&self, size: u64) -> Result<(), String> {
        if size > self.max_bytes && self.images {
            return Err(format!(
                "an image blob of {size} bytes exceeds the limit of {} bytes (max_context_bytes)",
                self.max_bytes
            ));
        }
        if size > self.max_bytes {
            return Err(format!(
                "build context of {size} bytes exceeds the limit of {} bytes; exclude files with .dockerignore \
                 or raise max_context_bytes",
                self.max_bytes
            ));
        }
        Ok(())
    }

    /// A new temporary name for a file of `digest` being received.
    fn partial(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!(".partial-{}-{:x}", digest.hex(), rand::random::<u32>()))
    }

    /// Stores the `size` bytes `write` puts out, which must hash to `digest`, on the calling
    /// thread (a thread of the blocking pool): for a caller that puts a file together from pieces
    /// it reads itself, without a trip to the pool per piece. Nothing is kept unless the bytes
    /// match. `write`'s own errors come back as it made them.
    pub fn receive_written<F>(&self, digest: &Digest, size: u64, write: F) -> Result<PathBuf, Unstored>
    where
        F: FnOnce(&mut Written) -> Result<(), Unstored>,
    {
        self.admits(size).map_err(Unstored::Store)?;
        let tmp = self.partial(digest);
        let result = (|| {
            let io = |e: std::io::Error| Unstored::Store(format!("cannot store {digest}: {e}"));
            let file = std::fs::File::create(&tmp).map_err(io)?;
            let mut out = Written { file, hasher: sha2::Sha256::new(), count: 0, size };
            write(&mut out)?;
            if out.count != size {
                return Err(Unstored::Store(format!("{digest} was put together from {} of {size} bytes", out.count)));
            }
            let got = Digest::from_sha256(out.hasher.finalize().into());
            if &got != digest {
                return Err(Unstored::Store(format!("transfer corrupt: announced {digest}, received {got}")));
            }
            drop(out.file);
            let path = self.path(digest);
            std::fs::rename(&tmp, &path).map_err(io)?;
            Ok(path)
        })();
        match result {
            Ok(path) => {
                self.stored(digest);
                Ok(path)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Deletes the files not used since `before` (by modification time) unless `keep` says
    /// otherwise, and partial files last written before `partial_before`. Returns how many
    /// files and bytes went.
    pub fn sweep(
        &self,
        before: std::time::SystemTime,
        partial_before: std::time::SystemTime,
        keep: impl Fn(&Digest) -> bool,
    ) -> std::io::Result<(usize, u64)> {
        let (mut files, mut bytes) = (0, 0);
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let stored = name
                .strip_prefix("sha256-")
                .and_then(|n| n.strip_suffix(".tar"))
                .and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok());
            let partial = name.starts_with(".partial-");
            if stored.as_ref().is_some_and(&keep) || (stored.is_none() && !partial) {
                continue;
            }
            // A file renamed or deleted meanwhile (a transfer ending, another sweep) is skipped.
            let fresh = |meta: &std::fs::Metadata| {
                meta.modified().map_or(true, |m| m >= if partial { partial_before } else { before })
            };
            let Ok(meta) = entry.metadata() else { continue };
            if fresh(&meta) {
                continue;
            }
            // Used again since it was listed (a client asked about it): kept.
            if std::fs::metadata(entry.path()).map_or(true, |m| fresh(&m)) {
                continue;
            }
            if std::fs::remove_file(entry.path()).is_ok() {
                files += 1;
                bytes += meta.len();
            }
        }
        Ok((files, bytes))
    }

    /// Marks a stored file used now, so a sweep keeps it for another retention period.
    pub fn touch(&self, digest: &Digest) {
        if let Ok(f) = std::fs::File::options().append(true).open(self.path(digest)) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// Copies a stored file to `w`.
    pub async fn send<W: AsyncWrite + Unpin>(&self, digest: &Digest, w: &mut W) -> std::io::Result<u64> {
        copy_from_disk(tokio::fs::File::open(self.path(digest)).await?, w).await
    }
}

/// Why [`ContentStore::receive_written`] kept nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unstored {
    /// Where the bytes came from failed: the writer said so.
    Source(String),
    /// The store could not write them, or they were not what their digest says ("corrupt").
    Store(String),
}

/// The file [`ContentStore::receive_written`] is writing: each piece is hashed, then written.
#[derive(Debug)]
pub struct Written {
    file: std::fs::File,
    hasher: sha2::Sha256,
    count: u64,
    /// The bytes announced: nothing is written past them.
    size: u64,
}

impl Written {
    /// Appends `piece`. A failure is the store's.
    pub fn put(&mut self, piece: &[u8]) -> Result<(), Unstored> {
        use std::io::Write as _;
        if self.count + piece.len() as u64 > self.size {
            return Err(Unstored::Store(format!("more than the {} bytes announced", self.size)));
        }
        self.hasher.update(piece);
        self.file.write_all(piece).map_err(|e| Unstored::Store(format!("cannot store the file: {e}")))?;
        self.count += piece.len() as u64;
        Ok(())
    }
}

/// Buffer each read from disk fills in [`copy_from_disk`].
const DISK_READ: usize = 1 << 20;

/// Copies `r` (a file, or what reads one) to `w` in reads of 1 MiB. `tokio::io::copy` reads
/// 8 KiB at a time, and each read of a `tokio::fs::File` is a trip to the blocking pool: sending
/// a 100 MiB context took 12,800 of them, and ran at 130 MiB/s on a link that carries 250.
pub async fn copy_from_disk<R, W>(r: R, w: &mut W) -> std::io::Result<u64>
where
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_buf(&mut tokio::io::BufReader::with_capacity(DISK_READ, r), w).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_a_process_did_not_write_is_hashed_before_it_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"context bytes".to_vec();
        let d = Digest::of(&data);
        let store = ContentStore::open(dir.path(), 1000).unwrap().volatile();
        store.receive(&d, data.len() as u64, &mut data.as_slice()).await.unwrap();
        assert!(store.verified(&d).await, "stored by this process");
        // The next process finds the file as a power loss left it: other bytes under the name.
        std::fs::write(store.path(&d), b"zeros after a crash").unwrap();
        let next = ContentStore::open(dir.path(), 1000).unwrap();
        assert!(!next.verified(&d).await, "hashed, and refused");
        assert!(!next.contains(&d), "and deleted");
        // Intact, it is trusted once hashed.
        std::fs::write(next.path(&d), &data).unwrap();
        let again = ContentStore::open(dir.path(), 1000).unwrap();
        assert!(again.verified(&d).await);
        assert!(!again.verified(&Digest::of(b"never stored")).await);
    }

    #[tokio::test]
    async fn a_file_put_together_by_its_caller_is_kept_only_whole_and_matching() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path(), 1000).unwrap().volatile();
        let data = b"context bytes".to_vec();
        let d = Digest::of(&data);
        let put = |pieces: Vec<&'static [u8]>| move |out: &mut Written| pieces.iter().try_for_each(|p| out.put(p));
        let len = data.len() as u64;
        let short = store.receive_written(&d, len, put(vec![b"context "])).unwrap_err();
        assert!(matches!(&short, Unstored::Store(e) if e.contains("from 8 of 13 bytes")), "{short:?}");
        let wrong = store.receive_written(&d, len, put(vec![b"context ", b"BYTES"])).unwrap_err();
        assert!(matches!(&wrong, Unstored::Store(e) if e.contains("corrupt")), "{wrong:?}");
        let long = store.receive_written(&d, 4, put(vec![b"context "])).unwrap_err();
        assert!(matches!(&long, Unstored::Store(e) if e.contains("more than the 4 bytes")), "{long:?}");
        let failed = store.receive_written(&d, len, |_| Err(Unstored::Source("link broke".into()))).unwrap_err();
        assert_eq!(failed, Unstored::Source("link broke".into()));
        let over = store.receive_written(&d, 1001, put(vec![])).unwrap_err();
        assert!(matches!(&over, Unstored::Store(e) if e.contains("exceeds the limit")), "{over:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing kept, no partial file");
        let path = store.receive_written(&d, len, put(vec![b"context ", b"bytes"])).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), data);
        assert!(store.verified(&d).await);
    }

    #[tokio::test]
    async fn stores_only_what_matches_its_digest_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path(), 1000).unwrap();
        let data = b"context bytes".to_vec();
        let d = Digest::of(&data);

        let wrong = Digest::of(b"other");
        let err = store.receive(&wrong, data.len() as u64, &mut data.as_slice()).await.unwrap_err();
        assert!(err.contains("corrupt"), "{err}");
        assert!(!store.contains(&wrong));

        let err = store.receive(&d, data.len() as u64 + 5, &mut data.as_slice()).await.unwrap_err();
        assert!(err.contains("ended after 13 of 18 bytes"), "{err}");

        let err = store.receive(&d, 5000, &mut data.as_slice()).await.unwrap_err();
        assert!(err.contains("exceeds the limit of 1000 bytes"), "{err}");

        let err = store.receive_checked(&d, data.len() as u64, &mut data.as_slice(), |_| Err("no".into())).await;
        assert_eq!(err.unwrap_err(), "no");
        assert!(!store.contains(&d), "a file its check refused never appears");

        let path = store.receive(&d, data.len() as u64, &mut data.as_slice()).await.unwrap();
        assert_eq!(path, store.path(&d));
        assert!(store.contains(&d));
        assert_eq!(store.size(&d).await, Some(data.len() as u64));
        let mut out = Vec::new();
        assert_eq!(store.send(&d, &mut out).await.unwrap(), data.len() as u64);
        assert_eq!(out, data);
        // No partial files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        // A sweep keeps what is kept or newer, and deletes the rest with stale partial files.
        let other = Digest::of(b"other bytes");
        store.receive(&other, 11, &mut &b"other bytes"[..]).await.unwrap();
        std::fs::write(dir.path().join(".partial-x"), b"half").unwrap();
        std::fs::write(dir.path().join("unrelated"), b"not ours").unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(1);
        let epoch = std::time::SystemTime::UNIX_EPOCH;
        assert_eq!(store.sweep(epoch, epoch, |_| false).unwrap(), (0, 0), "all are newer");
        assert_eq!(store.sweep(later, epoch, |k| *k == d).unwrap(), (1, 11), "other; the partial file is newer");
        assert_eq!(store.sweep(later, later, |k| *k == d).unwrap(), (1, 4), "the partial file");
        assert!(store.contains(&d) && !store.contains(&other));
        assert!(dir.path().join("unrelated").exists(), "files that are not the store's stay");
    }
}
