//! An agent's word that a build failed does not end a platform while a peer can build it: the
//! peer builds it too. When the peer succeeds, the agent that reported the failure is blamed
//! (and quarantined at the limit); when the peer fails as well, the build fails, both agents
//! named, and nobody is blamed.

use archfarm_shared::protocol::{FailureKind, JobFailure, JobOutcome};
use archfarm_tests::scripted::ScriptedAgent;
use archfarm_tests::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_build_failure_a_peer_contradicts_is_blamed_and_quarantined() {
    let farm = tokio::task::block_in_place(|| {
        Farm::builder().agents(&[AgentSpec::amd64()]).coordinator_toml("quarantine_after_failures = 1\n").start()
    });
    // "amd64-0" sorts before "amd64-1", so it is offered the job first.
    let liar = ScriptedAgent::join(&farm, "amd64-0", &["linux/amd64"]).await;
    let ctx = context(PER_ARCH_DOCKERFILE);
    let tag = format!("{}:1", farm.repo("doubted"));
    let client = farm.spawn_build("linux/amd64", &[&tag], ctx.path());
    let job = liar.next_job(Duration::from_secs(30)).await;
    let failure = JobFailure { kind: FailureKind::Build, message: "RUN make: exit code 2".into(), log_tail: vec![] };
    job.finish(JobOutcome::Failed(failure)).await;

    let out = tokio::task::block_in_place(|| wait_output(client, Duration::from_secs(120)));
    assert!(out.status.success(), "the peer built it: {}", text(&out));
    assert!(text(&out).contains("building it on another agent, to tell whose fault it is"), "{}", text(&out));
    let record = tokio::task::block_in_place(|| farm.build_record(&farm.newest_build()));
    assert_eq!(
        Farm::attempts(&record, 0),
        [("amd64-0".to_owned(), "failed".to_owned()), ("amd64-1".to_owned(), "pushed".to_owned())]
    );
    let state = tokio::task::block_in_place(|| farm.agent_state("amd64-0")).expect("the liar is listed");
    assert!(
        state.starts_with("quarantined") && state.contains("its build failed where agent amd64-1's succeeded"),
        "{state}"
    );
    assert_eq!(tokio::task::block_in_place(|| farm.agent_state("amd64-1")).as_deref(), Some("ready"));
    drop(liar);
}

#[test]
fn a_build_that_fails_on_two_agents_is_the_builds_doing_and_blames_neither() {
    let second = AgentSpec { name: "amd64-2", native: None, capacity: 2 };
    let farm = Farm::builder()
        .agents(&[AgentSpec::amd64(), second])
        .coordinator_toml("quarantine_after_failures = 1\n")
        .start();
    let ctx = context("FROM scratch\nCOPY bin/amd64/busybox /bin/busybox\nRUN [\"/bin/busybox\", \"false\"]\n");
    let out = farm.build("linux/amd64", &[&format!("{}:1", farm.repo("broken"))], ctx.path(), &[]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("before as well: the build's doing, not an agent's"), "{said}");
    let record = farm.build_record(&farm.newest_build());
    let attempts = Farm::attempts(&record, 0);
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_ne!(attempts[0].0, attempts[1].0, "a second agent's word");
    assert!(!text(&farm.archfarm(&["agents", "ls"])).contains("quarantined"), "nobody is blamed");
}
