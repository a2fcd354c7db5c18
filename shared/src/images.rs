//! Reading an image back from the registry before anything points at it, and publishing one
//! index over such images. The coordinator checks every agent's push with these; `archfarm
//! imagetools create` checks the images a CI matrix pushed the same way. Registry calls that
//! fail are retried under the registry's policy ([`Policy::REGISTRY`]).

use crate::oci::{self, Blob, Child};
use crate::reference::ImageRef;
use crate::registry::{Registry, MAX_DOCUMENT_BYTES};
use crate::retry::{retry, Policy};
use crate::Digest;
use std::future::Future;

/// Why an image was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The image is not what it was said to be.
    #[error("{0}")]
    Wrong(String),
    /// The registry could not be asked (down, 5xx).
    #[error("{0}")]
    Unavailable(String),
}

/// Runs a registry call under the registry's retry policy; the error says what was tried.
pub async fn with_retries<T, F, Fut>(what: &str, op: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    retry(Policy::REGISTRY, what, op).await.map_err(|e| e.to_string())
}

/// Reads the single-platform manifest `digest` in `repo` and its config, and returns it as an
/// index child, with the platform its config declares. When the size of the manifest is known
/// (`size`), the registry must serve exactly that many bytes.
pub async fn read_child(
    registry: &Registry,
    repo: &ImageRef,
    digest: &Digest,
    size: Option<u64>,
) -> Result<Child, CheckError> {
    read_image(registry, repo, digest, size).await.map(|image| image.child)
}

/// A single-platform image as the registry serves it, its manifest checked against its digest.
#[derive(Debug)]
pub struct ReadImage {
    /// The image as an index child.
    pub child: Child,
    /// Its manifest's bytes.
    pub manifest: bytes::Bytes,
    /// Its config's bytes.
    pub config: Vec<u8>,
}

/// [`read_child`], with the manifest and config it read.
pub async fn read_image(
    registry: &Registry,
    repo: &ImageRef,
    digest: &Digest,
    size: Option<u64>,
) -> Result<ReadImage, CheckError> {
    if let Some(size) = size.filter(|s| *s > MAX_DOCUMENT_BYTES) {
        return Err(CheckError::Wrong(format!("a {size}-byte manifest; at most {MAX_DOCUMENT_BYTES}")));
    }
    let by_digest = repo.with_digest(digest);
    let (bytes, served) = with_retries(&format!("fetching {digest} from the registry"), || async {
        registry.manifest(&by_digest, oci::IMAGE_MANIFESTS).await.map_err(|e| e.to_string())
    })
    .await
    .map_err(CheckError::Unavailable)?;
    let wrong = |msg: String| CheckError::Wrong(msg);
    if served != *digest || Digest::of(&bytes) != *digest {
        return Err(wrong(format!("{digest} was asked for, but the registry serves {served}")));
    }
    if let Some(size) = size.filter(|s| *s != bytes.len() as u64) {
        return Err(wrong(format!(
            "a {size}-byte manifest was reported, but the registry serves {} bytes",
            bytes.len()
        )));
    }
    let config_digest = config_of(&bytes, digest)?;
    let config = with_retries(&format!("fetching the config of {digest}"), || async {
        registry.blob(repo, &config_digest).await.map_err(|e| e.to_string())
    })
    .await
    .map_err(CheckError::Unavailable)?;
    let child = child_of(&bytes, digest, &config)?;
    Ok(ReadImage { child, manifest: bytes, config })
}

/// The config digest a manifest names, once it is known to be a single-platform manifest.
pub fn config_of(manifest: &[u8], digest: &Digest) -> Result<Digest, CheckError> {
    let wrong = |msg: String| CheckError::Wrong(msg);
    let media_type = oci::media_type_of(manifest).unwrap_or_else(|| oci::OCI_MANIFEST.to_owned());
    if !oci::IMAGE_MANIFESTS.contains(&media_type.as_str()) {
        return Err(wrong(format!("{digest} is a {media_type}, not a single-platform image manifest")));
    }
    let (_, config_digest) = oci::manifest_config(manifest).map_err(|e| wrong(format!("manifest {digest}: {e}")))?;
    config_digest.parse().map_err(|e| wrong(format!("manifest {digest}: {e}")))
}

/// The index child of manifest `digest` over `config`: its platform is what the config says.
pub fn child_of(manifest: &[u8], digest: &Digest, config: &[u8]) -> Result<Child, CheckError> {
    let media_type = oci::media_type_of(manifest).unwrap_or_else(|| oci::OCI_MANIFEST.to_owned());
    let platform = oci::config_platform(config).map_err(|e| CheckError::Wrong(format!("config of {digest}: {e}")))?;
    Ok(Child { platform, manifest: Blob { media_type, digest: digest.clone(), size: manifest.len() as u64 } })
}

/// The config and layer digests a single-platform manifest names.
pub fn blobs_of(manifest: &[u8]) -> Result<Vec<Digest>, String> {
    let m: serde_json::Value = serde_json::from_slice(manifest).map_err(|e| e.to_string())?;
    let config = m["config"]["digest"].as_str().unwrap_or_default();
    let layers = m["layers"].as_array().into_iter().flatten().map(|l| l["digest"].as_str().unwrap_or_default());
    std::iter::once(config).chain(layers).map(|d| d.parse().map_err(|e| format!("{e}"))).collect()
}

/// Publishes the index over `children` under every tag (all in one repository), then reads it
/// back through the first. Returns its digest.
pub async fn publish_index(
    registry: &Registry,
    tags: &[ImageRef],
    children: &[Child],
    attestations: &[oci::Attestation],
) -> Result<Digest, String> {
    let bytes = oci::index_json_with(children, attestations).map_err(|e| e.to_string())?;
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

/// Brings manifest `digest` of repository `from` to `to` (a tag or that digest, in another
/// repository of the same registry): its blobs are mounted across repositories, then the same
/// manifest bytes are pushed, so the digest stays the same.
pub async fn bring(registry: &Registry, from: &ImageRef, to: &ImageRef, digest: &Digest) -> Result<(), String> {
    let (bytes, _) =
        registry.manifest(&from.with_digest(digest), oci::IMAGE_MANIFESTS).await.map_err(|e| e.to_string())?;
    if Digest::of(&bytes) != *digest {
        return Err(format!("{} serves other bytes than {digest}", from.whole()));
    }
    registry.authorize_push(to).await.map_err(|e| e.to_string())?;
    for blob in blobs_of(&bytes)? {
        if !registry.has_blob(to, &blob).await {
            registry.mount_blob(to, from, &blob).await.map_err(|e| {
                format!(
                    "{blob} of {} could not be mounted into {}: {e}; push the image there first",
                    from.whole(),
                    to.name()
                )
            })?;
        }
    }
    let media_type = oci::media_type_of(&bytes).unwrap_or_else(|| oci::OCI_MANIFEST.to_owned());
    registry.push_manifest(to, bytes, &media_type).await.map_err(|e| e.to_string())
}
