//! One build from request to index: validate, persist, one job per platform on an agent that
//! declares it, verify every pushed digest, publish the index only if all platforms succeeded.
//! Every step is in the store before it is acted on, so a restarted coordinator resumes the
//! build ([`resume`]).
//!
//! # Layout
//! - this file: accepting, resuming and ending a build; publishing its index.
//! - [`platform`]: one platform's attempts: get an agent, run, verify, retry elsewhere,
//!   quarantine, give up, cancel.

pub mod platform;
#[cfg(test)]
mod platform_tests;

use super::live::Live;
use super::publish::{self, RegistryImages};
use super::state::Shared;
use super::store::StoredJob;
use archfarm_shared::oci::{Blob, Child};
use archfarm_shared::outcome::AttemptOutcome;
use archfarm_shared::protocol::{BuildEvent, BuildRequest, BuildState, JobSpec, JobState, PlatformResult};
use archfarm_shared::registry::{self, ImageReference, Registry, RegistryClients};
use archfarm_shared::{platform as platforms, BuildId, Digest, JobId, Platform};
use futures_util::future::join_all;
use platform::{Runner, Verified};
use std::sync::Arc;
use tokio::sync::broadcast;
use tracing::{error, info, info_span, warn, Instrument};

/// Where a build's images go: the repository, the tags, and the registry's client.
struct Plan {
    repo: ImageReference,
    tags: Vec<ImageReference>,
    registry: Arc<Registry>,
}

fn plan(req: &BuildRequest, registries: &RegistryClients) -> Result<Plan, String> {
    if req.platforms.is_empty() {
        return Err("no platform requested: pass --platform, for example linux/amd64,linux/arm64".into());
    }
    for (i, p) in req.platforms.iter().enumerate() {
        if req.platforms[..i].contains(p) {
            return Err(format!("platform {p} is requested twice"));
        }
    }
    if req.tags.is_empty() {
        return Err("no tag given: pass -t REGISTRY/REPOSITORY:TAG".into());
    }
    let mut tags = Vec::new();
    for t in &req.tags {
        let r = registry::parse_reference(t).map_err(|e| e.to_string())?;
        if r.digest().is_some() {
            return Err(format!("tag {t:?} names a digest; the farm publishes under tags only"));
        }
        tags.push(r);
    }
    let repository = registry::repository_of(&tags[0]);
    if let Some(other) = tags.iter().find(|t| registry::repository_of(t) != repository) {
        return Err(format!(
            "all tags must be in one repository (the per-platform images live beside the index): {} and {}",
            tags[0].whole(),
            other.whole()
        ));
    }
    check_pairs(&req.build_args, "build arg")?;
    check_pairs(&req.labels, "label")?;
    if let Some(t) = &req.target {
        let ok = (1..=128).contains(&t.len())
            && t.starts_with(|c: char| c.is_ascii_alphanumeric())
            && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !ok {
            return Err(format!("target stage {t:?} is not a stage name (letters, digits, '_', '-', '.')"));
        }
    }
    if req.dockerfile.is_empty() || req.dockerfile.starts_with('/') || req.dockerfile.split('/').any(|c| c == "..") {
        return Err(format!("Dockerfile path {:?} must be relative to the context, without '..'", req.dockerfile));
    }
    let repo =
        ImageReference::with_tag(tags[0].registry().to_owned(), tags[0].repository().to_owned(), "latest".to_owned());
    Ok(Plan { registry: registries.get(&repo), repo, tags })
}

/// Build args and labels: bounded in number and size, keys without whitespace, control
/// characters or '=', values without NUL. The client checks the same; a hostile one is refused here.
fn check_pairs(pairs: &[(String, String)], what: &str) -> Result<(), String> {
    if pairs.len() > 256 {
        return Err(format!("{} {what}s given; at most 256", pairs.len()));
    }
    for (k, v) in pairs {
        if k.is_empty() || k.len() > 256 || k.chars().any(|c| c.is_whitespace() || c.is_control() || c == '=') {
            return Err(format!(
                "{what} name {k:?} must be 1-256 characters without whitespace, control characters or '='"
            ));
        }
        if v.len() > 64 << 10 || v.contains('\0') {
            return Err(format!("{what} {k}: the value must be at most 64 KiB, without NUL"));
        }
    }
    Ok(())
}

