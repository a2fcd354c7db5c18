//! Content-defined chunks of a build context (FastCDC). A context is uploaded as the list of its
//! chunks' digests, and only the chunks the coordinator lacks travel. A boundary depends on the
//! bytes around it, not on offsets, so changing one file moves one or two boundaries: the rest
//! of the context is found again, even when the change shifts everything after it.

use crate::ids::Digest;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// Smallest chunk, except the last.
pub const MIN_CHUNK: usize = 256 << 10;
/// Typical chunk.
pub const AVG_CHUNK: usize = 1 << 20;
/// Largest chunk the chunker makes.
pub const MAX_CHUNK: usize = 4 << 20;

/// One chunk of a context, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Chunk {
    /// sha256 of its bytes.
    pub digest: Digest,
    /// Its length.
    pub size: u32,
}

/// Cuts a byte stream into chunks as it is written (the packer feeds it while it hashes).
#[derive(Debug, Default)]
pub struct Chunker {
    buf: Vec<u8>,
    start: usize,
    chunks: Vec<Chunk>,
}

impl Chunker {
    /// Adds the next bytes of the stream.
    pub fn update(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        // A cut found with at least MAX_CHUNK bytes ahead is final: more data cannot move it.
        while self.buf.len() - self.start >= MAX_CHUNK {
            self.cut();
        }
        if self.start >= MAX_CHUNK {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    fn cut(&mut self) {
        let rest = &self.buf[self.start..];
        let len =
            fastcdc::v2020::FastCDC::new(rest, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK).next().map_or(rest.len(), |c| c.length);
        let bytes = &rest[..len];
        self.chunks.push(Chunk { digest: Digest::from_sha256(sha2::Sha256::digest(bytes).into()), size: len as u32 });
        self.start += len;
    }

    /// Ends the stream and returns its chunks in order.
    pub fn finish(mut self) -> Vec<Chunk> {
        while self.start < self.buf.len() {
            self.cut();
        }
        self.chunks
    }
}

/// The chunks of `data`, as a [`Chunker`] fed any way would cut them.
pub fn chunks_of(data: &[u8]) -> Vec<Chunk> {
    let mut c = Chunker::default();
    c.update(data);
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; n];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    #[test]
    fn chunks_cover_the_stream_within_bounds_however_it_is_fed() {
        let data = random(20 << 20, 1);
        let whole = chunks_of(&data);
        assert_eq!(whole.iter().map(|c| c.size as usize).sum::<usize>(), data.len());
        assert!(whole.iter().all(|c| c.size as usize <= MAX_CHUNK));
        assert!(whole[..whole.len() - 1].iter().all(|c| c.size as usize >= MIN_CHUNK));
        let mut fed = Chunker::default();
        for piece in data.chunks(12_345) {
            fed.update(piece);
        }
        assert_eq!(fed.finish(), whole, "the cut points do not depend on how the bytes arrive");
        let mut offset = 0;
        for c in &whole {
            assert_eq!(c.digest, Digest::of(&data[offset..offset + c.size as usize]));
            offset += c.size as usize;
        }
    }

    #[test]
    fn an_insertion_changes_only_the_chunks_around_it() {
        let data = random(32 << 20, 2);
        let mut edited = data.clone();
        edited.splice(10 << 20..10 << 20, b"one inserted line\n".iter().copied());
        let before: std::collections::HashSet<_> = chunks_of(&data).into_iter().collect();
        let after = chunks_of(&edited);
        let new: usize = after.iter().filter(|c| !before.contains(c)).map(|c| c.size as usize).sum();
        assert!(new <= 2 * MAX_CHUNK, "{new} bytes of new chunks after an 18-byte insertion");
        assert!(chunks_of(&[]).is_empty());
    }
}
