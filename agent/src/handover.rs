//! Handing a built image to the coordinator, for a build that names no registry: each layer
//! compressed as for a push, then every blob (layers, config, the manifest last) handed over
//! through the job's [`CoordinatorLink`], each on its own. The coordinator stores them by digest, checks the image as it would a
//! push, and the client fetches them from it.

use crate::link::CoordinatorLink;
use crate::push::{compress, Prepared};
use archfarm_shared::oci::{self, Blob};
use archfarm_shared::protocol::PushedImage;
use archfarm_shared::Digest;
use std::path::Path;
use tokio::io::AsyncRead;

/// Sends one blob of `size` bytes from `bytes`.
async fn send_blob(
    link: &dyn CoordinatorLink,
    digest: &Digest,
    size: u64,
    mut bytes: impl AsyncRead + Send + Unpin,
) -> Result<(), String> {
    // A minute, and a second more per 256 KiB, as the coordinator allows for receiving it.
    let deadline = std::time::Duration::from_secs(60 + (size >> 18));
    tokio::time::timeout(deadline, link.hand_over_blob(digest, size, &mut bytes))
        .await
        .map_err(|_| format!("handing over {digest} took over {} s", deadline.as_secs()))?
}

async fn send_file(link: &dyn CoordinatorLink, path: &Path, blob: &Blob) -> Result<(), String> {
    let file = tokio::fs::File::open(path).await.map_err(|e| format!("reading {}: {e}", path.display()))?;
    send_blob(link, &blob.digest, blob.size, file).await
}

/// Hands `image` over to the coordinator; returns the manifest it sent, as a push would.
pub async fn hand_over(link: &dyn CoordinatorLink, image: &Prepared) -> Result<PushedImage, String> {
    let mut layers = Vec::with_capacity(image.layers.len());
    for layer in &image.layers {
        let (path, gz) = (layer.path.clone(), layer.path.with_extension("tar.gz"));
        let out = gz.clone();
        let (blob, diff_id) = tokio::task::spawn_blocking(move || compress(&path, &out))
            .await
            .map_err(|e| format!("compressing: {e}"))??;
        if diff_id != layer.diff_id {
            return Err(format!(
                "layer {}: its bytes hash to {diff_id}, but the engine says {}",
                layer.path.display(),
                layer.diff_id
            ));
        }
        send_file(link, &gz, &blob).await?;
        let _ = tokio::fs::remove_file(&gz).await;
        layers.push(blob);
    }
    let config =
        Blob { media_type: oci::OCI_CONFIG.into(), digest: Digest::of(&image.config), size: image.config.len() as u64 };
    send_blob(link, &config.digest, config.size, &image.config[..]).await?;
    let manifest = oci::manifest_json(&config, &layers).map_err(|e| e.to_string())?;
    let digest = Digest::of(&manifest);
    send_blob(link, &digest, manifest.len() as u64, &manifest[..]).await?;
    Ok(PushedImage { digest, media_type: oci::OCI_MANIFEST.into(), size: manifest.len() as u64, bases: vec![] })
}
