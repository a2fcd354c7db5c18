//! The farm as separate hosts: the coordinator and each agent in its own network namespace,
//! joined to the registry's bridge by veth pairs, with the real dockerd (shared over its unix
//! socket) and the real registry. The "arm64" agent is still an amd64 host standing in.

use archfarm_tests::*;
use std::time::Duration;

#[test]
fn a_two_platform_build_across_three_hosts_publishes_a_verified_index() {
    let farm = Farm::builder().agents(&[AgentSpec::amd64(), AgentSpec::arm64_standin()]).on_hosts().start();
    assert!(farm.coordinator.starts_with("10.231."), "the coordinator is a host of its own: {}", farm.coordinator);
    let ctx = context(PER_ARCH_DOCKERFILE);
    let tag = format!("{}:1", farm.repo("hosts"));
    let out = farm.build("linux/amd64,linux/arm64", &[&tag], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let (status, _, body) = farm.registry_get("/v2/hosts/manifests/1", "application/vnd.oci.image.index.v1+json");
    assert_eq!(status, 200);
    let index: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let archs: Vec<&str> = runnable(&index).iter().map(|m| m["platform"]["architecture"].as_str().unwrap()).collect();
    assert_eq!(archs, ["amd64", "arm64"]);
    let agents = String::from_utf8_lossy(&farm.archfarm(&["agents", "ls"]).stdout).into_owned();
    assert!(
        agents.contains(&farm.host("agent amd64-1").ip) && agents.contains(&farm.host("agent arm64-1").ip),
        "each agent from its own address: {agents}"
    );
}

#[test]
fn an_agents_link_cut_mid_build_moves_the_platform_to_another_agent_and_the_agent_returns_when_healed() {
    let second = AgentSpec { name: "amd64-2", native: None, capacity: 2 };
    let mut farm = Farm::builder().agents(&[AgentSpec::amd64(), second]).on_hosts().start();
    let ctx = slow_context(3);
    let tag = format!("{}:1", farm.repo("linkcut"));
    let client = farm.spawn_build("linux/amd64", &[&tag], ctx.path());
    let victim = farm.assigned_agent(1);
    let name = format!("agent {victim}");
    farm.proc(&name).wait_for_log("job started", Duration::from_secs(30));
    let host = farm.host(&name).clone();
    farm.net.as_ref().unwrap().cut(&host);

    let out = wait_output(client, Duration::from_secs(120));
    assert!(out.status.success(), "{}", text(&out));
    let record = farm.build_record(&farm.newest_build());
    let attempts = Farm::attempts(&record, 0);
    let survivor = if victim == "amd64-1" { "amd64-2" } else { "amd64-1" };
    assert_eq!(
        attempts,
        [(victim.clone(), "lost".to_owned()), (survivor.to_owned(), "pushed".to_owned())],
        "ran twice"
    );
    assert_eq!(farm.tags("linkcut"), ["1"]);
    let (_, _, body) = farm.registry_get("/v2/linkcut/manifests/1", "application/vnd.oci.image.index.v1+json");
    let index: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(index["manifests"][0]["platform"]["architecture"], "amd64");
    assert_eq!(index["manifests"][0]["digest"], record["jobs"][0]["digest"]);

    // The cut agent noticed on its own, and comes back once its link is healed.
    farm.proc(&name).wait_for_log("has not answered heartbeats", Duration::from_secs(30));
    farm.net.as_ref().unwrap().heal(&host);
    farm.wait_for_agents(&["amd64-1", "amd64-2"]);
}
