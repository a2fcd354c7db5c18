//! The streams that move handed-over blobs: an agent storing one while it runs a job, and a
//! client fetching one for `--load` or `--output` of a build that named no registry.

use super::budget::HandOvers;
use crate::server::reply::Reply;
use archfarm_shared::content::ContentStore;
use archfarm_shared::protocol::{ClientResponse, CoordinatorMessage};
use archfarm_shared::stream::QuicStream;
use archfarm_shared::{AgentName, Digest, JobId};
use tracing::warn;

/// Receives blob `digest` of `size` bytes from `agent` for attempt `job`, if the attempt runs
/// and the blob fits in what it may hand over ([`HandOvers::admit`]).
pub async fn receive(
    handovers: &HandOvers,
    (agent, job): (&AgentName, &JobId),
    digest: &Digest,
    size: u64,
    mut stream: QuicStream,
) {
    if let Err(reason) = handovers.admit(agent, job, digest, size) {
        warn!(blob = %digest, "refused an image blob: {reason}");
        return drop(stream.write_last(&CoordinatorMessage::BlobRefused { reason }).await);
    }
    let blobs = handovers.store();
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
