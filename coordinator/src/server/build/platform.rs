//! One platform of a build, from queued to a verified image: get an agent that declares the
//! platform, run an attempt on it, verify what it pushed, and after a lost or failed attempt try
//! again on another agent, up to the limit. Agents that push wrong images, or keep failing for
//! reasons of their own, are quarantined. Every step is in the store before it is acted on.
//!
//! The agent and the registry are reached through [`AgentLink`](crate::server::ports::AgentLink)
//! and [`ImageCheck`], so all of this runs in-process in unit tests.

use crate::server::farm::{AgentHandle, Farm};
use crate::server::live::Live;
use crate::server::metrics::Metrics;
use crate::server::ports::{Claim, ImageCheck, VerifyError};
use crate::server::scheduler::fit::Wants;
use crate::server::store::builds::VerifiedImage;
use crate::server::store::Store;
use archfarm_shared::clock::now_ms;
use archfarm_shared::oci::{Attestation, Child};
use archfarm_shared::outcome::AttemptOutcome;
use archfarm_shared::protocol::BuildRequest;
use archfarm_shared::protocol::{BuildEvent, FailureKind, JobFailure, JobSpec, JobState, PlatformResult};
use archfarm_shared::provenance::{self, Provenance, ResolvedBase};
use archfarm_shared::BuildId;
use archfarm_shared::{AgentName, JobId};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// What running one platform needs: agents, the store, the registry, and the limits.
#[derive(Debug, Clone, Copy)]
pub struct Runner<'a> {
    /// Where agents come from.
    pub farm: &'a Farm,
    /// Where every attempt is recorded.
    pub store: &'a Store,
    /// Checks pushed images in the registry.
    pub images: &'a dyn ImageCheck,
    /// Counts attempts, waits, retries and quarantines.
    pub metrics: &'a Metrics,
    /// Attempts per platform.
    pub max_attempts: u32,
    /// Failures in a row, for reasons of the agent's own, before it is quarantined.
    pub quarantine_after: u32,
    /// How long one attempt may take.
    pub limits: JobLimits,
    /// The platform is optional: when it fails it is left out of the index, not the build.
    pub optional: bool,
    /// Attempts made before the last `builds retry`: `max_attempts` counts from here.
    pub attempts_base: u32,
    /// What each verified image's provenance is made of; none when the build asks for none.
    pub provenance: Option<Origin<'a>>,
    /// The scopes of the build's token: its jobs read only inside them.
    pub read_scopes: &'a [String],
}

/// The build a platform belongs to, for its provenance.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The build's id.
    pub build: &'a BuildId,
    /// Its request.
    pub request: &'a BuildRequest,
}

/// How long one attempt may run in all, and without a line of output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLimits {
    /// The whole attempt.
    pub timeout: Duration,
    /// Between two lines of output.
    pub idle: Duration,
}

/// A verified platform: the child for the index, and what the client is told.
pub type Verified = (Child, PlatformResult);

/// How an attempt ended, for the retry decision. One lives on the stack per attempt: its size
/// does not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Attempt {
    Verified(Verified, Vec<ResolvedBase>),
    /// Running it again elsewhere would give the same answer (the Dockerfile failed, or no other
    /// agent can take it).
    Final {
        outcome: AttemptOutcome,
        failure: JobFailure,
    },
    /// The agent or its path failed: try again, elsewhere if possible. `doubt`: the build
    /// failed on this agent alone so far, and another agent of the platform builds it too, to
    /// tell the Dockerfile's doing from the agent's ([`super::blame`]).
    Retry {
        outcome: AttemptOutcome,
        failure: JobFailure,
        blame: bool,
        doubt: bool,
    },
}

/// What one turn of the loop leads to (one per attempt, on the stack).
#[allow(clippy::large_enum_variant)]
enum Step {
    /// The platform is finished: verified, or failed for good (with its summary).
    Done(Result<Verified, String>),
    /// Try again; this is why the last attempt ended.
    Again(JobFailure),
    /// Try again on another agent: the build failed here, and a peer is to confirm it.
    Doubt(JobFailure),
}

/// The failure behind the last attempt, and the agent it ran on.
type Last = Option<(Option<AgentName>, JobFailure)>;

/// The platform's earlier attempts, as an attempt sees them.
#[derive(Debug, Clone, Copy)]
pub(super) struct History<'a> {
    /// Agents that tried and are avoided.
    pub tried: &'a [AgentName],
    /// The agent whose build failed, awaiting a peer's verdict, and how it failed.
    pub doubted: Option<&'a (AgentName, JobFailure)>,
}

