//! OCI documents without I/O: media types, the canonical index and manifest bytes we push, and
//! reading the platform out of an image config.

use crate::ids::Digest;
use crate::platform::Platform;
use oci_spec::image::{
    Arch, DescriptorBuilder, ImageIndexBuilder, ImageManifestBuilder, MediaType, Os, PlatformBuilder,
};
use serde::{Deserialize, Serialize};

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// gzip-compressed OCI layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// An uncompressed OCI layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// A Docker gzip-compressed layer: the same bytes as an OCI gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// What to accept when fetching a single-platform manifest.
pub const IMAGE_MANIFESTS: &[&str] = &[OCI_MANIFEST, DOCKER_MANIFEST];
/// What to accept when the reference may be an index or a manifest. A GET of an OCI index
/// without an OCI Accept header answers 404 on distribution 2.8, so always send these.
pub const ANY_MANIFEST: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// Why an OCI document could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The bytes are not the JSON document expected.
    #[error("{what} is not valid JSON of the expected shape: {source}")]
    Json {
        /// Which document.
        what: &'static str,
        /// The parse error.
        source: serde_json::Error,
    },
    /// oci-spec refused the document.
    #[error("building {what}: {source}")]
    Spec {
        /// Which document.
        what: &'static str,
        /// The oci-spec error.
        source: oci_spec::OciSpecError,
    },
}

/// A blob or manifest as a descriptor points at it; reads from a descriptor's JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct Blob {
    /// Media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// Content digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
}

/// One child of an index: a verified per-platform manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    /// The platform the child was verified to be.
    pub platform: Platform,
    /// The child manifest.
    pub manifest: Blob,
}

fn descriptor(blob: &Blob, platform: Option<&Platform>) -> Result<oci_spec::image::Descriptor, OciError> {
    let spec = |source| OciError::Spec { what: "descriptor", source };
    let digest: oci_spec::image::Digest = blob.digest.as_str().parse().map_err(spec)?;
    let mut d = DescriptorBuilder::default()
        .media_type(MediaType::from(blob.media_type.as_str()))
        .digest(digest)
        .size(blob.size);
    if let Some(p) = platform {
        let mut pb = PlatformBuilder::default().os(Os::from(p.os())).architecture(Arch::from(p.arch()));
        if let Some(v) = p.variant() {
            pb = pb.variant(v);
        }
        d = d.platform(pb.build().map_err(spec)?);
    }
    d.build().map_err(spec)
}

/// Canonical JSON: sorted keys, no insignificant whitespace. The bytes returned are the bytes
/// to hash and to push, never re-serialised in between.
fn canonical<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>, OciError> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, olpc_cjson::CanonicalFormatter::new());
    value.serialize(&mut ser).map_err(|source| OciError::Json { what, source })?;
    Ok(out)
}

/// An attestation manifest of a child, as BuildKit lists it in an index.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct Attestation {
    /// The child it attests.
    pub subject: Digest,
    /// The attestation manifest.
    pub manifest: Blob,
}

/// The OCI image index over `children`, in the given order, then their `attestations` as
/// BuildKit lists them, as canonical bytes: platform
/// `unknown/unknown`, annotated with the child's digest and `attestation-manifest`. The
/// runnable children come first and are the same entries as without attestations.
pub fn index_json_with(children: &[Child], attestations: &[Attestation]) -> Result<Vec<u8>, OciError> {
    let mut manifests =
        children.iter().map(|c| descriptor(&c.manifest, Some(&c.platform))).collect::<Result<Vec<_>, _>>()?;
    for a in attestations {
        let spec = |source| OciError::Spec { what: "attestation descriptor", source };
        let mut d = descriptor(&a.manifest, None)?;
        d.set_platform(Some(
            PlatformBuilder::default()
                .os(Os::from("unknown"))
                .architecture(Arch::from("unknown"))
                .build()
                .map_err(spec)?,
        ));
        d.set_annotations(Some(
            [
                (REFERENCE_DIGEST.to_owned(), a.subject.as_str().to_owned()),
                (REFERENCE_TYPE.to_owned(), ATTESTATION_MANIFEST.to_owned()),
            ]
            .into(),
        ));
        manifests.push(d);
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .map_err(|source| OciError::Spec { what: "image index", source })?;
    canonical(&index, "image index")
}

/// The media type of an in-toto statement layer.
pub const IN_TOTO: &str = "application/vnd.in-toto+json";
/// The annotation naming an attestation layer's predicate type.
pub const PREDICATE_TYPE: &str = "in-toto.io/predicate-type";
/// The index annotation naming the child an attestation manifest attests.
pub const REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";
/// The index annotation saying what a non-runnable entry is.
pub const REFERENCE_TYPE: &str = "vnd.docker.reference.type";
/// [`REFERENCE_TYPE`] of an attestation manifest.
pub const ATTESTATION_MANIFEST: &str = "attestation-manifest";

/// The config of an attestation manifest, as BuildKit writes it: platform `unknown/unknown`
/// and the statements as its layers' diff ids (they are not compressed).
pub fn attestation_config_json(statements: &[Digest]) -> Result<Vec<u8>, OciError> {
    let config = serde_json::json!({
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": statements.iter().map(Digest::as_str).collect::<Vec<_>>() },
    });
    canonical(&config, "attestation config")
}

/// An attestation manifest: `config`, and one in-toto statement layer of `predicate_type`.
pub fn attestation_manifest_json(config: &Blob, statement: &Blob, predicate_type: &str) -> Result<Vec<u8>, OciError> {
    let mut layer = descriptor(statement, None)?;
    layer.set_annotations(Some([(PREDICATE_TYPE.to_owned(), predicate_type.to_owned())].into()));
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(config, None)?)
        .layers(vec![layer])
        .build()
        .map_err(|source| OciError::Spec { what: "attestation manifest", source })?;
    canonical(&manifest, "attestation manifest")
}

