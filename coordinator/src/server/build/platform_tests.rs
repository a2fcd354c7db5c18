//! One platform's orchestration, in-process on paused tokio time: scripted agent links and a
//! scripted registry in place of QUIC and the distribution API; the real farm, scheduler and
//! state database (SQLite in a temporary directory) around them.

use super::platform::{JobLimits, Runner, Verified};
use crate::server::farm::Farm;
use crate::server::live::{Live, LiveBuilds};
use crate::server::ports::{AgentLink, Claim, ImageCheck, VerifyError, Verifying};
use crate::server::scheduler::Standing;
use crate::server::store::Store;
use archfarm_shared::oci::{Blob, Child};
use archfarm_shared::protocol::{BuildEvent, BuildRequest, FailureKind, JobFailure, JobSpec, JobState, PushedImage};
use archfarm_shared::{AgentName, BuildId, Digest, JobId, Platform};
use futures_util::future::BoxFuture;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the next attempt on any scripted agent does.
#[derive(Debug, Clone)]
enum Act {
    /// Pushes an image (digest from the agent's name and the attempt).
    Push,
    /// Reports a failure of this kind.
    Fail(FailureKind),
    /// The connection drops mid-job: the agent leaves the farm and the attempt is lost.
    Vanish,
    /// Builds until the build is cancelled.
    Hang,
}

/// The script every scripted agent takes its next act from, in order.
type Script = Arc<Mutex<VecDeque<Act>>>;

#[derive(Debug)]
struct ScriptedLink {
    name: AgentName,
    id: usize,
    open: AtomicBool,
    script: Script,
    farm: Arc<Farm>,
}

impl AgentLink for ScriptedLink {
    fn run_job<'a>(
        &'a self,
        spec: JobSpec,
        live: &'a Live,
        _idle: Duration,
    ) -> BoxFuture<'a, Result<PushedImage, JobFailure>> {
        Box::pin(async move {
            let act = self.script.lock().unwrap().pop_front().expect("the script has an act for every attempt");
            let failure = |kind, message: &str| JobFailure { kind, message: message.to_owned(), log_tail: vec![] };
            tokio::time::sleep(Duration::from_secs(1)).await;
            match act {
                Act::Push => {
                    live.log(&spec.platform, format!("#1 built on {}", self.name));
                    let digest = Digest::of(format!("{}-{}", self.name, spec.attempt).as_bytes());
                    Ok(PushedImage { digest, media_type: MANIFEST.into(), size: 500, bases: vec![] })
                }
                Act::Fail(kind) => {
                    let log_tail = vec!["step 2/3: RUN make".to_owned(), "exit code: 2".to_owned()];
                    Err(JobFailure { kind, message: format!("{kind} failed"), log_tail })
                }
                Act::Vanish => {
                    self.open.store(false, Ordering::SeqCst);
                    self.farm.unregister(&self.name, self.id);
                    Err(failure(FailureKind::AgentLost, "the connection was lost"))
                }
                Act::Hang => {
                    live.cancel.cancelled().await;
                    Err(failure(FailureKind::Cancelled, "cancelled"))
                }
            }
        })
    }

    fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    fn id(&self) -> usize {
        self.id
    }

    fn close(&self, _code: u32, _reason: &str) {
        self.open.store(false, Ordering::SeqCst);
    }
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A registry in which the first `wrong` images checked are of another platform.
#[derive(Debug, Default)]
struct ScriptedRegistry {
    wrong: AtomicUsize,
}

impl ImageCheck for ScriptedRegistry {
    fn verify<'a>(&'a self, claim: Claim<'a>) -> Verifying<'a> {
        let Claim { platform, agent, pushed } = claim;
        Box::pin(async move {
            if self.wrong.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                return Err(VerifyError::Wrong(format!(
                    "agent {agent}: pushed an image whose config says linux/s390x, but the job was for {platform}"
                )));
            }
            let manifest =
                Blob { media_type: pushed.media_type.clone(), digest: pushed.digest.clone(), size: pushed.size };
            Ok(Child { platform: platform.clone(), manifest })
        })
    }
}

