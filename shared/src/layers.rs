//! Whether an image's layers are what its config says they are. A config's `rootfs.diff_ids`
//! and a manifest's layer list are claims: anyone who can push can pair any blob with any
//! diff id. A pulling client unpacks each layer and refuses the image when the hash of the
//! unpacked bytes is not the config's diff id; the farm checks the same before it trusts a
//! pairing, and remembers only pairings whose bytes it hashed ([`LayerFacts`]).

use crate::images::{with_retries, CheckError};
use crate::oci::{self, Blob};
use crate::reference::ImageRef;
use crate::registry::Registry;
use crate::Digest;
use futures_util::{StreamExt as _, TryStreamExt as _};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

/// Pairings remembered before the memory starts again (about 140 bytes each).
const FACTS: usize = 65_536;
/// Layers of one image checked at the same time.
const CHECKS_AT_ONCE: usize = 4;

/// Blobs whose unpacked bytes were hashed here, with the diff id they hashed to. A blob digest
/// names its bytes, so what one check learned holds for every repository and every tenant. A
/// blob is checked once at a time: callers that ask while it is being checked wait for that
/// check rather than fetch it again (a thousand builds of one image verify it once).
#[derive(Debug, Default)]
pub struct LayerFacts(Mutex<HashMap<Digest, Arc<OnceCell<Digest>>>>);

impl LayerFacts {
    /// The cell that holds, or will hold, what `blob` unpacks to.
    fn cell(&self, blob: &Digest) -> Arc<OnceCell<Digest>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= FACTS && !map.contains_key(blob) {
            map.clear();
        }
        map.entry(blob.clone()).or_default().clone()
    }

    /// What blob `layer` in `repo` unpacks to: from memory, or streamed, checked and hashed
    /// once. The outer error is the registry's; the inner one, the layer's.
    pub async fn unpacks_to(
        &self,
        registry: &Registry,
        repo: &ImageRef,
        layer: &Blob,
    ) -> Result<Result<Digest, String>, String> {
        let cell = self.cell(&layer.digest);
        let checked = cell
            .get_or_try_init(|| async {
                let what = format!("checking layer {} in the registry", layer.digest);
                let checked = with_retries(&what, || async {
                    registry.layer_diff_id(repo, layer).await.map_err(|e| e.to_string())
                });
                // A layer that is not what its descriptor says is not remembered: the next
                // image naming the same digest is checked again, and refused again.
                match checked.await {
                    Ok(Ok(diff_id)) => Ok(diff_id),
                    Ok(Err(wrong)) => Err(Ok(wrong)),
                    Err(unavailable) => Err(Err(unavailable)),
                }
            })
            .await;
        match checked {
            Ok(diff_id) => Ok(Ok(diff_id.clone())),
            Err(Ok(wrong)) => Ok(Err(wrong)),
            Err(Err(unavailable)) => Err(unavailable),
        }
    }
}

/// The diff id of a layer, hashed from its bytes as they come: unpacked as its media type
/// says (gzip, or a plain tar), then hashed.
pub struct UnpackedHash(Unpacking);

impl std::fmt::Debug for UnpackedHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Unpacking::Gzip(_) => "UnpackedHash(gzip)",
            Unpacking::Plain(_) => "UnpackedHash(tar)",
        })
    }
}

enum Unpacking {
    Gzip(Box<flate2::write::GzDecoder<HashSink>>),
    Plain(HashSink),
}

/// Hashes what is written to it.
struct HashSink(sha2::Sha256);

impl std::io::Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        sha2::Digest::update(&mut self.0, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl UnpackedHash {
    /// A hash for layers of `media_type`; `None` for kinds the farm cannot unpack (zstd,
    /// foreign layers).
    pub fn of(media_type: &str) -> Option<Self> {
        let sink = HashSink(<sha2::Sha256 as sha2::Digest>::new());
        match media_type {
            oci::OCI_LAYER_GZIP | oci::DOCKER_LAYER_GZIP => {
                Some(UnpackedHash(Unpacking::Gzip(Box::new(flate2::write::GzDecoder::new(sink)))))
            }
            oci::OCI_LAYER_TAR => Some(UnpackedHash(Unpacking::Plain(sink))),
            _ => None,
        }
    }

    /// Takes the next bytes of the layer as stored.
    pub fn update(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        use std::io::Write as _;
        match &mut self.0 {
            Unpacking::Gzip(gunzip) => gunzip.write_all(chunk),
            Unpacking::Plain(sink) => sink.write_all(chunk),
        }
    }

    /// The diff id: the digest of the unpacked bytes.
    pub fn finish(self) -> std::io::Result<Digest> {
        let sink = match self.0 {
            Unpacking::Gzip(gunzip) => gunzip.finish()?,
            Unpacking::Plain(sink) => sink,
        };
        Ok(Digest::from_sha256(sha2::Digest::finalize(sink.0).into()))
    }
}

/// Why a layer of an unknown media type is not accepted.
pub fn cannot_check(layer: &Blob) -> String {
    format!(
        "layer {} is of media type {}, which cannot be checked; gzip and plain tar layers can",
        layer.digest, layer.media_type
    )
}

/// The diff id of the layer file at `path`, stored as `layer` says: blocking, a chunk at a
/// time. The inner error says that the file does not unpack as its media type says.
pub fn unpacked_file(path: &std::path::Path, layer: &Blob) -> std::io::Result<Result<Digest, String>> {
    use std::io::Read as _;
    let Some(mut unpacked) = UnpackedHash::of(&layer.media_type) else { return Ok(Err(cannot_check(layer))) };
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if let Err(e) = unpacked.update(&buf[..n]) {
            return Ok(Err(format!("layer {} does not unpack as {}: {e}", layer.digest, layer.media_type)));
        }
    }
    Ok(unpacked.finish().map_err(|e| format!("layer {} does not unpack as {}: {e}", layer.digest, layer.media_type)))
}

