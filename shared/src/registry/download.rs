//! Downloading a large blob (a layer) to a file, streamed and checked against its descriptor.

use super::Registry;
use super::{oci, RegistryError};
use crate::ids::Digest;
use crate::reference::ImageRef;
use std::time::Duration;

impl Registry {
    /// Downloads blob `digest` of `size` bytes (from its descriptor) into the file at `path`,
    /// streaming: a chunk is what is in memory. A blob longer than its descriptor says is cut
    /// off and refused, and one whose bytes do not match its digest is refused; the file is
    /// removed either way.
    pub async fn blob_to_file(
        &self,
        repo: &ImageRef,
        digest: &Digest,
        size: u64,
        path: &std::path::Path,
    ) -> Result<(), RegistryError> {
        use futures_util::StreamExt as _;
        use sha2::Digest as _;
        use tokio::io::AsyncWriteExt as _;
        let layer = oci_client::manifest::OciDescriptor { digest: digest.to_string(), ..Default::default() };
        let target = oci(repo);
        let _permit = self.permit().await;
        self.client.store_auth_if_needed(&self.host, &self.auth).await;
        let deadline = self.timeouts.call + Duration::from_secs(size >> 18);
        let read = async {
            let mut file =
                tokio::fs::File::create(path).await.map_err(|e| format!("creating {}: {e}", path.display()))?;
            let mut stream = self.client.pull_blob_stream(&target, &layer).await.map_err(|e| e.to_string())?;
            let (mut hasher, mut got) = (sha2::Sha256::new(), 0u64);
            while let Some(chunk) = stream.stream.next().await {
                let chunk = chunk.map_err(|e| e.to_string())?;
                got += chunk.len() as u64;
                if got > size {
                    return Err(format!("{digest}: more than the {size} bytes its descriptor says"));
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(|e| format!("writing {}: {e}", path.display()))?;
            }
            file.flush().await.map_err(|e| format!("writing {}: {e}", path.display()))?;
            if Digest::from_sha256(hasher.finalize().into()) != *digest || got != size {
                return Err(format!("{digest}: content does not match its digest and size"));
            }
            Ok(())
        };
        let result = self.within("fetch blob", repo, deadline, read).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(path).await;
        }
        result
    }
}

impl Registry {
    /// The diff id of layer `blob` as its bytes say: the blob is streamed from `repo`, checked
    /// against its digest and size, unpacked and hashed, as a pulling client does before it
    /// trusts a config's `rootfs.diff_ids`. Nothing is written to disk; a chunk is what is in
    /// memory. A media type the farm cannot unpack (zstd, foreign layers) is refused.
    /// The outer error is the registry's (unreachable, an error status, no answer in time);
    /// the inner one says that the layer is not what its descriptor says.
    pub async fn layer_diff_id(
        &self,
        repo: &ImageRef,
        blob: &crate::oci::Blob,
    ) -> Result<Result<Digest, String>, RegistryError> {
        use futures_util::StreamExt as _;
        use sha2::Digest as _;
        let Some(mut unpacked) = crate::layers::UnpackedHash::of(&blob.media_type) else {
            return Ok(Err(crate::layers::cannot_check(blob)));
        };
        let (digest, size) = (&blob.digest, blob.size);
        let layer = oci_client::manifest::OciDescriptor { digest: digest.to_string(), ..Default::default() };
        let target = oci(repo);
        let _permit = self.permit().await;
        self.client.store_auth_if_needed(&self.host, &self.auth).await;
        let deadline = self.timeouts.call + Duration::from_secs(size >> 18);
        let read = async {
            let mut stream = self.client.pull_blob_stream(&target, &layer).await.map_err(|e| e.to_string())?;
            let (mut hasher, mut got) = (sha2::Sha256::new(), 0u64);
            let unpacking = |e: std::io::Error| format!("layer {digest} does not unpack as {}: {e}", blob.media_type);
            while let Some(chunk) = stream.stream.next().await {
                let chunk = chunk.map_err(|e| e.to_string())?;
                got += chunk.len() as u64;
                if got > size {
                    return Ok(Err(format!("layer {digest}: more than the {size} bytes its descriptor says")));
                }
                hasher.update(&chunk);
                if let Err(e) = unpacked.update(&chunk) {
                    return Ok(Err(unpacking(e)));
                }
            }
            if Digest::from_sha256(hasher.finalize().into()) != *digest || got != size {
                return Ok(Err(format!("layer {digest}: content does not match its digest and size")));
            }
            Ok::<_, String>(unpacked.finish().map_err(unpacking))
        };
        self.within("check layer", repo, deadline, read).await
    }
}
