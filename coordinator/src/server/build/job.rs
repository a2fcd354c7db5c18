//! One platform's job of a build: kept as it was when it was verified before a restart, left
//! out or failed as recorded, or assembled into a [`JobSpec`] and run to a verified image.

use super::cache;
use super::platform::{Runner, Verified};
use super::target::Target;
use crate::server::live::Live;
use crate::server::scheduler::fit::Wants;
use crate::server::state::Shared;
use crate::server::store::builds::StoredJob;
use archfarm_shared::engine_needs::EngineNeed;
use archfarm_shared::oci::{Blob, Child};
use archfarm_shared::outcome::AttemptOutcome;
use archfarm_shared::protocol::{BuildEvent, BuildRequest, JobSpec, JobState, PlatformResult};
use archfarm_shared::BuildId;
use tracing::warn;

/// One platform of the build: kept if it was verified before a restart, else run. An optional
/// platform left out is `Ok(None)`.
pub async fn run(
    runner: Runner<'_>,
    shared: &Shared,
    target: Option<&Target>,
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
    let warm_key = target.map(|t| format!("{}\n{}\n{}", t.repo.name(), req.dockerfile, job.platform));
    let needs = EngineNeed::of_request(req);
    let wants = Wants::of(&job.platform, &req.requirements, &needs, warm_key);
    // A cache of every stage is BuildKit's to export; a cache of the final stage is the image.
    let cache_to_max =
        req.cache_to.as_deref().filter(|_| req.cache_max).map(|c| archfarm_shared::cache::scoped(c, &job.platform));
    let spec = JobSpec {
        job: job.job.clone(),
        build: id.clone(),
        platform: job.platform.clone(),
        context: req.context.clone(),
        dockerfile: req.dockerfile.clone(),
        build_args: req.build_args.clone(),
        target: req.target.clone(),
        labels: req.labels.clone(),
        repository: target.map_or_else(String::new, |t| t.repo.name()),
        attempt: job.attempts,
        no_cache: req.no_cache,
        pull: req.pull,
        tests: req.tests.clone(),
        test_target: req.test_target.clone(),
        cache_from: cache::sources(&*shared.registry, &req.cache_from, &job.platform, live).await,
        inline_cache: req.inline_cache || (req.cache_to.is_some() && !req.cache_max),
        provenance: req.provenance,
        read_scopes: runner.read_scopes.to_vec(),
        cache_to_max,
    };
    match runner.run(spec, &wants, live).await {
        Err(_) if runner.optional && !live.cancel.is_cancelled() => Ok(None),
        other => other.map(Some),
    }
}
