//! Cutting chunks out of a context's tarball made again from its files: the client sends the
//! chunks the coordinator asks for without having written the tarball anywhere
//! ([`crate::context::plan_surveyed`] took its digest and chunks in a first pass).

use crate::context::{write_tar, Survey};
use std::io::Write;

/// What [`cut_chunks`] says when the tarball it makes again is not the one planned.
pub const CHANGED: &str = "a file of the build context changed while it was sent; run the build again";

/// Makes the tarball of `survey` again and hands `each` the bytes of the chunks `wanted`
/// (indexes into `chunks`, ascending), in order, stopping after the last. `each` returns false
/// to stop early. A tarball that ends before a wanted chunk does is [`CHANGED`]; one whose
/// bytes changed is found by the coordinator, which checks each chunk's digest.
pub fn cut_chunks(
    survey: &Survey,
    chunks: &[archfarm_shared::chunking::Chunk],
    wanted: &[u32],
    each: impl FnMut(u32, Vec<u8>) -> bool,
) -> Result<(), String> {
    if wanted.is_empty() {
        return Ok(());
    }
    let mut ranges = Vec::with_capacity(wanted.len());
    let (mut at, mut next) = (0u64, 0usize);
    for (i, c) in chunks.iter().enumerate() {
        if wanted.get(next) == Some(&(i as u32)) {
            ranges.push((i as u32, at, c.size as usize));
            next += 1;
        }
        at += u64::from(c.size);
    }
    if next != wanted.len() {
        return Err(format!(
            "the coordinator asked for chunks {wanted:?}, not all of them among the context's {} in order",
            chunks.len()
        ));
    }
    let mut cutter = Cutter { ranges, next: 0, at: 0, piece: Vec::new(), each, stopped: false };
    match write_tar(survey, &mut cutter) {
        Ok(()) if cutter.next == cutter.ranges.len() => Ok(()),
        Ok(()) => Err(CHANGED.to_owned()),
        // The writer stops the tar once it has every chunk it wants.
        Err(_) if cutter.stopped || cutter.next == cutter.ranges.len() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Collects the byte ranges of the wanted chunks from a tarball as it is written.
struct Cutter<F> {
    /// (chunk index, offset, length), in order.
    ranges: Vec<(u32, u64, usize)>,
    next: usize,
    at: u64,
    piece: Vec<u8>,
    each: F,
    stopped: bool,
}

impl<F: FnMut(u32, Vec<u8>) -> bool> Write for Cutter<F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let end = self.at + buf.len() as u64;
        while let Some(&(i, offset, len)) = self.ranges.get(self.next) {
            // The next byte this chunk needs; every byte before `self.at` was seen already.
            let from = offset + self.piece.len() as u64;
            if from >= end {
                break;
            }
            let to = (offset + len as u64).min(end);
            self.piece.extend_from_slice(&buf[(from - self.at) as usize..(to - self.at) as usize]);
            if self.piece.len() < len {
                break;
            }
            self.next += 1;
            if !(self.each)(i, std::mem::take(&mut self.piece)) {
                self.stopped = true;
                return Err(std::io::Error::other("stopped"));
            }
        }
        self.at = end;
        if self.next == self.ranges.len() {
            // Every wanted chunk is out: the rest of the tarball is not needed.
            return Err(std::io::Error::other("every wanted chunk is cut"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{pack_surveyed, plan_surveyed, survey};

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("src")).unwrap();
        std::fs::write(d.path().join("Dockerfile"), "FROM scratch\nCOPY src /src\n").unwrap();
        std::fs::write(d.path().join("src/main.rs"), "fn main() {}").unwrap();
        d
    }

    #[test]
    fn chunks_cut_from_the_tarball_made_again_are_those_of_the_packed_one() {
        let d = tree();
        // Bytes with no repeats: each chunk of them is its own.
        let big: Vec<u8> =
            (0..9u64 << 20).map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 57) as u8 ^ (i >> 13) as u8).collect();
        std::fs::write(d.path().join("src/big.bin"), &big).unwrap();
        let s = survey(d.path(), None).unwrap();
        let packed = pack_surveyed(&s, 1 << 30).unwrap();
        let plan = plan_surveyed(&s, 1 << 30).unwrap();
        assert_eq!((&plan.digest, plan.size, &plan.chunks), (&packed.digest, packed.size, &packed.chunks));
        assert!(plan.chunks.len() >= 3, "{} chunks", plan.chunks.len());
        let bytes = std::fs::read(packed.file.path()).unwrap();
        let offset = |i: usize| plan.chunks[..i].iter().map(|c| c.size as usize).sum::<usize>();
        let last = plan.chunks.len() as u32 - 1;
        let mut got = Vec::new();
        cut_chunks(&s, &plan.chunks, &[0, last], |i, b| {
            got.push((i, b));
            true
        })
        .unwrap();
        let want = |i: usize| bytes[offset(i)..offset(i) + plan.chunks[i].size as usize].to_vec();
        assert_eq!(got, vec![(0, want(0)), (last, want(last as usize))]);
        // Asked out of order, or for a chunk it does not have: refused.
        assert!(cut_chunks(&s, &plan.chunks, &[1, 0], |_, _| true).unwrap_err().contains("in order"));
        assert!(cut_chunks(&s, &plan.chunks, &[last + 1], |_, _| true).is_err());
        // A file shrunk since: the tarball ends before the last chunk.
        std::fs::write(d.path().join("src/big.bin"), &big[..1 << 20]).unwrap();
        assert_eq!(cut_chunks(&s, &plan.chunks, &[last], |_, _| true).unwrap_err(), CHANGED);
        // A file gone since: its error, whatever the tar writer adds when it is dropped.
        std::fs::remove_file(d.path().join("src/big.bin")).unwrap();
        let err = cut_chunks(&s, &plan.chunks, &[last], |_, _| panic!("no chunk is cut")).unwrap_err();
        assert!(err.contains("big.bin"), "{err}");
        // The receiver stopped taking chunks: the cut stops, without an error of its own.
        std::fs::write(d.path().join("src/big.bin"), &big).unwrap();
        let mut calls = 0;
        cut_chunks(&s, &plan.chunks, &[0, 1, last], |_, _| {
            calls += 1;
            false
        })
        .unwrap();
        assert_eq!(calls, 1);
    }
}
