//! One build from request to index: validate, persist, one job per platform on an agent that
//! declares it, verify every pushed digest, publish the index only if all platforms succeeded.
//! Every step is in the store before it is acted on, so a restarted coordinator resumes the
//! build ([`resume`]).
//!
//! # Layout
//! - this file: accepting, resuming, running and ending a build; publishing its index.
//! - [`target`]: where a build's images go, from its checked request.
//! - [`job`]: one platform's job: kept from before a restart, or assembled and run.
//! - [`platform`]: one platform's attempts: get an agent, run, verify, retry elsewhere,
//!   give up, cancel.
//! - [`blame`]: whose fault a failed attempt is: a peer's second opinion, blame, quarantine.
//! - [`cache`]: the registry build cache: which caches a platform reads, writing them after.
//! - [`republish`]: `builds publish`: a verified build's index again, without rebuilding.

pub mod blame;
pub mod cache;
pub mod job;
#[cfg(test)]
mod life_tests;
pub mod platform;
#[cfg(test)]
mod platform_tests;
pub mod republish;
pub mod target;
#[cfg(test)]
mod testing;

use super::access::Principal;
use super::handover::StoredImages;
use super::live::Live;
use super::ports::{ImageCheck, InRepository};
use super::scheduler::fit::Wants;
use super::state::Shared;
use super::tags::rule::Mover;
use super::tags::writes;
use archfarm_shared::engine_needs::EngineNeed;
use archfarm_shared::oci::{Attestation, Child};
use archfarm_shared::protocol::{BuildEvent, BuildRequest, BuildState, JobState, PlatformResult};
use archfarm_shared::{dockerfile, scopes};
use archfarm_shared::{platform as platforms, BuildId, Digest, JobId, Platform};
use futures_util::future::join_all;
use platform::{JobLimits, Runner};
use std::sync::Arc;
use std::time::Duration;
use target::Target;
use tokio::sync::broadcast;
use tracing::{error, info, info_span, warn, Instrument};

/// How a build ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEnd {
    /// The index is published under the tags that could move.
    Published {
        /// The index digest.
        index: Digest,
        /// The tags written.
        tags: Vec<String>,
        /// Each platform's verified image.
        platforms: Vec<PlatformResult>,
    },
    /// Nothing was published, and why.
    Failed(String),
    /// Cancelled; nothing was published.
    Cancelled(String),
    /// Every platform was verified; the build did not ask to push, so no tag was written.
    Built {
        /// Each platform's verified image.
        platforms: Vec<PlatformResult>,
    },
}

/// Accepts a new build: checks it, records it, starts it. The receiver is subscribed before
/// the build starts, so it sees every event from `Accepted` on.
pub async fn submit(
    shared: &Arc<Shared>,
    owner: &Principal,
    req: BuildRequest,
) -> Result<(BuildId, broadcast::Receiver<BuildEvent>), String> {
    let target = Target::of(&req)?;
    owner.may_build(&req)?;
    super::gc::room_for_new_work(&shared.settings.retention)?;
    if !shared.contexts.usable(&shared.store, owner, &req.context).await? {
        return Err(format!("build context {} is not on the coordinator; upload it first", req.context));
    }
    check_reads(shared, owner, &req).await?;
    // Optional platforms no agent fits now are left out at once, not refused.
    let needs = EngineNeed::of_request(&req);
    let wants: Vec<Wants> = req
        .platforms
        .iter()
        .filter(|p| !req.is_optional(p))
        .map(|p| Wants::of(p, &req.requirements, &needs, None))
        .collect();
    shared.farm.check(&wants).map_err(|e| e.to_string())?;
    let id = BuildId::random();
    let jobs: Vec<(JobId, Platform)> = req.platforms.iter().map(|p| (JobId::random(), p.clone())).collect();
    shared
        .store
        .create_build(&id, (&owner.name, &owner.scopes), &req, &jobs)
        .await
        .map_err(|e| format!("the coordinator cannot record the build: {e}"))?;
    for (job, platform) in jobs.iter().filter(|(_, p)| req.is_optional(p)) {
        let wants = Wants::of(platform, &req.requirements, &needs, None);
        if let Err(no_agent) = shared.farm.check(std::slice::from_ref(&wants)) {
            let reason = no_agent.to_string();
            shared.store.job_ended(job, JobState::LeftOut, &reason).await.map_err(|e| e.to_string())?;
        }
    }
    let live = shared.live.start(&id);
    let rx = live.events.subscribe();
    spawn(shared.clone(), id.clone(), req, target, live);
    Ok((id, rx))
}

