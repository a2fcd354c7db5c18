//! Images agents handed to the coordinator, for builds that name no registry: received from
//! the agent, checked the same way as a push to a registry (digest, size, single-platform
//! manifest, the platform its config declares) and also that every blob the manifest names was
//! handed over, then served to the client, which fetches them from here.
//!
//! # Layout
//! - this file: [`StoredImages`], checking a handed-over image.
//! - [`budget`]: what an attempt may hand over, and what is removed when it ends.
//! - [`streams`]: an agent handing a blob over; a client fetching one.

pub mod budget;
pub mod streams;

use super::ports::{Claim, ImageCheck, VerifyError, Verifying};
use archfarm_shared::images::{self, CheckError};
use archfarm_shared::layers;
use archfarm_shared::registry::MAX_DOCUMENT_BYTES;
use archfarm_shared::{AgentName, Digest, JobId};
use budget::HandOvers;

/// The coordinator's store of handed-over blobs, as the orchestration checks images in it.
#[derive(Debug)]
pub struct StoredImages<'a> {
    /// Where the blobs are, and what each attempt handed over.
    pub handovers: &'a HandOvers,
}

impl ImageCheck for StoredImages<'_> {
    fn attempt_started(&self, job: &JobId, agent: &AgentName) {
        self.handovers.started(job, agent);
    }

    fn attempt_ended(&self, job: &JobId, verified: bool) {
        self.handovers.ended(job, verified);
    }

    fn verify<'a>(&'a self, claim: Claim<'a>) -> Verifying<'a> {
        let Claim { platform, agent, pushed } = claim;
        Box::pin(async move {
            let wrong = |m: String| VerifyError::Wrong(format!("agent {agent}: {m}"));
            let manifest = self.document(&pushed.digest).await.map_err(wrong)?;
            if manifest.len() as u64 != pushed.size {
                return Err(wrong(format!(
                    "reported a {}-byte manifest; it handed over {}",
                    pushed.size,
                    manifest.len()
                )));
            }
            let checked = |e: CheckError| match e {
                CheckError::Wrong(m) | CheckError::Unavailable(m) => wrong(m),
            };
            let config_digest = images::config_of(&manifest, &pushed.digest).map_err(checked)?;
            let config = self.document(&config_digest).await.map_err(wrong)?;
            for blob in images::blobs_of(&manifest).map_err(wrong)? {
                if !self.handovers.store().contains(&blob) {
                    return Err(wrong(format!("its manifest names {blob}, which it never handed over")));
                }
            }
            self.check_layers(&manifest, &config).await.map_err(wrong)?;
            let child = images::child_of(&manifest, &pushed.digest, &config).map_err(checked)?;
            if &child.platform != platform {
                return Err(wrong(format!(
                    "handed over an image whose config says {}, but the job was for {platform}",
                    child.platform
                )));
            }
            Ok(child)
        })
    }
}

impl StoredImages<'_> {
    /// What a pulling client checks: as many layers as diff ids, and each handed-over layer
    /// unpacks to the config's diff id in the same place.
    async fn check_layers(&self, manifest: &[u8], config: &[u8]) -> Result<(), String> {
        let layers = layers::layers_of(manifest).map_err(|e| format!("manifest: {e}"))?;
        let diff_ids = layers::diff_ids(config).ok_or("the config has no valid rootfs.diff_ids")?;
        if layers.len() != diff_ids.len() {
            return Err(format!(
                "the manifest lists {} layers but the config {} diff ids",
                layers.len(),
                diff_ids.len()
            ));
        }
        for (i, (layer, claimed)) in layers.into_iter().zip(diff_ids).enumerate() {
            let path = self.handovers.store().path(&layer.digest);
            let digest = layer.digest.clone();
            let unpacked = tokio::task::spawn_blocking(move || layers::unpacked_file(&path, &layer))
                .await
                .map_err(|e| format!("checking layer {digest}: {e}"))?
                .map_err(|e| format!("reading layer {digest}: {e}"))??;
            if unpacked != claimed {
                return Err(format!("layer {} ({digest}) unpacks to {unpacked}, but the config says {claimed}", i + 1));
            }
        }
        Ok(())
    }

    /// A small stored blob (a manifest or config), refused over [`MAX_DOCUMENT_BYTES`].
    async fn document(&self, digest: &Digest) -> Result<Vec<u8>, String> {
        match self.handovers.store().size(digest).await {
            None => Err(format!("{digest} was never handed over")),
            Some(n) if n > MAX_DOCUMENT_BYTES => Err(format!("{digest} is {n} bytes; at most {MAX_DOCUMENT_BYTES}")),
            Some(_) => {
                tokio::fs::read(self.handovers.store().path(digest)).await.map_err(|e| format!("reading {digest}: {e}"))
            }
        }
    }
}
