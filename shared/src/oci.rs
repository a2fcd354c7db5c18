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
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
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

/// The OCI image index over `children`, in the given order, as canonical bytes.
pub fn index_json(children: &[Child]) -> Result<Vec<u8>, OciError> {
    let manifests =
        children.iter().map(|c| descriptor(&c.manifest, Some(&c.platform))).collect::<Result<Vec<_>, _>>()?;
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .map_err(|source| OciError::Spec { what: "image index", source })?;
    canonical(&index, "image index")
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
    fn index_keeps_order_sets_media_type_and_is_canonical() {
        let children = vec![
            Child { platform: "linux/arm64".parse().unwrap(), manifest: blob(1) },
            Child { platform: "linux/amd64".parse().unwrap(), manifest: blob(2) },
            Child { platform: "linux/arm/v7".parse().unwrap(), manifest: blob(3) },
        ];
        let bytes = index_json(&children).unwrap();
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
        assert_eq!(index_json(&children).unwrap(), bytes);
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