/// Refuses, before anything runs, a build whose Dockerfile reads an image outside its token's
/// scopes on a registry some connected agent holds credentials for. The agent that takes a job
/// checks again, with its own credentials, before it pulls anything.
async fn check_reads(shared: &Shared, owner: &Principal, req: &BuildRequest) -> Result<(), String> {
    if owner.scopes.is_empty() {
        return Ok(());
    }
    let (path, name) = (shared.contexts.files.path(&req.context), req.dockerfile.clone());
    let read = tokio::task::spawn_blocking(move || dockerfile::read_dockerfile(&path, &name));
    // A context without its Dockerfile fails on the agent, saying so.
    let Some(text) = read.await.map_err(|e| format!("reading the Dockerfile: {e}"))? else { return Ok(()) };
    let uses = dockerfile::references(&text, &req.build_args);
    let guarded = shared.farm.credentialed_registries();
    scopes::check_reads(&uses, &owner.scopes, &req.dockerfile, |host| guarded.contains(host))
}

/// Resumes a build found unfinished in the store after a restart. Verified platforms are kept;
/// the others run again.
pub async fn resume(shared: &Arc<Shared>, id: &BuildId) -> Result<(), String> {
    let req = shared
        .store
        .request(id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("build {id} is not in the store"))?;
    // Checked again: the rules may have tightened since it was accepted.
    let target = Target::of(&req)?;
    let live = shared.live.start(id);
    info!(build = %id, "resuming build after restart");
    spawn(shared.clone(), id.clone(), req, target, live);
    Ok(())
}

fn spawn(shared: Arc<Shared>, id: BuildId, req: BuildRequest, target: Option<Target>, live: Live) {
    let span = info_span!("build", build = %id);
    tokio::spawn(
        async move {
            let end = run(&shared, &id, &req, target.as_ref(), &live).await;
            // A build cancelled while publishing ends cancelled too.
            let end = match end {
                BuildEnd::Failed(reason) if live.cancel.is_cancelled() => BuildEnd::Cancelled(reason),
                other => other,
            };
            // Persisted first, then announced.
            let (state, index, error) = match &end {
                BuildEnd::Published { index, .. } => (BuildState::Published, Some(index), None),
                BuildEnd::Failed(reason) => (BuildState::Failed, None, Some(reason.as_str())),
                BuildEnd::Cancelled(reason) => (BuildState::Cancelled, None, Some(reason.as_str())),
                BuildEnd::Built { .. } => (BuildState::Built, None, None),
            };
            if let Err(e) = shared.store.set_build_state(&id, state, index, error).await {
                error!("cannot record the end of the build: {e}");
            }
            shared.metrics.build_ended(state);
            live.emit(match end {
                BuildEnd::Published { index, tags, platforms } => BuildEvent::Published { index, tags, platforms },
                BuildEnd::Failed(reason) | BuildEnd::Cancelled(reason) => BuildEvent::Failed { reason },
                BuildEnd::Built { platforms } => BuildEvent::Built { platforms },
            });
            shared.live.end(&id);
        }
        .instrument(span),
    );
}

