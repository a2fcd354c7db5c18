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

    fn reference(&self, digest: &Digest) -> Option<(PathBuf, u64, Option<u32>)> {
        parse_reference(&std::fs::read_to_string(self.path(digest)).ok()?)
    }

    pub(crate) fn contains(&self, digest: &Digest) -> bool {
        self.reference(digest).is_some_and(|(file, _, _)| file.is_file())
    }

    /// Records that `digest`, `len` bytes, lies at `offset` in `file`.
    pub(crate) fn remember(&self, digest: &Digest, file: &Path, offset: u64, len: u32) -> std::io::Result<()> {
        let tmp = self.dir.join(format!(".partial-{}-{:x}", digest.hex(), rand::random::<u32>()));
        std::fs::write(&tmp, format!("{} {offset} len={len}\n", file.display()))?;
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
                Ok(text) => parse_reference(&text).is_none_or(|(file, _, _)| !file.is_file()),
                Err(_) => false,
            };
            if dangling && std::fs::remove_file(&path).is_ok() {
                gone += 1;
            }
        }
        Ok(gone)
    }

    /// The bytes of a chunk, read from the context that holds it. A chunk named with another
    /// length than the one stored is refused: a plan must name each stored chunk as it is (a
    /// client claiming another token's context proves it knows every chunk that way). A
    /// reference without a length is checked by hashing what it names.
    pub(crate) fn read(&self, chunk: &Chunk) -> Result<Bytes, Unread> {
        use std::io::{Seek, SeekFrom};
        let (file, offset, len) = self.reference(&chunk.digest).ok_or(Unread::Gone)?;
        if len.is_some_and(|len| len != chunk.size) {
            return Err(Unread::OtherSize(len.unwrap_or_default()));
        }
        let mut f = std::fs::File::open(file).map_err(|_| Unread::Gone)?;
        f.seek(SeekFrom::Start(offset)).map_err(|_| Unread::Gone)?;
        let mut buf = vec![0u8; chunk.size as usize];
        f.read_exact(&mut buf).map_err(|_| Unread::Gone)?;
        if len.is_none() && Digest::of(&buf) != chunk.digest {
            return Err(Unread::Gone);
        }
        Ok(Bytes::from(buf))
    }
}

/// The file, offset and length a reference names. A reference written before lengths were kept
/// has none: its chunk is hashed when read.
fn parse_reference(text: &str) -> Option<(PathBuf, u64, Option<u32>)> {
    let text = text.trim_end();
    let (rest, last) = text.rsplit_once(' ')?;
    if let Some(len) = last.strip_prefix("len=") {
        let (file, offset) = rest.rsplit_once(' ')?;
        return Some((PathBuf::from(file), offset.parse().ok()?, Some(len.parse().ok()?)));
    }
    Some((PathBuf::from(rest), last.parse().ok()?, None))
}

/// Why a stored chunk could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unread {
    /// Its context was pruned, or its bytes are not there any more.
    Gone,
    /// The plan names it with another length than the stored one (this many bytes).
    OtherSize(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_keeps_its_length_and_one_without_is_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(&dir.path().join("chunks")).unwrap();
        let held = dir.path().join("context.tar");
        std::fs::write(&held, b"xxaaaa").unwrap();
        let a = Chunk { digest: Digest::of(b"aaaa"), size: 4 };
        store.remember(&a.digest, &held, 2, 4).unwrap();
        assert_eq!(store.read(&a).unwrap(), &b"aaaa"[..]);
        let longer = Chunk { size: 6, ..a.clone() };
        assert_eq!(store.read(&longer), Err(Unread::OtherSize(4)));
        // A reference written before lengths were kept: what it names is hashed.
        std::fs::write(store.path(&a.digest), format!("{} 2\n", held.display())).unwrap();
        assert_eq!(store.read(&a).unwrap(), &b"aaaa"[..]);
        assert_eq!(store.read(&Chunk { digest: Digest::of(b"aaab"), size: 4 }), Err(Unread::Gone));
        std::fs::write(store.path(&a.digest), format!("{} 1\n", held.display())).unwrap();
        assert_eq!(store.read(&a), Err(Unread::Gone), "the bytes at 1 are not the chunk");
        // A context pruned: its references go in a sweep.
        store.remember(&a.digest, &held, 2, 4).unwrap();
        std::fs::remove_file(&held).unwrap();
        assert_eq!(store.sweep().unwrap(), 1);
        assert!(!store.contains(&a.digest));
    }
}
