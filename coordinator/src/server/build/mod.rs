//! One build from request to index: validate, persist, one job per platform on an agent that
//! declares it, retry lost or failed attempts elsewhere, verify every pushed digest, publish the
//! index only if all platforms succeeded. Every step is in the store before it is acted on, so
//! a restarted coordinator resumes the build ([`resume`]).

use crate::farm::AgentHandle;
use crate::live::Live;
use crate::publish::{self, VerifyError};
use crate::scheduler::Standing;
use crate::server::{on_codec_error, Shared};
use crate::store::VerifiedImage;
use archfarm_shared::codec;
use archfarm_shared::oci::{Blob, Child};
use archfarm_shared::protocol::{
    AgentMessage, BuildEvent, BuildRequest, BuildState, CoordinatorMessage, FailureKind, JobFailure, JobOutcome,
    JobSpec, JobState, PlatformResult, PushedImage,
};
use archfarm_shared::registry::{self, ImageReference, Registry};
use archfarm_shared::{platform, AgentName, BuildId, JobId, Platform};
use futures_util::future::join_all;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, info_span, warn, Instrument};

/// Lines of a failing step's output kept for the error message.
pub const LOG_TAIL: usize = 20;
/// Stream error code the coordinator resets a job stream with to cancel the job.
pub const STREAM_CANCEL: u32 = 1;

struct Plan {
    repo: ImageReference,
    tags: Vec<ImageReference>,
    registry: std::sync::Arc<Registry>,
}

fn plan(req: &BuildRequest, insecure: &[String]) -> Result<Plan, String> {
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
    Ok(Plan { registry: Registry::shared(&repo, insecure), repo, tags })
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

/// Accepts a new build: checks it, records it, starts it. The receiver is subscribed before
/// the build starts, so it sees every event from `Accepted` on.
pub async fn submit(
    shared: &Arc<Shared>,
    req: BuildRequest,
) -> Result<(BuildId, broadcast::Receiver<BuildEvent>), String> {
    plan(&req, &shared.settings.insecure_registries)?;
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
            // Persisted first, then announced.
            let (state, index, error) = match &end {
                BuildEvent::Published { index, .. } => (BuildState::Published, Some(index), None),
                BuildEvent::Failed { reason } if live.cancel.is_cancelled() => {
                    (BuildState::Cancelled, None, Some(reason.as_str()))
                }
                BuildEvent::Failed { reason } => (BuildState::Failed, None, Some(reason.as_str())),
                _ => unreachable!("run ends with Published or Failed"),
            };
            if let Err(e) = shared.store.set_build_state(&id, state, index, error).await {
                error!("cannot record the end of the build: {e}");
            }
            live.emit(end);
            shared.live.end(&id);
        }
        .instrument(span),
    );
}

async fn run(shared: &Arc<Shared>, id: &BuildId, req: &BuildRequest, live: &Live) -> BuildEvent {
    let plan = match plan(req, &shared.settings.insecure_registries) {
        Ok(p) => p,
        Err(reason) => return BuildEvent::Failed { reason },
    };
    live.emit(BuildEvent::Accepted { build: id.clone() });
    info!(platforms = %platform::list(&req.platforms), tags = %req.tags.join(","), "build running");
    let jobs = match shared.store.jobs(id) {
        Ok(jobs) => jobs,
        Err(e) => return BuildEvent::Failed { reason: e.to_string() },
    };
    let work = jobs.into_iter().map(|job| {
        let plan = &plan;
        async move {
            if let (JobState::Verified, Some((digest, media_type, size)), Some(agent)) =
                (job.state, &job.verified, &job.agent)
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
                let _ = shared.store.finish_attempt(&job.job, job.attempts, "lost", "the coordinator restarted").await;
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
            run_platform(shared, plan, spec, live).await
        }
    });
    // Each job watches the cancel token itself, so a running job's stream is reset (which stops
    // it on the agent) rather than merely dropped.
    let results = join_all(work).await;
    if live.cancel.is_cancelled() {
        for job in shared.store.jobs(id).unwrap_or_default() {
            let _ = shared.store.job_ended(&job.job, JobState::Cancelled, "cancelled").await;
        }
        return BuildEvent::Failed { reason: "the build was cancelled; nothing was published".into() };
    }
    let mut children = Vec::new();
    let mut verified = Vec::new();
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok((child, result)) => {
                children.push(child);
                verified.push(result);
            }
            Err(summary) => failures.push(summary),
        }
    }
    if !failures.is_empty() {
        warn!("build failed");
        return BuildEvent::Failed { reason: format!("nothing was published:\n{}", failures.join("\n")) };
    }
    let _ = shared.store.set_build_state(id, BuildState::Publishing, None, None).await;
    match publish::publish(&plan.registry, &plan.tags, &children).await {
        Ok(index) => {
            info!(index = %index, "index published");
            BuildEvent::Published { index, tags: req.tags.clone(), platforms: verified }
        }
        Err(e) => {
            warn!("publishing failed: {e}");
            BuildEvent::Failed {
                reason: format!(
                    "every platform was verified, but publishing the index failed: {e}. The verified images are kept: \
                     `archfarm builds publish {id}` publishes them without rebuilding"
                ),
            }
        }
    }
}

