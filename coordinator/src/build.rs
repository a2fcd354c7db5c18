//! One build from request to index: validate, one job per platform on an agent that declares
//! it, verify every pushed digest, publish the index only if all platforms succeeded.

use crate::farm::{AgentHandle, Farm};
use crate::publish;
use crate::server::{on_codec_error, Shared};
use archfarm_shared::codec;
use archfarm_shared::oci::Child;
use archfarm_shared::protocol::{
    AgentMessage, BuildEvent, BuildRequest, CoordinatorMessage, FailureKind, JobFailure,
    JobOutcome, JobSpec, PlatformResult, PushedImage,
};
use archfarm_shared::registry::{self, ImageReference, Registry};
use archfarm_shared::{platform, BuildId, JobId, Platform};
use futures_util::future::join_all;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tracing::{info, info_span, warn, Instrument};

/// Lines of a failing step's output kept for the error message.
pub const LOG_TAIL: usize = 20;

/// Starts a build; its events arrive on the returned channel, ending with `Published` or
/// `Failed`. The build runs to its end even if the receiver is dropped.
pub fn start(shared: Arc<Shared>, req: BuildRequest) -> mpsc::Receiver<BuildEvent> {
    let (tx, rx) = mpsc::channel(1024);
    let id = BuildId::random();
    let span = info_span!("build", build = %id);
    tokio::spawn(run(shared, req, id, tx).instrument(span));
    rx
}

struct Plan {
    repo: ImageReference,
    tags: Vec<ImageReference>,
    registry: Registry,
}

fn validate(shared: &Shared, req: &BuildRequest) -> Result<Plan, String> {
    if req.platforms.is_empty() {
        return Err(
            "no platform requested: pass --platform, for example linux/amd64,linux/arm64".into(),
        );
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
            return Err(format!(
                "tag {t:?} names a digest; the farm publishes under tags only"
            ));
        }
        tags.push(r);
    }
    let repository = registry::repository_of(&tags[0]);
    if let Some(other) = tags
        .iter()
        .find(|t| registry::repository_of(t) != repository)
    {
        return Err(format!(
            "all tags must be in one repository (the per-platform images live beside the index): {} and {}",
            tags[0].whole(),
            other.whole()
        ));
    }
    if req.dockerfile.is_empty()
        || req.dockerfile.starts_with('/')
        || req.dockerfile.split('/').any(|c| c == "..")
    {
        return Err(format!(
            "Dockerfile path {:?} must be relative to the context, without '..'",
            req.dockerfile
        ));
    }
    if !shared.contexts.contains(&req.context) {
        return Err(format!(
            "build context {} is not on the coordinator; upload it first",
            req.context
        ));
    }
    shared
        .farm
        .check(&req.platforms)
        .map_err(|e| e.to_string())?;
    let repo = ImageReference::with_tag(
        tags[0].registry().to_owned(),
        tags[0].repository().to_owned(),
        "latest".to_owned(),
    );
    Ok(Plan {
        registry: Registry::for_reference(&repo),
        repo,
        tags,
    })
}

async fn run(shared: Arc<Shared>, req: BuildRequest, id: BuildId, tx: mpsc::Sender<BuildEvent>) {
    let plan = match validate(&shared, &req) {
        Ok(plan) => plan,
        Err(reason) => {
            info!(reason = %reason, "build refused");
            let _ = tx.send(BuildEvent::Failed { reason }).await;
            return;
        }
    };
    let _ = tx.send(BuildEvent::Accepted { build: id.clone() }).await;
    info!(platforms = %platform::list(&req.platforms), tags = %req.tags.join(","), "build accepted");

    let jobs = req
        .platforms
        .iter()
        .map(|p| run_platform(&shared, &plan, &id, &req, p.clone(), &tx));
    let results = join_all(jobs).await;

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
        let reason = format!("nothing was published:\n{}", failures.join("\n"));
        warn!("build failed");
        let _ = tx.send(BuildEvent::Failed { reason }).await;
        return;
    }
    match publish::publish(&plan.registry, &plan.tags, &children).await {
        Ok(index) => {
            info!(index = %index, "index published");
            let _ = tx
                .send(BuildEvent::Published {
                    index,
                    tags: req.tags.clone(),
                    platforms: verified,
                })
                .await;
        }
        Err(e) => {
            warn!("publishing failed: {e}");
            let reason =
                format!("every platform was verified but publishing the index failed: {e}");
            let _ = tx.send(BuildEvent::Failed { reason }).await;
        }
    }
}

/// Gives a job's slot back however the job ends.
struct Slot<'a> {
    farm: &'a Farm,
    job: JobId,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.farm.release(&self.job);
    }
}

