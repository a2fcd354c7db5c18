//! Build requests: start one and follow it, list, show, watch, publish again, cancel.

use super::reply::Reply;
use crate::server::access::Principal;
use crate::server::build;
use crate::server::state::Shared;
use archfarm_shared::protocol::{BuildDetail, BuildEvent, BuildRequest, BuildState, BuildSummary, ClientResponse};
use archfarm_shared::BuildId;
use std::sync::Arc;
use tracing::info;

/// `archfarm build`: accepts the build and follows it to its end.
pub async fn submit(shared: &Arc<Shared>, who: &Principal, req: BuildRequest) -> Reply {
    match build::submit(shared, who, req).await {
        Ok((_, events)) => Reply::follow(vec![], events),
        Err(reason) => Reply::one(ClientResponse::Build(BuildEvent::Failed { reason })),
    }
}

/// `archfarm builds ls`: the newest builds, at most 1000; a build token's own only.
pub async fn list(shared: &Shared, who: &Principal, limit: u32) -> Reply {
    let owner = (!who.is_admin()).then_some(who.name.as_str());
    match shared.store.list(limit.min(1000), owner).await {
        Ok(builds) => Reply::one(ClientResponse::Builds(builds)),
        Err(e) => Reply::error(e.to_string()),
    }
}

/// `archfarm builds show`.
pub async fn show(shared: &Shared, who: &Principal, build: &BuildId) -> Reply {
    match owned(shared, who, build).await {
        Ok(detail) => Reply::one(ClientResponse::BuildDetail(detail)),
        Err(reply) => reply,
    }
}

/// The build, if `who` may see it. Another owner's build is answered as unknown, so a build
/// token learns nothing of builds that are not its own.
async fn owned(shared: &Shared, who: &Principal, build: &BuildId) -> Result<BuildDetail, Reply> {
    match shared.store.detail(build).await {
        Ok(Some(detail)) if who.owns(&detail.summary.owner) => Ok(detail),
        Ok(_) => Err(unknown(build)),
        Err(e) => Err(Reply::error(e.to_string())),
    }
}

/// `archfarm builds watch`: the build as it stands, then its events to the end; for a build
/// that already ended, its last event.
pub async fn watch(shared: &Shared, who: &Principal, build: &BuildId) -> Reply {
    // Subscribe before reading the snapshot, so no event falls between the two.
    let events = shared.live.get(build).map(|live| live.events.subscribe());
    let detail = match owned(shared, who, build).await {
        Ok(detail) => detail,
        Err(reply) => return reply,
    };
    let summary = detail.summary.clone();
    let snapshot = ClientResponse::BuildDetail(detail);
    match events {
        Some(events) if !summary.state.is_final() => Reply::follow(vec![snapshot], events),
        _ => Reply::many(vec![snapshot, ClientResponse::Build(final_event(&summary))]),
    }
}

/// `archfarm builds publish`: publishes a verified build's index without rebuilding.
pub async fn publish(shared: &Shared, who: &Principal, build: &BuildId, force: bool) -> Reply {
    let detail = match owned(shared, who, build).await {
        Ok(detail) => detail,
        Err(reply) => return reply,
    };
    match build::republish(shared, build, detail.summary.state, force).await {
        Ok(p) => {
            let mut message = format!("published index {} for build {build} as {}", p.index, p.written.join(", "));
            for kept in &p.kept {
                message.push_str(&format!("\nwarning: {kept}"));
            }
            Reply::one(ClientResponse::Done { message })
        }
        Err(message) => Reply::error(message),
    }
}

/// `archfarm builds cancel`.
pub async fn cancel(shared: &Shared, who: &Principal, build: &BuildId) -> Reply {
    let detail = match owned(shared, who, build).await {
        Ok(detail) => detail,
        Err(reply) => return reply,
    };
    if let Some(live) = shared.live.get(build) {
        info!(build = %build, "cancelling build on request");
        live.cancel.cancel();
        return Reply::one(ClientResponse::Done {
            message: format!("build {build} cancelled; its jobs are being stopped"),
        });
    }
    Reply::error(format!("build {build} already ended: {}", detail.summary.state))
}

fn unknown(build: &BuildId) -> Reply {
    Reply::error(format!("no build {build} on this coordinator (`archfarm builds ls` lists them)"))
}

/// The last event of a build that already ended, rebuilt from the store.
fn final_event(summary: &BuildSummary) -> BuildEvent {
    match (&summary.state, &summary.index) {
        (BuildState::Published, Some(index)) => {
            BuildEvent::Published { index: index.clone(), tags: summary.tags.clone(), platforms: vec![] }
        }
        _ => BuildEvent::Failed {
            reason: summary.error.clone().unwrap_or_else(|| format!("the build is {}", summary.state)),
        },
    }
}
