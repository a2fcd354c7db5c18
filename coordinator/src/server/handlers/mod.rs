//! One handler per client request. The client session reads a request from its stream and
//! [`handle`] routes it; each handler returns a [`Reply`] ([`crate::server::reply`]), which is
//! written back on the same stream.
//!
//! # Layout
//! - [`builds`]: starting, listing, showing, watching, publishing and cancelling builds.
//! - [`admin`]: join tokens, client tokens, revoking, draining and unquarantining agents,
//!   pruning the coordinator's history.
//! - [`housekeeping`]: agents' caches: inspect, disk usage, prune.
//!
//! Build contexts and handed-over blobs are served by their own concepts
//! ([`crate::server::contexts::handlers`], [`crate::server::handover::streams`]).

pub mod admin;
pub mod builds;
pub mod housekeeping;

use super::access::Principal;
use super::contexts::handlers as contexts;
use super::reply::Reply;
use super::state::Shared;
use super::store::certificates::Binding;
use archfarm_shared::protocol::{AgentChange, ClientRequest, ClientResponse};
use archfarm_shared::stream::QuicStream;
use std::sync::Arc;
use tracing::warn;

/// Serves request `req` of an authenticated client, `who`, and answers on `stream`, the
/// stream it came on.
pub async fn handle(shared: Arc<Shared>, who: Arc<Principal>, req: ClientRequest, mut stream: QuicStream) {
    if let Some(what) = admin_only(&req) {
        if let Err(message) = who.require_admin(what) {
            warn!(token = %who.name, "refused: {message}");
            return Reply::error(message).send(stream).await;
        }
    }
    let reply = match req {
        ClientRequest::Hello { .. } => Reply::error("already authenticated"),
        ClientRequest::ListAgents => {
            Reply::pages(shared.farm.agents(), shared.settings.max_frame as usize / 2, ClientResponse::Agents)
        }
        ClientRequest::HasContext { digest } => contexts::has(&shared, &who, &digest).await,
        ClientRequest::UploadContext { digest, size } => {
            contexts::upload(&shared, &who, &digest, size, &mut stream).await
        }
        ClientRequest::UploadChunked { digest, size, chunks } => {
            contexts::upload_chunked(&shared, &who, &digest, size, chunks, &mut stream).await
        }
        ClientRequest::Build(req) => builds::submit(&shared, &who, *req).await,
        ClientRequest::ListBuilds { limit } => builds::list(&shared, &who, limit).await,
        ClientRequest::ShowBuild { build } => builds::show(&shared, &who, &build).await,
        ClientRequest::WatchBuild { build } => builds::watch(&shared, &who, &build).await,
        ClientRequest::PublishBuild { build, force } => builds::publish(&shared, &who, &build, force).await,
        ClientRequest::CancelBuild { build } => builds::cancel(&shared, &who, &build).await,
        ClientRequest::RetryBuild { build, platforms } => builds::retry(&shared, &who, &build, &platforms).await,
        ClientRequest::CreateJoinToken { ttl_secs, name, platforms } => {
            admin::create_join_token(&shared, ttl_secs, Binding { name, platforms }).await
        }
        ClientRequest::RevokeAgent { name, serial } => admin::revoke_agent(&shared, &name, serial.as_deref()).await,
        ClientRequest::CreateClientToken { name, role, scopes } => {
            admin::create_client_token(&shared, &name, role, &scopes).await
        }
        ClientRequest::RevokeClientToken { name } => admin::revoke_client_token(&shared, &name).await,
        ClientRequest::PruneBuilds => admin::prune_builds(&shared).await,
        ClientRequest::ChangeAgent { name, change } => admin::change_agent(&shared, &name, change).await,
        ClientRequest::FetchBlob { digest } => {
            crate::server::handover::streams::send(shared.handovers.store(), &digest, &mut stream).await
        }
        ClientRequest::InspectAgent { name } => housekeeping::inspect(&shared, &name).await,
        ClientRequest::AgentDiskUsage { name } => housekeeping::disk_usage(&shared, name.as_ref()).await,
        ClientRequest::PruneAgents { name, all, keep_storage, force } => {
            housekeeping::prune(&shared, name.as_ref(), all, keep_storage, force).await
        }
    };
    reply.send(stream).await;
}

/// What an admin-only request does, in words for the refusal; `None` for the others.
fn admin_only(req: &ClientRequest) -> Option<&'static str> {
    Some(match req {
        ClientRequest::CreateJoinToken { .. } => "creating a join token",
        ClientRequest::RevokeAgent { .. } => "revoking an agent",
        ClientRequest::CreateClientToken { .. } => "creating a client token",
        ClientRequest::RevokeClientToken { .. } => "revoking a client token",
        ClientRequest::PruneAgents { .. } => "pruning agents' caches",
        // Each makes every agent it names walk its disk.
        ClientRequest::AgentDiskUsage { .. } => "asking agents for their disk usage",
        ClientRequest::InspectAgent { .. } => "inspecting an agent's host",
        ClientRequest::PruneBuilds => "pruning build history and contexts",
        ClientRequest::ChangeAgent { change: AgentChange::Drain, .. } => "draining an agent",
        ClientRequest::ChangeAgent { change: AgentChange::Undrain, .. } => "undraining an agent",
        ClientRequest::ChangeAgent { change: AgentChange::Unquarantine, .. } => "lifting an agent's quarantine",
        _ => return None,
    })
}
