//! Pushing a built image into the target repository by digest, with no tag: the image is
//! exported from the engine (`docker save`), each layer gzip-compressed and uploaded as a blob,
//! then an OCI manifest over the config and layers is pushed under its own digest.

use archfarm_shared::oci::{self, Blob};
use archfarm_shared::protocol::PushedImage;
use archfarm_shared::registry::{self, ImageReference, Registry};
use archfarm_shared::Digest;
use bytes::Bytes;
use flate2::write::GzEncoder;
use serde::Deserialize;
use std::path::Path;

#[derive(Deserialize)]
struct SaveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// An exported image, ready to push: config bytes and compressed layers.
#[derive(Debug)]
pub struct Prepared {
    /// The image config, byte for byte as the engine holds it (its digest is the image id).
    pub config: Bytes,
    /// gzip-compressed layers with their descriptors.
    pub layers: Vec<(Blob, Bytes)>,
}

/// Reads a `docker save` tarball (legacy layout; newer engines write the same manifest.json)
/// and compresses its layers.
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
        let mut raw = std::fs::File::open(inside(rel)?).map_err(|e| format!("reading layer {rel}: {e}"))?;
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::copy(&mut raw, &mut gz).map_err(|e| format!("compressing layer {rel}: {e}"))?;
        let bytes = gz.finish().map_err(|e| format!("compressing layer {rel}: {e}"))?;
        let blob =
            Blob { media_type: oci::OCI_LAYER_GZIP.into(), digest: Digest::of(&bytes), size: bytes.len() as u64 };
        layers.push((blob, Bytes::from(bytes)));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Prepared { config: Bytes::from(config), layers })
}

/// Pushes the prepared image into `repository` (`registry/name`) by digest.
pub async fn push(repository: &str, image: &Prepared, insecure: &[String]) -> Result<PushedImage, String> {
    let repo: ImageReference = registry::parse_reference(&format!("{repository}:latest")).map_err(|e| e.to_string())?;
    let reg = Registry::for_reference(&repo, insecure);
    reg.authorize_push(&repo).await.map_err(|e| e.to_string())?;
    let config =
        Blob { media_type: oci::OCI_CONFIG.into(), digest: Digest::of(&image.config), size: image.config.len() as u64 };
    let descriptors: Vec<Blob> = image.layers.iter().map(|(b, _)| b.clone()).collect();
    for (blob, bytes) in &image.layers {
        reg.push_blob(&repo, bytes.clone(), &blob.digest).await.map_err(|e| e.to_string())?;
    }
    reg.push_blob(&repo, image.config.clone(), &config.digest).await.map_err(|e| e.to_string())?;
    let manifest = oci::manifest_json(&config, &descriptors).map_err(|e| e.to_string())?;
    let digest = Digest::of(&manifest);
    let size = manifest.len() as u64;
    let by_digest =
        ImageReference::with_digest(repo.registry().to_owned(), repo.repository().to_owned(), digest.to_string());
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
        let (blob, gz) = &p.layers[0];
        assert_eq!(blob.digest, Digest::of(gz));
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
