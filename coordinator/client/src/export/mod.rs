//! Taking a build's verified images to where `--output` and `--load` ask: an OCI layout tar, a
//! `docker load` archive, a filesystem tree, or the local engine.
//!
//! The agents have already pushed every platform's image by digest into the tags' repository,
//! or handed it to the coordinator when the build names no registry, and the coordinator has
//! verified each there. The client fetches what it needs from there once, streaming each blob to a file in a temporary directory, then writes the
//! outputs from those files. Nothing is held whole in memory, and the digests are the
//! registry's own, so an OCI archive holds exactly the index a push publishes.
//!
//! # Layout
//! - this file: fetching the images ([`fetch`]) and running the outputs ([`write`]).
//! - [`archive`]: the OCI image layout and docker archive tars.
//! - [`handed`]: blobs the agents handed to the coordinator, for a build that names no registry.
//! - [`local`]: each platform's filesystem, its layers applied in order.
//! - [`load`]: loading one platform into the local Docker Engine.

pub mod archive;
pub mod handed;
pub mod load;
pub mod local;
pub mod unpack;

use crate::output::{Dest, Output};
use crate::Connection;
use anyhow::{bail, Context as _};
use archfarm_shared::oci::{self, Blob, Child};
use archfarm_shared::protocol::PlatformResult;
use archfarm_shared::reference::ImageRef;
use archfarm_shared::registry::{self, RegistryClients};
use archfarm_shared::{Digest, Platform};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One platform's image, its blobs in the fetch directory.
#[derive(Debug, Clone)]
pub struct Image {
    /// The platform it was verified to be.
    pub platform: Platform,
    /// Its manifest.
    pub manifest: Blob,
    /// Its config.
    pub config: Blob,
    /// Its layers, in order.
    pub layers: Vec<Blob>,
}

/// A build's images, fetched.
#[derive(Debug)]
pub struct Images {
    dir: tempfile::TempDir,
    /// Each platform, in index order.
    pub images: Vec<Image>,
    /// The OCI index over them, byte for byte what a push publishes.
    pub index: Vec<u8>,
    /// The blobs of their provenance attestations (manifests, configs, statements), which an
    /// OCI archive holds beside the images.
    pub attestation_blobs: Vec<Digest>,
}

impl Images {
    /// Where blob `digest` is on disk.
    pub fn blob(&self, digest: &Digest) -> PathBuf {
        blob_path(self.dir.path(), digest)
    }
}

fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join(digest.as_str().replace(':', "-"))
}

/// Where the verified images are read from.
#[derive(Debug)]
pub enum Source<'a> {
    /// The repository of the build's tags: the agents pushed them there by digest.
    Registry(RegistryClients, ImageRef),
    /// The coordinator: the agents handed them over (a build that names no registry).
    Coordinator(&'a Connection),
}

impl Source<'_> {
    /// Blob `digest` of at most `max` bytes into `path`.
    async fn blob(&self, digest: &Digest, size: Option<u64>, path: &Path) -> anyhow::Result<()> {
        match self {
            Source::Registry(registries, repository) => {
                let reg = registries.get(repository);
                match size {
                    Some(size) => reg.blob_to_file(repository, digest, size, path).await?,
                    None => {
                        let by_digest = repository.with_digest(digest);
                        let bytes = match reg.manifest(&by_digest, oci::IMAGE_MANIFESTS).await {
                            Ok((bytes, _)) => bytes.to_vec(),
                            Err(_) => reg.blob(repository, digest).await?,
                        };
                        tokio::fs::write(path, bytes).await?;
                    }
                }
            }
            Source::Coordinator(conn) => {
                handed::fetch(conn, digest, path, size.unwrap_or(registry::MAX_DOCUMENT_BYTES)).await?;
            }
        }
        Ok(())
    }

    /// A manifest or config (at most [`registry::MAX_DOCUMENT_BYTES`]), kept in `dir` too.
    async fn document(&self, digest: &Digest, dir: &Path, manifest: bool) -> anyhow::Result<Vec<u8>> {
        let path = blob_path(dir, digest);
        match self {
            Source::Registry(registries, repository) => {
                let reg = registries.get(repository);
                let bytes = if manifest {
                    reg.manifest(&repository.with_digest(digest), oci::IMAGE_MANIFESTS).await?.0.to_vec()
                } else {
                    reg.blob(repository, digest).await?
                };
                tokio::fs::write(&path, &bytes).await?;
            }
            Source::Coordinator(_) => self.blob(digest, None, &path).await?,
        }
        let bytes = tokio::fs::read(&path).await?;
        if Digest::of(&bytes) != *digest {
            bail!("{digest}: the bytes read do not match it");
        }
        Ok(bytes)
    }
}

