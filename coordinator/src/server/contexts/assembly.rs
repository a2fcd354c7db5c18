//! Putting a chunked upload's tarball together: the chunks the client sent and those read back
//! from the store, in order, checked as a tar, hashed as a whole and written to the stored file
//! in one pass.

use super::chunks::{ChunkStore, Unread};
use archfarm_shared::chunking::Chunk;
use archfarm_shared::{tarball, Digest};
use bytes::Bytes;
use sha2::Digest as _;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use tokio::sync::mpsc;

/// Why a chunk read back from the store cannot be used.
fn forgotten(digest: &Digest) -> String {
    format!("a stored chunk ({digest}) was pruned or damaged and is forgotten; run the build again to send it")
}

/// The tarball, rebuilt chunk by chunk, read by the tar checker: every byte it reads is also
/// written to the stored file, and handed to a second thread that hashes the whole (the whole
/// digest is one sequential pass; beside the checker and the writer it costs no time).
///
/// Chunks read back from the store are not hashed one by one: the whole digest covers them. Only
/// when the context fails a check are they hashed, so that a damaged or pruned one is forgotten
/// and the error says so rather than blaming the context.
pub(super) struct Assembly {
    chunks: Vec<Chunk>,
    from_client: Vec<bool>,
    next: usize,
    current: Bytes,
    pos: usize,
    rx: mpsc::Receiver<Bytes>,
    store: ChunkStore,
    whole: Option<std::sync::mpsc::SyncSender<Bytes>>,
    whole_digest: std::sync::mpsc::Receiver<Digest>,
    /// Indexes of the chunks read back from the store so far.
    from_store: Vec<usize>,
    /// Where each chunk sent in this upload lies in the file being written: a chunk the context
    /// holds twice is read back from there, as the store does not know it yet.
    sent_at: HashMap<Digest, u64>,
    written: u64,
    out: Option<std::io::BufWriter<std::fs::File>>,
}

fn io_err(message: String) -> std::io::Error {
    std::io::Error::other(message)
}

/// Chunks queued for the thread that hashes the whole (each up to 16 MiB; the hasher is faster
/// than the writer, so the queue is seldom full).
const HASH_AHEAD: usize = 2;