/// The `rootfs.diff_ids` of an image config, when it has valid ones.
pub fn diff_ids(config: &[u8]) -> Option<Vec<Digest>> {
    #[derive(Deserialize)]
    struct Config {
        rootfs: RootFs,
    }
    #[derive(Deserialize)]
    struct RootFs {
        diff_ids: Vec<Digest>,
    }
    serde_json::from_slice::<Config>(config).ok().map(|c| c.rootfs.diff_ids)
}

/// The layers a single-platform manifest lists.
pub fn layers_of(manifest: &[u8]) -> Result<Vec<Blob>, String> {
    #[derive(Deserialize)]
    struct Manifest {
        #[serde(default)]
        layers: Vec<Blob>,
    }
    serde_json::from_slice::<Manifest>(manifest).map(|m| m.layers).map_err(|e| e.to_string())
}

/// Checks what a pulling client checks of the image `manifest` over `config` in `repo`: as
/// many layers as diff ids, and each layer's bytes match its digest and size and unpack to the
/// diff id in the same place. Layers already seen (`facts`) are not fetched again.
pub async fn check_layers(
    registry: &Registry,
    repo: &ImageRef,
    manifest: &[u8],
    config: &[u8],
    facts: &LayerFacts,
) -> Result<(), CheckError> {
    let wrong = CheckError::Wrong;
    let layers = layers_of(manifest).map_err(|e| wrong(format!("manifest: {e}")))?;
    let diff_ids = diff_ids(config).ok_or_else(|| wrong("the config has no valid rootfs.diff_ids".to_owned()))?;
    if layers.len() != diff_ids.len() {
        return Err(wrong(format!(
            "the manifest lists {} layers but the config {} diff ids",
            layers.len(),
            diff_ids.len()
        )));
    }
    futures_util::stream::iter(layers.into_iter().zip(diff_ids).enumerate())
        .map(|(i, (layer, claimed))| check_one(registry, repo, facts, i, layer, claimed))
        .buffered(CHECKS_AT_ONCE)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Checks that `layer`, the `i`th of an image, unpacks to `claimed`.
async fn check_one(
    registry: &Registry,
    repo: &ImageRef,
    facts: &LayerFacts,
    i: usize,
    layer: Blob,
    claimed: Digest,
) -> Result<(), CheckError> {
    match facts.unpacks_to(registry, repo, &layer).await.map_err(CheckError::Unavailable)? {
        Ok(diff_id) if diff_id == claimed => Ok(()),
        Ok(diff_id) => Err(CheckError::Wrong(format!(
            "layer {} ({}) unpacks to {diff_id}, but the config says {claimed}",
            i + 1,
            layer.digest
        ))),
        Err(e) => Err(CheckError::Wrong(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn a_layer_is_hashed_as_it_unpacks_and_a_broken_one_is_refused() {
        let tar = b"pretend this is a tar stream".repeat(1000);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let mut hash = UnpackedHash::of(oci::DOCKER_LAYER_GZIP).unwrap();
        for chunk in gz.chunks(1000) {
            hash.update(chunk).unwrap();
        }
        assert_eq!(hash.finish().unwrap(), Digest::of(&tar));
        let mut plain = UnpackedHash::of(oci::OCI_LAYER_TAR).unwrap();
        plain.update(&tar).unwrap();
        assert_eq!(plain.finish().unwrap(), Digest::of(&tar));
        let mut broken = UnpackedHash::of(oci::OCI_LAYER_GZIP).unwrap();
        assert!(broken.update(&tar[..100]).is_err() || broken.finish().is_err(), "not gzip");
        assert!(UnpackedHash::of("application/vnd.oci.image.layer.v1.tar+zstd").is_none());
    }

    #[test]
    fn a_learned_pairing_is_remembered_and_memory_stays_bounded() {
        let facts = LayerFacts::default();
        facts.cell(&Digest::of(b"gz")).set(Digest::of(b"tar")).unwrap();
        assert_eq!(facts.cell(&Digest::of(b"gz")).get(), Some(&Digest::of(b"tar")), "one cell per blob");
        assert_eq!(facts.cell(&Digest::of(b"other")).get(), None);
        for n in 0..FACTS as u64 + 10 {
            facts.cell(&Digest::of(&n.to_be_bytes())).set(Digest::of(b"tar")).unwrap();
        }
        assert!(facts.0.lock().unwrap().len() <= FACTS);
    }

    #[test]
    fn reads_diff_ids_and_layers() {
        let config = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#, Digest::of(b"a"));
        assert_eq!(diff_ids(config.as_bytes()), Some(vec![Digest::of(b"a")]));
        assert_eq!(diff_ids(br#"{"rootfs":{"diff_ids":["sha256:bad"]}}"#), None);
        let manifest = format!(
            r#"{{"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":3}}]}}"#,
            Digest::of(b"l")
        );
        assert_eq!(layers_of(manifest.as_bytes()).unwrap()[0].size, 3);
    }
}
