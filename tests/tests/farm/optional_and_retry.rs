//! Optional platforms and retrying one platform: an optional platform no agent builds is left
//! out and the index published without it; a build whose arm64 platform failed (its only agent
//! went down) is retried once the agent is back, and only arm64 runs again.

use archfarm_tests::*;
use std::time::Duration;

#[test]
fn an_optional_platform_without_an_agent_is_left_out_and_said_so_everywhere() {
    let farm = Farm::start(&[AgentSpec::amd64()]);
    let ctx = context(PER_ARCH_DOCKERFILE);
    let tag = format!("{}:1", farm.repo("opt/app"));
    let metadata = farm.dir.path().join("metadata.json");
    let out = farm.build(
        "linux/amd64",
        &[&tag],
        ctx.path(),
        &["--optional-platform", "linux/arm64", "--metadata-file", metadata.to_str().unwrap()],
    );
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("linux/arm64    left out (optional): no agent builds linux/arm64 natively"), "{said}");

    // The registry's own answer: an index of the amd64 child only.
    let (status, _, body) = farm.registry_get("/v2/opt/app/manifests/1", archfarm_shared::oci::OCI_INDEX);
    assert_eq!(status, 200);
    let index: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let platforms: Vec<&str> = runnable(&index).iter().filter_map(|m| m["platform"]["architecture"].as_str()).collect();
    assert_eq!(platforms, ["amd64"], "{index}");

    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&metadata).unwrap()).unwrap();
    assert_eq!(meta["archfarm.left_out"][0]["platform"], "linux/arm64", "{meta}");
    assert!(meta["archfarm.left_out"][0]["reason"].as_str().unwrap().contains("no agent builds linux/arm64"), "{meta}");
    let record = farm.build_record(&farm.newest_build());
    assert_eq!(record["state"], "published");
    assert_eq!(record["jobs"][1]["state"], "left-out", "{record}");
    let shown = text(&farm.archfarm(&["builds", "show", &farm.newest_build()]));
    assert!(shown.contains("linux/arm64  left-out"), "{shown}");

    // Required, the same platform is refused at once.
    let out = farm.build("linux/amd64,linux/arm64", &[&tag], ctx.path(), &[]);
    assert!(text(&out).contains("no agent builds linux/arm64 natively"), "{}", text(&out));
}

#[test]
fn builds_retry_reruns_only_the_failed_platform_and_publishes_with_the_kept_digest() {
    let mut farm = Farm::start(&[AgentSpec::amd64(), AgentSpec::arm64_standin()]);
    // The only arm64 agent goes down while its job runs and stays down past the wait for an
    // agent (8 s here): arm64 fails, amd64 is verified, nothing is published.
    let slow = slow_context(5);
    let tag = format!("{}:1", farm.repo("retry/app"));
    let client = farm.spawn_build("linux/amd64,linux/arm64", &[&tag], slow.path());
    let id = farm.newest_build();
    wait_until(Duration::from_secs(60), "the arm64 job to start", || {
        farm.build_record(&id)["jobs"][1]["attempts"].as_array().filter(|a| !a.is_empty()).map(drop)
    });
    farm.proc("agent arm64-1").kill9();
    let out = wait_output(client, Duration::from_secs(120));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no agent building linux/arm64 has been connected for 8 s"), "{}", text(&out));
    let before = farm.build_record(&id);
    let states: Vec<&str> = before["jobs"].as_array().unwrap().iter().filter_map(|j| j["state"].as_str()).collect();
    assert_eq!((before["state"].as_str(), states), (Some("failed"), vec!["verified", "failed"]), "{before}");
    let amd64_digest = before["jobs"][0]["digest"].as_str().unwrap().to_owned();
    let arm64_attempts = before["jobs"][1]["attempts"].as_array().unwrap().len();
    assert!(farm.tags("retry/app").is_empty(), "nothing published");

    // Only a failed platform may be named.
    let out = farm.archfarm(&["builds", "retry", &id, "--platform", "linux/amd64", "--progress", "plain"]);
    assert!(
        text(&out).contains("linux/amd64 of build") && text(&out).contains("is verified already"),
        "{}",
        text(&out)
    );

    // The agent is back: retry runs arm64 only, and publishes.
    let ca = farm.dir.path().join("ca");
    farm.start_agent(&AgentSpec::arm64_standin(), &ca.join("arm64-1.pem"), &ca.join("arm64-1.key"));
    farm.wait_for_agents(&["amd64-1", "arm64-1"]);
    let out = farm.archfarm(&["builds", "retry", &id, "--progress", "plain"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("published index"), "{}", text(&out));
    let after = farm.build_record(&id);
    assert_eq!(after["state"], "published", "{after}");
    assert_eq!(after["jobs"][0]["attempts"].as_array().map(Vec::len), Some(1), "amd64 did not run again: {after}");
    let arm = after["jobs"][1]["attempts"].as_array().unwrap();
    assert_eq!(arm.len(), arm64_attempts + 1, "{after}");
    assert_eq!(arm.last().unwrap()["outcome"], "pushed", "{after}");

    // Through the registry: both children, the amd64 one the digest verified before the retry.
    let index: serde_json::Value = serde_json::from_slice(&skopeo::raw(&tag)).unwrap();
    assert_eq!(index["manifests"][0]["digest"], amd64_digest.as_str(), "{index}");
    assert_eq!(index["manifests"][1]["platform"]["architecture"], "arm64", "{index}");

    let again = farm.archfarm(&["builds", "retry", &id, "--progress", "plain"]);
    assert!(text(&again).contains("is published: only a failed or cancelled build is retried"), "{}", text(&again));
}
