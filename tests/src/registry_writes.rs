//! Writing to the registry by hand, through its HTTP API, as an attacker with push rights
//! would: blobs and manifests that say whatever the test wants. And reading an image back the
//! way a pulling client checks it, layer by layer.

use crate::farm::Farm;
use crate::registry_checks::sha256;
use std::io::Read as _;

impl Farm {
    /// Uploads `bytes` as a blob of `repo` (monolithic upload) and returns its digest.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let start = format!("http://{}/v2/{repo}/blobs/uploads/", self.registry);
        let resp = ureq::post(&start).call().unwrap_or_else(|e| panic!("POST {start}: {e}"));
        assert_eq!(resp.status(), 202, "POST {start}");
        let location = resp.header("Location").expect("an upload location").to_owned();
        let location = if location.starts_with('/') { format!("http://{}{location}", self.registry) } else { location };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={}", digest.replace(':', "%3A"));
        let resp = ureq::put(&put)
            .set("Content-Type", "application/octet-stream")
            .send_bytes(bytes)
            .unwrap_or_else(|e| panic!("PUT {put}: {e}"));
        assert_eq!(resp.status(), 201, "PUT {put}");
        digest
    }

    /// Puts `manifest` (of `media_type`) under `reference` (a tag or digest) in `repo`.
    pub fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, manifest: &[u8]) -> String {
        let url = format!("http://{}/v2/{repo}/manifests/{reference}", self.registry);
        let resp = ureq::put(&url)
            .set("Content-Type", media_type)
            .send_bytes(manifest)
            .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
        assert_eq!(resp.status(), 201, "PUT {url}");
        sha256(manifest)
    }

    /// Checks single-platform image `digest` of `repo` as a pulling client does: each layer is
    /// fetched from the registry's HTTP API, unpacked and hashed, and must be the config's
    /// diff id in the same place. Returns the mismatches, none when the image is sound.
    pub fn unsound_layers(&self, repo: &str, digest: &str) -> Vec<String> {
        let (status, _, manifest) =
            self.registry_get(&format!("/v2/{repo}/manifests/{digest}"), "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(status, 200, "manifest {repo}@{digest}");
        let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        let blob = |d: &str| {
            let (status, _, body) = self.registry_get(&format!("/v2/{repo}/blobs/{d}"), "*/*");
            assert_eq!(status, 200, "blob {d} of {repo}");
            body
        };
        let config: serde_json::Value =
            serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
        let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
        let layers = manifest["layers"].as_array().unwrap();
        let mut wrong = Vec::new();
        if diff_ids.len() != layers.len() {
            wrong.push(format!("{} layers, {} diff ids", layers.len(), diff_ids.len()));
        }
        for (layer, diff_id) in layers.iter().zip(diff_ids) {
            let gz = blob(layer["digest"].as_str().unwrap());
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut tar).unwrap();
            if sha256(&tar) != diff_id.as_str().unwrap() {
                wrong.push(format!("{} unpacks to {}, not {diff_id}", layer["digest"], sha256(&tar)));
            }
        }
        wrong
    }
}

/// A gzip-compressed layer holding one file.
pub fn gzip_layer(path: &str, data: &[u8]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, path, data).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}
