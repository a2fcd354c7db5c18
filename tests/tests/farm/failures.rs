//! Failure paths: each gives a clear message, and nothing is published.

use archfarm_tests::*;
use std::process::Command;
use std::time::Duration;

fn coordinator_log(farm: &mut Farm) -> String {
    farm.proc("coordinator").log_text()
}

#[test]
fn a_platform_no_agent_declares_is_refused_at_once_naming_it_and_what_the_farm_has() {
    let mut farm = Farm::start(&[AgentSpec::amd64(), AgentSpec::arm64_standin()]);
    let ctx = context(PER_ARCH_DOCKERFILE);
    let tag = format!("{}:1", farm.repo("missing"));
    let out = farm.build("linux/amd64,linux/s390x", &[&tag], ctx.path(), &[]);
    let msg = text(&out);
    assert!(!out.status.success(), "{msg}");
    assert!(msg.contains("no agent builds linux/s390x natively; the farm has linux/amd64, linux/arm64"), "{msg}");
    assert!(farm.tags("missing").is_empty());
    assert!(!coordinator_log(&mut farm).contains("job assigned"), "no platform may start when one cannot");
}

#[test]
fn an_invalid_tag_is_refused_before_anything_is_sent() {
    let mut farm = Farm::start(&[AgentSpec::amd64()]);
    let ctx = context(PER_ARCH_DOCKERFILE);
    for bad in [
        format!("{}:1", farm.repo("Upper/Case")),
        format!("{}:bad tag", farm.repo("x")),
        format!("{}:-x", farm.repo("x")),
    ] {
        let out =
            farm.archfarm(&["build", "--platform", "linux/amd64", "-t", &bad, "--push", ctx.path().to_str().unwrap()]);
        let msg = text(&out);
        assert!(!out.status.success(), "{bad}: {msg}");
        assert!(msg.contains("invalid image reference") && msg.contains("REGISTRY/REPOSITORY:TAG"), "{bad}: {msg}");
    }
    // Tags in two repositories cannot share an index.
    let out = farm.archfarm(&[
        "build",
        "--platform",
        "linux/amd64",
        "-t",
        &format!("{}:1", farm.repo("a")),
        "-t",
        &format!("{}:1", farm.repo("b")),
        "--push",
        ctx.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("all tags must be in one repository"), "{}", text(&out));
    let log = coordinator_log(&mut farm);
    assert!(!log.contains("job assigned"), "{log}");
    assert!(farm.tags("a").is_empty() && farm.tags("x").is_empty());
}

#[test]
fn a_missing_dockerfile_is_refused_with_what_to_pass() {
    let mut farm = Farm::start(&[AgentSpec::amd64()]);
    let ctx = context(PER_ARCH_DOCKERFILE);
    std::fs::remove_file(ctx.path().join("Dockerfile")).unwrap();
    let tag = format!("{}:1", farm.repo("nodockerfile"));
    let out =
        farm.archfarm(&["build", "--platform", "linux/amd64", "-t", &tag, "--push", ctx.path().to_str().unwrap()]);
    let msg = text(&out);
    assert!(!out.status.success());
    assert!(msg.contains("Dockerfile not found") && msg.contains("pass -f"), "{msg}");
    assert!(!coordinator_log(&mut farm).contains("stored build context"));
    assert!(farm.tags("nodockerfile").is_empty());
}

#[test]
fn building_without_push_says_to_add_push() {
    let farm = Farm::start(&[AgentSpec::amd64()]);
    let ctx = context(PER_ARCH_DOCKERFILE);
    let out = farm.archfarm(&[
        "build",
        "--platform",
        "linux/amd64",
        "-t",
        &format!("{}:1", farm.repo("nopush")),
        ctx.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("Add --push"), "{}", text(&out));
    assert!(farm.tags("nopush").is_empty());
}

#[test]
fn a_failing_run_step_names_the_platform_the_agent_and_the_step_output_and_publishes_nothing() {
    let farm = Farm::start(&[AgentSpec::amd64(), AgentSpec::arm64_standin()]);
    let ctx = context(
        "FROM scratch\nARG TARGETARCH\nCOPY bin/${TARGETARCH}/busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo step-output-before-failure; exit 3\"]\n",
    );
    let tag = format!("{}:1", farm.repo("failing"));
    // amd64 runs its RUN natively and fails with exit 3. The arm64 stand-in cannot execute an
    // aarch64 binary (no emulation is registered): that platform fails too, as it should.
    let out = farm.build("linux/amd64,linux/arm64", &[&tag], ctx.path(), &[]);
    let msg = text(&out);
    assert!(!out.status.success(), "{msg}");
    assert!(msg.contains("linux/amd64 failed on agent amd64-1 (build)"), "{msg}");
    assert!(msg.contains("exit code: 3"), "{msg}");
    assert!(msg.contains("step-output-before-failure"), "the failing step's log tail: {msg}");
    assert!(msg.contains("nothing was published"), "{msg}");
    assert!(farm.tags("failing").is_empty(), "no tag may be written when a platform fails");
}

#[test]
fn an_agent_with_a_certificate_from_another_ca_is_refused_on_both_sides() {
    let mut farm = Farm::start(&[AgentSpec::amd64()]);
    let other = farm.dir.path().join("other-ca");
    run_ok(Command::new(bin("archfarm")).args(["ca", "init", "--dir"]).arg(&other));
    run_ok(Command::new(bin("archfarm")).args(["ca", "issue-agent", "intruder", "--dir"]).arg(&other));
    let spec = AgentSpec { name: "intruder", native: None, capacity: 1 };
    farm.start_agent(&spec, &other.join("intruder.pem"), &other.join("intruder.key"));
    let agent_log =
        farm.proc("agent intruder").wait_for_log("refused this agent's certificate", Duration::from_secs(20));
    assert!(agent_log.contains("signed by the farm's CA"), "{agent_log}");
    let log = farm.proc("coordinator").wait_for_log("refused a connection", Duration::from_secs(10));
    assert!(log.contains("agents need a certificate signed by this farm's CA"), "{log}");
    let out = farm.archfarm(&["agents", "ls"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("amd64-1") && !listed.contains("intruder"), "{listed}");
}

#[test]
fn a_client_with_a_wrong_token_is_refused_and_the_token_is_not_logged() {
    let mut farm = Farm::start(&[AgentSpec::amd64()]);
    let wrong = "not-the-token-4242-secret";
    let mut cmd = farm.command(&["agents", "ls"]);
    cmd.env("ARCHFARM_TOKEN", wrong);
    let out = run_bounded(cmd, Duration::from_secs(60));
    let msg = text(&out);
    assert!(!out.status.success(), "{msg}");
    assert!(msg.contains("refused the client token"), "{msg}");
    let log = farm.proc("coordinator").wait_for_log("refused client: invalid token", Duration::from_secs(10));
    assert!(!log.contains(wrong), "a token must never be logged");
    assert!(!log.contains(&farm.token), "a token must never be logged");
    // A client without the farm CA cannot even trust the coordinator.
    let mut cmd = farm.command(&["agents", "ls"]);
    cmd.env("ARCHFARM_CA", farm.dir.path().join("ca/coordinator.pem").with_file_name("nope.pem"));
    let out = run_bounded(cmd, Duration::from_secs(60));
    assert!(text(&out).contains("cannot read the farm CA"), "{}", text(&out));
}
