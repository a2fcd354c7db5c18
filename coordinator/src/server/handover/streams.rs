//! The streams that move handed-over blobs: an agent storing one while it runs a job, and a
//! client fetching one for `--load` or `--output` of a build that named no registry.

use crate::server::reply::Reply;
use archfarm_shared::content::ContentStore;
use archfarm_shared::protocol::{ClientResponse, CoordinatorMessage};
use archfarm_shared::stream::QuicStream;
use archfarm_shared::Digest;
use tracing::warn;

/// Receives blob `digest` of `size` bytes from an agent, if it runs a job (`running`).
pub async fn receive(blobs: &ContentStore, digest: &Digest, size: u64, running: bool, mut stream: QuicStream) {
    if !running {
        let reason = "this agent runs no job: it has no image to hand over".to_owned();
        warn!("refused an image blob: {reason}");
        return drop(stream.write_last(&CoordinatorMessage::BlobRefused { reason }).await);
    }
    // A minute, and a second more per 256 KiB: a stalled sender does not hold the stream.
    let deadline = std::time::Duration::from_secs(60 + (size >> 18));
    let receiving = blobs.receive(digest, size, stream.reader());
    let reply = match tokio::time::timeout(deadline, receiving).await {
        Ok(Ok(_)) => CoordinatorMessage::BlobStored,
        Ok(Err(reason)) => CoordinatorMessage::BlobRefused { reason },
        Err(_) => {
            let reason = format!("{digest} did not arrive within {} s", deadline.as_secs());
            CoordinatorMessage::BlobRefused { reason }
        }
    };
    let _ = stream.write_last(&reply).await;
}

/// A client's `FetchBlob`: `BlobFollows` and the blob's bytes, written here; the reply is then
/// empty.
pub async fn send(blobs: &ContentStore, digest: &Digest, stream: &mut QuicStream) -> Reply {
    let Some(size) = blobs.size(digest).await else {
        return Reply::error(format!("the coordinator holds no image blob {digest}"));
    };
    if stream.write(&ClientResponse::BlobFollows { size }).await.is_ok() {
        if let Err(e) = blobs.send(digest, stream.writer()).await {
            warn!(blob = %digest, "sending an image blob failed: {e}");
        }
    }
    Reply::many(vec![])
}
