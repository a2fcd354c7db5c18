//! Pushing a built image into the target repository by digest, with no tag: the image is
//! exported from the engine (`docker save`), each layer gzip-compressed and uploaded as a blob,
//! then an OCI manifest over the config and layers is pushed under its own digest.
//!
//! Like `docker push`, the agent remembers which compressed blob it made of each uncompressed
//! layer: a layer the repository already holds (a base layer, a cached step) is neither
//! compressed nor uploaded again.

use archfarm_shared::oci::{self, Blob};
use archfarm_shared::protocol::PushedImage;
use archfarm_shared::reference::ImageRef;
use archfarm_shared::registry::{self, RegistryClients};
use archfarm_shared::Digest;
use bytes::Bytes;
use flate2::write::GzEncoder;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Deserialize)]
struct SaveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// An exported image, ready to push: config bytes and its uncompressed layers.
#[derive(Debug)]
pub struct Prepared {
    /// The image config, byte for byte as the engine holds it (its digest is the image id).
    pub config: Bytes,
    /// Layers in order, unpacked from the export.
    pub layers: Vec<Layer>,
}

/// One uncompressed layer of an export.
#[derive(Debug)]
pub struct Layer {
    /// Its tar file in the work directory.
    pub path: PathBuf,
    /// The digest of its uncompressed bytes (its diff id).
    pub diff_id: Digest,
}

/// Compressed descriptors of layers this agent pushed, by the digest of their uncompressed bytes.
#[derive(Debug, Clone, Default)]
pub struct LayerCache(Arc<Mutex<HashMap<Digest, Blob>>>);

/// Entries the cache holds before it starts again (a descriptor is about 200 bytes).
const LAYER_CACHE_ENTRIES: usize = 16_384;

impl LayerCache {
    fn get(&self, diff_id: &Digest) -> Option<Blob> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(diff_id).cloned()
    }

    fn insert(&self, diff_id: Digest, blob: Blob) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= LAYER_CACHE_ENTRIES {
            map.clear();
        }
        map.insert(diff_id, blob);
    }
}

/// gzip-compresses a layer file.
pub fn compress(path: &Path) -> Result<(Blob, Bytes), String> {
    let mut raw = std::fs::File::open(path).map_err(|e| format!("reading layer {}: {e}", path.display()))?;
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::copy(&mut raw, &mut gz).map_err(|e| format!("compressing layer {}: {e}", path.display()))?;
    let bytes = gz.finish().map_err(|e| format!("compressing layer {}: {e}", path.display()))?;
    let blob = Blob { media_type: oci::OCI_LAYER_GZIP.into(), digest: Digest::of(&bytes), size: bytes.len() as u64 };
    Ok((blob, Bytes::from(bytes)))
}

