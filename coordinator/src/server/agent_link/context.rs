//! Context streams: an agent opens a stream, names the build context it needs by digest, and
//! the coordinator sends the stored tarball (or says it does not hold it). An agent gets only
//! the contexts of the jobs it runs, and hands over image blobs only while it runs one.

use super::super::state::Shared;
use super::super::wire::{on_codec_error, unexpected};
use super::limits::Grants;
use archfarm_shared::codec;
use archfarm_shared::protocol::{AgentMessage, CoordinatorMessage};
use tracing::{info, warn};

/// Serves a stream the agent opened: a context fetch, or a blob of an image it hands over.
pub async fn serve(
    shared: &Shared,
    conn: &quinn::Connection,
    grants: &Grants,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let max = shared.settings.max_frame;
    let digest = match codec::expect_msg::<_, AgentMessage>(&mut recv, max).await {
        Ok(AgentMessage::FetchContext { digest }) => digest,
        Ok(AgentMessage::StoreBlob { .. }) if !grants.any() => {
            let reason = "this agent runs no job: it has no image to hand over".to_owned();
            warn!("refused an image blob: {reason}");
            let _ = codec::write_msg(&mut send, &CoordinatorMessage::BlobRefused { reason }, max).await;
            let _ = send.finish();
            return;
        }
        Ok(AgentMessage::StoreBlob { digest, size }) => {
            // A minute, and a second more per 256 KiB: a stalled sender does not hold the stream.
            let deadline = std::time::Duration::from_secs(60 + (size >> 18));
            let receiving = shared.images.receive(&digest, size, &mut recv);
            let answer = match tokio::time::timeout(deadline, receiving).await {
                Ok(Ok(_)) => CoordinatorMessage::BlobStored,
                Ok(Err(reason)) => CoordinatorMessage::BlobRefused { reason },
                Err(_) => {
                    let reason = format!("{digest} did not arrive within {} s", deadline.as_secs());
                    CoordinatorMessage::BlobRefused { reason }
                }
            };
            let _ = codec::write_msg(&mut send, &answer, max).await;
            let _ = send.finish();
            return;
        }
        Ok(other) => return drop(unexpected(conn, &other, "a new stream")),
        Err(e) => return drop(on_codec_error(conn, &e, "context stream")),
    };
    if !grants.allows(&digest) {
        warn!(context = %digest, "refused a context fetch: no job of this agent uses it");
        let reason = format!("build context {digest} belongs to no job this agent runs now");
        let _ = codec::write_msg(&mut send, &CoordinatorMessage::ContextMissing { reason }, max).await;
        let _ = send.finish();
        return;
    }
    let Some(size) = shared.contexts.size(&digest).await else {
        let reason = format!(
            "the coordinator does not hold build context {digest} any more (its storage lost it): run the build \
             again, which uploads it"
        );
        let _ = codec::write_msg(&mut send, &CoordinatorMessage::ContextMissing { reason }, max).await;
        let _ = send.finish();
        return;
    };
    if codec::write_msg(&mut send, &CoordinatorMessage::ContextFollows { size }, max).await.is_ok() {
        match shared.contexts.send(&digest, &mut send).await {
            Ok(_) => info!(context = %digest, bytes = size, "sent build context"),
            Err(e) => warn!(context = %digest, "sending build context failed: {e}"),
        }
        let _ = send.finish();
    }
}