impl Assembly {
    /// Rebuilds `chunks`: those marked `from_client` arrive on `rx`, the others are read from
    /// `store`. Starts the thread that hashes the whole, on the blocking pool (at most one per
    /// running upload, [`super::uploads::TOTAL`]).
    pub(super) fn new(
        chunks: Vec<Chunk>,
        from_client: Vec<bool>,
        rx: mpsc::Receiver<Bytes>,
        store: ChunkStore,
    ) -> Self {
        let (whole, queue) = std::sync::mpsc::sync_channel::<Bytes>(HASH_AHEAD);
        let (digest_tx, whole_digest) = std::sync::mpsc::channel();
        let hash = move || {
            let mut hasher = sha2::Sha256::new();
            for bytes in queue {
                hasher.update(&bytes);
            }
            let _ = digest_tx.send(Digest::from_sha256(hasher.finalize().into()));
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(hash)),
            // Outside a runtime (unit tests): a thread of its own.
            Err(_) => drop(std::thread::spawn(hash)),
        }
        Assembly {
            chunks,
            from_client,
            next: 0,
            current: Bytes::new(),
            pos: 0,
            rx,
            store,
            whole: Some(whole),
            whole_digest,
            from_store: Vec::new(),
            sent_at: HashMap::new(),
            written: 0,
            out: None,
        }
    }

    fn load(&mut self) -> std::io::Result<()> {
        let i = self.next;
        let chunk = &self.chunks[i];
        let bytes = if self.from_client[i] {
            // Hashed and checked against its digest as it arrived.
            let bytes = self.rx.blocking_recv().ok_or_else(|| io_err(format!("chunk {i} never arrived")))?;
            self.sent_at.insert(chunk.digest.clone(), self.written);
            bytes
        } else if let Some(&at) = self.sent_at.get(&chunk.digest) {
            // Its bytes were checked when they arrived, earlier in this upload.
            let out = self.out.as_mut().ok_or_else(|| io_err("no file is being written".into()))?;
            out.flush()?;
            let mut bytes = vec![0u8; chunk.size as usize];
            std::os::unix::fs::FileExt::read_exact_at(out.get_ref(), &mut bytes, at)?;
            Bytes::from(bytes)
        } else {
            match self.store.read(chunk) {
                Ok(bytes) => {
                    self.from_store.push(i);
                    bytes
                }
                Err(Unread::OtherSize(len)) => {
                    return Err(io_err(format!(
                        "chunk {i} of the context is {} with {} bytes, but that chunk is {len} bytes",
                        chunk.digest, chunk.size
                    )));
                }
                Err(Unread::Gone) => {
                    self.store.forget(&chunk.digest);
                    return Err(io_err(forgotten(&chunk.digest)));
                }
            }
        };
        if let Some(whole) = &self.whole {
            whole.send(bytes.clone()).map_err(|_| io_err("the thread hashing the context stopped".into()))?;
        }
        if let Some(out) = &mut self.out {
            out.write_all(&bytes)?;
        }
        self.written += bytes.len() as u64;
        self.current = bytes;
        self.pos = 0;
        self.next += 1;
        Ok(())
    }

    /// The stored chunks read so far whose bytes no longer hash to their digest, now forgotten:
    /// the cause of a failed check, if any.
    fn damaged(&self) -> Option<String> {
        let bad: Vec<&Digest> = self
            .from_store
            .iter()
            .map(|&i| &self.chunks[i])
            .filter(|c| matches!(self.store.read(c), Ok(b) if Digest::of(&b) != c.digest))
            .map(|c| &c.digest)
            .collect();
        for digest in &bad {
            self.store.forget(digest);
        }
        bad.first().map(|first| forgotten(first))
    }

    /// Writes the tarball to a temporary file beside `target`, checks it and moves it into place.
    pub(super) fn run(mut self, target: &Path, digest: &Digest, size: u64) -> Result<u64, String> {
        let tmp = target.with_file_name(format!(".partial-{}-{:x}", digest.hex(), rand::random::<u32>()));
        let result = (|| {
            let io = |e: std::io::Error| format!("cannot store {digest}: {e}");
            let file = std::fs::File::options().read(true).write(true).create_new(true).open(&tmp).map_err(io)?;
            self.out = Some(std::io::BufWriter::with_capacity(1 << 20, file));
            tarball::check(&mut self)?;
            // The checker stops at the archive's end marker; the padding after it counts too.
            std::io::copy(&mut self, &mut std::io::sink()).map_err(|e| e.to_string())?;
            drop(self.whole.take());
            let got = self.whole_digest.recv().map_err(|_| "the thread hashing the context stopped".to_owned())?;
            if &got != digest {
                return Err(format!("transfer corrupt: announced {digest}, the chunks make {got}"));
            }
            // Flushed to disk in the background once in place ([`ContentStore::stored`]).
            let file = self.out.take().expect("set above").into_inner().map_err(|e| io(e.into_error()))?;
            drop(file);
            std::fs::rename(&tmp, target).map_err(io)?;
            // Only now can the new chunks be found again: in the stored context.
            let mut offset = 0u64;
            for (c, new) in self.chunks.iter().zip(&self.from_client) {
                if *new {
                    self.store.remember(&c.digest, target, offset, c.size).map_err(io)?;
                }
                offset += u64::from(c.size);
            }
            Ok(size)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        // A stored chunk that changed on disk fails the tar check or the digest: say so.
        result.map_err(|e| self.damaged().unwrap_or(e))
    }
}

impl Read for Assembly {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.current.len() {
            if self.next == self.chunks.len() {
                return Ok(0);
            }
            self.load()?;
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::contexts::receive::wanted;
    use archfarm_shared::chunking::chunks_of;

    fn tarball(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut t = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_old();
            // Written raw: the tar crate itself refuses to write a hostile name.
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            t.append(&h, *data).unwrap();
        }
        t.into_inner().unwrap()
    }

    fn assemble(data: &[u8], store: &ChunkStore, target: &Path) -> Result<u64, String> {
        let chunks = chunks_of(data);
        let (want, from_client) = wanted(store, &chunks);
        let (tx, rx) = mpsc::channel(chunks.len().max(1));
        let mut offset = 0;
        for (i, c) in chunks.iter().enumerate() {
            if want.contains(&(i as u32)) {
                tx.try_send(Bytes::copy_from_slice(&data[offset..offset + c.size as usize])).unwrap();
            }
            offset += c.size as usize;
        }
        drop(tx);
        let a = Assembly::new(chunks.clone(), from_client, rx, store.clone());
        a.run(target, &Digest::of(data), data.len() as u64)
    }

    /// A folder with an empty chunk store, and a context of a Dockerfile and 6 MiB.
    fn six_mib_context() -> (tempfile::TempDir, ChunkStore, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(&dir.path().join("chunks")).unwrap();
        let big: Vec<u8> = (0..6u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        (dir, store, tarball(&[("Dockerfile", b"FROM scratch\n"), ("big", &big)]))
    }

    #[test]
    fn assembles_checks_and_stores_from_chunks_old_and_new() {
        let (dir, store, data) = six_mib_context();
        let target = dir.path().join("ctx.tar");
        assert_eq!(assemble(&data, &store, &target).unwrap(), data.len() as u64);
        assert_eq!(std::fs::read(&target).unwrap(), data);
        // The chunks are found again in the stored context, not copied.
        assert!(chunks_of(&data).iter().all(|c| store.contains(&c.digest)));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "the context and the chunk references");
        // A context changed behind the store's back: its chunk is forgotten and asked for again.
        let other = dir.path().join("other.tar");
        let victim = chunks_of(&data)[0].clone();
        let mut rotten = data.clone();
        rotten[100] ^= 0xff;
        std::fs::write(&target, &rotten).unwrap();
        let err = assemble(&data, &store, &other).unwrap_err();
        assert!(err.contains("pruned or damaged and is forgotten"), "{err}");
        assert!(!store.contains(&victim.digest) && !other.exists());
        // A pruned context: its chunks are no longer offered.
        std::fs::remove_file(&target).unwrap();
        assert!(!chunks_of(&data).iter().any(|c| store.contains(&c.digest)));
        assert!(assemble(&data, &store, &other).is_ok());
        assert_eq!(std::fs::read(&other).unwrap(), data);
    }

    #[test]
    fn a_chunk_the_new_context_holds_twice_is_sent_once_and_read_back_from_the_upload() {
        use rand::{RngCore, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(&dir.path().join("chunks")).unwrap();
        // The same 6 MiB file twice: its inner chunks repeat, and the store has none of them.
        let mut file = vec![0u8; 6 << 20];
        rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut file);
        let data = tarball(&[("Dockerfile", b"FROM scratch\n"), ("a.bin", &file), ("b.bin", &file)]);
        let chunks = chunks_of(&data);
        let (want, _) = wanted(&store, &chunks);
        assert!(want.len() < chunks.len(), "the plan repeats chunks, each asked for once");
        let target = dir.path().join("ctx.tar");
        assert_eq!(assemble(&data, &store, &target).unwrap(), data.len() as u64);
        assert_eq!(std::fs::read(&target).unwrap(), data);
    }

    #[test]
    fn a_plan_must_name_each_stored_chunk_with_its_own_length() {
        let (dir, store, data) = six_mib_context();
        assemble(&data, &store, &dir.path().join("ctx.tar")).unwrap();
        let chunks = chunks_of(&data);
        assert!(chunks.len() > 1);
        // Another token claims the context from its first chunk alone, named as long as all of
        // it: the bytes read would make the right digest, but the length is not the chunk's.
        let claim = vec![Chunk { digest: chunks[0].digest.clone(), size: data.len() as u32 }];
        let (_tx, rx) = mpsc::channel(1);
        let target = dir.path().join("claimed.tar");
        let err = Assembly::new(claim, vec![false], rx, store.clone())
            .run(&target, &Digest::of(&data), data.len() as u64)
            .unwrap_err();
        assert!(err.contains("but that chunk is"), "{err}");
        assert!(!target.exists());
        assert!(store.contains(&chunks[0].digest), "a wrong plan makes the store forget nothing");
    }

    #[test]
    fn a_hostile_tarball_is_refused_and_nothing_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(&dir.path().join("chunks")).unwrap();
        let evil = tarball(&[("../../etc/passwd", b"x")]);
        let target = dir.path().join("ctx.tar");
        let err = assemble(&evil, &store, &target).unwrap_err();
        assert!(err.contains("build context refused"), "{err}");
        assert!(!target.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no partial file is left");
    }
}
