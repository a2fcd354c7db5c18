//! An administrator drains an agent during a build: its running job finishes there, new jobs go
//! to its peer, the drain holds across a coordinator restart, and `undrain` gives it jobs again.

use archfarm_tests::*;
use std::time::Duration;

/// The agent of the last attempt at build `id`'s only platform, once one was chosen.
fn agent_of(farm: &Farm, id: &str) -> Option<String> {
    farm.last_attempt(id).map(|(agent, _)| agent)
}

#[test]
fn a_drained_agent_finishes_its_job_gets_no_new_ones_even_after_a_restart_and_undrain_gives_it_jobs_again() {
    // Two slots each: were amd64-1 not drained, the second build would go there (it has the warm
    // cache for the repository, and runs 1/2, within the affinity margin of amd64-2's 0/2).
    let two = |name| AgentSpec { name, native: None, capacity: 2 };
    let mut farm = Farm::start(&[two("amd64-1"), two("amd64-2")]);
    // Both idle: the name breaks the tie, so the slow build runs on amd64-1.
    let slow = slow_context(8);
    let client = farm.spawn_build("linux/amd64", &[&format!("{}:slow", farm.repo("drain"))], slow.path());
    let first = farm.newest_build();
    let ran_on = wait_until(Duration::from_secs(60), "the slow build's agent", || agent_of(&farm, &first));
    assert_eq!(ran_on, "amd64-1");

    let out = farm.archfarm(&["agents", "drain", "amd64-1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("agent amd64-1 drained: it finishes its 1 running jobs"), "{}", text(&out));
    assert_eq!(farm.agent_state("amd64-1").as_deref(), Some("drained"));

    // A build submitted now goes to amd64-2, though amd64-1 sorts first.
    let quick = context(PER_ARCH_DOCKERFILE);
    let out = farm.build("linux/amd64", &[&format!("{}:quick", farm.repo("drain"))], quick.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(agent_of(&farm, &farm.newest_build()).as_deref(), Some("amd64-2"));

    // The running job was not disturbed: it finished on amd64-1 and the build published.
    let out = wait_output(client, Duration::from_secs(120));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(agent_of(&farm, &first).as_deref(), Some("amd64-1"));
    assert_eq!(farm.build_record(&first)["jobs"][0]["attempts"].as_array().map(Vec::len), Some(1));
    let index: serde_json::Value =
        serde_json::from_slice(&skopeo::raw(&format!("{}:slow", farm.repo("drain")))).unwrap();
    assert_eq!(runnable(&index).len(), 1, "{index}");

    // The drain is recorded: it holds when the agents reconnect to a restarted coordinator.
    farm.restart_coordinator();
    farm.wait_for_agents(&["amd64-1", "amd64-2"]);
    assert_eq!(farm.agent_state("amd64-1").as_deref(), Some("drained"));
    let again = farm.archfarm(&["agents", "drain", "amd64-1"]);
    assert!(text(&again).contains("agent amd64-1 was already drained"), "{}", text(&again));

    let out = farm.archfarm(&["agents", "undrain", "amd64-1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("agent amd64-1 undrained: it takes jobs again"), "{}", text(&out));
    assert_eq!(farm.agent_state("amd64-1").as_deref(), Some("ready"));
    let out = farm.build("linux/amd64", &[&format!("{}:after", farm.repo("drain"))], quick.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(agent_of(&farm, &farm.newest_build()).as_deref(), Some("amd64-1"));

    let unknown = farm.archfarm(&["agents", "drain", "amd64-9"]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("no agent named amd64-9 is connected or holds a live certificate"),
        "{}",
        text(&unknown)
    );
}