/// Runs every platform of the build, then publishes the index if all were verified.
/// `target` is where [`Target::of`] said its images go.
pub async fn run(
    shared: &Arc<Shared>,
    id: &BuildId,
    req: &BuildRequest,
    target: Option<&Target>,
    live: &Live,
) -> BuildEnd {
    live.emit(BuildEvent::Accepted { build: id.clone() });
    info!(platforms = %platforms::list(&req.platforms), tags = %req.tags.join(","), "build running");
    let jobs = match shared.store.jobs(id).await {
        Ok(jobs) => jobs,
        Err(e) => return BuildEnd::Failed(e.to_string()),
    };
    let read_scopes = match shared.store.read_scopes(id).await {
        Ok(scopes) => scopes,
        Err(e) => return BuildEnd::Failed(e.to_string()),
    };
    let in_registry = target.map(|t| InRepository { store: &*shared.registry, repo: &t.repo });
    let handed_over = StoredImages { handovers: &shared.handovers };
    let images: &dyn ImageCheck = match &in_registry {
        Some(r) => r,
        None => &handed_over,
    };
    let runner = Runner {
        farm: &shared.farm,
        store: &shared.store,
        images,
        metrics: &shared.metrics,
        max_attempts: shared.settings.max_attempts,
        quarantine_after: shared.settings.quarantine_after,
        limits: JobLimits {
            timeout: req.job_timeout_secs.map_or(shared.settings.job_timeout, Duration::from_secs),
            idle: req.idle_timeout_secs.map_or(shared.settings.job_idle_timeout, Duration::from_secs),
        },
        optional: false,
        attempts_base: 0,
        provenance: req.provenance.then_some(platform::Origin { build: id, request: req }),
        read_scopes: &read_scopes,
    };
    // Each job watches the cancel token itself, so a running job's stream is reset (which stops
    // it on the agent) rather than merely dropped.
    let results = join_all(jobs.into_iter().map(|job| job::run(runner, shared, target, id, req, job, live))).await;
    if live.cancel.is_cancelled() {
        for job in shared.store.jobs(id).await.unwrap_or_default() {
            if let Err(e) = shared.store.job_ended(&job.job, JobState::Cancelled, "cancelled").await {
                warn!(job = %job.job, "cannot record the cancelled job: {e}");
            }
        }
        return BuildEnd::Cancelled("the build was cancelled; nothing was published".into());
    }
    let (verified, failures): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    if !failures.is_empty() {
        warn!("build failed");
        let failures: Vec<String> = failures.into_iter().filter_map(Result::err).collect();
        return BuildEnd::Failed(format!("nothing was published:\n{}", failures.join("\n")));
    }
    // Optional platforms left out are `Ok(None)`.
    let (children, platforms): (Vec<Child>, Vec<PlatformResult>) = verified.into_iter().flatten().flatten().unzip();
    if children.is_empty() {
        return BuildEnd::Failed("every platform was optional and left out; nothing was published".into());
    }
    // A cache of every stage was exported by each platform's BuildKit; of the final stage, it is the image.
    if let (Some(cache_to), Some(target), false) = (&req.cache_to, target, req.cache_max) {
        cache::write(&*shared.registry, &target.repo, cache_to, &children, live).await;
    }
    publish_verified(shared, id, req, target, children, platforms, live).await
}

/// Publishes the index of a build whose platforms are all verified (or optional and left
/// out), if it asked to push.
async fn publish_verified(
    shared: &Arc<Shared>,
    id: &BuildId,
    req: &BuildRequest,
    target: Option<&Target>,
    children: Vec<Child>,
    platforms: Vec<PlatformResult>,
    live: &Live,
) -> BuildEnd {
    if !req.push {
        info!("every platform verified; not tagged (the build did not ask to push)");
        return BuildEnd::Built { platforms };
    }
    let Some(target) = target else {
        return BuildEnd::Failed("the build asks to push but names no registry (-t)".into());
    };
    if let Err(e) = shared.store.set_build_state(id, BuildState::Publishing, None, None).await {
        return BuildEnd::Failed(format!(
            "every platform was verified, but the coordinator cannot record that it publishes, so it does not: {e}. \
             `archfarm builds publish {id}` publishes them once it can"
        ));
    }
    let created_ms = match shared.store.build_created_ms(id).await {
        Ok(ms) => ms,
        Err(e) => return BuildEnd::Failed(e.to_string()),
    };
    let mover = Mover { build: id, created_ms, again: false, force: false };
    let attestations: Vec<Attestation> = platforms.iter().filter_map(|p| p.attestation.clone()).collect();
    match writes::publish(shared.tag_writer(), &target.tags, &children, &attestations, mover).await {
        Ok(p) => {
            info!(index = %p.index, "index published");
            for reason in p.kept {
                live.emit(BuildEvent::TagKept { reason });
            }
            BuildEnd::Published { index: p.index, tags: p.written, platforms }
        }
        Err(e) => {
            warn!("publishing failed: {e}");
            BuildEnd::Failed(format!(
                "every platform was verified, but publishing the index failed: {e}. The verified images are kept: \
                 `archfarm builds publish {id}` publishes them without rebuilding"
            ))
        }
    }
}
