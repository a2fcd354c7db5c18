//! Where jobs go beyond os/arch: an x86-64 level (`--platform linux/amd64/v2`), labels
//! (`--require`), and cache affinity between two agents of one platform. The agents' levels and
//! labels come from their configs: both offer x86-64-v2, whatever this CPU reaches (the test
//! assumes no more), so the farm has no v3.

use archfarm_tests::*;
use std::time::Duration;

fn farm() -> Farm {
    let mut farm = Farm::builder().agents(&[]).start();
    let one = |name| AgentSpec { name, native: None, capacity: 1 };
    farm.start_agent_configured(&one("amd64-1"), "x86_64_level = 2\nlabels = { region = \"eu\", disk = \"nvme\" }\n");
    farm.start_agent_configured(&one("amd64-2"), "x86_64_level = 2\nlabels = { region = \"us\" }\n");
    farm.wait_for_agents(&["amd64-1", "amd64-2"]);
    farm
}

fn agent_of(farm: &Farm, id: &str) -> (String, String) {
    farm.last_attempt(id).unwrap_or_default()
}

#[test]
fn levels_and_labels_choose_the_agent_and_a_build_no_agent_fits_is_refused_naming_what_is_missing() {
    let farm = farm();
    let listed: serde_json::Value =
        serde_json::from_slice(&farm.archfarm(&["agents", "ls", "--format", "json"]).stdout).unwrap();
    let first = &listed[0];
    assert_eq!(first["name"], "amd64-1");
    assert_eq!(first["x86_64_level"], 2, "{listed}");
    assert_eq!(first["labels"]["disk"], "nvme", "{listed}");
    assert_eq!(listed[1]["x86_64_level"], 2, "{listed}");
    let table = text(&farm.archfarm(&["agents", "ls"]));
    assert!(table.contains("x86-64-v2 disk=nvme region=eu"), "{table}");
    let inspect = text(&farm.archfarm(&["agents", "inspect", "amd64-1"]));
    assert!(
        inspect.contains("Level:      x86-64-v2") && inspect.contains("Labels:     disk=nvme region=eu"),
        "{inspect}"
    );

    assert!(!inspect.contains("(0 CPU features detected"), "the agent read its CPU's flags: {inspect}");

    // The farm has no v3: refused at once, saying what each agent has.
    let ctx = context(PER_ARCH_DOCKERFILE);
    let tag = format!("{}:v", farm.repo("levels"));
    let out = farm.build("linux/amd64/v3", &[&tag], ctx.path(), &[]);
    assert!(!out.status.success());
    let expected = "no agent fits linux/amd64/v3: the linux/amd64 agents have amd64-1: x86-64-v2 disk=nvme region=eu; \
                    amd64-2: x86-64-v2 region=us.";
    assert!(text(&out).contains(expected), "{}", text(&out));
    // Nor region ap, at any level.
    let out = farm.build("linux/amd64", &[&tag], ctx.path(), &["--require", "region=ap"]);
    assert!(text(&out).contains("no agent fits linux/amd64 with region=ap"), "{}", text(&out));
    let out = farm.build("linux/amd64", &[&tag], ctx.path(), &["--require", "linux/arm64:region=eu"]);
    assert!(
        text(&out).contains("--require linux/arm64:region=eu: the build has no platform linux/arm64"),
        "{}",
        text(&out)
    );
    assert!(farm.archfarm(&["builds", "ls", "--format", "json"]).stdout.starts_with(b"[]"), "nothing was recorded");

    // v2 in region eu: amd64-1, and the index child says v2.
    let out = farm.build("linux/amd64/v2", &[&tag], ctx.path(), &["--require", "region=eu"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(agent_of(&farm, &farm.newest_build()).0, "amd64-1");
    let index: serde_json::Value = serde_json::from_slice(&skopeo::raw(&tag)).unwrap();
    assert_eq!(index["manifests"][0]["platform"]["variant"], "v2", "{index}");
    let child = format!("{}@{}", farm.repo("levels"), index["manifests"][0]["digest"].as_str().unwrap());
    let config = skopeo::config(&child);
    assert_eq!((config["architecture"].as_str(), config["variant"].as_str()), (Some("amd64"), Some("v2")), "{config}");

    // Per platform: only region us for linux/amd64 sends it to amd64-2.
    let out = farm.build("linux/amd64", &[&tag], ctx.path(), &["--require", "linux/amd64:region=us"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(agent_of(&farm, &farm.newest_build()).0, "amd64-2");
}

#[test]
fn a_rebuild_goes_to_the_agent_with_the_warm_cache_and_builds_show_says_why() {
    let farm = farm();
    // A slow build of "api" occupies amd64-1 (first by name), so "web" goes to amd64-2.
    let slow = slow_context(6);
    let api = farm.spawn_build("linux/amd64", &[&format!("{}:1", farm.repo("api"))], slow.path());
    let first = farm.newest_build();
    wait_until(Duration::from_secs(60), "the api build on amd64-1", || {
        Some(()).filter(|()| agent_of(&farm, &first).0 == "amd64-1")
    });
    let web = context(PER_ARCH_DOCKERFILE);
    let out = farm.build("linux/amd64", &[&format!("{}:1", farm.repo("web"))], web.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let (agent, why) = agent_of(&farm, &farm.newest_build());
    assert_eq!(agent, "amd64-2");
    assert_eq!(why, "least loaded (0/1 running)");
    assert!(wait_output(api, Duration::from_secs(120)).status.success());

    // Both idle now: the name would pick amd64-1, but amd64-2 has web's cache.
    let out = farm.build("linux/amd64", &[&format!("{}:2", farm.repo("web"))], web.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let id = farm.newest_build();
    let (agent, why) = agent_of(&farm, &id);
    assert_eq!(agent, "amd64-2");
    assert!(why.starts_with("warm cache: it ran this repository's Dockerfile for linux/amd64 last"), "{why}");
    let shown = text(&farm.archfarm(&["builds", "show", &id]));
    assert!(shown.contains("attempt 1 on amd64-2 (warm cache: it ran this repository's Dockerfile"), "{shown}");
}
