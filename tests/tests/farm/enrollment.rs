//! Enrollment with one-time join tokens, agent revocation, and client tokens made and revoked
//! through the coordinator. No token or key may appear in any log.

use archfarm_tests::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn token(farm: &Farm, args: &[&str]) -> String {
    let out = farm.archfarm(args);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn all_logs(farm: &Farm) -> String {
    farm.procs.iter().map(|p| p.log_text()).collect::<Vec<_>>().join("\n")
}

#[test]
fn an_agent_joins_with_a_one_time_join_token_that_cannot_be_reused_or_used_late() {
    let mut farm = Farm::start(&[]);
    let join = token(&farm, &["agents", "token", "create", "--ttl", "600"]);
    assert_eq!(join.len(), 64, "{join}");
    let cert = farm.start_joining_agent(&AgentSpec { name: "joined-1", native: None, capacity: 1 }, &join);
    farm.wait_for_agents(&["joined-1"]);
    let key = cert.with_file_name("agent.key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "the key stays private");
    // The enrolled agent builds.
    let ctx = context(PER_ARCH_DOCKERFILE);
    let out = farm.build("linux/amd64", &[&format!("{}:1", farm.repo("joined"))], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("building natively on agent joined-1"), "{}", text(&out));

    // The same token again: refused, and the agent says why.
    farm.start_joining_agent(&AgentSpec { name: "joined-2", native: None, capacity: 1 }, &join);
    let log = farm.proc("agent joined-2").wait_for_log("refused to enroll", Duration::from_secs(20));
    assert!(log.contains("this join token was already used"), "{log}");
    // A token past its expiry: refused.
    let late = token(&farm, &["agents", "token", "create", "--ttl", "1"]);
    std::thread::sleep(Duration::from_millis(1500));
    farm.start_joining_agent(&AgentSpec { name: "joined-3", native: None, capacity: 1 }, &late);
    let log = farm.proc("agent joined-3").wait_for_log("refused to enroll", Duration::from_secs(20));
    assert!(log.contains("this join token has expired"), "{log}");

    let logs = all_logs(&farm);
    for secret in [&join, &late, &farm.token] {
        assert!(!logs.contains(secret.as_str()), "a token appears in a log");
    }
    let key_pem = std::fs::read_to_string(&key).unwrap();
    let key_body = key_pem.lines().nth(1).unwrap();
    assert!(!logs.contains(key_body), "a key appears in a log");
}

#[test]
fn a_revoked_agent_is_disconnected_and_refused_from_then_on() {
    let mut farm = Farm::start(&[AgentSpec::amd64(), AgentSpec::arm64_standin()]);
    let out = farm.archfarm(&["agents", "revoke", "amd64-1"]);
    assert!(out.status.success(), "{}", text(&out));
    // Disconnected now, and every reconnection refused.
    farm.proc("agent amd64-1").wait_for_log("this agent was revoked", Duration::from_secs(20));
    farm.proc("agent amd64-1")
        .wait_for_log("is revoked (`archfarm agents revoke`); it is refused for good", Duration::from_secs(20));
    let listed = String::from_utf8_lossy(&farm.archfarm(&["agents", "ls"]).stdout).into_owned();
    assert!(!listed.contains("amd64-1") && listed.contains("arm64-1"), "{listed}");
    // Its platform is gone from the farm.
    let ctx = context(PER_ARCH_DOCKERFILE);
    let out = farm.build("linux/amd64", &[&format!("{}:1", farm.repo("revoked"))], ctx.path(), &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no agent builds linux/amd64 natively"), "{}", text(&out));
    // Still refused after a coordinator restart: revocation is in the database.
    farm.restart_coordinator();
    farm.wait_for_agents(&["arm64-1"]);
    farm.proc("coordinator").wait_for_log("refused agent: agent amd64-1's certificate", Duration::from_secs(20));
}

#[test]
fn client_tokens_are_created_and_revoked_through_the_coordinator() {
    let farm = Farm::start(&[AgentSpec::amd64()]);
    let ci = token(&farm, &["tokens", "create", "ci-release"]);
    let with = |t: &str| {
        let mut cmd = farm.command(&["agents", "ls"]);
        cmd.env("ARCHFARM_TOKEN", t);
        run_bounded(cmd, Duration::from_secs(60))
    };
    let out = with(&ci);
    assert!(out.status.success(), "a new token works: {}", text(&out));
    let out = farm.archfarm(&["tokens", "create", "ci-release"]);
    assert!(!out.status.success() && text(&out).contains("already exists"), "{}", text(&out));
    let out = farm.archfarm(&["tokens", "revoke", "ci-release"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = with(&ci);
    assert!(!out.status.success());
    assert!(text(&out).contains("refused the client token"), "{}", text(&out));
    let out = farm.archfarm(&["tokens", "revoke", "ci-release"]);
    assert!(!out.status.success() && text(&out).contains("no live client token"), "{}", text(&out));
    assert!(!all_logs(&farm).contains(&ci), "a token appears in a log");
}