/// A farm of scripted agents for linux/amd64, a store with one build of that platform, and its job.
struct Rig {
    farm: Arc<Farm>,
    store: Store,
    registry: ScriptedRegistry,
    script: Script,
    live: Live,
    spec: JobSpec,
    max_attempts: u32,
    quarantine_after: u32,
    limits: JobLimits,
    optional: bool,
    attempts_base: u32,
    metrics: crate::server::metrics::Metrics,
    _dir: tempfile::TempDir,
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

impl Rig {
    async fn new(agents: &[&str], acts: &[Act]) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let farm = Farm::new(Duration::from_secs(30), Some(0.5));
        let script: Script = Arc::new(Mutex::new(acts.iter().cloned().collect()));
        let platform: Platform = "linux/amd64".parse().unwrap();
        for name in agents {
            let name: AgentName = name.parse().unwrap();
            let link = ScriptedLink {
                name: name.clone(),
                id: NEXT_ID.fetch_add(1, Ordering::SeqCst),
                open: AtomicBool::new(true),
                script: script.clone(),
                farm: farm.clone(),
            };
            super::testing::join(&farm, &name, std::slice::from_ref(&platform), Arc::new(link));
        }
        let (build, job) = (BuildId::random(), JobId::random());
        let request = BuildRequest::new(
            vec![platform.clone()],
            vec!["127.0.0.1:5000/app:1".into()],
            Digest::of(b"context"),
            "Dockerfile",
        );
        store.create_build(&build, ("test", &[]), &request, &[(job.clone(), platform.clone())]).await.unwrap();
        let spec = JobSpec {
            job,
            build: build.clone(),
            platform,
            context: request.context,
            dockerfile: request.dockerfile,
            build_args: vec![],
            target: None,
            labels: vec![],
            repository: "127.0.0.1:5000/app".into(),
            attempt: 0,
            no_cache: false,
            pull: false,
            tests: vec![],
            test_target: None,
            cache_from: vec![],
            inline_cache: false,
            provenance: false,
            read_scopes: vec![],
            cache_to_max: None,
        };
        let live = LiveBuilds::default().start(&build);
        let registry = ScriptedRegistry::default();
        let limits = JobLimits { timeout: Duration::from_secs(3600), idle: Duration::from_secs(900) };
        let metrics = crate::server::metrics::Metrics::new();
        Rig {
            farm,
            store,
            registry,
            script,
            live,
            spec,
            max_attempts: 3,
            quarantine_after: 3,
            limits,
            optional: false,
            attempts_base: 0,
            metrics,
            _dir: dir,
        }
    }

    fn runner(&self) -> Runner<'_> {
        Runner {
            farm: &self.farm,
            store: &self.store,
            images: &self.registry,
            metrics: &self.metrics,
            max_attempts: self.max_attempts,
            optional: self.optional,
            attempts_base: self.attempts_base,
            provenance: None,
            quarantine_after: self.quarantine_after,
            limits: self.limits,
            read_scopes: &[],
        }
    }

    async fn run(&self) -> Result<Verified, String> {
        let wants = crate::server::scheduler::fit::Wants::platform(self.spec.platform.clone());
        self.runner().run(self.spec.clone(), &wants, &self.live).await
    }

    /// Each attempt's agent and outcome, from the store, as `builds show` reads them.
    async fn attempts(&self) -> Vec<(String, String)> {
        let detail = self.store.detail(&self.spec.build).await.unwrap().unwrap();
        let attempts = &detail.jobs[0].attempts;
        attempts.iter().map(|a| (a.agent.to_string(), a.outcome.map(|o| o.to_string()).unwrap_or_default())).collect()
    }

    async fn job_state(&self) -> JobState {
        self.store.jobs(&self.spec.build).await.unwrap()[0].state
    }

    fn agent_state(&self, name: &str) -> String {
        self.farm.agents().into_iter().find(|a| a.name.as_str() == name).map(|a| a.state).unwrap_or_default()
    }

    fn acts_left(&self) -> usize {
        self.script.lock().unwrap().len()
    }
}

