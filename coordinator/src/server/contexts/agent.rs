//! An agent fetching a build context: it names the context by digest on a stream of its own,
//! and the coordinator sends the stored tarball, or says why not. An agent gets only the
//! contexts of the jobs it runs ([`crate::server::agent_link::limits::Grants`] decides, and
//! the caller passes the answer).

use super::Contexts;
use archfarm_shared::protocol::CoordinatorMessage;
use archfarm_shared::stream::QuicStream;
use archfarm_shared::Digest;
use tracing::{info, warn};

/// Sends context `digest` on `stream`, if `allowed` (a job of this agent uses it) and held.
pub async fn send_context(contexts: &Contexts, digest: &Digest, allowed: bool, mut stream: QuicStream) {
    if !allowed {
        warn!(context = %digest, "refused a context fetch: no job of this agent uses it");
        let reason = format!("build context {digest} belongs to no job this agent runs now");
        return drop(stream.write_last(&CoordinatorMessage::ContextMissing { reason }).await);
    }
    let Some(size) = contexts.files.size(digest).await else {
        let reason = format!(
            "the coordinator does not hold build context {digest} any more (its storage lost it): run the build \
             again, which uploads it"
        );
        return drop(stream.write_last(&CoordinatorMessage::ContextMissing { reason }).await);
    };
    if stream.write(&CoordinatorMessage::ContextFollows { size }).await.is_ok() {
        match contexts.files.send(digest, stream.writer()).await {
            Ok(_) => info!(context = %digest, bytes = size, "sent build context"),
            Err(e) => warn!(context = %digest, "sending build context failed: {e}"),
        }
        stream.finish().await;
    }
}