/// How a build ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEnd {
    /// The index is published under every tag.
    Published {
        /// The index digest.
        index: Digest,
        /// Each platform's verified image.
        platforms: Vec<PlatformResult>,
    },
    /// Nothing was published, and why.
    Failed(String),
    /// Cancelled; nothing was published.
    Cancelled(String),
}

/// Accepts a new build: checks it, records it, starts it. The receiver is subscribed before
/// the build starts, so it sees every event from `Accepted` on.
pub async fn submit(
    shared: &Arc<Shared>,
    req: BuildRequest,
) -> Result<(BuildId, broadcast::Receiver<BuildEvent>), String> {
    plan(&req, &shared.registries)?;
    if !shared.contexts.contains(&req.context) {
        return Err(format!("build context {} is not on the coordinator; upload it first", req.context));
    }
    shared.farm.check(&req.platforms).map_err(|e| e.to_string())?;
    let id = BuildId::random();
    let jobs: Vec<(JobId, Platform)> = req.platforms.iter().map(|p| (JobId::random(), p.clone())).collect();
    shared
        .store
        .create_build(&id, &req, &jobs)
        .await
        .map_err(|e| format!("the coordinator cannot record the build: {e}"))?;
    let live = shared.live.start(&id);
    let rx = live.events.subscribe();
    spawn(shared.clone(), id.clone(), req, live);
    Ok((id, rx))
}

