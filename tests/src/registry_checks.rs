//! The registry's side, checked through independent clients: its HTTP API, its storage layout
//! (for fault injection), skopeo, and what a pulled binary is built for.

use crate::farm::Farm;
use std::path::PathBuf;

impl Farm {
    /// `REGISTRY/name` of a repository in this farm's registry.
    pub fn repo(&self, name: &str) -> String {
        format!("{}/{name}", self.registry)
    }

    /// GET on the registry's HTTP API. Returns status, `Docker-Content-Digest` and body.
    pub fn registry_get(&self, path: &str, accept: &str) -> (u16, Option<String>, Vec<u8>) {
        let url = format!("http://{}{path}", self.registry);
        let resp = match ureq::get(&url).set("Accept", accept).call() {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("GET {url}: {e}"),
        };
        let status = resp.status();
        let digest = resp.header("Docker-Content-Digest").map(str::to_owned);
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).unwrap();
        (status, digest, body)
    }

    /// The tags the registry lists for a repository (none if it does not exist).
    pub fn tags(&self, name: &str) -> Vec<String> {
        let (status, _, body) = self.registry_get(&format!("/v2/{name}/tags/list"), "application/json");
        if status == 404 {
            return vec![];
        }
        assert_eq!(status, 200, "tags/list: {}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let mut tags: Vec<String> =
            v["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_owned)).collect();
        tags.sort();
        tags
    }

    /// The registry's storage directory of a repository's tags (for fault injection).
    pub fn registry_tags_dir(&self, repo: &str) -> PathBuf {
        self.registry_repo_dir(repo).join("_manifests/tags")
    }

    /// The registry's storage directory of a repository (uploads go to its `_uploads`).
    pub fn registry_repo_dir(&self, repo: &str) -> PathBuf {
        self.registry_root().join("docker/registry/v2/repositories").join(repo)
    }
}

/// skopeo against a plain-http loopback registry.
pub mod skopeo {
    use crate::process::run_ok;
    use std::process::Command;

    /// `skopeo inspect --raw` of a reference: the manifest or index bytes as served.
    pub fn raw(reference: &str) -> Vec<u8> {
        run_ok(
            Command::new("skopeo")
                .args(["inspect", "--raw", "--tls-verify=false"])
                .arg(format!("docker://{reference}")),
        )
        .stdout
    }

    /// `skopeo inspect --config --raw`: the image config of a single-platform reference.
    pub fn config(reference: &str) -> serde_json::Value {
        let out = run_ok(
            Command::new("skopeo")
                .args(["inspect", "--config", "--raw", "--tls-verify=false"])
                .arg(format!("docker://{reference}")),
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Copies a single-platform image to a `dir:` layout and returns the bytes of `file` from
    /// its layers (last layer wins).
    pub fn file_from_image(reference: &str, file: &str) -> Option<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        run_ok(
            Command::new("skopeo")
                .args(["copy", "-q", "--src-tls-verify=false"])
                .arg(format!("docker://{reference}"))
                .arg(format!("dir:{}", dir.path().join("img").display())),
        );
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("img/manifest.json")).unwrap()).unwrap();
        let mut found = None;
        for layer in manifest["layers"].as_array().unwrap() {
            let hex = layer["digest"].as_str().unwrap().trim_start_matches("sha256:");
            let blob = std::fs::File::open(dir.path().join("img").join(hex)).unwrap();
            let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(blob));
            for entry in ar.entries().unwrap() {
                let mut entry = entry.unwrap();
                if entry.path().unwrap().to_string_lossy().trim_start_matches("./").trim_start_matches('/') == file {
                    let mut bytes = Vec::new();
                    std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
                    found = Some(bytes);
                }
            }
        }
        found
    }
}

/// The ELF machine of a binary: 62 is x86-64, 183 is AArch64.
pub fn elf_machine(bytes: &[u8]) -> Option<u16> {
    (bytes.len() > 20 && bytes.starts_with(b"\x7fELF")).then(|| u16::from_le_bytes([bytes[18], bytes[19]]))
}

/// ELF machine number of x86-64.
pub const EM_X86_64: u16 = 62;
/// ELF machine number of AArch64.
pub const EM_AARCH64: u16 = 183;

/// The runnable children of an index: every entry but provenance attestation manifests.
pub fn runnable(index: &serde_json::Value) -> Vec<&serde_json::Value> {
    let all = index["manifests"].as_array().map(Vec::as_slice).unwrap_or_default();
    all.iter().filter(|m| m["annotations"]["vnd.docker.reference.type"] != "attestation-manifest").collect()
}

/// The sha256 digest of bytes, `sha256:<hex>`.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}
