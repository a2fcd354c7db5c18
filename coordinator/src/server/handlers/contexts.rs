//! Build contexts: whether the coordinator holds one, and uploads (whole or in chunks).

use super::reply::Reply;
use crate::server::access::Principal;
use crate::server::context_receive;
use crate::server::state::Shared;
use crate::server::{gc, uploads};
use archfarm_shared::chunking::Chunk;
use archfarm_shared::protocol::ClientResponse;
use archfarm_shared::Digest;
use tracing::{info, warn};

/// Whether the context is stored already (then the client skips the upload).
/// One that is present is marked used, so garbage collection keeps it for the build about to
/// name it.
pub fn has(shared: &Shared, digest: &Digest) -> Reply {
    let present = shared.contexts.contains(digest);
    if present {
        shared.contexts.touch(digest);
    }
    Reply::one(ClientResponse::ContextPresent(present))
}

/// A context sent whole on this stream.
pub async fn upload(
    shared: &Shared,
    who: &Principal,
    digest: &Digest,
    size: u64,
    recv: &mut quinn::RecvStream,
) -> Reply {
    if let Err(message) = who.may_write().and_then(|()| gc::room_for_new_work(&shared.settings.retention)) {
        return refuse(recv, message);
    }
    // Its bytes are already on their way: one that waited would fill the connection's window
    // and stall the uploads running beside it. It starts now or is refused.
    let _upload = match shared.uploads.begin(&who.name, std::time::Duration::ZERO).await {
        Ok(upload) => upload,
        Err(message) => return refuse(recv, message),
    };
    match context_receive::receive_whole(shared, digest, size, recv).await {
        Ok(()) => {
            info!(context = %digest, bytes = size, "stored build context");
            shared.metrics.uploaded(size);
            Reply::one(ClientResponse::ContextStored)
        }
        Err(message) => Reply::error(message),
    }
}

/// A context sent as content-defined chunks: only those the coordinator lacks travel.
pub async fn upload_chunked(
    shared: &Shared,
    who: &Principal,
    digest: &Digest,
    size: u64,
    chunks: Vec<Chunk>,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Reply {
    if let Err(message) = who.may_write().and_then(|()| gc::room_for_new_work(&shared.settings.retention)) {
        return refuse(recv, message);
    }
    let _upload = match shared.uploads.begin(&who.name, uploads::QUEUE_WAIT).await {
        Ok(upload) => upload,
        Err(message) => return refuse(recv, message),
    };
    let count = chunks.len();
    match context_receive::receive_chunked(shared, digest, size, chunks, send, recv).await {
        Ok(sent) => {
            info!(context = %digest, bytes = size, chunks = count, received = sent, "stored build context");
            shared.metrics.uploaded(sent);
            Reply::one(ClientResponse::ContextStored)
        }
        Err(message) => {
            warn!(context = %digest, "refused build context: {message}");
            Reply::error(message)
        }
    }
}

/// Refuses an upload before reading it: the client's bytes are not wanted.
fn refuse(recv: &mut quinn::RecvStream, message: String) -> Reply {
    warn!("refused an upload: {message}");
    let _ = recv.stop(0u32.into());
    Reply::error(message)
}

/// A blob of an image an agent handed over (a build that names no registry): `BlobFollows`
/// and its bytes, written here; the reply is then empty.
pub async fn fetch_blob(shared: &Shared, digest: &archfarm_shared::Digest, send: &mut quinn::SendStream) -> Reply {
    let Some(size) = shared.images.size(digest).await else {
        return Reply::error(format!("the coordinator holds no image blob {digest}"));
    };
    let max = shared.settings.max_frame;
    if archfarm_shared::codec::write_msg(send, &ClientResponse::BlobFollows { size }, max).await.is_ok() {
        if let Err(e) = shared.images.send(digest, send).await {
            tracing::warn!(blob = %digest, "sending an image blob failed: {e}");
        }
    }
    Reply::many(vec![])
}
