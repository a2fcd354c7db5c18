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
