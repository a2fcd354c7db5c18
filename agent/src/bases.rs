//! What the agent learns of a build's base images, so their layers are mounted, not pushed
//! again. An image built `FROM` a registry image holds that image's layers unchanged; the base's
//! manifest and config in the registry say which compressed blob each of them is. The agent
//! reads the `FROM` lines of the Dockerfile, fetches each base's manifest and config for the
//! job's platform, and seeds its layer cache with them: the push then finds the base layers
//! already in the target repository, or mounts them from the base's repository, like
//! `docker push` does with the layers it pulled. Without this, a 200 MB base is recompressed
//! (to different bytes) and uploaded on every new repository.

use crate::push::LayerCache;
use archfarm_shared::dockerfile::{self, ImageUse};
use archfarm_shared::layers;
use archfarm_shared::oci::{self, Blob};
use archfarm_shared::protocol::JobSpec;
use archfarm_shared::provenance::ResolvedBase;
use archfarm_shared::registry::{self, RegistryClients};
use archfarm_shared::{Digest, Platform};
use bytes::Bytes;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::OnceCell;
use tracing::{info, warn};

/// Base images looked up per build, at most.
const MAX_BASES: usize = 8;
/// How long the agent asks a registry about one base image before it gives up on it.
const BASE_LOOKUP: Duration = Duration::from_secs(20);
/// How long the agent spends learning one base image's layers, checking each by its bytes
/// included (each fetch has its own deadline, growing with the layer's size).
const BASE_SEEDING: Duration = Duration::from_secs(120);

/// The registry images a Dockerfile's stages start from, in order and without repeats: not
/// `scratch`, not an earlier stage, and not one whose name still holds a variable after the
/// build arguments and the global `ARG` defaults are put in.
pub fn base_images(uses: &[ImageUse]) -> Vec<String> {
    let mut bases = Vec::<String>::new();
    for used in uses.iter().filter(|u| u.how == "FROM" && !u.image.contains('$')) {
        if !bases.contains(&used.image) {
            bases.push(used.image.clone());
        }
    }
    bases.truncate(MAX_BASES);
    bases
}

#[derive(Debug, Deserialize, Clone)]
struct Manifest {
    #[serde(default)]
    manifests: Vec<Child>,
    config: Option<Blob>,
    #[serde(default)]
    layers: Vec<Blob>,
}

#[derive(Debug, Deserialize, Clone)]
struct Child {
    digest: Digest,
    platform: Option<ChildPlatform>,
}

#[derive(Debug, Deserialize, Clone)]
struct ChildPlatform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

/// The media type to name a base layer by in an OCI manifest: a Docker gzip layer is the same
/// bytes as an OCI gzip layer. Other kinds (zstd, foreign layers) are not seeded: the agent's
/// pushes are gzip.
fn layer_media_type(media_type: &str) -> Option<&'static str> {
    match media_type {
        oci::DOCKER_LAYER_GZIP | oci::OCI_LAYER_GZIP => Some(oci::OCI_LAYER_GZIP),
        _ => None,
    }
}

/// A job's base images, each fact learned once: the Dockerfile is read from the context when
/// first asked, and each base's manifest is fetched once, whichever of the provenance
/// ([`JobBases::resolve`]) and the layer cache ([`JobBases::seed`]) asks first.
#[derive(Debug)]
pub struct JobBases {
    context: PathBuf,
    dockerfile: String,
    build_args: Vec<(String, String)>,
    text: OnceCell<Option<String>>,
    uses: OnceCell<Vec<ImageUse>>,
    images: OnceCell<Vec<String>>,
    /// Each base's manifest as its tag resolved, by the name the Dockerfile gives it.
    manifests: Mutex<HashMap<String, (Bytes, Digest)>>,
    /// Each base's manifest for the job's platform and its config, read once for its `ONBUILD`
    /// triggers and its layers alike.
    configs: Mutex<HashMap<String, (Manifest, Vec<u8>)>>,
}

impl JobBases {
    /// The bases of `spec`, built from the context tarball at `context`.
    pub fn new(context: &Path, spec: &JobSpec) -> Self {
        JobBases {
            context: context.to_owned(),
            dockerfile: spec.dockerfile.clone(),
            build_args: spec.build_args.clone(),
            text: OnceCell::new(),
            uses: OnceCell::new(),
            images: OnceCell::new(),
            manifests: Mutex::default(),
            configs: Mutex::default(),
        }
    }

    /// The Dockerfile's text, read from the context once; none when it cannot be read.
    async fn text(&self) -> Option<&str> {
        self.text
            .get_or_init(|| async {
                let (path, name) = (self.context.clone(), self.dockerfile.clone());
                tokio::task::spawn_blocking(move || dockerfile::read_dockerfile(&path, &name)).await.ok().flatten()
            })
            .await
            .as_deref()
    }

