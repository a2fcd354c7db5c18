//! Reading blobs of a build's images from the coordinator, for a build that names no registry:
//! the agents handed them over there. Each blob streams to a file, checked against its digest.

use crate::Connection;
use anyhow::{bail, Context as _};
use archfarm_shared::protocol::{ClientRequest, ClientResponse};
use archfarm_shared::Digest;
use sha2::Digest as _;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the coordinator has to say whether it holds a blob.
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// Fetches blob `digest` into `path`; refuses one over `max` bytes before reading it.
pub async fn fetch(conn: &Connection, digest: &Digest, path: &Path, max: u64) -> anyhow::Result<u64> {
    let mut stream = conn.request(&ClientRequest::FetchBlob { digest: digest.clone() }).await?;
    stream.finish().await;
    let answer = tokio::time::timeout(ANSWER_WITHIN, conn.next(&mut stream))
        .await
        .with_context(|| format!("the coordinator did not answer for {digest} within {} s", ANSWER_WITHIN.as_secs()))?;
    let size = match answer? {
        Some(ClientResponse::BlobFollows { size }) => size,
        Some(ClientResponse::Error { message }) => bail!("{message}"),
        other => bail!("unexpected answer to fetching {digest}: {other:?}"),
    };
    if size > max {
        bail!("the coordinator announces {digest} at {size} bytes; at most {max} are read");
    }
    // A minute, and a second more per 256 KiB.
    let deadline = Duration::from_secs(60 + (size >> 18));
    let copy = async {
        let recv = stream.reader();
        let mut file = tokio::fs::File::create(path).await.with_context(|| format!("creating {}", path.display()))?;
        let (mut hasher, mut left, mut buf) = (sha2::Sha256::new(), size, vec![0u8; 256 << 10]);
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = AsyncReadExt::read(recv, &mut buf[..want]).await.with_context(|| format!("receiving {digest}"))?;
            if n == 0 {
                bail!("{digest} ended after {} of {size} bytes", size - left);
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).await?;
            left -= n as u64;
        }
        file.flush().await?;
        if Digest::from_sha256(hasher.finalize().into()) != *digest {
            bail!("{digest}: the bytes received do not match it");
        }
        Ok(size)
    };
    tokio::time::timeout(deadline, copy)
        .await
        .with_context(|| format!("fetching {digest} took over {} s", deadline.as_secs()))?
}
