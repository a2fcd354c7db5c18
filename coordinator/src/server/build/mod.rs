//! One build from request to index: validate, persist, one job per platform on an agent that
//! declares it, verify every pushed digest, publish the index only if all platforms succeeded.
//! Every step is in the store before it is acted on, so a restarted coordinator resumes the
//! build ([`resume`]).
//!
//! # Layout
//! - this file: accepting, resuming and ending a build; publishing its index.
//! - [`platform`]: one platform's attempts: get an agent, run, verify, retry elsewhere,
//!   quarantine, give up, cancel.
//! - [`tagging`]: writing the index under the tags that may move, each recorded.

pub mod platform;
#[cfg(test)]
mod platform_tests;
pub mod tagging;

use super::access::Principal;
use super::live::Live;
use super::ports::ImageCheck;
use super::publish::RegistryImages;
use super::scheduler::Wants;
use super::state::Shared;
use super::store::builds::StoredJob;
use super::stored_images::StoredImages;
use super::tags::Mover;
use archfarm_shared::oci::{Attestation, Blob, Child};
use archfarm_shared::outcome::AttemptOutcome;
use archfarm_shared::protocol::{BuildEvent, BuildRequest, BuildState, JobSpec, JobState, PlatformResult};
use archfarm_shared::reference::ImageRef;
use archfarm_shared::registry::{Registry, RegistryClients};
use archfarm_shared::{cache, request};
use archfarm_shared::{platform as platforms, BuildId, Digest, JobId, Platform};
use futures_util::future::join_all;
use platform::{JobLimits, Runner, Verified};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tracing::{error, info, info_span, warn, Instrument};

/// Where a build's images go.
struct Plan {
    /// The registry: none when the build names no tag, and its images go to the coordinator.
    target: Option<Target>,
    registries: Arc<RegistryClients>,
}

/// A build's repository, its tags, and the registry's client.
#[derive(Debug)]
pub struct Target {
    repo: ImageRef,
    tags: Vec<ImageRef>,
    registry: Arc<Registry>,
}

impl Plan {
    /// The client of the registry `reference` is in.
    fn registry_for(&self, reference: &ImageRef) -> Arc<Registry> {
        match &self.target {
            Some(t) if reference.registry() == t.repo.registry() => t.registry.clone(),
            _ => self.registries.get(reference),
        }
    }
}

fn plan(req: &BuildRequest, registries: &Arc<RegistryClients>) -> Result<Plan, String> {
    let dest = request::validate(req).map_err(|e| e.to_string())?;
    let target = dest.map(|d| Target { registry: registries.get(&d.repository), repo: d.repository, tags: d.tags });
    Ok(Plan { target, registries: registries.clone() })
}

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
    plan(&req, &shared.registries)?;
    owner.may_build(&req)?;
    super::gc::room_for_new_work(&shared.settings.retention)?;
    if !shared.contexts.contains(&req.context) {
        return Err(format!("build context {} is not on the coordinator; upload it first", req.context));
    }
    // Optional platforms no agent fits now are left out at once, not refused.
    let wants: Vec<Wants> =
        req.platforms.iter().filter(|p| !req.is_optional(p)).map(|p| Wants::of(p, &req.requirements, None)).collect();
    shared.farm.check(&wants).map_err(|e| e.to_string())?;
    let id = BuildId::random();
    let jobs: Vec<(JobId, Platform)> = req.platforms.iter().map(|p| (JobId::random(), p.clone())).collect();
    shared
        .store
        .create_build(&id, &owner.name, &req, &jobs)
        .await
        .map_err(|e| format!("the coordinator cannot record the build: {e}"))?;
    for (job, platform) in jobs.iter().filter(|(_, p)| req.is_optional(p)) {
        let wants = Wants::of(platform, &req.requirements, None);
        if let Err(no_agent) = shared.farm.check(std::slice::from_ref(&wants)) {
            let reason = no_agent.to_string();
            shared.store.job_ended(job, JobState::LeftOut, &reason).await.map_err(|e| e.to_string())?;
        }
    }
    let live = shared.live.start(&id);
    let rx = live.events.subscribe();
    spawn(shared.clone(), id.clone(), req, live);
    Ok((id, rx))
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
    let live = shared.live.start(id);
    info!(build = %id, "resuming build after restart");
    spawn(shared.clone(), id.clone(), req, live);
    Ok(())
}

