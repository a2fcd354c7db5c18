//! Receiving a build context as content-defined chunks: the client names every chunk, the
//! coordinator asks only for those it lacks, and rebuilds the whole tarball ([`Assembly`]) in one
//! pass that checks the whole digest and what the tarball holds, while it is written. Stored
//! chunks ([`ChunkStore`]) are read back instead of sent again. Chunks are hashed as they
//! arrive, beside the thread that writes the tarball. A context sent whole (`UploadContext`) is
//! stored, then checked the same way.

use super::assembly::Assembly;
use super::chunks::ChunkStore;
use super::Contexts;
use archfarm_shared::chunking::Chunk;
use archfarm_shared::protocol::ClientResponse;
use archfarm_shared::stream::QuicStream;
use archfarm_shared::{tarball, Digest};
use bytes::{Bytes, BytesMut};
use std::collections::{HashSet, VecDeque};
use std::path::Path;
use tokio::sync::mpsc;

/// Largest chunk accepted (the client's chunker makes at most 4 MiB).
pub const MAX_CHUNK_BYTES: u32 = 16 << 20;
/// Chunks the coordinator will read ahead of the one being written.
const READ_AHEAD: usize = 4;
/// An upload that sends nothing for this long is cut off.
pub const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(30);
/// Bytes a plan may repeat beyond what it holds once, besides [`repeat_allowance`]'s share:
/// real contexts repeat chunks (identical files), but a plan of one chunk named a thousand times
/// would make the coordinator write gigabytes from a few kilobytes of request.
const REPEAT_SLACK: u64 = 64 << 20;

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
    let mut sizes = std::collections::HashMap::new();
    for (i, c) in chunks.iter().enumerate() {
        if let Some(size) = sizes.insert(&c.digest, c.size).filter(|s| *s != c.size) {
            return Err(format!(
                "chunk {i} of the context is {} with {} bytes, but an earlier chunk names it with {size}",
                c.digest, c.size
            ));
        }
    }
    let mut seen = HashSet::new();
    let distinct: u64 = chunks.iter().filter(|c| seen.insert(&c.digest)).map(|c| u64::from(c.size)).sum();
    if total - distinct > repeat_allowance(distinct) {
        return Err(format!(
            "the context's chunk list repeats {} bytes of {distinct} distinct ones; no build context repeats that \
             much, so the upload is refused",
            total - distinct
        ));
    }
    Ok(())
}

/// Repeated bytes a plan of `distinct` distinct bytes may hold: as many again, and 64 MiB.
fn repeat_allowance(distinct: u64) -> u64 {
    distinct.saturating_add(REPEAT_SLACK)
}

/// Serves `UploadContext`: the whole tarball follows on the stream. It is stored, then checked;
/// a context that fails the check is deleted again.
pub async fn receive_whole(
    contexts: &Contexts,
    digest: &Digest,
    size: u64,
    stream: &mut QuicStream,
) -> Result<(), String> {
    // Checked before it is moved under its digest: no build sees it before that.
    let check = |received: &Path| {
        let file = std::fs::File::open(received).map_err(|e| format!("cannot read the received context: {e}"))?;
        tarball::check(std::io::BufReader::new(file)).map(|_| ())
    };
    match contexts.files.receive_checked(digest, size, stream.reader(), check).await {
        Ok(_) => Ok(()),
        Err(reason) => {
            tracing::warn!(context = %digest, "refused build context: {reason}");
            Err(reason)
        }
    }
}

