//! `archfarm agents inspect`, `du` and `prune`, on an agent with a dockerd of its own (pruning
//! the shared engine would take other tests' cache), checked with the docker CLI against that
//! engine and with what a rebuild shows.

use archfarm_tests::*;
use std::process::Command;
use std::time::Duration;

/// The build cache records the engine at `host` holds, by the docker CLI.
fn cache_records(host: &str) -> u64 {
    let out = run_ok(Command::new("docker").env("DOCKER_HOST", host).args([
        "system",
        "df",
        "--format",
        "{{.Type}}|{{.TotalCount}}",
    ]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.starts_with("Build Cache|")).unwrap_or_else(|| panic!("{text}"));
    line.rsplit('|').next().unwrap().trim().parse().unwrap()
}

/// The row `agents du` prints for `agent`, split into columns.
fn du_row(farm: &Farm, agent: &str) -> Vec<String> {
    let out = farm.archfarm(&["agents", "du", agent]);
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let row = table.lines().find(|l| l.starts_with(agent)).unwrap_or_else(|| panic!("{table}"));
    row.split("   ").map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect()
}

/// A farm whose one agent, amd64-1, builds on a dockerd of its own, with `extra` in its
/// configuration.
fn farm_on_own_engine(extra: &str) -> (Farm, Engine) {
    let mut farm = Farm::start(&[]);
    let engine = Engine::start(&farm.dir.path().join("engine2"));
    let agent = AgentSpec { name: "amd64-1", native: None, capacity: 1 };
    farm.start_agent_configured(&agent, &format!("docker_host = \"{}\"\n{extra}", engine.host));
    farm.wait_for_agents(&["amd64-1"]);
    (farm, engine)
}

#[test]
fn an_agents_caches_are_shown_and_pruned_and_a_running_job_keeps_its_cache() {
    let (farm, engine) = farm_on_own_engine("");

    let ctx = context(
        "FROM scratch\nCOPY bin/amd64/busybox /bin/busybox\nCOPY nonce /nonce\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo built > /built\"]\n",
    );
    std::fs::write(ctx.path().join("nonce"), format!("{:?}", std::time::SystemTime::now())).unwrap();
    let out = farm.build("linux/amd64", &[&format!("{}:1", farm.repo("hk/app"))], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let build = farm.newest_build();

    // du: the engine's own count of cache records, and the one context fetched.
    let row = du_row(&farm, "amd64-1");
    let records = cache_records(&engine.host);
    assert!(records > 0);
    assert_eq!(row[2], records.to_string(), "records as the engine counts them: {row:?}");
    assert!(row[4].ends_with("(1)"), "one context cached: {row:?}");

    // inspect: the agent, its caches and the job it just ran.
    let out = farm.archfarm(&["agents", "inspect", "amd64-1"]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(shown.contains("Platforms:  linux/amd64"), "{shown}");
    assert!(shown.contains(&format!("{records} records")), "{shown}");
    let job = shown.lines().find(|l| l.starts_with(&build)).unwrap_or_else(|| panic!("no job of {build}:\n{shown}"));
    assert!(job.contains("linux/amd64") && job.contains("pushed"), "{job}");

    // A prune while a job runs is refused, unless forced.
    let slow = slow_context(6);
    let running = farm.spawn_build("linux/amd64", &[&format!("{}:slow", farm.repo("hk/app"))], slow.path());
    wait_until(Duration::from_secs(30), "the slow job to run on amd64-1", || {
        let out = farm.archfarm(&["agents", "ls", "--format", "json"]);
        let agents: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (agents[0]["running"] == 1).then_some(())
    });
    let out = farm.archfarm(&["agents", "prune", "amd64-1", "--all"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not pruned: it runs 1 job(s) now"), "{}", text(&out));
    let out = wait_output(running, Duration::from_secs(120));
    assert!(out.status.success(), "{}", text(&out));

    // prune --all: the engine's cache is gone (by the docker CLI), so are the contexts, and a
    // rebuild runs its step again.
    let out = farm.archfarm(&["agents", "prune", "amd64-1", "--all"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("amd64-1: freed "), "{}", text(&out));
    assert_eq!(cache_records(&engine.host), 0, "the engine holds no build cache");
    let row = du_row(&farm, "amd64-1");
    assert_eq!((row[2].as_str(), row[4].as_str()), ("0", "0 B (0)"), "{row:?}");
    let out = farm.build("linux/amd64", &[&format!("{}:2", farm.repo("hk/app"))], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let log = text(&out);
    assert!(log.contains("echo built") && !log.lines().any(|l| l.ends_with(" CACHED") && !l.contains("#1 ")), "{log}");
    drop(engine);
}

#[test]
fn an_agent_keeps_its_engines_build_cache_within_build_cache_max() {
    let (mut farm, engine) = farm_on_own_engine("build_cache_max = \"1MB\"\n");
    let ctx = context(
        "FROM scratch\nCOPY bin/amd64/busybox /bin/busybox\nCOPY nonce /nonce\nRUN [\"/bin/busybox\", \"dd\", \"if=/dev/zero\", \"of=/big\", \"bs=1048576\", \"count=4\"]\n",
    );
    std::fs::write(ctx.path().join("nonce"), format!("{:?}", std::time::SystemTime::now())).unwrap();
    let out = farm.build("linux/amd64", &[&format!("{}:1", farm.repo("capped"))], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let records = cache_records(&engine.host);
    assert!(records > 0);
    // Checked every minute: the cache over 1 MB is pruned without anyone asking.
    farm.proc("agent amd64-1").wait_for_log("build cache was over build_cache_max: pruned", Duration::from_secs(90));
    let left = cache_records(&engine.host);
    assert!(left < records, "{left} of {records} records left");
    drop(engine);
}
