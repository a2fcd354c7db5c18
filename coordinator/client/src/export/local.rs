//! `--output type=local`: each platform's filesystem, its layers applied in order with the OCI
//! whiteout rules (`.wh.NAME` deletes NAME from the layers below, `.wh..wh..opq` empties its
//! directory of what the layers below put there), every path inside the destination
//! ([`super::unpack`]). One platform goes into the directory itself; several go into
//! `DIR/<os>_<arch>[_<variant>]/`, as buildx splits them.

use super::unpack::Unpacker;
use super::Images;
use anyhow::{bail, Context as _};
use archfarm_shared::oci;
use archfarm_shared::Platform;
use std::path::Path;

/// Skipped entries named one by one; past this many, only counted.
const SKIPS_SHOWN: usize = 20;

/// The directory name of a platform: `linux_arm64`, `linux_arm_v7`.
pub fn platform_dir(p: &Platform) -> String {
    match p.variant() {
        Some(v) => format!("{}_{}_{v}", p.os(), p.arch()),
        None => format!("{}_{}", p.os(), p.arch()),
    }
}

/// Writes every platform's filesystem under `dir`. Entries that would leave it, or delete what
/// was there before, are skipped and said on standard error.
pub fn write(images: &Images, dir: &Path) -> anyhow::Result<()> {
    let split = images.images.len() > 1;
    for image in &images.images {
        let root = if split { dir.join(platform_dir(&image.platform)) } else { dir.to_owned() };
        std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
        let mut unpacker = Unpacker::open(&root)?;
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
            unpacker
                .apply(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
                .with_context(|| format!("unpacking layer {} of {}", layer.digest, image.platform))?;
        }
        report(&image.platform, &root, &unpacker.skipped);
    }
    Ok(())
}

fn report(platform: &Platform, root: &Path, skipped: &[String]) {
    if skipped.is_empty() {
        return;
    }
    eprintln!(
        "warning: {platform}: {} entries of the image were not applied to {} (nothing outside it is touched):",
        skipped.len(),
        root.display()
    );
    for line in skipped.iter().take(SKIPS_SHOWN) {
        eprintln!("  {line}");
    }
    if skipped.len() > SKIPS_SHOWN {
        eprintln!("  … and {} more", skipped.len() - SKIPS_SHOWN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_directories_are_named_as_buildx_names_them() {
        assert_eq!(platform_dir(&"linux/arm64".parse().unwrap()), "linux_arm64");
        assert_eq!(platform_dir(&"linux/arm/v7".parse().unwrap()), "linux_arm_v7");
    }
}
