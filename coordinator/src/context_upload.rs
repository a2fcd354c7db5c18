//! Receiving a build context as content-defined chunks: the client names every chunk, the
//! coordinator asks only for those it lacks, and rebuilds the whole tarball in one pass that
//! checks each chunk's digest, the whole digest and what the tarball holds, while it is written.
//! Chunks stay in `data_dir/chunks`, so the next upload of a slightly changed context sends
//! only the chunks around the change.

use crate::server::Shared;
use archfarm_shared::chunking::Chunk;
use archfarm_shared::protocol::ClientResponse;
use archfarm_shared::{codec, tarball, Digest};
use bytes::{Bytes, BytesMut};
use sha2::Digest as _;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

/// Largest chunk accepted (the client's chunker makes at most 4 MiB).
pub const MAX_CHUNK_BYTES: u32 = 16 << 20;
/// Chunks the coordinator will read ahead of the one being written.
const READ_AHEAD: usize = 4;

/// Chunks of uploaded contexts, by digest. Written without fsync: a damaged chunk is found by
/// its digest the next time it is read, removed, and asked for again.
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

    fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    fn put(&self, digest: &Digest, bytes: &[u8]) -> std::io::Result<()> {
        let tmp = self.dir.join(format!(".partial-{}-{:x}", digest.hex(), rand::random::<u32>()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, self.path(digest))
    }
}

/// Checks an announced chunk list against the announced size and the limits.
pub fn check_plan(size: u64, chunks: &[Chunk], max_bytes: u64) -> Result<(), String> {
    if size > max_bytes {
        return Err(format!(
            "build context of {size} bytes exceeds the limit of {max_bytes} bytes; exclude files with .dockerignore \
             or raise max_context_bytes"
        ));
    }
    if let Some((i, c)) = chunks.iter().enumerate().find(|(_, c)| c.size == 0 || c.size > MAX_CHUNK_BYTES) {
        return Err(format!(
            "chunk {i} of the context is {} bytes; chunks must be 1 to {MAX_CHUNK_BYTES} bytes",
            c.size
        ));
    }
    let total: u64 = chunks.iter().map(|c| u64::from(c.size)).sum();
    if total != size {
        return Err(format!("the context's chunks add up to {total} bytes, but its size is {size}"));
    }
    Ok(())
}

/// Indexes of the chunks to ask for: those the store lacks, each digest once.
fn wanted(store: &ChunkStore, chunks: &[Chunk]) -> (Vec<u32>, Vec<bool>) {
    let mut seen = HashSet::new();
    let mut from_client = vec![false; chunks.len()];
    let mut want = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        if seen.insert(&c.digest) && !store.contains(&c.digest) {
            want.push(i as u32);
            from_client[i] = true;
        }
    }
    (want, from_client)
}

/// Serves `UploadChunked` on its stream: asks for the missing chunks, receives them, and
/// stores the context once every check passed. Returns the answer to send last.
pub async fn receive(
    shared: &Shared,
    digest: &Digest,
    size: u64,
    chunks: Vec<Chunk>,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Result<u64, String> {
    check_plan(size, &chunks, shared.contexts.max_bytes())?;
    let max = shared.settings.max_frame;
    if shared.contexts.contains(digest) {
        codec::write_msg(send, &ClientResponse::ChunksWanted(vec![]), max).await.map_err(|e| e.to_string())?;
        return Ok(0);
    }
    let store = shared.chunks.clone();
    let (want, from_client) = wanted(&store, &chunks);
    codec::write_msg(send, &ClientResponse::ChunksWanted(want.clone()), max).await.map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel::<Bytes>(READ_AHEAD);
    let assembly = Assembly {
        chunks: chunks.clone(),
        from_client,
        next: 0,
        current: Bytes::new(),
        pos: 0,
        rx,
        store,
        whole: sha2::Sha256::new(),
        out: None,
    };
    let target = shared.contexts.path(digest);
    let expected = digest.clone();
    let assembler = tokio::task::spawn_blocking(move || assembly.run(&target, &expected, size));
    let mut received = 0u64;
    for i in &want {
        let len = chunks[*i as usize].size as usize;
        let mut buf = BytesMut::with_capacity(len);
        while buf.len() < len {
            match recv.read_chunk(len - buf.len(), true).await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                Ok(None) => {
                    drop(tx);
                    let _ = assembler.await;
                    return Err(format!("the upload ended inside chunk {i}, after {received} bytes"));
                }
                Err(e) => {
                    drop(tx);
                    let _ = assembler.await;
                    return Err(format!("the upload was interrupted: {e}"));
                }
            }
        }
        received += len as u64;
        if tx.send(buf.freeze()).await.is_err() {
            // The assembler stopped on an error; it says which.
            break;
        }
    }
    drop(tx);
    let result = assembler.await.map_err(|e| format!("assembling the context: {e}"))?;
    if result.is_err() {
        let _ = recv.stop(0u32.into());
    }
    result.map(|_| received)
}

/// The tarball, rebuilt chunk by chunk, read by the tar checker: every byte it reads is also
/// hashed and written to the stored file.
struct Assembly {
    chunks: Vec<Chunk>,
    from_client: Vec<bool>,
    next: usize,
    current: Bytes,
    pos: usize,
    rx: mpsc::Receiver<Bytes>,
    store: ChunkStore,
    whole: sha2::Sha256,
    out: Option<std::io::BufWriter<std::fs::File>>,
}

