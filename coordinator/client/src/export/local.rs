//! `--output type=local`: each platform's filesystem, its layers applied in order with the OCI
//! whiteout rules (`.wh.NAME` deletes NAME from the layers below, `.wh..wh..opq` empties its
//! directory of what the layers below put there). One platform goes into the directory itself;
//! several go into `DIR/<os>_<arch>[_<variant>]/`, as buildx splits them.

use super::Images;
use anyhow::{bail, Context as _};
use archfarm_shared::oci;
use archfarm_shared::Platform;
use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

const OPAQUE: &str = ".wh..wh..opq";
const WHITEOUT: &str = ".wh.";

/// The directory name of a platform: `linux_arm64`, `linux_arm_v7`.
pub fn platform_dir(p: &Platform) -> String {
    match p.variant() {
        Some(v) => format!("{}_{}_{v}", p.os(), p.arch()),
        None => format!("{}_{}", p.os(), p.arch()),
    }
}

/// Writes every platform's filesystem under `dir`.
pub fn write(images: &Images, dir: &Path) -> anyhow::Result<()> {
    let split = images.images.len() > 1;
    for image in &images.images {
        let root = if split { dir.join(platform_dir(&image.platform)) } else { dir.to_owned() };
        std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
        for layer in &image.layers {
            if layer.media_type != oci::OCI_LAYER_GZIP
                && layer.media_type != "application/vnd.docker.image.rootfs.diff.tar.gzip"
            {
                bail!(
                    "{}: layer {} is {}; only gzip layers can be unpacked here",
                    image.platform,
                    layer.digest,
                    layer.media_type
                );
            }
            let file = std::fs::File::open(images.blob(&layer.digest))?;
            apply(flate2::read::GzDecoder::new(std::io::BufReader::new(file)), &root)
                .with_context(|| format!("unpacking layer {} of {}", layer.digest, image.platform))?;
        }
    }
    Ok(())
}

/// The path of an entry relative to the root, refused if it leaves it.
fn relative(path: &Path) -> anyhow::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => bail!("the layer names an unsafe path {}", path.display()),
        }
    }
    Ok(out)
}

fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    }
}

/// Applies one uncompressed layer tar on top of `root`.
pub fn apply(layer: impl std::io::Read, root: &Path) -> anyhow::Result<()> {
    let mut archive = tar::Archive::new(layer);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    // What this layer wrote: an opaque marker empties only what lower layers left.
    let mut written: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let rel = relative(&entry.path()?)?;
        let name = rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        if name == OPAQUE {
            let dir = root.join(&parent);
            if let Ok(children) = std::fs::read_dir(&dir) {
                for child in children.flatten() {
                    if !written.contains(&parent.join(child.file_name())) {
                        remove(&child.path())?;
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            remove(&root.join(&parent).join(hidden))?;
            continue;
        }
        let kind = entry.header().entry_type();
        if matches!(kind, tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo) {
            continue; // device nodes need root and mean nothing in an exported tree
        }
        let target = root.join(&rel);
        // A path of another kind below is replaced, never written through (a symlink).
        if let Ok(meta) = std::fs::symlink_metadata(&target) {
            if !(meta.is_dir() && kind == tar::EntryType::Directory) {
                remove(&target)?;
            }
        }
        entry.unpack_in(root).with_context(|| format!("writing {}", rel.display()))?;
        written.insert(rel);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            tar.append_data(&mut h, path, *data).unwrap();
        }
        tar.into_inner().unwrap()
    }

    #[test]
    fn whiteouts_delete_from_lower_layers_and_opaque_dirs_empty_them() {
        let root = tempfile::tempdir().unwrap();
        apply(&layer(&[("etc/a", b"1"), ("etc/b", b"2"), ("var/x/old", b"o"), ("keep", b"k")])[..], root.path())
            .unwrap();
        apply(&layer(&[("var/x/new", b"n"), ("var/x/.wh..wh..opq", b""), ("etc/.wh.a", b"")])[..], root.path())
            .unwrap();
        assert!(!root.path().join("etc/a").exists());
        assert_eq!(std::fs::read(root.path().join("etc/b")).unwrap(), b"2");
        assert!(!root.path().join("var/x/old").exists(), "the opaque dir dropped the lower layer's file");
        assert_eq!(std::fs::read(root.path().join("var/x/new")).unwrap(), b"n", "and kept its own layer's");
        assert_eq!(std::fs::read(root.path().join("keep")).unwrap(), b"k");
    }

    #[test]
    fn platform_directories_are_named_as_buildx_names_them() {
        assert_eq!(platform_dir(&"linux/arm64".parse().unwrap()), "linux_arm64");
        assert_eq!(platform_dir(&"linux/arm/v7".parse().unwrap()), "linux_arm_v7");
    }
}
