//! Handing a built image to the coordinator, for a build that names no registry: each layer
//! compressed as for a push, then every blob (layers, config, the manifest last) sent on a
//! stream of its own. The coordinator stores them by digest, checks the image as it would a
//! push, and the client fetches them from it.

use crate::push::{compress, Prepared};
use archfarm_shared::codec;
use archfarm_shared::oci::{self, Blob};
use archfarm_shared::protocol::{AgentMessage, CoordinatorMessage, PushedImage};
use archfarm_shared::{tls, Digest};
use std::path::Path;
use tokio::io::AsyncRead;

/// Sends one blob of `size` bytes from `bytes`.
async fn send_blob(
    conn: &quinn::Connection,
    digest: &Digest,
    size: u64,
    mut bytes: impl AsyncRead + Unpin,
    max_frame: u32,
) -> Result<(), String> {
    // A minute, and a second more per 256 KiB, as the coordinator allows for receiving it.
    let deadline = std::time::Duration::from_secs(60 + (size >> 18));
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| tls::explain(&e))?;
        let head = AgentMessage::StoreBlob { digest: digest.clone(), size };
        codec::write_msg(&mut send, &head, max_frame).await.map_err(|e| e.to_string())?;
        tokio::io::copy(&mut bytes, &mut send).await.map_err(|e| format!("sending {digest}: {e}"))?;
        let _ = send.finish();
        match codec::expect_msg::<_, CoordinatorMessage>(&mut recv, max_frame).await {
            Ok(CoordinatorMessage::BlobStored) => Ok(()),
            Ok(CoordinatorMessage::BlobRefused { reason }) => {
                Err(format!("the coordinator refused {digest}: {reason}"))
            }
            Ok(_) => Err(format!("unexpected answer to handing over {digest}")),
            Err(e) => Err(format!("handing over {digest}: {e}")),
        }
    };
    tokio::time::timeout(deadline, exchange)
        .await
        .map_err(|_| format!("handing over {digest} took over {} s", deadline.as_secs()))?
}

async fn send_file(conn: &quinn::Connection, path: &Path, blob: &Blob, max: u32) -> Result<(), String> {
    let file = tokio::fs::File::open(path).await.map_err(|e| format!("reading {}: {e}", path.display()))?;
    send_blob(conn, &blob.digest, blob.size, file, max).await
}

/// Hands `image` over to the coordinator; returns the manifest it sent, as a push would.
pub async fn hand_over(conn: &quinn::Connection, image: &Prepared, max_frame: u32) -> Result<PushedImage, String> {
    let mut layers = Vec::with_capacity(image.layers.len());
    for layer in &image.layers {
        let (path, gz) = (layer.path.clone(), layer.path.with_extension("tar.gz"));
        let out = gz.clone();
        let blob = tokio::task::spawn_blocking(move || compress(&path, &out))
            .await
            .map_err(|e| format!("compressing: {e}"))??;
        send_file(conn, &gz, &blob, max_frame).await?;
        let _ = tokio::fs::remove_file(&gz).await;
        layers.push(blob);
    }
    let config =
        Blob { media_type: oci::OCI_CONFIG.into(), digest: Digest::of(&image.config), size: image.config.len() as u64 };
    send_blob(conn, &config.digest, config.size, &image.config[..], max_frame).await?;
    let manifest = oci::manifest_json(&config, &layers).map_err(|e| e.to_string())?;
    let digest = Digest::of(&manifest);
    send_blob(conn, &digest, manifest.len() as u64, &manifest[..], max_frame).await?;
    Ok(PushedImage { digest, media_type: oci::OCI_MANIFEST.into(), size: manifest.len() as u64, bases: vec![] })
}
