//! Images this agent pushed before, by image id (the digest of their config). An unchanged
//! rebuild yields the same image id: when the target repository still holds its manifest the
//! push is done without exporting anything, and another repository of the same registry gets
//! its blobs mounted and the same manifest bytes. Either way the digest is the one a full
//! push gives.

use archfarm_shared::oci::{self, Blob};
use archfarm_shared::protocol::PushedImage;
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

/// Images pushed before, by image id.
#[derive(Debug, Clone, Default)]
pub struct ImageCache(Arc<Mutex<HashMap<Digest, Pushed>>>);

impl ImageCache {
    /// Forgets every image.
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
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
