//! Large blobs (layers) streamed from the registry and checked against their descriptor as they
//! come: written to a file, or unpacked and hashed to learn their diff id. A chunk is what is
//! in memory.

use super::Registry;
use super::{oci, RegistryError};
use crate::ids::Digest;
use crate::reference::ImageRef;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use std::time::Duration;

/// A blob's bytes counted and hashed as they come, against its descriptor.
struct Checked<'a> {
    digest: &'a Digest,
    size: u64,
    got: u64,
    hasher: sha2::Sha256,
}

impl<'a> Checked<'a> {
    fn new(digest: &'a Digest, size: u64) -> Self {
        Checked { digest, size, got: 0, hasher: <sha2::Sha256 as sha2::Digest>::new() }
    }

    /// Takes the next chunk; `Err` as soon as there are more bytes than the descriptor says.
    fn take(&mut self, chunk: &[u8]) -> Result<(), String> {
        self.got += chunk.len() as u64;
        if self.got > self.size {
            return Err(format!("{}: more than the {} bytes its descriptor says", self.digest, self.size));
        }
        sha2::Digest::update(&mut self.hasher, chunk);
        Ok(())
    }

    /// `Err` unless the bytes were exactly the descriptor's.
    fn finish(self) -> Result<(), String> {
        let digest = Digest::from_sha256(sha2::Digest::finalize(self.hasher).into());
        if digest != *self.digest || self.got != self.size {
            return Err(format!("{}: content does not match its digest and size", self.digest));
        }
        Ok(())
    }
}

type Chunks = BoxStream<'static, Result<Bytes, String>>;

impl Registry {
    /// Streams blob `digest` of `size` bytes from `repo` into `each`, within a deadline that
    /// grows with the size. The outer error is the registry's (or `each`'s); the inner one says
    /// the bytes are not the descriptor's.
    async fn stream_blob<T>(
        &self,
        (op, repo): (&'static str, &ImageRef),
        (digest, size): (&Digest, u64),
        mut each: impl FnMut(&[u8]) -> Result<(), String>,
        done: impl FnOnce() -> Result<T, String>,
    ) -> Result<Result<T, String>, RegistryError> {
        use futures_util::StreamExt as _;
        let layer = oci_client::manifest::OciDescriptor { digest: digest.to_string(), ..Default::default() };
        let target = oci(repo);
        let _permit = self.permit().await;
        self.client.store_auth_if_needed(&self.host, &self.auth).await;
        let deadline = self.timeouts.call + Duration::from_secs(size >> 18);
        let read = async {
            let stream = self.client.pull_blob_stream(&target, &layer).await.map_err(|e| e.to_string())?;
            let mut chunks: Chunks = stream.stream.map(|c| c.map_err(|e| e.to_string())).boxed();
            let mut checked = Checked::new(digest, size);
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                if let Err(wrong) = checked.take(&chunk) {
                    return Ok(Err(wrong));
                }
                each(&chunk)?;
            }
            if let Err(wrong) = checked.finish() {
                return Ok(Err(wrong));
            }
            Ok::<_, String>(Ok(done()?))
        };
        self.within(op, repo, deadline, read).await
    }

    /// Downloads blob `digest` of `size` bytes (from its descriptor) into the file at `path`,
    /// streaming through a 1 MiB buffer (each write lands in the page cache). A blob longer than its descriptor says is cut off and refused, and one whose
    /// bytes do not match its digest is refused; the file is removed either way.
    pub async fn blob_to_file(
        &self,
        repo: &ImageRef,
        digest: &Digest,
        size: u64,
        path: &std::path::Path,
    ) -> Result<(), RegistryError> {
        use std::io::Write as _;
        let writing = |e: std::io::Error| format!("writing {}: {e}", path.display());
        let file = std::fs::File::create(path).map_err(|e| self.fail("fetch blob", repo, writing(e)))?;
        let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
        let result = self
            .stream_blob(
                ("fetch blob", repo),
                (digest, size),
                |chunk| file.write_all(chunk).map_err(writing),
                || Ok(()),
            )
            .await
            .and_then(|checked| checked.map_err(|wrong| self.fail("fetch blob", repo, wrong)))
            .and_then(|()| file.flush().map_err(|e| self.fail("fetch blob", repo, writing(e))));
        if result.is_err() {
            let _ = std::fs::remove_file(path);
        }
        result
    }

    /// The diff id of layer `blob` as its bytes say: the blob is streamed from `repo`, checked
    /// against its digest and size, unpacked and hashed, as a pulling client does before it
    /// trusts a config's `rootfs.diff_ids`. Nothing is written to disk. A media type the farm
    /// cannot unpack (zstd, foreign layers) is refused.
    /// The outer error is the registry's (unreachable, an error status, no answer in time);
    /// the inner one says that the layer is not what its descriptor says.
    pub async fn layer_diff_id(
        &self,
        repo: &ImageRef,
        blob: &crate::oci::Blob,
    ) -> Result<Result<Digest, String>, RegistryError> {
        let Some(unpacked) = crate::layers::UnpackedHash::of(&blob.media_type) else {
            return Ok(Err(crate::layers::cannot_check(blob)));
        };
        let digest = &blob.digest;
        let unpacking = |e: std::io::Error| format!("layer {digest} does not unpack as {}: {e}", blob.media_type);
        let (mut hash, mut failed) = (Some(unpacked), None);
        let each = |chunk: &[u8]| {
            if let Some(Err(e)) = hash.as_mut().map(|h| h.update(chunk)) {
                failed = Some(unpacking(e));
                hash = None;
            }
            Ok(())
        };
        let checked = self.stream_blob(("check layer", repo), (digest, blob.size), each, || Ok(())).await?;
        if let Err(wrong) = checked {
            return Ok(Err(format!("layer {wrong}")));
        }
        match (failed, hash) {
            (Some(wrong), _) => Ok(Err(wrong)),
            (None, Some(hash)) => Ok(hash.finish().map_err(unpacking)),
            (None, None) => unreachable!("the hash is dropped only when it failed"),
        }
    }
}
