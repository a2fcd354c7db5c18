//! Nothing waits forever: a job past its time limit, or silent past its idle limit, is stopped
//! on its agent and recorded as timed out.

use archfarm_tests::*;
use std::time::{Duration, Instant};

/// Waits until `agents ls` shows `name` running nothing: the stopped job has really let go.
fn wait_idle(farm: &Farm, name: &str) {
    wait_until(Duration::from_secs(20), &format!("{name} to run nothing"), || {
        let out = farm.archfarm(&["agents", "ls", "--format", "json"]);
        let agents: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let agent = agents.as_array()?.iter().find(|a| a["name"] == name)?;
        (agent["running"] == 0).then_some(())
    })
}

#[test]
fn a_run_step_that_hangs_is_stopped_at_the_job_deadline_and_at_the_idle_deadline() {
    let mut farm = Farm::start(&[AgentSpec::amd64()]);

    // A RUN that would sleep ten minutes, under a 5 s limit on the whole attempt.
    let hung = slow_context(600);
    let started = Instant::now();
    let out = farm.build("linux/amd64", &[&format!("{}:1", farm.repo("hang"))], hung.path(), &["--job-timeout", "5s"]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(started.elapsed() < Duration::from_secs(60), "the client waited {:?}", started.elapsed());
    assert!(said.contains("(timed out): the attempt ran past its limit of 5 s"), "{said}");
    assert!(said.contains("stopped on agent amd64-1"), "{said}");
    let record = farm.build_record(&farm.newest_build());
    assert_eq!(Farm::attempts(&record, 0).iter().map(|a| a.1.as_str()).collect::<Vec<_>>(), ["timed-out"]);
    assert_eq!(record["jobs"][0]["state"], "failed");
    farm.proc("agent amd64-1").wait_for_log("stopping the job: the coordinator", Duration::from_secs(10));
    wait_idle(&farm, "amd64-1");
    assert!(farm.tags("hang").is_empty(), "nothing is published");

    // The same build with a generous limit but no output for 3 s.
    let quiet = slow_context(600);
    let out = farm.build(
        "linux/amd64",
        &[&format!("{}:2", farm.repo("hang"))],
        quiet.path(),
        &["--job-timeout", "10m", "--idle-timeout", "3s"],
    );
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("(timed out): no build output for 3 s: the job was stopped on agent amd64-1"), "{said}");
    // A silent build is what a wedged engine looks like: the agent probes it at once.
    farm.proc("agent amd64-1").wait_for_log("probing the engine now: a build went silent", Duration::from_secs(10));
    wait_idle(&farm, "amd64-1");

    // A limit out of range is refused before anything is sent.
    let out = farm.build("linux/amd64", &[&format!("{}:3", farm.repo("hang"))], quiet.path(), &["--job-timeout", "0s"]);
    assert!(text(&out).contains("--job-timeout must be between 1 s and 7 days"), "{}", text(&out));

    // The agent is healthy and takes the next build.
    let fine = context(PER_ARCH_DOCKERFILE);
    let out = farm.build("linux/amd64", &[&format!("{}:ok", farm.repo("hang"))], fine.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
}