/// Publishes the index of a build whose platforms are all verified, without rebuilding.
/// Publishing a published build again writes the same bytes: harmless.
pub async fn republish(shared: &Shared, id: &BuildId) -> Result<archfarm_shared::Digest, String> {
    let req = shared.store.request(id).map_err(|e| e.to_string())?.ok_or_else(|| format!("no build {id}"))?;
    if shared.live.get(id).is_some() {
        return Err(format!("build {id} is still running; it publishes on its own when every platform is verified"));
    }
    let plan = plan(&req, &shared.settings.insecure_registries)?;
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

/// How an attempt ended, for the retry decision.
enum Attempt {
    Verified(Child, PlatformResult),
    /// The Dockerfile itself failed: running it again elsewhere gives the same answer.
    Final(JobFailure),
    /// The agent or its path failed: try again, elsewhere if possible.
    Retry {
        outcome: &'static str,
        failure: JobFailure,
        blame: bool,
    },
}

/// Runs one platform to a verified image, retrying lost and failed attempts on other agents up
/// to the configured limit. On failure returns a one-paragraph summary.
async fn run_platform(
    shared: &Shared,
    plan: &Plan,
    mut spec: JobSpec,
    live: &Live,
) -> Result<(Child, PlatformResult), String> {
    let max = shared.settings.max_attempts;
    let platform = spec.platform.clone();
    let started = Instant::now();
    let mut avoid: Vec<AgentName> = Vec::new();
    let mut last: Option<(Option<AgentName>, JobFailure)> = None;
    while spec.attempt < max {
        spec.attempt += 1;
        let acquired = tokio::select! {
            a = shared.farm.acquire(&spec.job, &platform, avoid.clone()) => a,
            () = live.cancel.cancelled() => {
                shared.farm.release(&spec.job);
                return Err(format!("  {platform}: cancelled"));
            }
        };
        let agent = match acquired {
            Ok(agent) => agent,
            Err(e) => {
                let mut message = e.to_string();
                let mut agent = None;
                if let Some((previous, f)) = last.take() {
                    if let Some(a) = &previous {
                        message = format!("{message}; attempt {} on agent {a} ended: {}", spec.attempt - 1, f.message);
                    }
                    agent = previous;
                }
                spec.attempt -= 1;
                last = Some((agent, JobFailure { kind: FailureKind::AgentLost, message, log_tail: vec![] }));
                break;
            }
        };
        let slot = Slot { shared, job: spec.job.clone() };
        if let Err(e) = shared.store.start_attempt(&spec.job, spec.attempt, &agent.name).await {
            error!("cannot record an attempt: {e}");
            let failure = JobFailure { kind: FailureKind::AgentLost, message: e.to_string(), log_tail: vec![] };
            return Err(fail(shared, live, &spec, Some(&agent.name), failure).await);
        }
        info!(job = %spec.job, platform = %platform, agent = %agent.name, attempt = spec.attempt, "job assigned");
        live.emit(BuildEvent::Started { platform: platform.clone(), agent: agent.name.clone() });
        let attempt = attempt(shared, plan, &agent, &spec, live, started).await;
        drop(slot);
        match attempt {
            Attempt::Verified(child, result) => {
                let image = VerifiedImage {
                    digest: result.digest.clone(),
                    media_type: child.manifest.media_type.clone(),
                    size: child.manifest.size,
                    agent: agent.name.clone(),
                    duration_ms: result.duration_ms,
                };
                if let Err(e) = shared.store.attempt_verified(&spec.job, spec.attempt, image).await {
                    error!("cannot record a verified digest: {e}");
                }
                info!(platform = %platform, digest = %result.digest, "platform verified");
                live.emit(BuildEvent::PlatformDone(result.clone()));
                return Ok((child, result));
            }
            Attempt::Final(failure) => {
                let _ = shared.store.finish_attempt(&spec.job, spec.attempt, "failed", &failure.message).await;
                return Err(fail(shared, live, &spec, Some(&agent.name), failure).await);
            }
            Attempt::Retry { outcome, .. } if outcome == "cancelled" && live.cancel.is_cancelled() => {
                let _ =
                    shared.store.finish_attempt(&spec.job, spec.attempt, "cancelled", "the build was cancelled").await;
                return Err(format!("  {platform}: cancelled"));
            }
            Attempt::Retry { outcome, failure, blame } => {
                let _ = shared.store.finish_attempt(&spec.job, spec.attempt, outcome, &failure.message).await;
                let _ = shared.store.requeue(&spec.job).await;
                if blame {
                    count_failure(shared, &agent.name, outcome, &failure.message).await;
                }
                warn!(platform = %platform, agent = %agent.name, attempt = spec.attempt, "attempt ended without an image: {}", failure.message);
                if spec.attempt < max {
                    live.emit(BuildEvent::Retrying {
                        platform: platform.clone(),
                        agent: agent.name.clone(),
                        reason: failure.message.clone(),
                        next_attempt: spec.attempt + 1,
                    });
                }
                avoid.push(agent.name.clone());
                last = Some((Some(agent.name.clone()), failure));
            }
        }
    }
    let (agent, mut failure) = last.unwrap_or_else(|| {
        (
            None,
            JobFailure {
                kind: FailureKind::AgentLost,
                message: format!("no attempts left (limit {max})"),
                log_tail: vec![],
            },
        )
    });
    if spec.attempt >= max {
        failure.message = format!("gave up after {} attempts; the last: {}", spec.attempt, failure.message);
    }
    Err(fail(shared, live, &spec, agent.as_ref(), failure).await)
}

/// One attempt: run on the agent, then verify what it pushed.
async fn attempt(
    shared: &Shared,
    plan: &Plan,
    agent: &AgentHandle,
    spec: &JobSpec,
    live: &Live,
    started: Instant,
) -> Attempt {
    let pushed = match run_on_agent(agent, spec.clone(), live, shared.settings.max_frame).await {
        Ok(p) => p,
        Err(failure) => {
            return match failure.kind {
                FailureKind::Build => Attempt::Final(failure),
                FailureKind::AgentLost => Attempt::Retry { outcome: "lost", failure, blame: false },
                FailureKind::Cancelled => Attempt::Retry { outcome: "cancelled", failure, blame: false },
                // A failing push says more about the registry than the agent: an outage must not
                // quarantine the whole farm.
                FailureKind::Push => Attempt::Retry { outcome: "failed", failure, blame: false },
                _ => Attempt::Retry { outcome: "failed", failure, blame: true },
            };
        }
    };
    match publish::verify(&plan.registry, &plan.repo, &spec.platform, &agent.name, &pushed).await {
        Ok(child) => {
            let result = PlatformResult {
                platform: spec.platform.clone(),
                digest: child.manifest.digest.clone(),
                agent: agent.name.clone(),
                duration_ms: started.elapsed().as_millis() as u64,
            };
            Attempt::Verified(child, result)
        }
        Err(VerifyError::Wrong(message)) => {
            quarantine(shared, &agent.name, &message).await;
            let failure = JobFailure { kind: FailureKind::Verification, message, log_tail: vec![] };
            Attempt::Retry { outcome: "wrong-image", failure, blame: false }
        }
        Err(VerifyError::Unavailable(message)) => {
            let failure = JobFailure { kind: FailureKind::Verification, message, log_tail: vec![] };
            Attempt::Retry { outcome: "unverified", failure, blame: false }
        }
    }
}

async fn quarantine(shared: &Shared, agent: &AgentName, reason: &str) {
    warn!(agent = %agent, "quarantining agent: {reason}");
    if let Err(e) = shared.store.quarantine(agent, reason).await {
        error!("cannot record the quarantine: {e}");
    }
    shared.farm.set_standing(agent, Standing::Quarantined(reason.to_owned()));
}

async fn count_failure(shared: &Shared, agent: &AgentName, outcome: &str, message: &str) {
    match shared.store.agent_failed(agent).await {
        Ok(n) if n >= shared.settings.quarantine_after => {
            quarantine(shared, agent, &format!("{n} jobs in a row {outcome}; the last: {message}")).await;
        }
        Ok(_) => {}
        Err(e) => error!("cannot record an agent failure: {e}"),
    }
}

/// Gives a job's slot back however the attempt ends.
struct Slot<'a> {
    shared: &'a Shared,
    job: JobId,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.shared.farm.release(&self.job);
    }
}

