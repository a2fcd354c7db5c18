//! The registry adapter of the orchestration ([`ImageStore`]): trust nothing an agent says,
//! check each pushed image in the registry, attest it, probe and copy build caches, and publish
//! one index over the verified children. How an image is read back and an index published is
//! `archfarm_shared::images` (also used by `imagetools create`); this is the orchestration's
//! seam over it, with the agent named in every complaint.

use super::ports::{Claim, ImageStore, VerifyError, Verifying};
use archfarm_shared::images::{self, CheckError};
use archfarm_shared::layers::{self, LayerFacts};
use archfarm_shared::oci::{self, Attestation, Blob, Child};
use archfarm_shared::provenance::SLSA_PROVENANCE_V1;
use archfarm_shared::reference::ImageRef;
use archfarm_shared::registry::{Registry, RegistryClients};
use archfarm_shared::Digest;
use futures_util::future::BoxFuture;
use std::sync::Arc;

/// The registries as the orchestration sees them: one client per registry, kept between
/// builds, chosen by each call's reference.
#[derive(Debug)]
pub struct RegistryImages {
    /// The clients.
    pub registries: Arc<RegistryClients>,
    /// Layers whose bytes were hashed here: each is fetched and unpacked once, not per build.
    pub layers: LayerFacts,
}

impl RegistryImages {
    /// Images in the registries of `registries`, no layer checked yet.
    pub fn new(registries: Arc<RegistryClients>) -> Self {
        RegistryImages { registries, layers: LayerFacts::default() }
    }
}

impl ImageStore for RegistryImages {
    fn verify<'a>(&'a self, repo: &'a ImageRef, claim: Claim<'a>) -> Verifying<'a> {
        Box::pin(async move { verify(&self.registries.get(repo), repo, claim, &self.layers).await })
    }

    fn attest<'a>(
        &'a self,
        repo: &'a ImageRef,
        subject: &'a Child,
        statement: Vec<u8>,
    ) -> BoxFuture<'a, Result<Attestation, String>> {
        Box::pin(async move { attest(&self.registries.get(repo), repo, subject, statement).await })
    }

    fn has_manifest<'a>(&'a self, reference: &'a ImageRef) -> BoxFuture<'a, bool> {
        Box::pin(async move { self.registries.get(reference).manifest(reference, oci::ANY_MANIFEST).await.is_ok() })
    }

    fn copy<'a>(
        &'a self,
        from: &'a ImageRef,
        digest: &'a Digest,
        to: &'a ImageRef,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { images::bring(&self.registries.get(from), from, to, digest).await })
    }

    fn tag_target<'a>(&'a self, tag: &'a ImageRef) -> BoxFuture<'a, Result<Option<Digest>, String>> {
        Box::pin(async move { self.registries.get(tag).tag_target(tag).await.map_err(|e| e.to_string()) })
    }

    fn publish_index<'a>(
        &'a self,
        tags: &'a [ImageRef],
        children: &'a [Child],
        attestations: &'a [Attestation],
    ) -> BoxFuture<'a, Result<Digest, String>> {
        Box::pin(async move {
            let Some(first) = tags.first() else { return Err("no tag to publish under".to_owned()) };
            images::publish_index(&self.registries.get(first), tags, children, attestations).await
        })
    }
}

/// Pushes an attestation manifest for `subject` into `repo`: the statement as its one layer,
/// BuildKit's config, then the manifest by digest. Returns what the index lists.
pub async fn attest(
    registry: &Registry,
    repo: &ImageRef,
    subject: &Child,
    statement: Vec<u8>,
) -> Result<Attestation, String> {
    let layer = Blob { media_type: oci::IN_TOTO.into(), digest: Digest::of(&statement), size: statement.len() as u64 };
    let config_bytes = oci::attestation_config_json(std::slice::from_ref(&layer.digest)).map_err(|e| e.to_string())?;
    let config =
        Blob { media_type: oci::OCI_CONFIG.into(), digest: Digest::of(&config_bytes), size: config_bytes.len() as u64 };
    let manifest = oci::attestation_manifest_json(&config, &layer, SLSA_PROVENANCE_V1).map_err(|e| e.to_string())?;
    let digest = Digest::of(&manifest);
    // Both name this build's statement, which no other build wrote: uploaded without asking first.
    for (bytes, blob) in [(statement, &layer), (config_bytes, &config)] {
        let bytes = bytes::Bytes::from(bytes);
        images::with_retries(&format!("pushing the provenance blob {}", blob.digest), || async {
            registry.upload_blob(repo, bytes.clone(), &blob.digest).await.map_err(|e| e.to_string())
        })
        .await?;
    }
    let size = manifest.len() as u64;
    let (manifest, by_digest) = (bytes::Bytes::from(manifest), repo.with_digest(&digest));
    images::with_retries("pushing the provenance attestation manifest", || async {
        registry.push_manifest(&by_digest, manifest.clone(), oci::OCI_MANIFEST).await.map_err(|e| e.to_string())
    })
    .await?;
    Ok(Attestation {
        subject: subject.manifest.digest.clone(),
        manifest: Blob { media_type: oci::OCI_MANIFEST.into(), digest, size },
    })
}

/// Fetches the manifest an agent reported and its config back from the registry, and checks
/// what a pulling client would: digest, size and media type of the manifest, the platform its
/// config says against the job's, and that every layer unpacks to the config's diff id (each
/// layer once: `facts` remembers what was hashed before).
pub async fn verify(
    registry: &Registry,
    repo: &ImageRef,
    claim: Claim<'_>,
    facts: &LayerFacts,
) -> Result<Child, VerifyError> {
    let Claim { platform, agent, pushed } = claim;
    let blame = |e: CheckError| match e {
        CheckError::Wrong(m) => VerifyError::Wrong(format!("agent {agent}: {m}")),
        CheckError::Unavailable(m) => VerifyError::Unavailable(m),
    };
    let image = images::read_image(registry, repo, &pushed.digest, Some(pushed.size)).await.map_err(blame)?;
    if &image.child.platform != platform {
        return Err(VerifyError::Wrong(format!(
            "agent {agent}: pushed an image whose config says {}, but the job was for {platform}",
            image.child.platform
        )));
    }
    layers::check_layers(registry, repo, &image.manifest, &image.config, facts).await.map_err(blame)?;
    Ok(image.child)
}