/// An OCI image manifest over a config and layers, as canonical bytes.
pub fn manifest_json(config: &Blob, layers: &[Blob]) -> Result<Vec<u8>, OciError> {
    let layers = layers.iter().map(|l| descriptor(l, None)).collect::<Result<Vec<_>, _>>()?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(config, None)?)
        .layers(layers)
        .build()
        .map_err(|source| OciError::Spec { what: "image manifest", source })?;
    canonical(&manifest, "image manifest")
}

#[derive(Deserialize)]
struct ManifestShape {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    config: DescriptorShape,
}

#[derive(Deserialize)]
struct DescriptorShape {
    digest: String,
}

/// The config and layers a single-platform manifest (OCI or Docker schema 2) lists.
pub fn manifest_blobs(bytes: &[u8]) -> Result<(Blob, Vec<Blob>), OciError> {
    #[derive(Deserialize)]
    struct Shape {
        config: Blob,
        #[serde(default)]
        layers: Vec<Blob>,
    }
    let m: Shape = serde_json::from_slice(bytes).map_err(|source| OciError::Json { what: "image manifest", source })?;
    Ok((m.config, m.layers))
}

/// The media type and config digest of a single-platform manifest (OCI or Docker schema 2).
pub fn manifest_config(bytes: &[u8]) -> Result<(Option<String>, String), OciError> {
    let m: ManifestShape =
        serde_json::from_slice(bytes).map_err(|source| OciError::Json { what: "image manifest", source })?;
    Ok((m.media_type, m.config.digest))
}

#[derive(Deserialize)]
struct ConfigShape {
    os: String,
    architecture: String,
    variant: Option<String>,
}

/// The platform an image config declares, normalised.
pub fn config_platform(bytes: &[u8]) -> Result<Platform, String> {
    let c: ConfigShape = serde_json::from_slice(bytes)
        .map_err(|e| format!("image config is not valid JSON with os and architecture: {e}"))?;
    Platform::new(&c.os, &c.architecture, c.variant.as_deref().filter(|v| !v.is_empty())).map_err(|e| e.to_string())
}

