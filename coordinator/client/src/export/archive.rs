//! The two image archives: an OCI image layout tar (every platform, under the same index a push
//! publishes) and a docker archive of one platform, as `docker load` takes it. Entries are
//! written in a fixed order with fixed metadata, so the same images give the same tar.

use super::{Image, Images};
use crate::output::Dest;
use anyhow::Context as _;
use archfarm_shared::oci;
use archfarm_shared::Digest;
use std::collections::BTreeSet;
use std::io::Write;

impl Dest {
    /// Opens the destination for writing.
    pub fn open(&self) -> anyhow::Result<Box<dyn Write + Send>> {
        Ok(match self {
            Dest::Stdout => Box::new(std::io::BufWriter::new(std::io::stdout())),
            Dest::Path(p) => Box::new(std::io::BufWriter::new(
                std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
            )),
        })
    }
}

fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

fn add_bytes<W: Write>(tar: &mut tar::Builder<W>, path: &str, bytes: &[u8]) -> anyhow::Result<()> {
    tar.append_data(&mut header(bytes.len() as u64), path, bytes).with_context(|| format!("writing {path}"))
}

fn add_blob<W: Write>(tar: &mut tar::Builder<W>, images: &Images, path: &str, digest: &Digest) -> anyhow::Result<()> {
    let file = std::fs::File::open(images.blob(digest)).with_context(|| format!("blob {digest} was not fetched"))?;
    let size = file.metadata()?.len();
    tar.append_data(&mut header(size), path, file).with_context(|| format!("writing {path}"))
}

fn blob_name(digest: &Digest) -> String {
    format!("blobs/{}", digest.as_str().replacen(':', "/", 1))
}

/// The tag part of a reference (`1.4` of `reg/app:1.4`), for the layout's ref name.
fn tag_part(reference: &str) -> &str {
    match reference.rsplit_once(':') {
        Some((_, tag)) if !tag.contains('/') => tag,
        _ => "latest",
    }
}

/// Writes an OCI image layout tar: `oci-layout`, `index.json` naming the image index once per
/// tag, and every blob under `blobs/sha256/`.
pub fn write_oci(images: &Images, tags: &[String], out: impl Write) -> anyhow::Result<()> {
    let index_digest = Digest::of(&images.index);
    let mut manifests: Vec<serde_json::Value> = tags
        .iter()
        .map(|t| {
            serde_json::json!({
                "mediaType": oci::OCI_INDEX,
                "digest": index_digest.as_str(),
                "size": images.index.len(),
                "annotations": {
                    "io.containerd.image.name": t,
                    "org.opencontainers.image.ref.name": tag_part(t),
                },
            })
        })
        .collect();
    if manifests.is_empty() {
        // No name: the index once, unnamed.
        manifests.push(serde_json::json!({
            "mediaType": oci::OCI_INDEX,
            "digest": index_digest.as_str(),
            "size": images.index.len(),
        }));
    }
    let layout = serde_json::json!({ "schemaVersion": 2, "mediaType": oci::OCI_INDEX, "manifests": manifests });
    let mut tar = tar::Builder::new(out);
    add_bytes(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add_bytes(&mut tar, "index.json", &serde_json::to_vec(&layout)?)?;
    let mut written = BTreeSet::new();
    let mut blobs = vec![index_digest];
    for image in &images.images {
        blobs.push(image.manifest.digest.clone());
        blobs.push(image.config.digest.clone());
        blobs.extend(image.layers.iter().map(|l| l.digest.clone()));
    }
    blobs.extend(images.attestation_blobs.iter().cloned());
    for digest in blobs {
        if written.insert(digest.clone()) {
            add_blob(&mut tar, images, &blob_name(&digest), &digest)?;
        }
    }
    tar.into_inner()?.flush()?;
    Ok(())
}

/// Writes a docker archive of `image`: its config, its layers (compressed, as `docker load`
/// accepts them) and a `manifest.json` naming the tags.
pub fn write_docker(images: &Images, image: &Image, tags: &[String], out: impl Write) -> anyhow::Result<()> {
    let manifest = serde_json::json!([{
        "Config": blob_name(&image.config.digest),
        "RepoTags": tags,
        "Layers": image.layers.iter().map(|l| blob_name(&l.digest)).collect::<Vec<_>>(),
    }]);
    let mut tar = tar::Builder::new(out);
    add_blob(&mut tar, images, &blob_name(&image.config.digest), &image.config.digest)?;
    let mut written = BTreeSet::new();
    for layer in &image.layers {
        if written.insert(layer.digest.clone()) {
            add_blob(&mut tar, images, &blob_name(&layer.digest), &layer.digest)?;
        }
    }
    add_bytes(&mut tar, "manifest.json", &serde_json::to_vec(&manifest)?)?;
    tar.into_inner()?.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_names_each_tag_by_its_tag_part() {
        assert_eq!(tag_part("127.0.0.1:5000/app:1.4"), "1.4");
        assert_eq!(tag_part("127.0.0.1:5000/app"), "latest");
        assert_eq!(blob_name(&Digest::of(b"x")), format!("blobs/sha256/{}", &Digest::of(b"x").as_str()[7..]));
    }
}
