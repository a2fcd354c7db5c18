//! Images this agent pushed before, by image id (the digest of their config). An unchanged
//! rebuild yields the same image id: when the target repository still holds its manifest the
//! push is done without exporting anything, and another repository of the same registry gets
//! its blobs mounted and the same manifest bytes. Either way the digest is the one a full
//! push gives.
//!
//! Each image is also found by what made it ([`build_key`]: the context, the job's options and
//! the digest of every image the Dockerfile reads), so a build whose inputs are all the same as
//! an earlier one's is not run again: its image is pushed again as above. That is what a fully
//! cached BuildKit build makes, without the build (on the containerd store BuildKit exports and
//! pushes even an unchanged image). `--no-cache` and `--pull` always build.

use archfarm_shared::oci::{self, Blob};
use archfarm_shared::protocol::{JobSpec, PushedImage};
use archfarm_shared::reference::ImageRef;
use archfarm_shared::registry::{self, Registry};
use archfarm_shared::Digest;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Images remembered before the cache starts again (a few KiB each).
const IMAGES: usize = 1024;

/// What a push of one image left behind.
#[derive(Debug, Clone)]
struct Pushed {
    manifest: Bytes,
    blobs: Vec<Blob>,
    repositories: Vec<String>,
}

/// Images pushed before, by image id, and the image id of each build key.
#[derive(Debug, Clone, Default)]
pub struct ImageCache(Arc<Mutex<HashMap<Digest, Pushed>>>, Arc<Mutex<HashMap<Digest, Digest>>>);

/// Whether `spec` may be answered with an earlier build's image at all: not a job that must
/// build, for `--no-cache`, `--pull` (the engine is to fetch its bases again), a registry cache
/// of every stage to export (a result of its own, which a build not run would not write again),
/// native tests (they need the image in the engine), or no registry to push to.
pub fn may_reuse(spec: &JobSpec) -> bool {
    !(spec.repository.is_empty()
        || spec.no_cache
        || spec.pull
        || !spec.tests.is_empty()
        || spec.test_target.is_some()
        || spec.cache_to_max.is_some())
}

/// What decides the image a job builds: its context, its options, and every image its
/// Dockerfile reads as resolved now (`pinned`). `None` for a job that must build ([`may_reuse`]).
pub fn build_key(spec: &JobSpec, pinned: &[(String, Digest)]) -> Option<Digest> {
    // Every field is named: a new one must be sorted into "decides the image" or not here.
    let JobSpec {
        job: _,
        build: _,
        platform,
        context,
        dockerfile,
        build_args,
        target,
        labels,
        attempt: _,
        provenance: _,
        read_scopes: _,
        // These decide whether a job may be reused at all.
        repository: _,
        no_cache: _,
        pull: _,
        tests: _,
        test_target: _,
        cache_to_max: _,
        cache_from,
        inline_cache,
    } = spec;
    if !may_reuse(spec) {
        return None;
    }
    let inputs = serde_json::json!({
        "key": "archfarm build key 1",
        "platform": platform.to_string(),
        "context": context,
        "dockerfile": dockerfile,
        "build_args": build_args,
        "target": target,
        "labels": labels,
        "cache_from": cache_from,
        "inline_cache": inline_cache,
        "images": pinned,
    });
    Some(Digest::of(inputs.to_string().as_bytes()))
}

impl ImageCache {
    /// Forgets every image.
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.1.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Records that the build of `key` made image `id`.
    pub fn built(&self, key: &Digest, id: &Digest) {
        let mut map = self.1.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= IMAGES && !map.contains_key(key) {
            map.clear();
        }
        map.insert(key.clone(), id.clone());
    }

    /// The image the build of `key` made before, if this agent pushed it.
    pub fn made_by(&self, key: &Digest) -> Option<Digest> {
        let id = self.1.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()?;
        self.get(&id).is_some().then_some(id)
    }

    /// Records that `repository` (`registry/name`) holds the image `id`: its manifest bytes
    /// over `blobs` (config first, then layers).
    pub fn insert(&self, id: &Digest, manifest: Bytes, blobs: Vec<Blob>, repository: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= IMAGES && !map.contains_key(id) {
            map.clear();
        }
        let entry = map.entry(id.clone()).or_insert_with(|| Pushed { manifest, blobs, repositories: vec![] });
        entry.repositories.retain(|r| r != repository);
        entry.repositories.push(repository.to_owned());
    }