/// The media type of a manifest document: its `mediaType` field, else what its shape implies.
pub fn media_type_of(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Shape {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let s: Shape = serde_json::from_slice(bytes).ok()?;
    s.media_type.or_else(|| Some(if s.manifests.is_some() { OCI_INDEX } else { OCI_MANIFEST }.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: u8) -> Blob {
        Blob { media_type: OCI_MANIFEST.into(), digest: Digest::of(&[n]), size: 100 + u64::from(n) }
    }

    #[test]
    fn attestations_follow_the_children_as_buildkit_lists_them_and_leave_the_children_alone() {
        let children = vec![
            Child { platform: "linux/amd64".parse().unwrap(), manifest: blob(1) },
            Child { platform: "linux/arm64".parse().unwrap(), manifest: blob(2) },
        ];
        let attestations = vec![
            Attestation { subject: Digest::of(&[1]), manifest: blob(3) },
            Attestation { subject: Digest::of(&[2]), manifest: blob(4) },
        ];
        let bytes = index_json_with(&children, &attestations).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let plain: serde_json::Value = serde_json::from_slice(&index_json_with(&children, &[]).unwrap()).unwrap();
        assert_eq!(v["manifests"][0], plain["manifests"][0]);
        assert_eq!(v["manifests"][1], plain["manifests"][1]);
        let a = &v["manifests"][3];
        assert_eq!(
            (a["platform"]["os"].as_str(), a["platform"]["architecture"].as_str()),
            (Some("unknown"), Some("unknown"))
        );
        assert_eq!(a["annotations"][REFERENCE_DIGEST], Digest::of(&[2]).as_str());
        assert_eq!(a["annotations"][REFERENCE_TYPE], ATTESTATION_MANIFEST);
        assert_eq!(index_json_with(&children, &attestations).unwrap(), bytes, "deterministic");

        let statement = Blob { media_type: IN_TOTO.into(), digest: Digest::of(b"s"), size: 10 };
        let config_bytes = attestation_config_json(std::slice::from_ref(&statement.digest)).unwrap();
        let c: serde_json::Value = serde_json::from_slice(&config_bytes).unwrap();
        assert_eq!(
            (c["os"].as_str(), c["rootfs"]["diff_ids"][0].as_str()),
            (Some("unknown"), Some(statement.digest.as_str()))
        );
        let config =
            Blob { media_type: OCI_CONFIG.into(), digest: Digest::of(&config_bytes), size: config_bytes.len() as u64 };
        let m: serde_json::Value = serde_json::from_slice(
            &attestation_manifest_json(&config, &statement, "https://slsa.dev/provenance/v1").unwrap(),
        )
        .unwrap();
        assert_eq!(m["layers"][0]["mediaType"], IN_TOTO);
        assert_eq!(m["layers"][0]["annotations"][PREDICATE_TYPE], "https://slsa.dev/provenance/v1");
        assert_eq!(m["config"]["digest"], config.digest.as_str());
    }

    #[test]
    fn index_keeps_order_sets_media_type_and_is_canonical() {
        let children = vec![
            Child { platform: "linux/arm64".parse().unwrap(), manifest: blob(1) },
            Child { platform: "linux/amd64".parse().unwrap(), manifest: blob(2) },
            Child { platform: "linux/arm/v7".parse().unwrap(), manifest: blob(3) },
        ];
        let bytes = index_json_with(&children, &[]).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(!text.contains(' ') && !text.contains('\n'), "{text}");
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["mediaType"], OCI_INDEX);
        assert_eq!(v["schemaVersion"], 2);
        let archs: Vec<_> = v["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["platform"]["architecture"].as_str().unwrap())
            .collect();
        assert_eq!(archs, ["arm64", "amd64", "arm"]);
        assert_eq!(v["manifests"][2]["platform"]["variant"], "v7");
        assert_eq!(v["manifests"][0]["digest"], Digest::of(&[1]).as_str());
        // Same input, same bytes; and keys sorted at every level.
        assert_eq!(index_json_with(&children, &[]).unwrap(), bytes);
        assert!(
            text.find("\"manifests\"").unwrap() < text.find("\"mediaType\":\"application/vnd.oci.image.index").unwrap()
        );
        assert!(text.find("\"digest\"").unwrap() < text.find("\"size\"").unwrap());
    }

    #[test]
    fn manifest_round_trips_its_config_digest() {
        let config = Blob { media_type: OCI_CONFIG.into(), digest: Digest::of(b"c"), size: 1 };
        let layer = Blob { media_type: OCI_LAYER_GZIP.into(), digest: Digest::of(b"l"), size: 2 };
        let bytes = manifest_json(&config, &[layer]).unwrap();
        let (mt, cfg) = manifest_config(&bytes).unwrap();
        assert_eq!(mt.as_deref(), Some(OCI_MANIFEST));
        assert_eq!(cfg, config.digest.as_str());
        assert_eq!(media_type_of(&bytes).as_deref(), Some(OCI_MANIFEST));
    }

    #[test]
    fn config_platform_is_normalised() {
        let p = config_platform(br#"{"os":"linux","architecture":"arm64","variant":"v8","rootfs":{}}"#).unwrap();
        assert_eq!(p.to_string(), "linux/arm64");
        let p = config_platform(br#"{"os":"linux","architecture":"arm","variant":"v7"}"#).unwrap();
        assert_eq!(p.to_string(), "linux/arm/v7");
        assert!(config_platform(b"{}").unwrap_err().contains("os and architecture"));
    }
}
