//! Trust nothing an agent says: check each pushed image in the registry, then publish one
//! index over the verified children under every requested tag.

use archfarm_shared::oci::{self, Blob, Child};
use archfarm_shared::protocol::PushedImage;
use archfarm_shared::registry::{ImageReference, Registry};
use archfarm_shared::{AgentName, Digest, Platform};

/// Fetches the manifest an agent reported and its config from the registry, and checks the
/// digest, size and os/architecture/variant against the job. Returns the verified child.
pub async fn verify(
    registry: &Registry,
    repo: &ImageReference,
    platform: &Platform,
    agent: &AgentName,
    pushed: &PushedImage,
) -> Result<Child, String> {
    let by_digest = ImageReference::with_digest(
        repo.registry().to_owned(),
        repo.repository().to_owned(),
        pushed.digest.to_string(),
    );
    let (bytes, digest) = registry
        .manifest(&by_digest, oci::IMAGE_MANIFESTS)
        .await
        .map_err(|e| {
            format!(
                "agent {agent} reported {} but the registry does not serve it: {e}",
                pushed.digest
            )
        })?;
    if digest != pushed.digest || Digest::of(&bytes) != pushed.digest {
        return Err(format!(
            "agent {agent} reported {} but the registry serves {digest}",
            pushed.digest
        ));
    }
    if bytes.len() as u64 != pushed.size {
        return Err(format!(
            "agent {agent} reported a {}-byte manifest but the registry serves {} bytes",
            pushed.size,
            bytes.len()
        ));
    }
    let media_type = oci::media_type_of(&bytes).unwrap_or_else(|| pushed.media_type.clone());
    if !oci::IMAGE_MANIFESTS.contains(&media_type.as_str()) {
        return Err(format!(
            "agent {agent} pushed a {media_type}, not a single-platform image manifest"
        ));
    }
    let (_, config_digest) =
        oci::manifest_config(&bytes).map_err(|e| format!("manifest {digest}: {e}"))?;
    let config_digest: Digest = config_digest
        .parse()
        .map_err(|e| format!("manifest {digest}: {e}"))?;
    let config = registry
        .blob(repo, &config_digest)
        .await
        .map_err(|e| format!("config of {digest}: {e}"))?;
    let actual = oci::config_platform(&config).map_err(|e| format!("config of {digest}: {e}"))?;
    if &actual != platform {
        return Err(format!(
            "agent {agent} pushed an image whose config says {actual}, but the job was for {platform}"
        ));
    }
    Ok(Child {
        platform: platform.clone(),
        manifest: Blob {
            media_type,
            digest,
            size: pushed.size,
        },
    })
}

/// Publishes the index over `children` (in order) under every tag, then reads it back through
/// the first tag to confirm the registry serves exactly the bytes that were hashed.
pub async fn publish(
    registry: &Registry,
    tags: &[ImageReference],
    children: &[Child],
) -> Result<Digest, String> {
    let bytes = oci::index_json(children).map_err(|e| e.to_string())?;
    let digest = Digest::of(&bytes);
    let first = tags.first().ok_or("no tag to publish under")?;
    registry
        .authorize_push(first)
        .await
        .map_err(|e| e.to_string())?;
    for tag in tags {
        registry
            .push_manifest(tag, bytes.clone().into(), oci::OCI_INDEX)
            .await
            .map_err(|e| format!("publishing the index under {}: {e}", tag.whole()))?;
    }
    let (_, served) = registry
        .manifest(first, oci::ANY_MANIFEST)
        .await
        .map_err(|e| format!("reading back {}: {e}", first.whole()))?;
    if served != digest {
        return Err(format!(
            "{} resolves to {served} after publishing {digest}",
            first.whole()
        ));
    }
    Ok(digest)
}
