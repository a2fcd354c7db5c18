//! Trust nothing an agent says: check each pushed image in the registry, then publish one
//! index over the verified children under every requested tag. Registry calls that fail are
//! retried under the registry's policy ([`Policy::REGISTRY`]).

use super::ports::{ImageCheck, VerifyError};
use archfarm_shared::oci::{self, Blob, Child};
use archfarm_shared::protocol::PushedImage;
use archfarm_shared::reference::ImageRef;
use archfarm_shared::registry::{Registry, MAX_DOCUMENT_BYTES};
use archfarm_shared::retry::{retry, Policy};
use archfarm_shared::{AgentName, Digest, Platform};
use futures_util::future::BoxFuture;
use std::future::Future;
use std::sync::Arc;

/// Runs a registry call under the registry's retry policy; the error says what failed how often.
async fn with_retries<T, F, Fut>(what: &str, op: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    retry(Policy::REGISTRY, what, op).await.map_err(|e| e.to_string())
}

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

/// Fetches the manifest an agent reported and its config from the registry, and checks the
/// digest, size and os/architecture/variant against the job. Returns the verified child.
pub async fn verify(
    registry: &Registry,
    repo: &ImageRef,
    platform: &Platform,
    agent: &AgentName,
    pushed: &PushedImage,
) -> Result<Child, VerifyError> {
    if pushed.size > MAX_DOCUMENT_BYTES {
        let message = format!("agent {agent}: reported a {}-byte manifest; at most {MAX_DOCUMENT_BYTES}", pushed.size);
        return Err(VerifyError::Wrong(message));
    }
    let by_digest = repo.with_digest(&pushed.digest);
    let (bytes, digest) = with_retries(&format!("fetching {} from the registry", pushed.digest), || async {
        registry.manifest(&by_digest, oci::IMAGE_MANIFESTS).await.map_err(|e| e.to_string())
    })
    .await
    .map_err(VerifyError::Unavailable)?;
    let wrong = |msg: String| VerifyError::Wrong(format!("agent {agent}: {msg}"));
    if digest != pushed.digest || Digest::of(&bytes) != pushed.digest {
        return Err(wrong(format!("reported {} but the registry serves {digest}", pushed.digest)));
    }
    if bytes.len() as u64 != pushed.size {
        return Err(wrong(format!(
            "reported a {}-byte manifest but the registry serves {} bytes",
            pushed.size,
            bytes.len()
        )));
    }
    let media_type = oci::media_type_of(&bytes).unwrap_or_else(|| pushed.media_type.clone());
    if !oci::IMAGE_MANIFESTS.contains(&media_type.as_str()) {
        return Err(wrong(format!("pushed a {media_type}, not a single-platform image manifest")));
    }
    let (_, config_digest) = oci::manifest_config(&bytes).map_err(|e| wrong(format!("manifest {digest}: {e}")))?;
    let config_digest: Digest = config_digest.parse().map_err(|e| wrong(format!("manifest {digest}: {e}")))?;
    let config = with_retries(&format!("fetching the config of {digest}"), || async {
        registry.blob(repo, &config_digest).await.map_err(|e| e.to_string())
    })
    .await
    .map_err(VerifyError::Unavailable)?;
    let actual = oci::config_platform(&config).map_err(|e| wrong(format!("config of {digest}: {e}")))?;
    if &actual != platform {
        return Err(wrong(format!("pushed an image whose config says {actual}, but the job was for {platform}")));
    }
    Ok(Child { platform: platform.clone(), manifest: Blob { media_type, digest, size: pushed.size } })
}

/// Publishes the index over `children` (in order) under every tag, then reads it back through
/// the first tag to confirm the registry serves exactly the bytes that were hashed. The same
/// children always give the same bytes, so publishing again is harmless.
pub async fn publish(registry: &Registry, tags: &[ImageRef], children: &[Child]) -> Result<Digest, String> {
    let bytes = oci::index_json(children).map_err(|e| e.to_string())?;
    let digest = Digest::of(&bytes);
    let first = tags.first().ok_or("no tag to publish under")?;
    for tag in tags {
        with_retries(&format!("publishing the index under {}", tag.whole()), || async {
            registry.push_manifest(tag, bytes.clone().into(), oci::OCI_INDEX).await.map_err(|e| e.to_string())
        })
        .await?;
    }
    let (_, served) = with_retries(&format!("reading back {}", first.whole()), || async {
        registry.manifest(first, oci::ANY_MANIFEST).await.map_err(|e| e.to_string())
    })
    .await?;
    if served != digest {
        return Err(format!("{} resolves to {served} after publishing {digest}", first.whole()));
    }
    Ok(digest)
}
