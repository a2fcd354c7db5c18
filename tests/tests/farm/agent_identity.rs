//! One identity per agent: a name in use cannot be enrolled again, a join token may be bound to
//! a name and platforms, revocation is by certificate, and certificates renew without a join
//! token, retiring the old one.

use archfarm_tests::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn token(farm: &Farm, args: &[&str]) -> String {
    let out = farm.archfarm(args);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A minimal agent configuration under `dir`, for an agent process the test runs itself.
fn agent_config(farm: &Farm, dir: &Path, name: &str, cert: &Path, key: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let toml = format!(
        "coordinator = \"{}\"\nname = \"{name}\"\nserver_name = \"localhost\"\ncache_dir = \"{}\"\n\
         max_backoff_secs = 2\n[tls]\nca_cert = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        farm.coordinator,
        dir.join("cache").display(),
        farm.dir.path().join("ca/ca.pem").display(),
        cert.display(),
        key.display()
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn agent_command(config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("archfarm-agent"));
    cmd.arg("--config").arg(config).args(args).env("RUST_LOG", "info");
    cmd
}

/// `agents ls --format json`: each agent's name and certificate serial.
fn serials(farm: &Farm) -> Vec<(String, String)> {
    let out = farm.archfarm(&["agents", "ls", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let agents = v.as_array().unwrap().iter();
    agents.map(|a| (a["name"].as_str().unwrap().to_owned(), a["cert_serial"].as_str().unwrap().to_owned())).collect()
}

fn serial_of(farm: &Farm, name: &str) -> String {
    serials(farm).into_iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} is not connected")).1
}

#[test]
fn an_impostor_learns_nothing_without_a_join_token_cannot_enroll_under_a_connected_name_and_revoking_one_certificate_spares_the_others(
) {
    let mut farm = Farm::start(&[AgentSpec::amd64()]);
    let real_serial = serial_of(&farm, "amd64-1");
    let join = token(&farm, &["agents", "token", "create"]);

    let dir = farm.dir.path().join("impostor");
    let cert = dir.join("agent.pem");
    let config = agent_config(&farm, &dir, "amd64-1", &cert, &dir.join("agent.key"));
    // Without a token that could enroll it, a peer learns nothing of the farm: not that the name
    // is held, nor by which serial.
    let made_up = "0".repeat(64);
    let out = run_bounded(agent_command(&config, &["--join-token", &made_up]), Duration::from_secs(60));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("unknown join token"), "{}", text(&out));
    assert!(!text(&out).contains("already held") && !text(&out).contains(&real_serial), "{}", text(&out));
    // The impostor asks for amd64-1 with a valid join token: refused, no certificate written.
    let out = run_bounded(agent_command(&config, &["--join-token", &join]), Duration::from_secs(60));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("already held by a live certificate"), "{}", text(&out));
    assert!(!cert.exists(), "no certificate for the impostor");
    // The real agent is untouched, and the token was not spent on the refusal.
    assert_eq!(serial_of(&farm, "amd64-1"), real_serial);
    farm.start_joining_agent(&AgentSpec { name: "joined-2", native: None, capacity: 1 }, &join);
    farm.wait_for_agents(&["amd64-1", "joined-2"]);

    // A serial that is not joined-2's revokes nothing; its own revokes it alone.
    let out = farm.archfarm(&["agents", "revoke", "joined-2", "--serial", &real_serial]);
    assert!(!out.status.success() && text(&out).contains("no live certificate with serial"), "{}", text(&out));
    let joined_serial = serial_of(&farm, "joined-2");
    let out = farm.archfarm(&["agents", "revoke", "joined-2", "--serial", &joined_serial]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until(Duration::from_secs(20), "joined-2 to be disconnected", || {
        (!serials(&farm).iter().any(|(n, _)| n == "joined-2")).then_some(())
    });
    assert_eq!(serial_of(&farm, "amd64-1"), real_serial, "the other agent stays");
    farm.proc("coordinator")
        .wait_for_log(&format!("certificate (serial {joined_serial}) is revoked"), Duration::from_secs(20));
}

#[test]
fn a_join_token_bound_to_a_name_and_platforms_enrolls_only_that_agent_for_those_platforms() {
    let mut farm = Farm::start(&[]);
    let arm_only = token(&farm, &["agents", "token", "create", "--name", "bound-1", "--platform", "linux/arm64"]);
    let dir = farm.dir.path().join("other");
    let config = agent_config(&farm, &dir, "other-1", &dir.join("agent.pem"), &dir.join("agent.key"));
    let out = run_bounded(agent_command(&config, &["--join-token", &arm_only]), Duration::from_secs(60));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("this join token is for agent \"bound-1\" only"), "{}", text(&out));
    assert!(!dir.join("agent.pem").exists(), "no certificate for another name");

    // The right name, but this host declares linux/amd64: enrolled, then refused at registration.
    farm.start_joining_agent(&AgentSpec { name: "bound-1", native: None, capacity: 1 }, &arm_only);
    farm.proc("agent bound-1").wait_for_log("is bound to linux/arm64 (by its join token", Duration::from_secs(30));

    let amd_only = token(&farm, &["agents", "token", "create", "--name", "bound-2", "--platform", "linux/amd64"]);
    farm.start_joining_agent(&AgentSpec { name: "bound-2", native: None, capacity: 1 }, &amd_only);
    farm.wait_for_agents(&["bound-2"]);
}

#[test]
fn an_agent_renews_its_certificate_without_a_join_token_and_the_old_one_is_retired() {
    let mut farm = Farm::start(&[]);
    let join = token(&farm, &["agents", "token", "create"]);
    let spec = AgentSpec { name: "renew-1", native: None, capacity: 1 };
    let cert = farm.start_joining_agent(&spec, &join);
    farm.wait_for_agents(&["renew-1"]);
    let old_serial = serial_of(&farm, "renew-1");
    let key = cert.with_file_name("agent.key");
    let old = farm.dir.path().join("old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::copy(&cert, old.join("agent.pem")).unwrap();
    std::fs::copy(&key, old.join("agent.key")).unwrap();
    farm.proc("agent renew-1").stop();

    // A key file someone widened: the renewal's key is private again.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = cert.parent().unwrap().parent().unwrap().join("agent.toml");
    let out = run_bounded(agent_command(&config, &["--renew"]), Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("certificate renewed"), "{}", text(&out));
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);

    // The agent comes back with the new certificate: a new serial, the same name.
    farm.start_agent(&spec, &cert, &key);
    wait_until(Duration::from_secs(30), "renew-1 to reconnect with its new certificate", || {
        serials(&farm).iter().any(|(n, s)| n == "renew-1" && *s != old_serial).then_some(())
    });
    // Once the new one is in use, the old one is refused.
    let config = agent_config(&farm, &old, "renew-1", &old.join("agent.pem"), &old.join("agent.key"));
    farm.procs.push(Proc::start("agent with the old certificate", agent_command(&config, &[]), old.join("agent.log")));
    farm.proc("coordinator")
        .wait_for_log(&format!("certificate (serial {old_serial}) is renewed"), Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_bound_to_no_platform_is_bound_to_what_its_agent_first_declares() {
    use archfarm_tests::scripted::ScriptedAgent;
    let farm = tokio::task::block_in_place(|| Farm::start(&[]));
    // Issued offline: no platform in it. Its first registration binds it.
    let first = ScriptedAgent::join(&farm, "offline-1", &["linux/amd64"]).await;
    drop(first);
    let later = ScriptedAgent::registration(&["linux/amd64", "linux/arm64"]);
    let refused = ScriptedAgent::register_again(&farm, "offline-1", later).await.unwrap_err();
    assert!(refused.contains("declares linux/arm64, but its certificate"), "{refused}");
    assert!(refused.contains("is bound to linux/amd64"), "{refused}");
    // What it was bound to still registers.
    let again = ScriptedAgent::register_again(&farm, "offline-1", ScriptedAgent::registration(&["linux/amd64"])).await;
    assert!(again.is_ok(), "{:?}", again.err());
}