/// Fetches the manifests, configs and (when `layers`) the layers of `platforms` from
/// `source`, each blob once.
pub async fn fetch(source: &Source<'_>, platforms: &[PlatformResult], layers: bool) -> anyhow::Result<Images> {
    let dir = tempfile::tempdir().context("cannot create a directory for the images")?;
    let mut images = Vec::with_capacity(platforms.len());
    for p in platforms {
        let bytes = source.document(&p.digest, dir.path(), true).await?;
        let media_type = oci::media_type_of(&bytes).unwrap_or_else(|| oci::OCI_MANIFEST.to_owned());
        let (config, blobs) = oci::manifest_blobs(&bytes).context("the image manifest")?;
        source.document(&config.digest, dir.path(), false).await?;
        if layers {
            for layer in &blobs {
                let path = blob_path(dir.path(), &layer.digest);
                if !path.exists() {
                    source.blob(&layer.digest, Some(layer.size), &path).await?;
                }
            }
        }
        let manifest = Blob { media_type, digest: p.digest.clone(), size: bytes.len() as u64 };
        images.push(Image { platform: p.platform.clone(), manifest, config, layers: blobs });
    }
    let mut attestation_blobs = Vec::new();
    let attestations: Vec<oci::Attestation> = platforms.iter().filter_map(|p| p.attestation.clone()).collect();
    for a in &attestations {
        let bytes = source.document(&a.manifest.digest, dir.path(), true).await?;
        let (config, layers) = oci::manifest_blobs(&bytes).context("an attestation manifest")?;
        source.document(&config.digest, dir.path(), false).await?;
        for layer in &layers {
            let path = blob_path(dir.path(), &layer.digest);
            if !path.exists() {
                source.blob(&layer.digest, Some(layer.size), &path).await?;
            }
        }
        attestation_blobs.push(a.manifest.digest.clone());
        attestation_blobs.push(config.digest);
        attestation_blobs.extend(layers.into_iter().map(|l| l.digest));
    }
    let children: Vec<Child> =
        images.iter().map(|i| Child { platform: i.platform.clone(), manifest: i.manifest.clone() }).collect();
    let index = oci::index_json_with(&children, &attestations)?;
    tokio::fs::write(blob_path(dir.path(), &Digest::of(&index)), &index).await?;
    Ok(Images { dir, images, index, attestation_blobs })
}

/// Writes every output but `--push` (the coordinator did that) from `platforms`, verified in
/// `source`, under the names `tags`.
pub async fn write(
    outputs: &[Output],
    tags: &[String],
    platforms: &[PlatformResult],
    source: &Source<'_>,
) -> anyhow::Result<()> {
    let outputs: Vec<&Output> = outputs.iter().filter(|o| **o != Output::Push).collect();
    if outputs.is_empty() {
        return Ok(());
    }
    let local_engine = if outputs.contains(&&Output::Load) { Some(load::Engine::connect().await?) } else { None };
    let images = Arc::new(fetch(source, platforms, true).await?);
    for output in outputs {
        let (shared, tags) = (images.clone(), tags.to_vec());
        match output {
            Output::Oci(dest) => {
                let sink = dest.open()?;
                blocking(move || archive::write_oci(&shared, &tags, sink)).await?;
                say(dest, "OCI image layout");
            }
            Output::Docker(dest) => {
                let sink = dest.open()?;
                blocking(move || {
                    let image = one_platform(&shared, "--output type=docker")?;
                    archive::write_docker(&shared, image, &tags, sink)
                })
                .await?;
                say(dest, "docker archive");
            }
            Output::Local(dir) => {
                let target = dir.clone();
                blocking(move || local::write(&shared, &target)).await?;
                eprintln!("wrote each platform's filesystem under {}", dir.display());
            }
            Output::Load => {
                let engine = local_engine.as_ref().context("no local engine")?;
                engine.load(&images, &tags).await?;
            }
            Output::Push => {}
        }
    }
    Ok(())
}

async fn blocking(f: impl FnOnce() -> anyhow::Result<()> + Send + 'static) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(f).await?
}

fn say(dest: &Dest, what: &str) {
    if let Dest::Path(p) = dest {
        eprintln!("wrote the {what} to {}", p.display());
    }
}

/// The only platform of `images`, for an output that holds one.
pub fn one_platform<'a>(images: &'a Images, what: &str) -> anyhow::Result<&'a Image> {
    match images.images.as_slice() {
        [one] => Ok(one),
        many => bail!(
            "{what} holds one platform, and this build has {} ({}): build one --platform, or use \
             --output type=oci for all of them",
            many.len(),
            many.iter().map(|i| i.platform.to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}