    /// Every image the Dockerfile reads ([`dockerfile::references`]); none when it cannot be
    /// read (the build then fails on it).
    pub async fn uses(&self) -> &[ImageUse] {
        self.uses
            .get_or_init(|| async {
                match self.text().await {
                    Some(text) => dockerfile::references(text, &self.build_args),
                    None => vec![],
                }
            })
            .await
    }

    /// Every image the Dockerfile reads (bases, `COPY --from`, mounts, the frontend), each with
    /// the digest its name resolves to now, in order: what, beside the context and the job's
    /// options, decides what the build makes. `None` when that is not known from its inputs: the
    /// Dockerfile cannot be read, names an image through a variable or one that does not
    /// resolve, `ADD`s a remote source, or a base has `ONBUILD` triggers; or when the lookups
    /// take over [`BASE_LOOKUP`] in all.
    pub async fn pinned(&self, registries: &RegistryClients, platform: &Platform) -> Option<Vec<(String, Digest)>> {
        tokio::time::timeout(BASE_LOOKUP, self.pin(registries, platform)).await.ok()?
    }

    async fn pin(&self, registries: &RegistryClients, platform: &Platform) -> Option<Vec<(String, Digest)>> {
        if dockerfile::remote_source(self.text().await?).is_some() {
            return None;
        }
        // A base's ONBUILD triggers run as part of this build, and may read anything.
        if self.triggers(registries, platform).await.ok()?.iter().any(|(_, t)| !t.is_empty()) {
            return None;
        }
        let mut out: Vec<(String, Digest)> = Vec::new();
        for used in self.uses().await {
            if used.image.contains('$') {
                return None;
            }
            if out.iter().any(|(image, _)| *image == used.image) {
                continue;
            }
            let digest = self.digest_of(registries, &used.image).await.ok()?;
            out.push((used.image.clone(), digest));
        }
        Some(out)
    }

    /// The registry images the Dockerfile's stages start from; none when it cannot be read.
    pub async fn images(&self) -> &[String] {
        self.images.get_or_init(|| async { base_images(self.uses().await) }).await
    }

    /// `image`'s manifest as its tag resolves now (an index or a manifest), and its digest.
    async fn manifest(&self, registries: &RegistryClients, image: &str) -> Result<(Bytes, Digest), String> {
        if let Some(known) = self.manifests.lock().unwrap_or_else(|e| e.into_inner()).get(image) {
            return Ok(known.clone());
        }
        let reference = registry::parse_reference(image).map_err(|e| e.to_string())?;
        let reg = registries.get(&reference);
        let fetched = reg.manifest(&reference, oci::ANY_MANIFEST).await.map_err(|e| e.to_string())?;
        self.manifests.lock().unwrap_or_else(|e| e.into_inner()).insert(image.to_owned(), fetched.clone());
        Ok(fetched)
    }

    /// The base images as their registries resolve them now, for the build's provenance. Best
    /// effort, within [`BASE_LOOKUP`] each: one that cannot be resolved is left out (and said).
    pub async fn resolve(&self, registries: &RegistryClients) -> Vec<ResolvedBase> {
        let mut out = Vec::new();
        for image in self.images().await {
            match tokio::time::timeout(BASE_LOOKUP, self.digest_of(registries, image)).await {
                Ok(Ok(digest)) => out.push(ResolvedBase { reference: image.clone(), digest }),
                Ok(Err(e)) => info!(image, "cannot resolve a base image for the provenance: {e}"),
                Err(_) => info!(image, "no answer about a base image within {} s", BASE_LOOKUP.as_secs()),
            }
        }
        out
    }

    /// The digest `image`'s tag resolves to: what a build's provenance records of its base.
    async fn digest_of(&self, registries: &RegistryClients, image: &str) -> Result<Digest, String> {
        let reference = registry::parse_reference(image).map_err(|e| e.to_string())?;
        if let Some(pinned) = reference.digest() {
            return Ok(pinned.clone());
        }
        Ok(self.manifest(registries, image).await?.1)
    }

