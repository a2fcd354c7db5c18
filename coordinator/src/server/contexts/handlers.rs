//! The client's requests about build contexts: whether the coordinator holds one, and uploads
//! (whole or in chunks).

use super::{receive, uploads};
use crate::server::access::Principal;
use crate::server::gc;
use crate::server::reply::Reply;
use crate::server::state::Shared;
use archfarm_shared::chunking::Chunk;
use archfarm_shared::protocol::ClientResponse;
use archfarm_shared::stream::QuicStream;
use archfarm_shared::Digest;
use tracing::{info, warn};

/// Whether the context is stored already (then the client skips the upload).
/// One that is present is marked used, so garbage collection keeps it for the build about to
/// name it.
/// A context another token uploaded is answered as absent: the client then uploads it (which
/// costs nothing where the chunks are stored, but proves it holds every one of them).
pub async fn has(shared: &Shared, who: &Principal, digest: &Digest) -> Reply {
    let present = match shared.contexts.usable(&shared.store, who, digest).await {
        Ok(present) => present,
        Err(e) => return Reply::error(e),
    };
    if present {
        shared.contexts.files.touch(digest);
    }
    Reply::one(ClientResponse::ContextPresent(present))
}

/// Records that `who` uploaded `digest`; a context whose upload cannot be recorded is refused.
async fn uploaded(shared: &Shared, who: &Principal, digest: &Digest) -> Result<(), String> {
    shared
        .store
        .context_uploaded(digest, &who.name)
        .await
        .map_err(|e| format!("the context was received, but the coordinator cannot record who sent it: {e}"))
}

/// A context sent whole on this stream.
pub async fn upload(shared: &Shared, who: &Principal, digest: &Digest, size: u64, stream: &mut QuicStream) -> Reply {
    if let Err(message) = who.may_write().and_then(|()| gc::room_for_new_work(&shared.settings.retention)) {
        return refuse(stream, message);
    }
    // Its bytes are already on their way: one that waited would fill the connection's window
    // and stall the uploads running beside it. It starts now or is refused.
    let _upload = match shared.contexts.uploads.begin(&who.name, std::time::Duration::ZERO).await {
        Ok(upload) => upload,
        Err(message) => return refuse(stream, message),
    };
    match receive::receive_whole(&shared.contexts, digest, size, stream).await.and(uploaded(shared, who, digest).await)
    {
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
    stream: &mut QuicStream,
) -> Reply {
    if let Err(message) = who.may_write().and_then(|()| gc::room_for_new_work(&shared.settings.retention)) {
        return refuse(stream, message);
    }
    let _upload = match shared.contexts.uploads.begin(&who.name, uploads::QUEUE_WAIT).await {
        Ok(upload) => upload,
        Err(message) => return refuse(stream, message),
    };
    let count = chunks.len();
    let owned = match shared.contexts.usable(&shared.store, who, digest).await {
        Ok(owned) => owned,
        Err(message) => return refuse(stream, message),
    };
    let received = match receive::receive_chunked(&shared.contexts, digest, size, chunks, owned, stream).await {
        Ok(sent) => uploaded(shared, who, digest).await.map(|()| sent),
        Err(e) => Err(e),
    };
    match received {
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
fn refuse(stream: &mut QuicStream, message: String) -> Reply {
    warn!("refused an upload: {message}");
    stream.stop_reading(0);
    Reply::error(message)
}