impl Runner<'_> {
    /// Runs one platform to a verified image, retrying lost and failed attempts on other agents
    /// up to the limit. On failure returns a one-paragraph summary for the client.
    pub async fn run(&self, mut spec: JobSpec, wants: &Wants, live: &Live) -> Result<Verified, String> {
        let platform = spec.platform.clone();
        let started = Instant::now();
        let mut avoid: Vec<AgentName> = Vec::new();
        let mut last: Last = None;
        let mut doubted: Option<(AgentName, JobFailure)> = None;
        let limit = self.attempts_base + self.max_attempts;
        while spec.attempt < limit {
            spec.attempt += 1;
            let waiting = Instant::now();
            let acquired = tokio::select! {
                a = self.farm.acquire(&spec.job, wants, avoid.clone()) => a,
                () = live.cancel.cancelled() => {
                    self.farm.release(&spec.job);
                    return Err(format!("  {platform}: cancelled"));
                }
            };
            let (agent, placement) = match acquired {
                Ok(placed) => {
                    self.metrics.waited(&platform, waiting.elapsed());
                    placed
                }
                Err(e) => {
                    spec.attempt -= 1;
                    last = Some(no_agent(e.to_string(), last, spec.attempt));
                    break;
                }
            };
            let history = History { tried: &avoid, doubted: doubted.as_ref() };
            match self.step(&agent, &placement, &spec, wants, live, started, history).await {
                Step::Done(result) => {
                    if let (Ok(_), Some((first, failure))) = (&result, &doubted) {
                        self.contradicted(first, &agent.name, failure).await;
                    }
                    return result;
                }
                Step::Again(failure) => {
                    avoid.push(agent.name.clone());
                    last = Some((Some(agent.name.clone()), failure));
                }
                Step::Doubt(failure) => {
                    avoid.push(agent.name.clone());
                    doubted = Some((agent.name.clone(), failure.clone()));
                    last = Some((Some(agent.name.clone()), failure));
                }
            }
        }
        let (agent, mut failure) = last.unwrap_or_else(|| {
            let message = format!("no attempts left (limit {})", self.max_attempts);
            (None, JobFailure { kind: FailureKind::AgentLost, message, log_tail: vec![] })
        });
        if spec.attempt >= limit {
            let made = spec.attempt - self.attempts_base;
            failure.message = format!("gave up after {made} attempts; the last: {}", failure.message);
        }
        Err(self.fail(live, &spec, agent.as_ref(), failure).await)
    }

    /// One attempt on `agent`, recorded before and after, and what it leads to.
    #[allow(clippy::too_many_arguments)]
    async fn step(
        &self,
        agent: &AgentHandle,
        placement: &str,
        spec: &JobSpec,
        wants: &Wants,
        live: &Live,
        started: Instant,
        history: History<'_>,
    ) -> Step {
        let platform = &spec.platform;
        let slot = Slot { farm: self.farm, job: spec.job.clone() };
        if let Err(e) = self.store.start_attempt(&spec.job, spec.attempt, &agent.name, placement).await {
            error!("cannot record an attempt: {e}");
            let failure = JobFailure { kind: FailureKind::AgentLost, message: e.to_string(), log_tail: vec![] };
            return Step::Done(Err(self.fail(live, spec, Some(&agent.name), failure).await));
        }
        info!(job = %spec.job, platform = %platform, agent = %agent.name, attempt = spec.attempt, placement, "job assigned");
        live.emit(BuildEvent::Started { platform: platform.clone(), agent: agent.name.clone() });
        let running = Instant::now();
        let started_ms = now_ms();
        // The image check hears of the attempt's start and end: what it handed over without a
        // verified image is removed.
        self.images.attempt_started(&spec.job, &agent.name);
        let attempt = self.attempt(agent, spec, wants, live, started, history).await;
        self.images.attempt_ended(&spec.job, matches!(attempt, Attempt::Verified(..)));
        drop(slot);
        let outcome = match &attempt {
            Attempt::Verified(..) => AttemptOutcome::Pushed,
            Attempt::Final { outcome, .. } | Attempt::Retry { outcome, .. } => *outcome,
        };
        self.metrics.attempt_ended(platform, outcome.as_str(), running.elapsed());
        match attempt {
            Attempt::Verified(verified, bases) => {
                Step::Done(Ok(self.verified(agent, spec, live, verified, &bases, started_ms).await))
            }
            Attempt::Final { outcome, failure } => {
                let detail = format!("{}: {}", failure.kind, failure.message);
                if let Err(e) = self.store.finish_attempt(&spec.job, spec.attempt, outcome, &detail).await {
                    warn!(job = %spec.job, attempt = spec.attempt, "cannot record the attempt's end: {e}");
                }
                Step::Done(Err(self.fail(live, spec, Some(&agent.name), failure).await))
            }
            Attempt::Retry { outcome: AttemptOutcome::Cancelled, .. } if live.cancel.is_cancelled() => {
                let detail = "the build was cancelled";
                if let Err(e) =
                    self.store.finish_attempt(&spec.job, spec.attempt, AttemptOutcome::Cancelled, detail).await
                {
                    warn!(job = %spec.job, attempt = spec.attempt, "cannot record the attempt's end: {e}");
                }
                Step::Done(Err(format!("  {platform}: cancelled")))
            }
            Attempt::Retry { outcome, failure, blame, doubt } => {
                // builds show names whose fault each attempt's end was.
                let detail = format!("{}: {}", failure.kind, failure.message);
                if let Err(e) = self.store.finish_attempt(&spec.job, spec.attempt, outcome, &detail).await {
                    warn!(job = %spec.job, attempt = spec.attempt, "cannot record the attempt's end: {e}");
                }
                if let Err(e) = self.store.requeue(&spec.job).await {
                    warn!(job = %spec.job, "cannot record that the job waits again: {e}");
                }
                if blame {
                    self.count_failure(&agent.name, outcome, &failure.message).await;
                }
                warn!(platform = %platform, agent = %agent.name, attempt = spec.attempt, "attempt ended without an image: {}", failure.message);
                if spec.attempt < self.attempts_base + self.max_attempts {
                    self.metrics.retried(platform);
                    live.emit(BuildEvent::Retrying {
                        platform: platform.clone(),
                        agent: agent.name.clone(),
                        reason: failure.message.clone(),
                        next_attempt: spec.attempt + 1,
                    });
                }
                if doubt {
                    Step::Doubt(failure)
                } else {
                    Step::Again(failure)
                }
            }
        }
    }

    /// Runs the attempt on the agent, then verifies what it pushed.
    async fn attempt(
        &self,
        agent: &AgentHandle,
        spec: &JobSpec,
        wants: &Wants,
        live: &Live,
        started: Instant,
        history: History<'_>,
    ) -> Attempt {
        let tried = history.tried;
        let run = agent.link.run_job(spec.clone(), live, self.limits.idle);
        let pushed = match tokio::time::timeout(self.limits.timeout, run).await {
            Ok(Ok(p)) => p,
            // Another agent may hold credentials this one lacks, or more memory; this one would
            // fail the same way again, and it is not broken.
            Ok(Err(failure)) if matches!(failure.kind, FailureKind::PullRefused | FailureKind::OutOfMemory) => {
                return self.elsewhere_if_possible(agent, wants, tried, AttemptOutcome::Failed, failure);
            }
            // A slow Dockerfile and a stuck engine look alike: another agent tells them apart.
            Ok(Err(failure)) if failure.kind == FailureKind::TimedOut => {
                return self.elsewhere_if_possible(agent, wants, tried, AttemptOutcome::TimedOut, failure);
            }
            Ok(Err(failure)) => return self.after_failure(agent, wants, history, failure),
            Err(_) => {
                // Dropping the run closed the job's stream, which stops the job on the agent.
                let message = format!(
                    "the attempt ran past its limit of {} s: the job was stopped on agent {} (a longer build needs \
                     --job-timeout)",
                    self.limits.timeout.as_secs(),
                    agent.name
                );
                let failure = JobFailure { kind: FailureKind::TimedOut, message, log_tail: vec![] };
                return self.elsewhere_if_possible(agent, wants, tried, AttemptOutcome::TimedOut, failure);
            }
        };
        let verifying = Instant::now();
        let verified =
            self.images.verify(Claim { platform: &spec.platform, agent: &agent.name, pushed: &pushed }).await;
        let unavailable = matches!(verified, Err(VerifyError::Unavailable(_)));
        // Images handed over to the coordinator are checked without a registry.
        if !self.images.repository().is_empty() {
            self.metrics.registry_observed("verify", verifying.elapsed(), unavailable);
        }
        match verified {
            Ok(child) => {
                let result = PlatformResult {
                    platform: spec.platform.clone(),
                    digest: child.manifest.digest.clone(),
                    agent: agent.name.clone(),
                    duration_ms: started.elapsed().as_millis() as u64,
                    attestation: None,
                };
                Attempt::Verified((child, result), pushed.bases)
            }
            Err(VerifyError::Wrong(message)) => {
                self.quarantine(&agent.name, &message).await;
                let failure = JobFailure { kind: FailureKind::Verification, message, log_tail: vec![] };
                Attempt::Retry { outcome: AttemptOutcome::WrongImage, failure, blame: false, doubt: false }
            }
            Err(VerifyError::Unavailable(message)) => {
                let failure = JobFailure { kind: FailureKind::Verification, message, log_tail: vec![] };
                Attempt::Retry { outcome: AttemptOutcome::Unverified, failure, blame: false, doubt: false }
            }
        }
    }

    /// Another try on another agent of the platform if there is one, blaming nobody; with no
    /// other agent the same one would fail the same way, so the platform ends here.
    fn elsewhere_if_possible(
        &self,
        agent: &AgentHandle,
        wants: &Wants,
        tried: &[AgentName],
        outcome: AttemptOutcome,
        failure: JobFailure,
    ) -> Attempt {
        let mut tried = tried.to_vec();
        tried.push(agent.name.clone());
        if self.farm.serves_other(wants, &tried) {
            Attempt::Retry { outcome, failure, blame: false, doubt: false }
        } else {
            Attempt::Final { outcome, failure }
        }
    }

    async fn verified(
        &self,
        agent: &AgentHandle,
        spec: &JobSpec,
        live: &Live,
        verified: Verified,
        bases: &[ResolvedBase],
        started_ms: u64,
    ) -> Verified {
        let (child, mut result) = verified;
        if let Some(origin) = self.provenance.filter(|_| !self.images.repository().is_empty()) {
            result.attestation = self.attest(origin, agent, spec, &child, bases, started_ms, live).await;
        }
        let image = VerifiedImage {
            digest: result.digest.clone(),
            media_type: child.manifest.media_type.clone(),
            size: child.manifest.size,
            agent: agent.name.clone(),
            duration_ms: result.duration_ms,
            attestation: result.attestation.clone(),
        };
        if let Err(e) = self.store.attempt_verified(&spec.job, spec.attempt, image).await {
            error!("cannot record a verified digest: {e}");
        }
        info!(platform = %spec.platform, digest = %result.digest, "platform verified");
        live.emit(BuildEvent::PlatformDone(result.clone()));
        (child, result)
    }

    /// Writes the provenance of `child` beside it; none (said in the build's log) if the
    /// registry does not take it, which leaves the image without one but verified.
    #[allow(clippy::too_many_arguments)]
    async fn attest(
        &self,
        origin: Origin<'_>,
        agent: &AgentHandle,
        spec: &JobSpec,
        child: &Child,
        bases: &[ResolvedBase],
        started_ms: u64,
        live: &Live,
    ) -> Option<Attestation> {
        let statement = provenance::statement(&Provenance {
            repository: &self.images.repository(),
            subject: &child.manifest.digest,
            platform: &spec.platform,
            agent: &agent.name,
            agent_certificate_sha256: &agent.cert_sha256,
            agent_platforms: &agent.registration.platforms,
            build: origin.build,
            invocation: format!("{}/{}", spec.job, spec.attempt),
            request: origin.request,
            bases,
            started_ms,
            finished_ms: now_ms(),
        });
        let attaching = self.metrics.registry_call("attest", self.images.attest(child, statement)).await;
        match attaching {
            Ok(attestation) => attestation,
            Err(e) => {
                warn!(platform = %spec.platform, "provenance not attached: {e}");
                let line = format!("provenance NOT attached (the registry refused it): {e}");
                live.emit(BuildEvent::Log { platform: spec.platform.clone(), line });
                None
            }
        }
    }

    /// Records the platform as failed for good (left out, if it is optional), tells the
    /// watchers, and returns its summary.
    async fn fail(&self, live: &Live, spec: &JobSpec, agent: Option<&AgentName>, failure: JobFailure) -> String {
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
        if self.optional && !live.cancel.is_cancelled() {
            let reason = format!("it failed {who} ({}): {}", failure.kind, failure.message);
            warn!(platform = %platform, "optional platform left out: {reason}");
            if let Err(e) = self.store.job_ended(&spec.job, JobState::LeftOut, &reason).await {
                error!("cannot record a platform left out: {e}");
            }
            live.emit(BuildEvent::PlatformLeftOut { platform: platform.clone(), reason });
            return summary;
        }
        warn!(platform = %platform, kind = %failure.kind, "platform failed: {}", failure.message);
        if let Err(e) = self.store.job_ended(&spec.job, JobState::Failed, &failure.message).await {
            error!("cannot record a failed job: {e}");
        }
        live.emit(BuildEvent::PlatformFailed { platform: platform.clone(), agent: agent.cloned(), failure });
        summary
    }
}

/// No agent came for the platform: the failure to report, naming the previous attempt's end.
fn no_agent(message: String, last: Last, attempts_made: u32) -> (Option<AgentName>, JobFailure) {
    let mut message = message;
    let mut agent = None;
    if let Some((previous, f)) = last {
        if let Some(a) = &previous {
            message = format!("{message}; attempt {attempts_made} on agent {a} ended: {}", f.message);
        }
        agent = previous;
    }
    (agent, JobFailure { kind: FailureKind::AgentLost, message, log_tail: vec![] })
}

/// Gives a job's slot back however the attempt ends.
struct Slot<'a> {
    farm: &'a Farm,
    job: JobId,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.farm.release(&self.job);
    }
}