    /// `image`'s manifest for `platform` (always the job's) and its config's bytes, fetched once.
    async fn config_of(
        &self,
        registries: &RegistryClients,
        image: &str,
        platform: &Platform,
    ) -> Result<(Manifest, Vec<u8>), String> {
        if let Some(known) = self.configs.lock().unwrap_or_else(|e| e.into_inner()).get(image) {
            return Ok(known.clone());
        }
        let reference = registry::parse_reference(image).map_err(|e| e.to_string())?;
        let reg = registries.get(&reference);
        let (bytes, _) = self.manifest(registries, image).await?;
        let mut manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| format!("manifest of {image}: {e}"))?;
        if !manifest.manifests.is_empty() {
            let child = manifest
                .manifests
                .iter()
                .find(|c| c.platform.as_ref().is_some_and(|p| matches(p, platform)))
                .ok_or_else(|| format!("{image} has no child for {platform}"))?;
            let (bytes, _) = reg
                .manifest(&reference.with_digest(&child.digest), oci::IMAGE_MANIFESTS)
                .await
                .map_err(|e| e.to_string())?;
            manifest = serde_json::from_slice(&bytes).map_err(|e| format!("manifest of {image}: {e}"))?;
        }
        let config = manifest.config.clone().ok_or_else(|| format!("{image}: manifest without a config"))?;
        let config = reg.blob(&reference, &config.digest).await.map_err(|e| e.to_string())?;
        let known = (manifest, config);
        self.configs.lock().unwrap_or_else(|e| e.into_inner()).insert(image.to_owned(), known.clone());
        Ok(known)
    }

    /// The `ONBUILD` triggers of each of the Dockerfile's bases, by the `FROM` that names it.
    /// `Err` when a base's config cannot be read.
    async fn triggers(
        &self,
        registries: &RegistryClients,
        platform: &Platform,
    ) -> Result<Vec<(ImageUse, Vec<String>)>, String> {
        #[derive(Deserialize)]
        struct Config {
            #[serde(default)]
            config: Option<Inner>,
        }
        #[derive(Deserialize)]
        struct Inner {
            #[serde(rename = "OnBuild", default)]
            on_build: Option<Vec<String>>,
        }
        let platform = archfarm_shared::capabilities::base(platform);
        let mut out = Vec::new();
        let froms: Vec<ImageUse> =
            self.uses().await.iter().filter(|u| u.how == "FROM" && !u.image.contains('$')).cloned().collect();
        for from in froms {
            let cannot = |e: String| {
                format!("cannot read the config of the base image {} to check its ONBUILD triggers: {e}", from.image)
            };
            let reading = self.config_of(registries, &from.image, &platform);
            let (_, config) = tokio::time::timeout(BASE_LOOKUP, reading)
                .await
                .map_err(|_| cannot(format!("no answer within {} s", BASE_LOOKUP.as_secs())))?
                .map_err(cannot)?;
            let config: Config =
                serde_json::from_slice(&config).map_err(|e| format!("config of {}: {e}", from.image))?;
            out.push((from, config.config.and_then(|c| c.on_build).unwrap_or_default()));
        }
        Ok(out)
    }

    /// The images the `ONBUILD` triggers of the Dockerfile's bases read (a frontend runs them as
    /// if they were written after the `FROM`), each named at the line of its `FROM`. `Err` when
    /// a base cannot be read: then its triggers cannot be told.
    pub async fn onbuild_uses(
        &self,
        registries: &RegistryClients,
        platform: &Platform,
    ) -> Result<Vec<ImageUse>, String> {
        let mut out = Vec::new();
        for (from, triggers) in self.triggers(registries, platform).await? {
            for used in dockerfile::references(&triggers.join("\n"), &self.build_args) {
                out.push(ImageUse { image: used.image, how: "ONBUILD of a base image", line: from.line });
            }
        }
        Ok(out)
    }

    /// Teaches `cache` the layers of `wanted` (the built image's diff ids) that a base image
    /// for `platform` holds in a repository of `registry`, the registry the image is pushed to.
    /// A base's config and manifest only claim which blob unpacks to which diff id: each claim
    /// is checked by unpacking and hashing the blob before the cache, which every later job of
    /// every tenant trusts, learns it. Best effort, within [`BASE_SEEDING`] each base: what it
    /// cannot learn is compressed and uploaded.
    pub async fn seed(
        &self,
        cache: &LayerCache,
        registries: &RegistryClients,
        platform: &Platform,
        wanted: &[Digest],
        registry: &str,
    ) {
        // A base image's children name plain linux/amd64, also for a linux/amd64/v3 build.
        let platform = archfarm_shared::capabilities::base(platform);
        for image in self.images().await {
            let seeding = self.seed_one(cache, registries, image, &platform, wanted, registry);
            match tokio::time::timeout(BASE_SEEDING, seeding).await {
                Ok(Ok(n)) => info!(image, layers = n, "learned the layers of a base image"),
                Ok(Err(e)) => info!(image, "cannot learn the layers of a base image; they are uploaded if new: {e}"),
                Err(_) => {
                    info!(image, "the layers of a base image were not learned within {} s", BASE_SEEDING.as_secs())
                }
            }
        }
    }

    /// Seeds `cache` with the checked layers of `image`: returns how many it learned.
    async fn seed_one(
        &self,
        cache: &LayerCache,
        registries: &RegistryClients,
        image: &str,
        platform: &Platform,
        wanted: &[Digest],
        registry: &str,
    ) -> Result<usize, String> {
        let reference = registry::parse_reference(image).map_err(|e| e.to_string())?;
        if reference.registry() != registry {
            return Ok(0);
        }
        let reg = registries.get(&reference);
        let (manifest, config) = self.config_of(registries, image, platform).await?;
        let diff_ids = layers::diff_ids(&config).ok_or_else(|| format!("{image}: config without diff ids"))?;
        if diff_ids.len() != manifest.layers.len() {
            return Err(format!("{image}: {} layers but {} diff ids", manifest.layers.len(), diff_ids.len()));
        }
        let repository = reference.name();
        let mut learned = 0;
        for (claimed, layer) in diff_ids.into_iter().zip(manifest.layers) {
            if !wanted.contains(&claimed) || cache.get(&claimed).is_some() {
                continue;
            }
            let Some(media_type) = layer_media_type(&layer.media_type) else { continue };
            let blob = Blob { media_type: media_type.into(), digest: layer.digest, size: layer.size };
            match reg.layer_diff_id(&reference, &blob).await.map_err(|e| e.to_string())? {
                Ok(diff_id) if diff_id == claimed => {
                    cache.insert(claimed, blob, &repository);
                    learned += 1;
                }
                Ok(diff_id) => warn!(
                    image,
                    "the base image says its layer {} is {claimed}, but it unpacks to {diff_id}: not used", blob.digest
                ),
                Err(e) => warn!(image, "a layer of the base image is not what it says, not used: {e}"),
            }
        }
        Ok(learned)
    }
}

