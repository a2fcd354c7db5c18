//! Trust nothing an agent says: check each pushed image in the registry, then publish one
//! index over the verified children under every requested tag. How an image is read back and
//! an index published is `archfarm_shared::images` (also used by `imagetools create`); this is
//! the orchestration's seam over it, with the agent named in every complaint.

use super::ports::{ImageCheck, VerifyError};
use archfarm_shared::images::{self, CheckError};
use archfarm_shared::oci::Child;
use archfarm_shared::protocol::PushedImage;
use archfarm_shared::reference::ImageRef;
use archfarm_shared::registry::Registry;
use archfarm_shared::{AgentName, Digest, Platform};
use futures_util::future::BoxFuture;
use std::sync::Arc;

/// The registry as the orchestration sees it: checks images pushed into one repository.
#[derive(Debug)]
pub struct RegistryImages {
    /// The registry's client.
    pub registry: Arc<Registry>,
    /// The build's repository.
    pub repo: ImageRef,
}

impl ImageCheck for RegistryImages {
    fn verify<'a>(
        &'a self,
        platform: &'a Platform,
        agent: &'a AgentName,
        pushed: &'a PushedImage,
    ) -> BoxFuture<'a, Result<Child, VerifyError>> {
        Box::pin(verify(&self.registry, &self.repo, platform, agent, pushed))
    }
}

/// Fetches the manifest an agent reported and its config back from the registry, and checks
/// digest, size, media type and platform against the job.
pub async fn verify(
    registry: &Registry,
    repo: &ImageRef,
    platform: &Platform,
    agent: &AgentName,
    pushed: &PushedImage,
) -> Result<Child, VerifyError> {
    let child = images::read_child(registry, repo, &pushed.digest, Some(pushed.size)).await.map_err(|e| match e {
        CheckError::Wrong(m) => VerifyError::Wrong(format!("agent {agent}: {m}")),
        CheckError::Unavailable(m) => VerifyError::Unavailable(m),
    })?;
    if &child.platform != platform {
        return Err(VerifyError::Wrong(format!(
            "agent {agent}: pushed an image whose config says {}, but the job was for {platform}",
            child.platform
        )));
    }
    Ok(child)
}

/// Publishes the index over `children` under every tag; returns its digest.
pub async fn publish(registry: &Registry, tags: &[ImageRef], children: &[Child]) -> Result<Digest, String> {
    images::publish_index(registry, tags, children).await
}