fn spawn(shared: Arc<Shared>, id: BuildId, req: BuildRequest, live: Live) {
    let span = info_span!("build", build = %id);
    tokio::spawn(
        async move {
            let end = run(&shared, &id, &req, &live).await;
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
pub async fn run(shared: &Arc<Shared>, id: &BuildId, req: &BuildRequest, live: &Live) -> BuildEnd {
    let plan = match plan(req, &shared.registries) {
        Ok(p) => p,
        Err(reason) => return BuildEnd::Failed(reason),
    };
    live.emit(BuildEvent::Accepted { build: id.clone() });
    info!(platforms = %platforms::list(&req.platforms), tags = %req.tags.join(","), "build running");
    let jobs = match shared.store.jobs(id).await {
        Ok(jobs) => jobs,
        Err(e) => return BuildEnd::Failed(e.to_string()),
    };
    let in_registry =
        plan.target.as_ref().map(|t| RegistryImages { registry: t.registry.clone(), repo: t.repo.clone() });
    let handed_over = StoredImages { store: &shared.images };
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
    };
    // Each job watches the cancel token itself, so a running job's stream is reset (which stops
    // it on the agent) rather than merely dropped.
    let results = join_all(jobs.into_iter().map(|job| run_job(runner, &plan, id, req, job, live))).await;
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
    if let (Some(cache_to), Some(target)) = (&req.cache_to, &plan.target) {
        write_cache(target, cache_to, &children, live).await;
    }
    publish_verified(shared, id, req, &plan, children, platforms, live).await
}

/// Publishes the index of a build whose platforms are all verified (or optional and left
/// out), if it asked to push.
async fn publish_verified(
    shared: &Arc<Shared>,
    id: &BuildId,
    req: &BuildRequest,
    plan: &Plan,
    children: Vec<Child>,
    platforms: Vec<PlatformResult>,
    live: &Live,
) -> BuildEnd {
    if !req.push {
        info!("every platform verified; not tagged (the build did not ask to push)");
        return BuildEnd::Built { platforms };
    }
    let Some(target) = &plan.target else {
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
    match tagging::publish(shared, target, &children, &attestations, mover).await {
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

/// The cache images a platform reads, of those `--cache-from` names: its own tag of each
/// reference, and the reference itself, each only if the registry has it (the engine's
/// BuildKit fails a build whose cache image is missing, and a first build has none yet).
async fn cache_sources(plan: &Plan, refs: &[String], platform: &Platform, live: &Live) -> Vec<String> {
    let mut found = Vec::new();
    for reference in refs {
        for candidate in [cache::scoped(reference, platform), reference.clone()] {
            let Ok(parsed) = archfarm_shared::registry::parse_reference(&candidate) else { continue };
            let registry = plan.registry_for(&parsed);
            if registry.manifest(&parsed, archfarm_shared::oci::ANY_MANIFEST).await.is_ok() {
                found.push(candidate);
            }
        }
    }
    let line = match found.as_slice() {
        [] => format!("no build cache found under {}: building without it", refs.join(", ")),
        some => format!("build cache from {}", some.join(", ")),
    };
    if !refs.is_empty() {
        live.emit(BuildEvent::Log { platform: platform.clone(), line });
    }
    found
}

/// Tags each verified image as its platform's cache image under `cache_to` (inline cache: the
/// image is the cache). A cache that cannot be written is said in the platform's log and does
/// not fail the build.
async fn write_cache(plan: &Target, cache_to: &str, children: &[Child], live: &Live) {
    for child in children {
        let target = cache::scoped(cache_to, &child.platform);
        let written = match archfarm_shared::registry::parse_reference(&target) {
            Ok(to) => archfarm_shared::images::bring(&plan.registry, &plan.repo, &to, &child.manifest.digest).await,
            Err(e) => Err(e.to_string()),
        };
        let line = match written {
            Ok(()) => format!("build cache written to {target}"),
            Err(e) => {
                warn!(platform = %child.platform, "cache not written to {target}: {e}");
                format!("build cache NOT written to {target}: {e}")
            }
        };
        live.emit(BuildEvent::Log { platform: child.platform.clone(), line });
    }
}

/// One platform of the build: kept if it was verified before a restart, else run. An optional
/// platform left out is `Ok(None)`.
async fn run_job(
    runner: Runner<'_>,
    plan: &Plan,
    id: &BuildId,
    req: &BuildRequest,
    job: StoredJob,
    live: &Live,
) -> Result<Option<Verified>, String> {
    if let (JobState::Verified, Some((digest, media_type, size)), Some(agent)) = (job.state, &job.verified, &job.agent)
    {
        let result = PlatformResult {
            platform: job.platform.clone(),
            digest: digest.clone(),
            agent: agent.clone(),
            duration_ms: job.duration_ms.unwrap_or(0),
            attestation: job.attestation.clone(),
        };
        live.emit(BuildEvent::PlatformDone(result.clone()));
        let manifest = Blob { media_type: media_type.clone(), digest: digest.clone(), size: *size };
        return Ok(Some((Child { platform: job.platform, manifest }, result)));
    }
    if job.state == JobState::Running {
        // Its attempt was cut off by the coordinator's restart.
        let detail = "the coordinator restarted";
        if let Err(e) = runner.store.finish_attempt(&job.job, job.attempts, AttemptOutcome::Lost, detail).await {
            warn!(job = %job.job, "cannot record the attempt the restart cut off: {e}");
        }
    }
    // Ended before this run: left out when the build was submitted (or before a restart), or
    // failed or cancelled and not named by `builds retry`.
    let ended = job.error.clone().unwrap_or_else(|| format!("it is {}", job.state));
    match job.state {
        JobState::LeftOut => {
            live.emit(BuildEvent::PlatformLeftOut { platform: job.platform.clone(), reason: ended });
            return Ok(None);
        }
        JobState::Failed | JobState::Cancelled => return Err(format!("  {} failed before: {ended}", job.platform)),
        _ => {}
    }
    let runner = Runner { optional: req.is_optional(&job.platform), attempts_base: job.attempts_base, ..runner };
    // One repository's Dockerfile on one platform: the agent that built it last has it cached.
    let warm_key = plan.target.as_ref().map(|t| format!("{}\n{}\n{}", t.repo.name(), req.dockerfile, job.platform));
    let wants = Wants::of(&job.platform, &req.requirements, warm_key);
    let spec = JobSpec {
        job: job.job.clone(),
        build: id.clone(),
        platform: job.platform.clone(),
        context: req.context.clone(),
        dockerfile: req.dockerfile.clone(),
        build_args: req.build_args.clone(),
        target: req.target.clone(),
        labels: req.labels.clone(),
        repository: plan.target.as_ref().map_or_else(String::new, |t| t.repo.name()),
        attempt: job.attempts,
        no_cache: req.no_cache,
        pull: req.pull,
        tests: req.tests.clone(),
        test_target: req.test_target.clone(),
        cache_from: cache_sources(plan, &req.cache_from, &job.platform, live).await,
        inline_cache: req.inline_cache || req.cache_to.is_some(),
        provenance: req.provenance,
    };
    match runner.run(spec, &wants, live).await {
        Err(_) if runner.optional && !live.cancel.is_cancelled() => Ok(None),
        other => other.map(Some),
    }
}

/// Publishes the index of a build whose platforms are all verified, without rebuilding. Tags
/// that still point at it are written again (the same bytes); of a build that ended `state`,
/// those pointing elsewhere move only as [`super::tags::may_move`] allows, or with `force`.
pub async fn republish(
    shared: &Shared,
    id: &BuildId,
    state: BuildState,
    force: bool,
) -> Result<tagging::Publication, String> {
    let req = shared.store.request(id).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("no build {id}"))?;
    if shared.live.get(id).is_some() {
        return Err(format!("build {id} is still running; it publishes on its own when every platform is verified"));
    }
    let Some(target) = plan(&req, &shared.registries)?.target else {
        return Err(format!(
            "build {id} named no registry (-t): its images went to the client, and there is nothing to publish to"
        ));
    };
    let (mut children, mut attestations) = (Vec::new(), Vec::new());
    for job in shared.store.jobs(id).await.map_err(|e| e.to_string())? {
        match (job.state, job.verified) {
            (JobState::LeftOut, _) => {}
            (JobState::Verified, Some((digest, media_type, size))) => {
                attestations.extend(job.attestation);
                children.push(Child { platform: job.platform, manifest: Blob { media_type, digest, size } })
            }
            (state, _) => {
                return Err(format!("{} of build {id} is {state}, not verified: start a new build", job.platform))
            }
        }
    }
    if children.is_empty() {
        return Err(format!("every platform of build {id} was left out: there is nothing to publish"));
    }
    let created_ms = shared.store.build_created_ms(id).await.map_err(|e| e.to_string())?;
    let mover = Mover { build: id, created_ms, again: state == BuildState::Published, force };
    let published = tagging::publish(shared, &target, &children, &attestations, mover).await?;
    let index = &published.index;
    shared.store.set_build_state(id, BuildState::Published, Some(index), None).await.map_err(|e| e.to_string())?;
    info!(build = %id, index = %index, "index published on request");
    Ok(published)
}