fn matches(p: &ChildPlatform, platform: &Platform) -> bool {
    p.os == platform.os()
        && p.architecture == platform.arch()
        && (platform.variant().is_none() || p.variant.as_deref() == platform.variant())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes;

    fn args(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn bases_of(dockerfile: &str, build_args: &[(String, String)]) -> Vec<String> {
        base_images(&dockerfile::references(dockerfile, build_args))
    }

    #[test]
    fn finds_registry_bases_and_skips_scratch_and_stages() {
        let dockerfile = "# syntax note\nARG BASE=reg.example/team/base:1\nFROM --platform=$BUILDPLATFORM golang:1.22 AS build\nRUN make\nFROM ${BASE} AS final\nCOPY --from=build /out /out\nFROM build AS again\nFROM scratch\nFROM $UNKNOWN\nFROM golang:1.22\n";
        assert_eq!(bases_of(dockerfile, &[]), ["golang:1.22", "reg.example/team/base:1"]);
        assert_eq!(
            bases_of(dockerfile, &args(&[("BASE", "127.0.0.1:5000/other:2")])),
            ["golang:1.22", "127.0.0.1:5000/other:2"]
        );
    }

    #[test]
    fn joins_continued_lines_and_ignores_case() {
        let dockerfile = "from \\\n  alpine:3.20 \\\n  as base\nFrom base\n";
        assert_eq!(bases_of(dockerfile, &[]), ["alpine:3.20"]);
    }

    #[test]
    fn docker_gzip_layers_are_named_as_oci_gzip_and_foreign_ones_are_skipped() {
        assert_eq!(layer_media_type(oci::DOCKER_LAYER_GZIP), Some(oci::OCI_LAYER_GZIP));
        assert_eq!(layer_media_type("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"), None);
    }

    #[tokio::test]
    async fn a_jobs_dockerfile_is_read_once_and_a_pinned_base_needs_no_registry() {
        let dir = tempfile::tempdir().unwrap();
        let context = dir.path().join("context.tar");
        let pinned = format!("reg.example/pinned@{}", Digest::of(b"index"));
        let dockerfile = format!("ARG BASE=alpine:3.20\nFROM ${{BASE}} AS one\nFROM {pinned}\n");
        std::fs::write(&context, fakes::tarball(&[("Dockerfile", dockerfile.as_bytes())])).unwrap();
        let mut spec = fakes::job(b"", "r:5000/app");
        spec.build_args = args(&[("BASE", &pinned)]);
        let bases = JobBases::new(&context, &spec);
        assert_eq!(bases.images().await, std::slice::from_ref(&pinned));
        std::fs::remove_file(&context).unwrap();
        assert_eq!(
            bases.images().await,
            std::slice::from_ref(&pinned),
            "asked again, it does not read the context again"
        );
        let resolved = bases.resolve(&RegistryClients::new(vec![])).await;
        assert_eq!(resolved, [ResolvedBase { reference: pinned, digest: Digest::of(b"index") }]);
    }
}
