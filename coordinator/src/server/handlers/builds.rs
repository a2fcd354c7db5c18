//! Build requests: start one and follow it, list, show, watch, publish again, cancel.

use super::reply::Reply;
use crate::server::build;
use crate::server::state::Shared;
use archfarm_shared::protocol::{BuildEvent, BuildRequest, BuildState, BuildSummary, ClientResponse};
use archfarm_shared::BuildId;
use std::sync::Arc;
use tracing::info;

/// `archfarm build`: accepts the build and follows it to its end.
pub async fn submit(shared: &Arc<Shared>, req: BuildRequest) -> Reply {
    match build::submit(shared, req).await {
        Ok((_, events)) => Reply::follow(vec![], events),
        Err(reason) => Reply::one(ClientResponse::Build(BuildEvent::Failed { reason })),
    }
}

/// `archfarm builds ls`: the newest builds, at most 1000.
pub async fn list(shared: &Shared, limit: u32) -> Reply {
    match shared.store.list(limit.min(1000)).await {
        Ok(builds) => Reply::one(ClientResponse::Builds(builds)),
        Err(e) => Reply::error(e.to_string()),
    }
}

/// `archfarm builds show`.
pub async fn show(shared: &Shared, build: &BuildId) -> Reply {
    match shared.store.detail(build).await {
        Ok(Some(detail)) => Reply::one(ClientResponse::BuildDetail(detail)),
        Ok(None) => unknown(build),
        Err(e) => Reply::error(e.to_string()),
    }
}

/// `archfarm builds watch`: the build as it stands, then its events to the end; for a build
/// that already ended, its last event.
pub async fn watch(shared: &Shared, build: &BuildId) -> Reply {
    // Subscribe before reading the snapshot, so no event falls between the two.
    let events = shared.live.get(build).map(|live| live.events.subscribe());
    let detail = match shared.store.detail(build).await {
        Ok(Some(detail)) => detail,
        Ok(None) => return unknown(build),
        Err(e) => return Reply::error(e.to_string()),
    };
    let summary = detail.summary.clone();
    let snapshot = ClientResponse::BuildDetail(detail);
    match events {
        Some(events) if !summary.state.is_final() => Reply::follow(vec![snapshot], events),
        _ => Reply::many(vec![snapshot, ClientResponse::Build(final_event(&summary))]),
    }
}

/// `archfarm builds publish`: publishes a verified build's index without rebuilding.
pub async fn publish(shared: &Shared, build: &BuildId) -> Reply {
    match build::republish(shared, build).await {
        Ok(index) => Reply::one(ClientResponse::Done { message: format!("published index {index} for build {build}") }),
        Err(message) => Reply::error(message),
    }
}

/// `archfarm builds cancel`.
pub async fn cancel(shared: &Shared, build: &BuildId) -> Reply {
    if let Some(live) = shared.live.get(build) {
        info!(build = %build, "cancelling build on request");
        live.cancel.cancel();
        return Reply::one(ClientResponse::Done {
            message: format!("build {build} cancelled; its jobs are being stopped"),
        });
    }
    match shared.store.detail(build).await {
        Ok(Some(d)) => Reply::error(format!("build {build} already ended: {}", d.summary.state)),
        Ok(None) => unknown(build),
        Err(e) => Reply::error(e.to_string()),
    }
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
