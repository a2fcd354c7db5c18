//! The chunk list of each context in a [`ContentStore`], kept in a folder beside it (a file per
//! context, named by its digest's hex, in the raw form [`chunking::encode_list`] writes). The
//! coordinator offers a context's list to an agent that fetches it (`data_dir/chunk-lists`); an
//! agent finds there which chunks the contexts it holds have (`cache_dir/lists`), and takes only
//! the others. A context uploaded chunked has its list from the upload, checked chunk by chunk;
//! one stored otherwise is cut when first asked for, and the list kept.

use crate::chunking::{self, Chunk};
use crate::content::ContentStore;
use crate::Digest;
use std::path::{Path, PathBuf};

/// The chunk lists of stored contexts.
#[derive(Debug, Clone)]
pub struct ChunkLists {
    dir: PathBuf,
}

impl ChunkLists {
    /// Opens (and creates) `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(ChunkLists { dir: dir.to_owned() })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// Keeps `chunks` as the list of context `digest` (whose bytes they were checked against).
    pub fn save(&self, digest: &Digest, chunks: &[Chunk]) -> std::io::Result<()> {
        let tmp = self.dir.join(format!(".partial-{}-{:x}", digest.hex(), rand::random::<u32>()));
        std::fs::write(&tmp, chunking::encode_list(chunks))?;
        std::fs::rename(&tmp, self.path(digest))
    }

    /// The list kept for `digest`, if one is and it reads.
    pub fn load(&self, digest: &Digest) -> Option<Vec<Chunk>> {
        std::fs::read(self.path(digest)).ok().and_then(|b| chunking::decode_list(&b).ok())
    }

    /// The digests lists are kept for.
    pub fn digests(&self) -> Vec<Digest> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return vec![] };
        entries.flatten().filter_map(|e| format!("sha256:{}", e.file_name().to_str()?).parse().ok()).collect()
    }

    /// Removes every list.
    pub fn clear(&self) {
        for digest in self.digests() {
            let _ = std::fs::remove_file(self.path(&digest));
        }
    }

    /// The list of stored context `digest`: the one kept, or cut from the stored file now (and
    /// kept). A kept list that does not add up to the file's size is cut again.
    pub fn of(&self, files: &ContentStore, digest: &Digest) -> std::io::Result<Vec<Chunk>> {
        let file = files.path(digest);
        let size = std::fs::metadata(&file)?.len();
        let kept = self.load(digest);
        if let Some(list) = kept.filter(|l| l.iter().map(|c| u64::from(c.size)).sum::<u64>() == size) {
            return Ok(list);
        }
        let list = chunking::chunks_of_file(&file)?;
        self.save(digest, &list)?;
        Ok(list)
    }

    /// Removes the lists of contexts `files` no longer holds (after a sweep). Returns how many.
    pub fn sweep(&self, files: &ContentStore) -> std::io::Result<usize> {
        let mut gone = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            if name.starts_with('.') {
                continue; // being written
            }
            let held = format!("sha256:{name}").parse::<Digest>().is_ok_and(|d| files.contains(&d));
            if !held && std::fs::remove_file(&path).is_ok() {
                gone += 1;
            }
        }
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_kept_cut_when_missing_or_wrong_and_swept_with_its_context() {
        let dir = tempfile::tempdir().unwrap();
        let files = ContentStore::open(&dir.path().join("contexts"), u64::MAX).unwrap();
        let lists = ChunkLists::open(&dir.path().join("lists")).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let digest = Digest::of(&data);
        std::fs::write(files.path(&digest), &data).unwrap();
        let cut = chunking::chunks_of(&data);
        assert_eq!(lists.of(&files, &digest).unwrap(), cut, "cut from the file when none was kept");
        assert!(lists.path(&digest).is_file(), "and kept");
        // A list that does not add up to the file is not believed.
        lists.save(&digest, &cut[..1]).unwrap();
        assert_eq!(lists.of(&files, &digest).unwrap(), cut);
        std::fs::remove_file(files.path(&digest)).unwrap();
        assert_eq!(lists.sweep(&files).unwrap(), 1);
        assert!(!lists.path(&digest).exists());
    }
}
