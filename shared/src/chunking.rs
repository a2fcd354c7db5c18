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

/// Bytes of one chunk in a list sent raw ([`encode_list`]): its sha256, then its length.
pub const LISTED_CHUNK: usize = 36;

/// A chunk list as fixed records of [`LISTED_CHUNK`] bytes: the form it crosses a stream in
/// and is kept on disk in, whatever its length (a frame has a limit; a list of a large context
/// may pass it).
pub fn encode_list(chunks: &[Chunk]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks.len() * LISTED_CHUNK);
    for c in chunks {
        let mut hash = [0u8; 32];
        // A Digest holds 64 lowercase hex digits by construction.
        hex::decode_to_slice(c.digest.hex(), &mut hash).expect("a digest is 64 hex digits");
        out.extend_from_slice(&hash);
        out.extend_from_slice(&c.size.to_be_bytes());
    }
    out
}

/// The list [`encode_list`] wrote; refuses a length that is not whole records, or an empty chunk.
pub fn decode_list(bytes: &[u8]) -> Result<Vec<Chunk>, String> {
    if !bytes.len().is_multiple_of(LISTED_CHUNK) {
        return Err(format!("a chunk list of {} bytes is not whole {LISTED_CHUNK}-byte records", bytes.len()));
    }
    bytes
        .chunks_exact(LISTED_CHUNK)
        .map(|r| {
            let size = u32::from_be_bytes(r[32..].try_into().expect("4 bytes"));
            if size == 0 {
                return Err("a chunk list names a chunk of 0 bytes".to_owned());
            }
            Ok(Chunk { digest: Digest::from_sha256(r[..32].try_into().expect("32 bytes")), size })
        })
        .collect()
}

/// The bitmap an agent answers a chunk list with: bit `i % 8` of byte `i / 8` for chunk `i`.
pub fn bitmap_of(wanted: &[bool]) -> Vec<u8> {
    let mut bits = vec![0u8; wanted.len().div_ceil(8)];
    for (i, _) in wanted.iter().enumerate().filter(|(_, w)| **w) {
        bits[i / 8] |= 1 << (i % 8);
    }
    bits
}

/// Which of `count` chunks `bitmap` asks for; refuses a bitmap of another length, or with bits
/// set past the last chunk.
pub fn wanted_of(bitmap: &[u8], count: usize) -> Result<Vec<bool>, String> {
    if bitmap.len() != count.div_ceil(8) {
        return Err(format!("a bitmap of {} bytes for {count} chunks", bitmap.len()));
    }
    let wanted: Vec<bool> = (0..count).map(|i| bitmap[i / 8] & (1 << (i % 8)) != 0).collect();
    if bitmap_of(&wanted) != bitmap {
        return Err(format!("the bitmap asks for chunks past the last of {count}"));
    }
    Ok(wanted)
}

/// The chunks of a file, read in pieces (for a context stored before its list was kept).
pub fn chunks_of_file(path: &std::path::Path) -> std::io::Result<Vec<Chunk>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut chunker = Chunker::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(chunker.finish());
        }
        chunker.update(&buf[..n]);
    }
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

    #[test]
    fn a_list_crosses_as_fixed_records_and_a_file_chunks_as_its_bytes_do() {
        let data = random(6 << 20, 3);
        let chunks = chunks_of(&data);
        let encoded = encode_list(&chunks);
        assert_eq!(encoded.len(), chunks.len() * LISTED_CHUNK);
        assert_eq!(decode_list(&encoded).unwrap(), chunks);
        assert!(decode_list(&encoded[1..]).unwrap_err().contains("not whole 36-byte records"));
        let mut empty = encoded[..LISTED_CHUNK].to_vec();
        empty[32..].copy_from_slice(&0u32.to_be_bytes());
        assert!(decode_list(&empty).unwrap_err().contains("0 bytes"));
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &data).unwrap();
        assert_eq!(chunks_of_file(file.path()).unwrap(), chunks);
    }

    #[test]
    fn a_bitmap_names_exactly_the_wanted_chunks() {
        let wanted = [true, false, false, true, false, false, false, false, true, true];
        let bits = bitmap_of(&wanted);
        assert_eq!(bits, [0b0000_1001, 0b0000_0011]);
        assert_eq!(wanted_of(&bits, 10).unwrap(), wanted);
        assert!(wanted_of(&bits, 17).unwrap_err().contains("2 bytes for 17 chunks"));
        assert!(wanted_of(&[0, 0b0000_0100], 10).unwrap_err().contains("past the last"));
        assert!(wanted_of(&[], 0).unwrap().is_empty());
    }
}