fn digest_file(path: &Path) -> Result<Digest, String> {
    use sha2::Digest as _;
    let mut file = std::fs::File::open(path).map_err(|e| format!("reading layer {}: {e}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| format!("reading layer {}: {e}", path.display()))?;
    Ok(Digest::from_sha256(hasher.finalize().into()))
}

/// Reads a `docker save` tarball (legacy layout; newer engines write the same manifest.json),
/// unpacked under `workdir`, which must outlive the push.
pub fn prepare(saved: &Path, workdir: &Path) -> Result<Prepared, String> {
    let file = std::fs::File::open(saved).map_err(|e| format!("opening the exported image: {e}"))?;
    let dir = workdir.join("unpacked");
    tar::Archive::new(file).unpack(&dir).map_err(|e| format!("unpacking the exported image: {e}"))?;
    let manifest =
        std::fs::read(dir.join("manifest.json")).map_err(|e| format!("exported image has no manifest.json: {e}"))?;
    let entries: Vec<SaveEntry> =
        serde_json::from_slice(&manifest).map_err(|e| format!("exported image manifest.json: {e}"))?;
    let [entry] = entries.as_slice() else {
        return Err(format!("exported image holds {} images, expected one", entries.len()));
    };
    let inside = |rel: &str| {
        if rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
            return Err(format!("exported image names an unsafe path {rel:?}"));
        }
        Ok(dir.join(rel))
    };
    let config = std::fs::read(inside(&entry.config)?).map_err(|e| format!("reading the image config: {e}"))?;
    let mut layers = Vec::with_capacity(entry.layers.len());
    for rel in &entry.layers {
        let path = inside(rel)?;
        layers.push(Layer { diff_id: digest_file(&path)?, path });
    }
    Ok(Prepared { config: Bytes::from(config), layers })
}

/// Pushes the prepared image into `repository` (`registry/name`) by digest. Layers the
/// repository holds already (by `cache`) are not compressed or sent again.
pub async fn push(
    repository: &str,
    image: &Prepared,
    cache: &LayerCache,
    registries: &RegistryClients,
) -> Result<PushedImage, String> {
    let repo: ImageRef = registry::parse_reference(&format!("{repository}:latest")).map_err(|e| e.to_string())?;
    let reg = registries.get(&repo);
    reg.authorize_push(&repo).await.map_err(|e| e.to_string())?;
    let config =
        Blob { media_type: oci::OCI_CONFIG.into(), digest: Digest::of(&image.config), size: image.config.len() as u64 };
    let mut descriptors: Vec<Blob> = Vec::with_capacity(image.layers.len());
    for layer in &image.layers {
        if let Some(blob) = cache.get(&layer.diff_id) {
            if reg.has_blob(&repo, &blob.digest).await {
                descriptors.push(blob);
                continue;
            }
        }
        let path = layer.path.clone();
        let (blob, bytes) =
            tokio::task::spawn_blocking(move || compress(&path)).await.map_err(|e| format!("compressing: {e}"))??;
        reg.push_blob(&repo, bytes, &blob.digest).await.map_err(|e| e.to_string())?;
        cache.insert(layer.diff_id.clone(), blob.clone());
        descriptors.push(blob);
    }
    reg.push_blob(&repo, image.config.clone(), &config.digest).await.map_err(|e| e.to_string())?;
    let manifest = oci::manifest_json(&config, &descriptors).map_err(|e| e.to_string())?;
    let digest = Digest::of(&manifest);
    let size = manifest.len() as u64;
    let by_digest = repo.with_digest(&digest);
    reg.push_manifest(&by_digest, manifest.into(), oci::OCI_MANIFEST).await.map_err(|e| e.to_string())?;
    Ok(PushedImage { digest, media_type: oci::OCI_MANIFEST.into(), size })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(tar: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, path, data).unwrap();
    }

    #[test]
    fn layer_cache_remembers_by_uncompressed_digest_and_stays_bounded() {
        let cache = LayerCache::default();
        let blob =
            |n: u64| Blob { media_type: oci::OCI_LAYER_GZIP.into(), digest: Digest::of(&n.to_be_bytes()), size: n };
        cache.insert(Digest::of(b"raw"), blob(1));
        assert_eq!(cache.get(&Digest::of(b"raw")), Some(blob(1)));
        assert_eq!(cache.get(&Digest::of(b"other")), None);
        for n in 0..LAYER_CACHE_ENTRIES as u64 {
            cache.insert(Digest::of(&n.to_be_bytes()), blob(n));
        }
        assert!(cache.0.lock().unwrap().len() <= LAYER_CACHE_ENTRIES);
    }

    #[test]
    fn reads_a_docker_save_tarball_and_compresses_layers() {
        let dir = tempfile::tempdir().unwrap();
        let config = br#"{"architecture":"arm64","os":"linux"}"#;
        let mut layer = tar::Builder::new(Vec::new());
        add(&mut layer, "bin/busybox", b"\x7fELF");
        let layer = layer.into_inner().unwrap();
        let mut saved = tar::Builder::new(Vec::new());
        add(&mut saved, "abc.json", config);
        add(&mut saved, "l1/layer.tar", &layer);
        add(&mut saved, "manifest.json", br#"[{"Config":"abc.json","RepoTags":["x:y"],"Layers":["l1/layer.tar"]}]"#);
        let path = dir.path().join("saved.tar");
        std::fs::write(&path, saved.into_inner().unwrap()).unwrap();

        let p = prepare(&path, dir.path()).unwrap();
        assert_eq!(&p.config[..], &config[..]);
        assert_eq!(p.layers.len(), 1);
        assert_eq!(p.layers[0].diff_id, Digest::of(&layer), "the diff id is the uncompressed layer's digest");
        let (blob, gz) = compress(&p.layers[0].path).unwrap();
        assert_eq!(blob.digest, Digest::of(&gz));
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz.as_ref()), &mut plain).unwrap();
        assert_eq!(plain, layer, "the compressed layer decompresses to the exported one");
    }

    #[test]
    fn refuses_paths_outside_the_export() {
        let dir = tempfile::tempdir().unwrap();
        let mut saved = tar::Builder::new(Vec::new());
        add(&mut saved, "manifest.json", br#"[{"Config":"../../etc/passwd","Layers":[]}]"#);
        let path = dir.path().join("saved.tar");
        std::fs::write(&path, saved.into_inner().unwrap()).unwrap();
        assert!(prepare(&path, dir.path()).unwrap_err().contains("unsafe path"));
    }
}
