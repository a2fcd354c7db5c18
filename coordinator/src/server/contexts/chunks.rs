//! Where the chunks of stored contexts lie. `data_dir/chunks` remembers, for each chunk digest,
//! the stored context that holds it and the offset: a reference, not a copy. The next upload of
//! a slightly changed context then sends only the chunks around the change.

use archfarm_shared::chunking::Chunk;
use archfarm_shared::Digest;
use bytes::Bytes;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where chunks of stored contexts lie, by chunk digest: a small file per chunk naming the
/// context file, offset and length. Nothing is copied. A reference whose context was pruned, or
/// whose bytes no longer match, is found when read, removed, and the chunk asked for again.
#[derive(Debug, Clone)]
pub struct ChunkStore {
    dir: PathBuf,
}

impl ChunkStore {
    /// Opens (and creates) `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(ChunkStore { dir: dir.to_owned() })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    fn reference(&self, digest: &Digest) -> Option<(PathBuf, u64)> {
        let text = std::fs::read_to_string(self.path(digest)).ok()?;
        let (file, offset) = text.trim_end().rsplit_once(' ')?;
        Some((PathBuf::from(file), offset.parse().ok()?))
    }

    pub(crate) fn contains(&self, digest: &Digest) -> bool {
        self.reference(digest).is_some_and(|(file, _)| file.is_file())
    }

    /// Records that `digest` lies at `offset` in `file`.
    pub(crate) fn remember(&self, digest: &Digest, file: &Path, offset: u64) -> std::io::Result<()> {
        let tmp = self.dir.join(format!(".partial-{}-{:x}", digest.hex(), rand::random::<u32>()));
        std::fs::write(&tmp, format!("{} {offset}\n", file.display()))?;
        std::fs::rename(&tmp, self.path(digest))
    }

    pub(crate) fn forget(&self, digest: &Digest) {
        let _ = std::fs::remove_file(self.path(digest));
    }

    /// Forgets every chunk whose context is gone (after a sweep of contexts). Returns how many.
    pub(crate) fn sweep(&self) -> std::io::Result<usize> {
        let mut gone = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                continue; // being written
            }
            let dangling = match std::fs::read_to_string(&path) {
                Ok(text) => text.trim_end().rsplit_once(' ').is_none_or(|(file, _)| !Path::new(file).is_file()),
                Err(_) => false,
            };
            if dangling && std::fs::remove_file(&path).is_ok() {
                gone += 1;
            }
        }
        Ok(gone)
    }

    /// The bytes of a chunk, read from the context that holds it.
    pub(crate) fn read(&self, chunk: &Chunk) -> Option<Bytes> {
        use std::io::{Seek, SeekFrom};
        let (file, offset) = self.reference(&chunk.digest)?;
        let mut f = std::fs::File::open(file).ok()?;
        f.seek(SeekFrom::Start(offset)).ok()?;
        let mut buf = vec![0u8; chunk.size as usize];
        f.read_exact(&mut buf).ok()?;
        Some(Bytes::from(buf))
    }
}