/// Indexes of the chunks to ask for: those the store lacks, each digest once.
pub(super) fn wanted(store: &ChunkStore, chunks: &[Chunk]) -> (Vec<u32>, Vec<bool>) {
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
pub async fn receive_chunked(
    contexts: &Contexts,
    digest: &Digest,
    size: u64,
    chunks: Vec<Chunk>,
    owned: bool,
    stream: &mut QuicStream,
) -> Result<u64, String> {
    check_plan(size, &chunks, contexts.files.max_bytes())?;
    // Another token's context is assembled again, from the chunks this client names: only a
    // client that knows every chunk of it gets to build from it.
    if owned {
        stream.write(&ClientResponse::ChunksWanted(vec![])).await.map_err(|e| e.to_string())?;
        return Ok(0);
    }
    let store = contexts.chunks.clone();
    // One file check per chunk: on the blocking pool, not the runtime's threads.
    let (want, from_client) = {
        let (store, chunks) = (store.clone(), chunks.clone());
        tokio::task::spawn_blocking(move || wanted(&store, &chunks)).await.map_err(|e| e.to_string())?
    };
    stream.write(&ClientResponse::ChunksWanted(want.clone())).await.map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel::<Bytes>(READ_AHEAD);
    let assembly = Assembly::new(chunks.clone(), from_client, rx, store);
    let target = contexts.files.path(digest);
    let expected = digest.clone();
    let assembler = tokio::task::spawn_blocking(move || assembly.run(&target, &expected, size));
    let mut received = 0u64;
    // Chunks being hashed (on the blocking pool, beside the assembler), in arrival order.
    let mut hashing: VecDeque<(u32, tokio::task::JoinHandle<(Digest, Bytes)>)> = VecDeque::new();
    let mut failure: Option<String> = None;
    let mut next = want.iter().copied();
    loop {
        let more = failure.is_none() && next.len() > 0;
        // Forward the oldest chunk once enough are hashing, or when no more will arrive.
        if hashing.len() >= READ_AHEAD || (!more && !hashing.is_empty()) {
            let (i, task) = hashing.pop_front().expect("not empty");
            let (got, bytes) = task.await.map_err(|e| format!("hashing chunk {i}: {e}"))?;
            if failure.is_some() {
                continue;
            }
            if got != chunks[i as usize].digest {
                failure = Some(format!(
                    "transfer corrupt: chunk {i} does not match its digest {}",
                    chunks[i as usize].digest
                ));
            } else if tx.send(bytes).await.is_err() {
                // The assembler stopped on an error; it says which.
                break;
            }
            continue;
        }
        let Some(i) = next.next().filter(|_| more) else { break };
        let len = chunks[i as usize].size as usize;
        match read_chunk(stream, i, len, received).await {
            Ok(bytes) => {
                received += len as u64;
                hashing.push_back((i, tokio::task::spawn_blocking(move || (Digest::of(&bytes), bytes))));
            }
            Err(message) => failure = Some(message),
        }
    }
    drop(tx);
    if let Some(message) = failure {
        let _ = assembler.await;
        stream.stop_reading(0);
        return Err(message);
    }
    let result = assembler.await.map_err(|e| format!("assembling the context: {e}"))?;
    if result.is_err() {
        stream.stop_reading(0);
    }
    result?;
    contexts.files.stored(digest);
    // Every chunk matched its digest and the whole its own: the list is the context's. Without
    // it an agent's fetch cuts the stored file again.
    if let Err(e) = contexts.lists.save(digest, &chunks) {
        tracing::warn!(context = %digest, "cannot keep the context's chunk list: {e}");
    }
    Ok(received)
}

/// Reads chunk `i` (`len` bytes) from the upload stream.
async fn read_chunk(stream: &mut QuicStream, i: u32, len: usize, received: u64) -> Result<Bytes, String> {
    let mut buf = BytesMut::with_capacity(len);
    while buf.len() < len {
        match tokio::time::timeout(UPLOAD_IDLE, stream.reader().read_chunk(len - buf.len(), true)).await {
            Ok(Ok(Some(chunk))) => buf.extend_from_slice(&chunk.bytes),
            Ok(Ok(None)) => return Err(format!("the upload ended inside chunk {i}, after {received} bytes")),
            Ok(Err(e)) => return Err(format!("the upload was interrupted: {e}")),
            Err(_) => {
                return Err(format!(
                    "the upload sent nothing for {} s, inside chunk {i} after {received} bytes; it is cut off",
                    UPLOAD_IDLE.as_secs()
                ))
            }
        }
    }
    Ok(buf.freeze())
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
        // One digest named with two lengths.
        let (a, mut b) = (chunk(10), chunk(20));
        b.digest = a.digest.clone();
        assert!(check_plan(30, &[a, b], 100).unwrap_err().contains("an earlier chunk names it with 10"));
        // One 4 MiB chunk named a thousand times: 4 GiB written from a few KiB of request.
        let one = chunk(4 << 20);
        let err = check_plan(1000 * (4 << 20), &vec![one.clone(); 1000], 1 << 40).unwrap_err();
        assert!(err.contains("repeats 4190109696 bytes of 4194304 distinct ones"), "{err}");
        // Files repeated as a real context may: allowed.
        let plan: Vec<Chunk> =
            (1..=40).map(chunk).chain((1..=40).map(chunk)).chain(std::iter::repeat_n(one.clone(), 10)).collect();
        let size = plan.iter().map(|c| u64::from(c.size)).sum();
        assert!(check_plan(size, &plan, 1 << 40).is_ok());
    }

    #[test]
    fn only_missing_chunks_are_wanted_and_each_digest_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let (a, b) = (chunks_of(b"aaaa")[0].clone(), chunks_of(b"bbbb")[0].clone());
        let held = dir.path().join("context.tar");
        std::fs::write(&held, b"xxaaaa").unwrap();
        store.remember(&a.digest, &held, 2, 4).unwrap();
        assert_eq!(store.read(&a).ok().as_deref(), Some(&b"aaaa"[..]));
        let (want, from_client) = wanted(&store, &[a.clone(), b.clone(), b.clone(), a]);
        assert_eq!(want, [1]);
        assert_eq!(from_client, [false, true, false, false], "the repeat of b is read back from the store");
    }
}