/// Runs one platform: agent, build, verification. On failure returns a one-paragraph summary.
async fn run_platform(
    shared: &Shared,
    plan: &Plan,
    build: &BuildId,
    req: &BuildRequest,
    platform: Platform,
    tx: &mpsc::Sender<BuildEvent>,
) -> Result<(Child, PlatformResult), String> {
    let job = JobId::random();
    let slot = Slot {
        farm: &shared.farm,
        job: job.clone(),
    };
    let agent = match shared.farm.acquire(job.clone(), platform.clone()).await {
        Ok(agent) => agent,
        Err(e) => {
            let failure = JobFailure {
                kind: FailureKind::AgentLost,
                message: e.to_string(),
                log_tail: vec![],
            };
            return Err(fail(tx, &platform, None, failure).await);
        }
    };
    info!(job = %job, platform = %platform, agent = %agent.name, "job assigned");
    let _ = tx
        .send(BuildEvent::Started {
            platform: platform.clone(),
            agent: agent.name.clone(),
        })
        .await;
    let started = Instant::now();
    let spec = JobSpec {
        job: job.clone(),
        build: build.clone(),
        platform: platform.clone(),
        context: req.context.clone(),
        dockerfile: req.dockerfile.clone(),
        build_args: req.build_args.clone(),
        target: req.target.clone(),
        labels: req.labels.clone(),
        repository: registry::repository_of(&plan.repo),
    };
    let pushed = run_on_agent(&agent, spec, tx, shared.settings.max_frame).await;
    drop(slot);
    let pushed = match pushed {
        Ok(p) => p,
        Err(failure) => return Err(fail(tx, &platform, Some(&agent), failure).await),
    };
    match publish::verify(&plan.registry, &plan.repo, &platform, &agent.name, &pushed).await {
        Ok(child) => {
            let result = PlatformResult {
                platform: platform.clone(),
                digest: child.manifest.digest.clone(),
                agent: agent.name.clone(),
                duration_ms: started.elapsed().as_millis() as u64,
            };
            info!(platform = %platform, digest = %result.digest, "platform verified");
            let _ = tx.send(BuildEvent::PlatformDone(result.clone())).await;
            Ok((child, result))
        }
        Err(message) => {
            let failure = JobFailure {
                kind: FailureKind::Verification,
                message,
                log_tail: vec![],
            };
            Err(fail(tx, &platform, Some(&agent), failure).await)
        }
    }
}

async fn fail(
    tx: &mpsc::Sender<BuildEvent>,
    platform: &Platform,
    agent: Option<&AgentHandle>,
    failure: JobFailure,
) -> String {
    let who = agent.map_or_else(
        || "before reaching an agent".to_owned(),
        |a| format!("on agent {}", a.name),
    );
    let mut summary = format!(
        "  {platform} failed {who} ({}): {}",
        failure.kind, failure.message
    );
    if !failure.log_tail.is_empty() {
        summary.push_str("\n    last lines of the failing step:");
        for line in &failure.log_tail {
            summary.push_str("\n      ");
            summary.push_str(line);
        }
    }
    warn!(platform = %platform, kind = %failure.kind, "platform failed: {}", failure.message);
    let _ = tx
        .send(BuildEvent::PlatformFailed {
            platform: platform.clone(),
            agent: agent.map(|a| a.name.clone()),
            failure,
        })
        .await;
    summary
}

/// Sends the job to the agent on a new stream and follows its log to the result.
async fn run_on_agent(
    agent: &AgentHandle,
    spec: JobSpec,
    tx: &mpsc::Sender<BuildEvent>,
    max: u32,
) -> Result<PushedImage, JobFailure> {
    let platform = spec.platform.clone();
    let mut tail: VecDeque<String> = VecDeque::with_capacity(LOG_TAIL);
    let lost = |why: String, tail: &VecDeque<String>| JobFailure {
        kind: FailureKind::AgentLost,
        message: format!(
            "agent {} went away while building {platform}: {why}",
            agent.name
        ),
        log_tail: tail.iter().cloned().collect(),
    };
    let (mut send, mut recv) = agent
        .conn
        .open_bi()
        .await
        .map_err(|e| lost(archfarm_shared::tls::explain(&e), &tail))?;
    if let Err(e) = codec::write_msg(
        &mut send,
        &CoordinatorMessage::AssignJob(Box::new(spec)),
        max,
    )
    .await
    {
        return Err(lost(on_codec_error(&agent.conn, &e, "job stream"), &tail));
    }
    loop {
        match codec::read_msg::<_, AgentMessage>(&mut recv, max).await {
            Ok(Some(AgentMessage::JobLog { line })) => {
                if tail.len() == LOG_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line.clone());
                // Logs are best effort: a slow client must not stall the build.
                let _ = tx.try_send(BuildEvent::Log {
                    platform: platform.clone(),
                    line,
                });
            }
            Ok(Some(AgentMessage::JobFinished(JobOutcome::Pushed(image)))) => return Ok(image),
            Ok(Some(AgentMessage::JobFinished(JobOutcome::Failed(failure)))) => {
                return Err(failure)
            }
            Ok(Some(other)) => {
                let reason = format!(
                    "protocol error: unexpected {} on a job stream",
                    crate::agent_session::variant(&other)
                );
                agent.conn.close(
                    archfarm_shared::protocol::close::PROTOCOL.into(),
                    reason.as_bytes(),
                );
                return Err(lost(reason, &tail));
            }
            Ok(None) => return Err(lost("the job stream ended without a result".into(), &tail)),
            Err(e) => return Err(lost(on_codec_error(&agent.conn, &e, "job stream"), &tail)),
        }
    }
}