async fn fail(shared: &Shared, live: &Live, spec: &JobSpec, agent: Option<&AgentName>, failure: JobFailure) -> String {
    let platform = &spec.platform;
    let who = agent.map_or_else(|| "before reaching an agent".to_owned(), |a| format!("on agent {a}"));
    let mut summary = format!("  {platform} failed {who} ({}): {}", failure.kind, failure.message);
    if !failure.log_tail.is_empty() {
        summary.push_str("\n    last lines of the failing step:");
        for line in &failure.log_tail {
            summary.push_str("\n      ");
            summary.push_str(line);
        }
    }
    warn!(platform = %platform, kind = %failure.kind, "platform failed: {}", failure.message);
    if let Err(e) = shared.store.job_ended(&spec.job, JobState::Failed, &failure.message).await {
        error!("cannot record a failed job: {e}");
    }
    live.emit(BuildEvent::PlatformFailed { platform: platform.clone(), agent: agent.cloned(), failure });
    summary
}

/// Sends the job to the agent on a new stream and follows its log to the result. Cancelling
/// the build resets the stream, which stops the job on the agent.
async fn run_on_agent(agent: &AgentHandle, spec: JobSpec, live: &Live, max: u32) -> Result<PushedImage, JobFailure> {
    let platform = spec.platform.clone();
    let mut tail: VecDeque<String> = VecDeque::with_capacity(LOG_TAIL);
    let lost = |why: String, tail: &VecDeque<String>| JobFailure {
        kind: FailureKind::AgentLost,
        message: format!("agent {} went away while building {platform}: {why}", agent.name),
        log_tail: tail.iter().cloned().collect(),
    };
    let (mut send, mut recv) =
        agent.conn.open_bi().await.map_err(|e| lost(archfarm_shared::tls::explain(&e), &tail))?;
    if let Err(e) = codec::write_msg(&mut send, &CoordinatorMessage::AssignJob(Box::new(spec)), max).await {
        return Err(lost(on_codec_error(&agent.conn, &e, "job stream"), &tail));
    }
    let cancel: CancellationToken = live.cancel.clone();
    loop {
        let msg = tokio::select! {
            msg = codec::read_msg::<_, AgentMessage>(&mut recv, max) => msg,
            () = cancel.cancelled() => {
                let _ = send.reset(STREAM_CANCEL.into());
                let _ = recv.stop(STREAM_CANCEL.into());
                return Err(JobFailure { kind: FailureKind::Cancelled, message: "cancelled".into(), log_tail: vec![] });
            }
        };
        match msg {
            Ok(Some(AgentMessage::JobLog { line })) => {
                if tail.len() == LOG_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line.clone());
                live.emit(BuildEvent::Log { platform: platform.clone(), line });
            }
            Ok(Some(AgentMessage::JobFinished(JobOutcome::Pushed(image)))) => return Ok(image),
            Ok(Some(AgentMessage::JobFinished(JobOutcome::Failed(failure)))) => return Err(failure),
            Ok(Some(other)) => {
                let reason =
                    format!("protocol error: unexpected {} on a job stream", crate::agent_session::variant(&other));
                agent.conn.close(archfarm_shared::protocol::close::PROTOCOL.into(), reason.as_bytes());
                return Err(lost(reason, &tail));
            }
            Ok(None) => return Err(lost("the job stream ended without a result".into(), &tail)),
            Err(e) => return Err(lost(on_codec_error(&agent.conn, &e, "job stream"), &tail)),
        }
    }
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
        match plan(&r, &[]) {
            Ok(_) => panic!("accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn requests_a_client_could_not_have_sent_are_refused_with_reasons() {
        archfarm_shared::tls::install_crypto_provider();
        assert!(plan(&request(), &[]).is_ok());
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