/// Resumes a build found unfinished in the store after a restart. Verified platforms are kept;
/// the others run again.
pub fn resume(shared: &Arc<Shared>, id: &BuildId) -> Result<(), String> {
    let req = shared
        .store
        .request(id)
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
            };
            if let Err(e) = shared.store.set_build_state(&id, state, index, error).await {
                error!("cannot record the end of the build: {e}");
            }
            live.emit(match end {
                BuildEnd::Published { index, platforms } => {
                    BuildEvent::Published { index, tags: req.tags.clone(), platforms }
                }
                BuildEnd::Failed(reason) | BuildEnd::Cancelled(reason) => BuildEvent::Failed { reason },
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
    let jobs = match shared.store.jobs(id) {
        Ok(jobs) => jobs,
        Err(e) => return BuildEnd::Failed(e.to_string()),
    };
    let images = RegistryImages { registry: plan.registry.clone(), repo: plan.repo.clone() };
    let runner = Runner {
        farm: &shared.farm,
        store: &shared.store,
        images: &images,
        max_attempts: shared.settings.max_attempts,
        quarantine_after: shared.settings.quarantine_after,
    };
    // Each job watches the cancel token itself, so a running job's stream is reset (which stops
    // it on the agent) rather than merely dropped.
    let results = join_all(jobs.into_iter().map(|job| run_job(runner, &plan, id, req, job, live))).await;
    if live.cancel.is_cancelled() {
        for job in shared.store.jobs(id).unwrap_or_default() {
            let _ = shared.store.job_ended(&job.job, JobState::Cancelled, "cancelled").await;
        }
        return BuildEnd::Cancelled("the build was cancelled; nothing was published".into());
    }
    let (verified, failures): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    if !failures.is_empty() {
        warn!("build failed");
        let failures: Vec<String> = failures.into_iter().filter_map(Result::err).collect();
        return BuildEnd::Failed(format!("nothing was published:\n{}", failures.join("\n")));
    }
    let (children, platforms): (Vec<Child>, Vec<PlatformResult>) = verified.into_iter().flatten().unzip();
    let _ = shared.store.set_build_state(id, BuildState::Publishing, None, None).await;
    match publish::publish(&plan.registry, &plan.tags, &children).await {
        Ok(index) => {
            info!(index = %index, "index published");
            BuildEnd::Published { index, platforms }
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

/// One platform of the build: kept if it was verified before a restart, else run.
async fn run_job(
    runner: Runner<'_>,
    plan: &Plan,
    id: &BuildId,
    req: &BuildRequest,
    job: StoredJob,
    live: &Live,
) -> Result<Verified, String> {
    if let (JobState::Verified, Some((digest, media_type, size)), Some(agent)) = (job.state, &job.verified, &job.agent)
    {
        let result = PlatformResult {
            platform: job.platform.clone(),
            digest: digest.clone(),
            agent: agent.clone(),
            duration_ms: job.duration_ms.unwrap_or(0),
        };
        live.emit(BuildEvent::PlatformDone(result.clone()));
        let manifest = Blob { media_type: media_type.clone(), digest: digest.clone(), size: *size };
        return Ok((Child { platform: job.platform, manifest }, result));
    }
    if job.state == JobState::Running {
        // Its attempt was cut off by the coordinator's restart.
        let detail = "the coordinator restarted";
        let _ = runner.store.finish_attempt(&job.job, job.attempts, AttemptOutcome::Lost, detail).await;
    }
    let spec = JobSpec {
        job: job.job.clone(),
        build: id.clone(),
        platform: job.platform.clone(),
        context: req.context.clone(),
        dockerfile: req.dockerfile.clone(),
        build_args: req.build_args.clone(),
        target: req.target.clone(),
        labels: req.labels.clone(),
        repository: registry::repository_of(&plan.repo),
        attempt: job.attempts,
    };
    runner.run(spec, live).await
}

/// Publishes the index of a build whose platforms are all verified, without rebuilding.
/// Publishing a published build again writes the same bytes: harmless.
pub async fn republish(shared: &Shared, id: &BuildId) -> Result<Digest, String> {
    let req = shared.store.request(id).map_err(|e| e.to_string())?.ok_or_else(|| format!("no build {id}"))?;
    if shared.live.get(id).is_some() {
        return Err(format!("build {id} is still running; it publishes on its own when every platform is verified"));
    }
    let plan = plan(&req, &shared.registries)?;
    let mut children = Vec::new();
    for job in shared.store.jobs(id).map_err(|e| e.to_string())? {
        match (job.state, job.verified) {
            (JobState::Verified, Some((digest, media_type, size))) => {
                children.push(Child { platform: job.platform, manifest: Blob { media_type, digest, size } })
            }
            (state, _) => {
                return Err(format!("{} of build {id} is {state}, not verified: start a new build", job.platform))
            }
        }
    }
    let index = publish::publish(&plan.registry, &plan.tags, &children).await?;
    shared.store.set_build_state(id, BuildState::Published, Some(&index), None).await.map_err(|e| e.to_string())?;
    info!(build = %id, index = %index, "index published on request");
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use archfarm_shared::Digest;

    fn request() -> BuildRequest {
        BuildRequest {
            platforms: vec!["linux/amd64".parse().unwrap()],
            tags: vec!["127.0.0.1:5000/app:1".into()],
            context: Digest::of(b"c"),
            dockerfile: "Dockerfile".into(),
            build_args: vec![],
            target: None,
            labels: vec![],
        }
    }

    fn refused(edit: impl FnOnce(&mut BuildRequest)) -> String {
        let mut r = request();
        edit(&mut r);
        match plan(&r, &RegistryClients::new(vec![])) {
            Ok(_) => panic!("accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn requests_a_client_could_not_have_sent_are_refused_with_reasons() {
        archfarm_shared::tls::install_crypto_provider();
        assert!(plan(&request(), &RegistryClients::new(vec![])).is_ok());
        assert!(refused(|r| r.platforms.clear()).contains("no platform"));
        assert!(refused(|r| r.platforms.push("linux/amd64".parse().unwrap())).contains("requested twice"));
        assert!(refused(|r| r.tags = vec!["127.0.0.1:5000/App:1".into()]).contains("invalid image reference"));
        assert!(refused(|r| r.tags.push("127.0.0.1:5000/other:1".into())).contains("one repository"));
        assert!(
            refused(|r| r.tags = vec![format!("127.0.0.1:5000/app@{}", Digest::of(b"x"))]).contains("names a digest")
        );
        assert!(refused(|r| r.dockerfile = "../Dockerfile".into()).contains("without '..'"));
        assert!(refused(|r| r.dockerfile = "/etc/Dockerfile".into()).contains("relative"));
        assert!(refused(|r| r.build_args = vec![("A B".into(), "1".into())]).contains("build arg name \"A B\""));
        assert!(refused(|r| r.build_args = vec![("A".into(), "x\0y".into())]).contains("without NUL"));
        assert!(refused(|r| r.labels = vec![("k=v".into(), "1".into())]).contains("label name"));
        assert!(refused(|r| r.build_args = (0..300).map(|i| (format!("K{i}"), String::new())).collect())
            .contains("at most 256"));
        assert!(refused(|r| r.target = Some("stage; rm -rf".into())).contains("not a stage name"));
    }
}