#[tokio::test(start_paused = true)]
async fn an_agent_lost_mid_job_is_replaced_by_a_peer() {
    let rig = Rig::new(&["amd64-a", "amd64-b"], &[Act::Vanish, Act::Push]).await;
    let mut events = rig.live.events.subscribe();
    let (child, result) = rig.run().await.expect("the peer's image is verified");
    let attempts = rig.attempts().await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].1, "lost");
    assert_eq!(attempts[1].1, "pushed");
    assert_ne!(attempts[0].0, attempts[1].0, "the second attempt runs on the other agent");
    assert_eq!(result.agent.as_str(), attempts[1].0);
    assert_eq!(child.manifest.digest, Digest::of(format!("{}-2", attempts[1].0).as_bytes()));
    assert_eq!(rig.job_state().await, JobState::Verified);
    let mut retried = false;
    while let Ok(event) = events.try_recv() {
        retried |= matches!(event, BuildEvent::Retrying { next_attempt: 2, .. });
    }
    assert!(retried, "watchers are told the platform is tried again");
}

#[tokio::test(start_paused = true)]
async fn an_agent_that_pushes_the_wrong_platform_is_quarantined_and_the_platform_retried() {
    let rig = Rig::new(&["amd64-a", "amd64-b"], &[Act::Push, Act::Push]).await;
    rig.registry.wrong.store(1, Ordering::SeqCst);
    let (_, result) = rig.run().await.expect("the healthy agent's image is verified");
    let attempts = rig.attempts().await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].1, "wrong-image");
    assert_eq!(attempts[1].1, "pushed");
    let culprit: AgentName = attempts[0].0.parse().unwrap();
    assert_ne!(result.agent, culprit);
    let reason = rig.store.quarantined(&culprit).await.unwrap().expect("the quarantine is recorded");
    assert!(reason.contains("linux/s390x"), "{reason}");
    let state = rig.agent_state(culprit.as_str());
    assert!(state.starts_with("quarantined: "), "{state}");
    assert_eq!(rig.agent_state(result.agent.as_str()), "ready");
}