fn io_err(message: String) -> std::io::Error {
    std::io::Error::other(message)
}

impl Assembly {
    fn load(&mut self) -> std::io::Result<()> {
        let i = self.next;
        let chunk = &self.chunks[i];
        let bytes = if self.from_client[i] {
            self.rx.blocking_recv().ok_or_else(|| io_err(format!("chunk {i} never arrived")))?
        } else {
            let path = self.store.path(&chunk.digest);
            Bytes::from(
                std::fs::read(&path).map_err(|e| io_err(format!("reading stored chunk {}: {e}", chunk.digest)))?,
            )
        };
        if bytes.len() != chunk.size as usize
            || Digest::from_sha256(sha2::Sha256::digest(&bytes).into()) != chunk.digest
        {
            if self.from_client[i] {
                return Err(io_err(format!("transfer corrupt: chunk {i} does not match its digest {}", chunk.digest)));
            }
            let _ = std::fs::remove_file(self.store.path(&chunk.digest));
            return Err(io_err(format!(
                "a stored chunk ({}) was damaged and is removed; run the build again to send it",
                chunk.digest
            )));
        }
        if self.from_client[i] {
            self.store.put(&chunk.digest, &bytes).map_err(|e| io_err(format!("storing chunk {i}: {e}")))?;
        }
        self.whole.update(&bytes);
        if let Some(out) = &mut self.out {
            out.write_all(&bytes)?;
        }
        self.current = bytes;
        self.pos = 0;
        self.next += 1;
        Ok(())
    }

    /// Writes the tarball to a temporary file beside `target`, checks it and moves it into place.
    fn run(mut self, target: &Path, digest: &Digest, size: u64) -> Result<u64, String> {
        let tmp = target.with_file_name(format!(".partial-{}-{:x}", digest.hex(), rand::random::<u32>()));
        let result = (|| {
            let io = |e: std::io::Error| format!("cannot store {digest}: {e}");
            self.out = Some(std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp).map_err(io)?));
            tarball::check(&mut self)?;
            // The checker stops at the archive's end marker; the padding after it counts too.
            std::io::copy(&mut self, &mut std::io::sink()).map_err(|e| e.to_string())?;
            let got = Digest::from_sha256(std::mem::take(&mut self.whole).finalize().into());
            if &got != digest {
                return Err(format!("transfer corrupt: announced {digest}, the chunks make {got}"));
            }
            let file = self.out.take().expect("set above").into_inner().map_err(|e| io(e.into_error()))?;
            file.sync_all().map_err(io)?;
            std::fs::rename(&tmp, target).map_err(io)?;
            Ok(size)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
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
    use archfarm_shared::chunking::chunks_of;

    fn chunk(size: u32) -> Chunk {
        Chunk { digest: Digest::of(&size.to_be_bytes()), size }
    }

    #[test]
    fn plans_that_do_not_add_up_or_exceed_limits_are_refused() {
        assert!(check_plan(30, &[chunk(10), chunk(20)], 100).is_ok());
        assert!(check_plan(31, &[chunk(10), chunk(20)], 100).unwrap_err().contains("add up to 30 bytes"));
        assert!(check_plan(300, &[chunk(300)], 100).unwrap_err().contains("exceeds the limit of 100"));
        assert!(check_plan(0, &[chunk(0)], 100).unwrap_err().contains("chunk 0"));
        assert!(check_plan(1 << 30, &[chunk(MAX_CHUNK_BYTES + 1)], 1 << 40).unwrap_err().contains("1 to"));
    }

    #[test]
    fn only_missing_chunks_are_wanted_and_each_digest_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let (a, b) = (chunks_of(b"aaaa")[0].clone(), chunks_of(b"bbbb")[0].clone());
        store.put(&a.digest, b"aaaa").unwrap();
        let (want, from_client) = wanted(&store, &[a.clone(), b.clone(), b.clone(), a]);
        assert_eq!(want, [1]);
        assert_eq!(from_client, [false, true, false, false], "the repeat of b is read back from the store");
    }

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
        let a = Assembly {
            chunks,
            from_client,
            next: 0,
            current: Bytes::new(),
            pos: 0,
            rx,
            store: store.clone(),
            whole: sha2::Sha256::new(),
            out: None,
        };
        a.run(target, &Digest::of(data), data.len() as u64)
    }

    #[test]
    fn assembles_checks_and_stores_from_chunks_old_and_new() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(&dir.path().join("chunks")).unwrap();
        let big: Vec<u8> = (0..6u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let data = tarball(&[("Dockerfile", b"FROM scratch\n"), ("big", &big)]);
        let target = dir.path().join("ctx.tar");
        assert_eq!(assemble(&data, &store, &target).unwrap(), data.len() as u64);
        assert_eq!(std::fs::read(&target).unwrap(), data);
        // A stored chunk that rotted is found, removed and asked for again next time.
        let victim = chunks_of(&data)[0].digest.clone();
        std::fs::write(store.path(&victim), b"rot").unwrap();
        std::fs::remove_file(&target).unwrap();
        let err = assemble(&data, &store, &target).unwrap_err();
        assert!(err.contains("was damaged and is removed"), "{err}");
        assert!(!store.contains(&victim) && !target.exists());
        assert!(assemble(&data, &store, &target).is_ok());
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