    fn get(&self, id: &Digest) -> Option<Pushed> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    /// Pushes image `id` into `repo` from what an earlier push left, without an export: `None`
    /// when this agent never pushed it, or the registry no longer holds what it needs.
    pub async fn push_again(
        &self,
        reg: &Registry,
        repo: &ImageRef,
        id: &Digest,
    ) -> Option<(PushedImage, &'static str)> {
        let pushed = self.get(id)?;
        let digest = Digest::of(&pushed.manifest);
        let image = PushedImage {
            digest: digest.clone(),
            media_type: oci::OCI_MANIFEST.into(),
            size: pushed.manifest.len() as u64,
            bases: vec![],
        };
        let by_digest = repo.with_digest(&digest);
        if reg.manifest(&by_digest, &[oci::OCI_MANIFEST]).await.is_ok() {
            return Some((image, "unchanged: the repository holds it already"));
        }
        for blob in &pushed.blobs {
            if reg.has_blob(repo, &blob.digest).await {
                continue;
            }
            if !mount_from_any(reg, repo, &pushed.repositories, &blob.digest).await {
                return None;
            }
        }
        reg.push_manifest(&by_digest, pushed.manifest.clone(), oci::OCI_MANIFEST).await.ok()?;
        self.insert(id, pushed.manifest, pushed.blobs, &repo.name());
        Some((image, "mounted from another repository"))
    }
}

/// Mounts `digest` into `repo` from the first of `holders` (latest first, same registry only)
/// that lets it; false when none does.
pub async fn mount_from_any(reg: &Registry, repo: &ImageRef, holders: &[String], digest: &Digest) -> bool {
    for holder in holders.iter().rev().filter(|h| **h != repo.name()) {
        // Mounts work within one registry only.
        let Some(from) = registry::parse_reference(holder).ok().filter(|f| f.registry() == repo.registry()) else {
            continue;
        };
        match reg.mount_blob(repo, &from, digest).await {
            Ok(()) => return true,
            Err(e) => tracing::debug!("mounting {digest} from {holder} failed: {e}"),
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_key_changes_with_every_input_and_a_build_that_must_run_has_none() {
        let spec = crate::fakes::job(b"context", "r:5000/app");
        let pinned = vec![("alpine:3".to_owned(), Digest::of(b"alpine index"))];
        let key = build_key(&spec, &pinned).unwrap();
        let other_job = JobSpec {
            job: archfarm_shared::JobId::random(),
            attempt: 2,
            repository: "r:5000/b".into(),
            ..spec.clone()
        };
        assert_eq!(build_key(&other_job, &pinned), Some(key.clone()), "where it goes does not change what it is");
        let changed = [
            JobSpec { context: Digest::of(b"other context"), ..spec.clone() },
            JobSpec { platform: "linux/arm64".parse().unwrap(), ..spec.clone() },
            JobSpec { build_args: vec![("V".into(), "2".into())], ..spec.clone() },
            JobSpec { target: Some("tools".into()), ..spec.clone() },
            JobSpec { labels: vec![("l".into(), "1".into())], ..spec.clone() },
            JobSpec { dockerfile: "other.Dockerfile".into(), ..spec.clone() },
            JobSpec { cache_from: vec!["r:5000/app:cache".into()], ..spec.clone() },
        ];
        assert_eq!(build_key(&JobSpec { cache_to_max: Some("r:5000/c:x".into()), ..spec.clone() }, &pinned), None);
        for other in &changed {
            assert_ne!(build_key(other, &pinned).unwrap(), key, "{other:?}");
        }
        let moved = vec![("alpine:3".to_owned(), Digest::of(b"a newer alpine"))];
        assert_ne!(build_key(&spec, &moved).unwrap(), key, "a base whose tag moved builds again");
        assert_eq!(build_key(&JobSpec { no_cache: true, ..spec.clone() }, &pinned), None);
        assert_eq!(build_key(&JobSpec { pull: true, ..spec.clone() }, &pinned), None);
        assert_eq!(build_key(&JobSpec { tests: vec![vec!["true".into()]], ..spec.clone() }, &pinned), None);
    }

    #[test]
    fn a_build_is_remembered_only_while_its_image_is() {
        let cache = ImageCache::default();
        let (key, id) = (Digest::of(b"key"), Digest::of(b"config"));
        cache.built(&key, &id);
        assert_eq!(cache.made_by(&key), None, "an image this agent does not hold the manifest of");
        cache.insert(&id, Bytes::from_static(b"{}"), vec![], "r:5000/a");
        assert_eq!(cache.made_by(&key), Some(id));
        cache.clear();
        assert_eq!(cache.made_by(&key), None);
    }

    #[test]
    fn images_are_remembered_with_every_repository_that_holds_them() {
        let cache = ImageCache::default();
        let id = Digest::of(b"config");
        let blob = Blob { media_type: oci::OCI_CONFIG.into(), digest: id.clone(), size: 6 };
        cache.insert(&id, Bytes::from_static(b"{}"), vec![blob.clone()], "r:5000/a");
        cache.insert(&id, Bytes::from_static(b"{}"), vec![blob], "r:5000/b");
        cache.insert(&id, Bytes::from_static(b"{}"), vec![], "r:5000/a");
        let pushed = cache.get(&id).unwrap();
        assert_eq!(pushed.repositories, ["r:5000/b", "r:5000/a"]);
        assert_eq!(pushed.blobs.len(), 1, "the first push's blobs stay");
        assert!(cache.get(&Digest::of(b"other")).is_none());
    }
}