#[tokio::test(start_paused = true)]
async fn a_dockerfile_failure_is_final_once_a_peer_confirms_it_and_blames_no_agent() {
    let acts = [Act::Fail(FailureKind::Build), Act::Fail(FailureKind::Build), Act::Push];
    let mut rig = Rig::new(&["amd64-a", "amd64-b"], &acts).await;
    rig.quarantine_after = 1;
    let summary = rig.run().await.unwrap_err();
    assert!(summary.contains("linux/amd64 failed on agent amd64-"), "{summary}");
    assert!(summary.contains("(build): build failed"), "{summary}");
    assert!(summary.contains("before as well: the build's doing, not an agent's"), "{summary}");
    assert!(summary.contains("exit code: 2"), "the failing step's last lines are shown: {summary}");
    let attempts = rig.attempts().await;
    assert_eq!(attempts.len(), 2, "one peer's word, no more");
    assert_ne!(attempts[0].0, attempts[1].0, "the second opinion is another agent's");
    assert_eq!(rig.acts_left(), 1);
    assert_eq!(rig.job_state().await, JobState::Failed);
    for agent in ["amd64-a", "amd64-b"] {
        assert_eq!(rig.store.quarantined(&agent.parse().unwrap()).await.unwrap(), None);
        assert_eq!(rig.agent_state(agent), "ready");
    }
    // With no peer to ask, the one agent's failure is final.
    let rig = Rig::new(&["amd64-a"], &[Act::Fail(FailureKind::Build), Act::Push]).await;
    assert!(rig.run().await.is_err());
    assert_eq!((rig.attempts().await.len(), rig.acts_left()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_build_failure_a_peer_contradicts_blames_the_agent_that_reported_it() {
    let mut rig = Rig::new(&["amd64-a", "amd64-b"], &[Act::Fail(FailureKind::Build), Act::Push]).await;
    rig.quarantine_after = 1;
    let (_, result) = rig.run().await.expect("the peer builds it");
    let attempts = rig.attempts().await;
    let liar: AgentName = attempts[0].0.parse().unwrap();
    assert_ne!(result.agent, liar);
    let reason = rig.store.quarantined(&liar).await.unwrap().expect("blamed, and quarantined after 1");
    assert!(reason.contains(&format!("its build failed where agent {}'s succeeded", result.agent)), "{reason}");
    assert_eq!(rig.store.quarantined(&result.agent).await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn an_agent_failing_for_its_own_reasons_is_quarantined_after_the_limit() {
    let mut rig = Rig::new(&["amd64-a", "amd64-b"], &[Act::Fail(FailureKind::Engine), Act::Push]).await;
    rig.quarantine_after = 1;
    let (_, result) = rig.run().await.expect("the other agent builds it");
    let attempts = rig.attempts().await;
    assert_eq!(attempts[0].1, "failed");
    let failed: AgentName = attempts[0].0.parse().unwrap();
    assert_ne!(result.agent, failed);
    let reason = rig.store.quarantined(&failed).await.unwrap().expect("quarantined after 1 failure");
    assert!(reason.contains("1 jobs in a row failed"), "{reason}");
    assert!(rig.metrics.render(&[], &[], &[]).contains("archfarm_quarantines_total 1"));
}

#[tokio::test(start_paused = true)]
async fn max_attempts_reached_fails_the_platform_clearly() {
    let acts = [Act::Fail(FailureKind::Push), Act::Fail(FailureKind::Push), Act::Push];
    let mut rig = Rig::new(&["amd64-a", "amd64-b"], &acts).await;
    rig.max_attempts = 2;
    let summary = rig.run().await.unwrap_err();
    assert!(summary.contains("gave up after 2 attempts; the last: push failed"), "{summary}");
    assert_eq!(rig.attempts().await.iter().map(|a| a.1.as_str()).collect::<Vec<_>>(), ["failed", "failed"]);
    assert_eq!(rig.acts_left(), 1, "no third attempt");
    assert_eq!(rig.job_state().await, JobState::Failed);
    // A failing push says more about the registry than the agents: nobody is quarantined.
    assert_eq!(rig.agent_state("amd64-a"), "ready");
    assert_eq!(rig.agent_state("amd64-b"), "ready");
}

#[tokio::test(start_paused = true)]
async fn cancelling_during_an_attempt_stops_it_and_frees_the_agent() {
    let rig = Rig::new(&["amd64-a"], &[Act::Hang]).await;
    let mut events = rig.live.events.subscribe();
    let cancel = rig.live.cancel.clone();
    let watcher = async move {
        while let Ok(event) = events.recv().await {
            if matches!(event, BuildEvent::Started { .. }) {
                cancel.cancel();
                return;
            }
        }
    };
    let (result, ()) = tokio::join!(rig.run(), watcher);
    assert_eq!(result.unwrap_err(), "  linux/amd64: cancelled");
    assert_eq!(rig.attempts().await, [("amd64-a".to_owned(), "cancelled".to_owned())]);
    let agent = rig.farm.agents().remove(0);
    assert_eq!((agent.running, agent.state.as_str()), (0, "ready"), "the slot is given back");
}

#[tokio::test(start_paused = true)]
async fn a_platform_no_agent_serves_fails_after_the_agent_wait() {
    let mut rig = Rig::new(&["amd64-a"], &[]).await;
    rig.spec.platform = "linux/arm64".parse().unwrap();
    let started = tokio::time::Instant::now();
    let summary = rig.run().await.unwrap_err();
    let waited = started.elapsed();
    assert!(summary.contains("linux/arm64 failed before reaching an agent (agent lost)"), "{summary}");
    assert!(summary.contains("no agent building linux/arm64 has been connected for 30 s"), "{summary}");
    assert!((Duration::from_secs(30)..Duration::from_secs(32)).contains(&waited), "{waited:?}");
    assert!(rig.attempts().await.is_empty());
    assert_eq!(rig.job_state().await, JobState::Failed);
}

#[tokio::test(start_paused = true)]
async fn a_failed_attempt_runs_again_on_another_agent_when_one_is_free() {
    // Both agents stay connected and unblamed: only the retry rule moves the job.
    let rig = Rig::new(&["amd64-a", "amd64-b"], &[Act::Fail(FailureKind::Push), Act::Push]).await;
    let (_, result) = rig.run().await.expect("the second attempt is verified");
    let attempts = rig.attempts().await;
    assert_eq!(attempts.iter().map(|a| a.1.as_str()).collect::<Vec<_>>(), ["failed", "pushed"]);
    assert_ne!(attempts[0].0, attempts[1].0, "the retry avoids the agent whose attempt just failed");
    assert_eq!(result.agent.as_str(), attempts[1].0);
    assert_eq!((rig.agent_state("amd64-a"), rig.agent_state("amd64-b")), ("ready".into(), "ready".into()));
}

#[tokio::test(start_paused = true)]
async fn a_refused_pull_moves_to_a_peer_that_may_have_credentials_and_blames_nobody() {
    let mut rig = Rig::new(&["amd64-a", "amd64-b"], &[Act::Fail(FailureKind::PullRefused), Act::Push]).await;
    rig.quarantine_after = 1;
    let (_, result) = rig.run().await.expect("the peer pulls and builds");
    let attempts = rig.attempts().await;
    assert_eq!(attempts.iter().map(|a| a.1.as_str()).collect::<Vec<_>>(), ["failed", "pushed"]);
    assert_ne!(attempts[0].0, attempts[1].0);
    assert_eq!(result.agent.as_str(), attempts[1].0);
    assert_eq!((rig.agent_state("amd64-a"), rig.agent_state("amd64-b")), ("ready".into(), "ready".into()));

    // With no peer for the platform, the same agent would only be refused again: final.
    let rig = Rig::new(&["amd64-a"], &[Act::Fail(FailureKind::PullRefused), Act::Push]).await;
    let summary = rig.run().await.unwrap_err();
    assert!(summary.contains("(pull refused)"), "{summary}");
    assert_eq!(rig.attempts().await.len(), 1);
    assert_eq!(rig.acts_left(), 1);
    assert_eq!(rig.agent_state("amd64-a"), "ready");
}

#[tokio::test(start_paused = true)]
async fn an_attempt_past_its_time_limit_is_stopped_and_tried_on_a_peer_or_ends() {
    let mut rig = Rig::new(&["amd64-a", "amd64-b"], &[Act::Hang, Act::Push]).await;
    rig.limits.timeout = Duration::from_secs(60);
    let started = tokio::time::Instant::now();
    let (_, result) = rig.run().await.expect("the peer builds it in time");
    let attempts = rig.attempts().await;
    assert_eq!(attempts.iter().map(|a| a.1.as_str()).collect::<Vec<_>>(), ["timed-out", "pushed"]);
    assert_ne!(attempts[0].0, attempts[1].0);
    assert_eq!(result.agent.as_str(), attempts[1].0);
    assert!(started.elapsed() >= Duration::from_secs(60), "{:?}", started.elapsed());
    assert_eq!((rig.agent_state("amd64-a"), rig.agent_state("amd64-b")), ("ready".into(), "ready".into()));

    // Alone on its platform, the agent would only time out again: the platform ends.
    let mut rig = Rig::new(&["amd64-a"], &[Act::Hang, Act::Push]).await;
    rig.limits.timeout = Duration::from_secs(60);
    let summary = rig.run().await.unwrap_err();
    assert!(summary.contains("(timed out): the attempt ran past its limit of 60 s"), "{summary}");
    assert_eq!(rig.attempts().await, [("amd64-a".to_owned(), "timed-out".to_owned())]);
    assert_eq!(rig.farm.agents()[0].running, 0, "the slot is given back");
}

#[tokio::test(start_paused = true)]
async fn whose_fault_a_failure_is_decides_where_it_runs_again_and_who_is_blamed() {
    // A lost context is the coordinator's: no agent can build it, and none is blamed.
    let mut rig = Rig::new(&["amd64-a", "amd64-b"], &[Act::Fail(FailureKind::ContextMissing), Act::Push]).await;
    rig.quarantine_after = 1;
    let summary = rig.run().await.unwrap_err();
    assert!(summary.contains("(context missing)"), "{summary}");
    assert_eq!((rig.attempts().await.len(), rig.acts_left()), (1, 1));
    assert_eq!((rig.agent_state("amd64-a"), rig.agent_state("amd64-b")), ("ready".into(), "ready".into()));

    // A full disk is the agent's own: counted against it, and the platform runs elsewhere.
    let mut rig = Rig::new(&["amd64-a", "amd64-b"], &[Act::Fail(FailureKind::DiskFull), Act::Push]).await;
    rig.quarantine_after = 1;
    let (_, result) = rig.run().await.expect("the peer builds it");
    let full = rig.attempts().await[0].0.clone();
    assert_ne!(result.agent.as_str(), full);
    assert!(rig.agent_state(&full).starts_with("quarantined: 1 jobs in a row failed"), "{}", rig.agent_state(&full));

    // Out of memory may be the Dockerfile's appetite: tried elsewhere, nobody blamed.
    let mut rig = Rig::new(&["amd64-a", "amd64-b"], &[Act::Fail(FailureKind::OutOfMemory), Act::Push]).await;
    rig.quarantine_after = 1;
    rig.run().await.expect("the peer builds it");
    assert_eq!((rig.agent_state("amd64-a"), rig.agent_state("amd64-b")), ("ready".into(), "ready".into()));
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_agent_gets_no_jobs_and_health_never_lifts_a_quarantine() {
    let rig = Rig::new(&["amd64-a", "amd64-b"], &[Act::Push]).await;
    let a: AgentName = "amd64-a".parse().unwrap();
    rig.farm.set_health(&a, Some("the engine does not answer /_ping".into()));
    assert_eq!(rig.agent_state("amd64-a"), "unhealthy: the engine does not answer /_ping");
    let (_, result) = rig.run().await.expect("the healthy agent builds it");
    assert_eq!(result.agent.as_str(), "amd64-b");
    rig.farm.set_health(&a, None);
    assert_eq!(rig.agent_state("amd64-a"), "ready");
    rig.farm.set_standing(&a, Standing::Quarantined("pushed linux/s390x".into()));
    rig.farm.set_health(&a, Some("no /_ping".into()));
    rig.farm.set_health(&a, None);
    assert_eq!(rig.agent_state("amd64-a"), "quarantined: pushed linux/s390x");
    // An engine that goes bad under a quarantine is still bad when it is lifted.
    rig.farm.set_health(&a, Some("no /_ping".into()));
    rig.farm.apply_recorded(&a, &crate::server::store::agents::Recorded::Active);
    assert_eq!(rig.agent_state("amd64-a"), "unhealthy: no /_ping");
}

#[tokio::test(start_paused = true)]
async fn an_optional_platform_that_fails_is_left_out_not_failed_and_a_retry_counts_attempts_anew() {
    let mut rig = Rig::new(&["amd64-a"], &[Act::Fail(FailureKind::Build)]).await;
    rig.optional = true;
    let mut events = rig.live.events.subscribe();
    let summary = rig.run().await.unwrap_err();
    assert!(summary.contains("failed on agent amd64-a (build)"), "{summary}");
    assert_eq!(rig.job_state().await, JobState::LeftOut);
    let events: Vec<BuildEvent> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    assert!(!events.iter().any(|e| matches!(e, BuildEvent::PlatformFailed { .. })), "left out, not failed");
    let left_out = events.iter().find(|e| matches!(e, BuildEvent::PlatformLeftOut { .. }));
    assert!(format!("{left_out:?}").contains("reason: \"it failed on agent amd64-a (build)"), "{left_out:?}");

    // A retried job that used its three attempts gets three more.
    let mut rig = Rig::new(&["amd64-a"], &[Act::Push]).await;
    (rig.spec.attempt, rig.attempts_base) = (3, 3);
    assert!(rig.run().await.is_ok(), "attempt 4 runs");
}
