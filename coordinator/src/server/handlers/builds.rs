//! Build requests: start one and follow it, list, show, watch, retry, publish again, cancel.

use crate::server::access::Principal;
use crate::server::build;
use crate::server::reply::Reply;
use crate::server::state::Shared;
use archfarm_shared::protocol::{BuildDetail, BuildEvent, BuildRequest, BuildState, BuildSummary, ClientResponse};
use archfarm_shared::{platform, BuildId, Platform};
use std::sync::Arc;
use tracing::info;

/// `archfarm build`: accepts the build and follows it to its end.
pub async fn submit(shared: &Arc<Shared>, who: &Principal, req: BuildRequest) -> Reply {
    match build::submit(shared, who, req).await {
        Ok((_, events)) => Reply::follow(vec![], events),
        Err(reason) => Reply::one(ClientResponse::Build(BuildEvent::Failed { reason })),
    }
}

/// `archfarm builds ls`: the newest builds, at most 1000; a build token's own only. They go in
/// pages (`Builds` frames) of at most half a frame each, however long their tags and errors.
pub async fn list(shared: &Shared, who: &Principal, limit: u32) -> Reply {
    let owner = (!who.is_admin()).then_some(who.name.as_str());
    match shared.store.list(limit.min(1000), owner).await {
        Ok(builds) => Reply::pages(builds, shared.settings.max_frame as usize / 2, ClientResponse::Builds),
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

/// `archfarm builds retry`: the failed (or named) platforms of a failed or cancelled build run
/// again with fresh attempts, its verified platforms are kept, and it publishes as a build
/// does; answered as `watch` answers.
pub async fn retry(shared: &Arc<Shared>, who: &Principal, build: &BuildId, platforms: &[Platform]) -> Reply {
    if let Err(reply) = owned(shared, who, build).await {
        return reply;
    }
    if shared.live.get(build).is_some() {
        return Reply::error(format!("build {build} is running; it retries lost and failed attempts on its own"));
    }
    if let Err(message) = crate::server::gc::room_for_new_work(&shared.settings.retention) {
        return Reply::error(message);
    }
    match shared.store.request(build).await {
        Ok(Some(req)) if !shared.contexts.files.contains(&req.context) => {
            return Reply::error(format!(
                "build {build}'s context {} is no longer on the coordinator (garbage collection removes contexts \
                 after their retention): start it again with `archfarm build`",
                req.context
            ))
        }
        Ok(_) => {}
        Err(e) => return Reply::error(e.to_string()),
    }
    match shared.store.retry(build, platforms).await {
        Ok(Ok(again)) => {
            info!(build = %build, platforms = %platform::list(&again), "retrying build on request");
            if let Err(message) = build::resume(shared, build).await {
                return Reply::error(message);
            }
            watch(shared, who, build).await
        }
        Ok(Err(message)) => Reply::error(message),
        Err(e) => Reply::error(e.to_string()),
    }
}

/// `archfarm builds publish`: publishes a verified build's index without rebuilding.
pub async fn publish(shared: &Shared, who: &Principal, build: &BuildId, force: bool) -> Reply {
    let detail = match owned(shared, who, build).await {
        Ok(detail) => detail,
        Err(reply) => return reply,
    };
    match build::republish::republish(shared, build, detail.summary.state, force).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use archfarm_shared::protocol::BuildState;

    #[test]
    fn listings_go_in_pages_under_the_budget() {
        let build = |error: usize| BuildSummary {
            build: BuildId::random(),
            state: BuildState::Failed,
            created_ms: 0,
            finished_ms: None,
            platforms: vec![],
            tags: vec![],
            index: None,
            tests: vec![],
            error: Some("e".repeat(error)),
            owner: "ci".into(),
        };
        let builds: Vec<BuildSummary> = (0..100).map(|_| build(4000)).collect();
        let reply = Reply::pages(builds, 64 * 1024, ClientResponse::Builds);
        let pages = reply.responses();
        assert!(pages.len() >= 7, "{} pages", pages.len());
        let mut total = 0;
        for page in pages {
            let ClientResponse::Builds(b) = page else { panic!() };
            total += b.len();
            assert!(archfarm_shared::codec::encode(page, 64 * 1024).is_ok(), "a page over its frame");
        }
        assert_eq!(total, 100, "nothing lost");
        let empty = Reply::pages(Vec::<BuildSummary>::new(), 1024, ClientResponse::Builds);
        assert_eq!(empty.responses().len(), 1, "an empty listing is one empty page");
    }
}
