//! The fault suite: hosts dying, the coordinator restarting, the registry failing. Scenarios
//! about hosts run the coordinator and each agent as separate hosts (network namespaces, see
//! `tests/src/net.rs`); the others run on loopback. Each asserts what the registry and the
//! coordinator's database hold afterwards. The agents are amd64 processes; "amd64-2" is a
//! second amd64 host, and "arm64-1" an amd64 host standing in for arm64.

use archfarm_tests::*;
use std::process::Command;
use std::time::Duration;

fn index_platforms(farm: &Farm, repo: &str, tag: &str) -> Vec<String> {
    let (status, _, body) =
        farm.registry_get(&format!("/v2/{repo}/manifests/{tag}"), "application/vnd.oci.image.index.v1+json");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let index: serde_json::Value = serde_json::from_slice(&body).unwrap();
    runnable(&index)
        .into_iter()
        .map(|m| {
            format!("{}/{}", m["platform"]["os"].as_str().unwrap(), m["platform"]["architecture"].as_str().unwrap())
        })
        .collect()
}

#[test]
fn an_agent_killed_mid_build_is_replaced_by_another_of_its_platform() {
    let second = AgentSpec { name: "amd64-2", native: None, capacity: 2 };
    let mut farm = Farm::builder().agents(&[AgentSpec::amd64(), second]).on_hosts().start();
    let ctx = slow_context(3);
    let tag = format!("{}:1", farm.repo("failover"));
    let client = farm.spawn_build("linux/amd64", &[&tag], ctx.path());
    let victim = farm.assigned_agent(1);
    farm.proc(&format!("agent {victim}")).wait_for_log("job started", Duration::from_secs(30));
    farm.proc(&format!("agent {victim}")).kill9();

    let out = wait_output(client, Duration::from_secs(120));
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("retrying (attempt 2)"), "the client is told: {log}");
    assert_eq!(index_platforms(&farm, "failover", "1"), ["linux/amd64"]);
    assert_eq!(farm.tags("failover"), ["1"]);

    let record = farm.build_record(&farm.newest_build());
    assert_eq!(record["state"], "published");
    let survivor = if victim == "amd64-1" { "amd64-2" } else { "amd64-1" };
    assert_eq!(
        Farm::attempts(&record, 0),
        [(victim.clone(), "lost".to_owned()), (survivor.to_owned(), "pushed".to_owned())],
        "ran twice"
    );
    assert_eq!(record["jobs"][0]["agent"], survivor);
}

#[test]
fn the_only_agent_of_a_platform_killed_fails_the_build_naming_it_and_nothing_is_published() {
    let mut farm = Farm::builder().agents(&[AgentSpec::amd64(), AgentSpec::arm64_standin()]).on_hosts().start();
    let ctx = slow_context(20);
    let tag = format!("{}:1", farm.repo("orphan"));
    let client = farm.spawn_build("linux/amd64", &[&tag], ctx.path());
    farm.proc("agent amd64-1").wait_for_log("job started", Duration::from_secs(30));
    farm.proc("agent amd64-1").kill9();

    let out = wait_output(client, Duration::from_secs(120));
    let log = text(&out);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("linux/amd64 failed on agent amd64-1"), "{log}");
    assert!(log.contains("no agent building linux/amd64 has been connected"), "{log}");
    assert!(log.contains("nothing was published"), "{log}");
    assert!(farm.tags("orphan").is_empty());
    let record = farm.build_record(&farm.newest_build());
    assert_eq!(record["state"], "failed");
    assert_eq!(record["jobs"][0]["state"], "failed");
    assert_eq!(Farm::attempts(&record, 0), [("amd64-1".to_owned(), "lost".to_owned())]);
}

#[test]
fn the_coordinator_killed_mid_build_resumes_it_from_its_database_after_a_restart() {
    let mut farm = Farm::builder().agents(&[AgentSpec::amd64(), AgentSpec::arm64_standin()]).on_hosts().start();
    let ctx = slow_context(3);
    let tag = format!("{}:1", farm.repo("restart"));
    let client = farm.spawn_build("linux/amd64", &[&tag], ctx.path());
    let id = farm.newest_build();
    farm.proc("agent amd64-1").wait_for_log("job started", Duration::from_secs(30));
    farm.proc("coordinator").kill9();
    let out = wait_output(client, Duration::from_secs(60));
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!("`archfarm builds watch {id}`")),
        "the client says how to reattach: {}",
        text(&out)
    );

    farm.start_coordinator();
    let out = farm.archfarm(&["builds", "watch", &id, "--progress", "plain"]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("published index"), "{log}");
    assert_eq!(index_platforms(&farm, "restart", "1"), ["linux/amd64"]);
    let record = farm.build_record(&id);
    assert_eq!(record["state"], "published");
    let tried = Farm::attempts(&record, 0);
    assert_eq!(tried.first().unwrap().1, "lost", "the attempt cut off by the restart is recorded: {tried:?}");
    assert_eq!(tried.last().unwrap().1, "pushed", "{tried:?}");
    let log = farm.proc("coordinator").log_text();
    assert!(log.contains("resuming build after restart"), "{log}");
}

#[test]
fn a_registry_failing_the_index_publish_keeps_verified_digests_and_builds_publish_completes_it() {
    let mut farm = Farm::start(&[AgentSpec::amd64(), AgentSpec::arm64_standin()]);
    let ctx = context(PER_ARCH_DOCKERFILE);
    let tag = format!("{}:1", farm.repo("flaky"));
    // The registry can store images by digest but answers 500 to any tag write.
    let tags_dir = farm.registry_tags_dir("flaky");
    std::fs::create_dir_all(&tags_dir).unwrap();
    run_ok(Command::new("chattr").arg("+i").arg(&tags_dir));
    let out = farm.build("linux/amd64,linux/arm64", &[&tag], ctx.path(), &[]);
    run_ok(Command::new("chattr").arg("-i").arg(&tags_dir));
    let log = text(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("publishing the index failed") && log.contains("failed 5 times"),
        "bounded retries, then a clear failure: {log}"
    );
    let id = farm.newest_build();
    assert!(log.contains(&format!("`archfarm builds publish {id}`")), "{log}");
    assert!(farm.tags("flaky").is_empty(), "nothing published");
    let record = farm.build_record(&id);
    assert_eq!(record["jobs"][0]["state"], "verified");
    assert_eq!(record["jobs"][1]["state"], "verified");

    // The registry is restarted (healed), and the build is published without rebuilding.
    farm.restart_registry();
    let out = farm.archfarm(&["builds", "publish", &id]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(index_platforms(&farm, "flaky", "1"), ["linux/amd64", "linux/arm64"]);
    let record = farm.build_record(&id);
    assert_eq!(record["state"], "published");
    assert_eq!(Farm::attempts(&record, 0).len(), 1, "no rebuild");
    assert_eq!(Farm::attempts(&record, 1).len(), 1, "no rebuild");
    // Publishing twice is harmless: same index.
    let (_, first, _) = farm.registry_get("/v2/flaky/manifests/1", "application/vnd.oci.image.index.v1+json");
    let out = farm.archfarm(&["builds", "publish", &id]);
    assert!(out.status.success(), "{}", text(&out));
    let (_, second, _) = farm.registry_get("/v2/flaky/manifests/1", "application/vnd.oci.image.index.v1+json");
    assert_eq!(first, second);
    assert_eq!(record["index"].as_str(), first.as_deref());
}

#[test]
fn a_cancelled_build_stops_on_the_agent_and_publishes_nothing() {
    let mut farm = Farm::start(&[AgentSpec::amd64()]);
    let ctx = slow_context(30);
    let tag = format!("{}:1", farm.repo("cancelled"));
    let client = farm.spawn_build("linux/amd64", &[&tag], ctx.path());
    let id = farm.newest_build();
    farm.proc("agent amd64-1").wait_for_log("job started", Duration::from_secs(30));
    let out = farm.archfarm(&["builds", "cancel", &id]);
    assert!(out.status.success(), "{}", text(&out));
    let out = wait_output(client, Duration::from_secs(30));
    assert!(!out.status.success());
    assert!(text(&out).contains("cancelled"), "{}", text(&out));
    farm.proc("agent amd64-1").wait_for_log("stopping the job: the coordinator cancelled it", Duration::from_secs(10));
    let record = farm.build_record(&id);
    assert_eq!(record["state"], "cancelled");
    assert_eq!(record["jobs"][0]["state"], "cancelled");
    assert!(farm.tags("cancelled").is_empty());
    // The agent is free again: a new build runs at once.
    let quick = context(PER_ARCH_DOCKERFILE);
    let out = farm.build("linux/amd64", &[&format!("{}:2", farm.repo("cancelled"))], quick.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn an_agent_drains_on_sigterm_finishing_its_job_before_it_exits() {
    let mut farm = Farm::start(&[AgentSpec::amd64()]);
    let ctx = slow_context(3);
    let tag = format!("{}:1", farm.repo("drain"));
    let client = farm.spawn_build("linux/amd64", &[&tag], ctx.path());
    farm.proc("agent amd64-1").wait_for_log("job started", Duration::from_secs(30));
    assert!(farm.proc("agent amd64-1").terminate_and_wait(Duration::from_secs(60)), "the agent exits after draining");
    let out = wait_output(client, Duration::from_secs(60));
    assert!(out.status.success(), "the running job finished: {}", text(&out));
    let log = farm.proc("agent amd64-1").log_text();
    assert!(log.contains("draining: no new jobs"), "{log}");
    assert!(log.contains("job succeeded") && log.contains("disconnected: drained"), "{log}");
    assert_eq!(farm.tags("drain"), ["1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reporting_a_wrong_architecture_is_caught_quarantined_and_the_platform_rebuilt_elsewhere() {
    use archfarm_shared::protocol::{JobOutcome, PushedImage};
    use archfarm_tests::scripted::ScriptedAgent;
    let farm = tokio::task::block_in_place(|| Farm::start(&[AgentSpec::amd64(), AgentSpec::arm64_standin()]));
    // A real amd64 image in the repository: what the lying agent will pass off as arm64.
    let seed_ctx = context(PER_ARCH_DOCKERFILE);
    let out = tokio::task::block_in_place(|| {
        farm.build("linux/amd64", &[&format!("{}:seed", farm.repo("liar"))], seed_ctx.path(), &[])
    });
    assert!(out.status.success(), "{}", text(&out));
    let seed: serde_json::Value = serde_json::from_slice(&skopeo::raw(&format!("{}:seed", farm.repo("liar")))).unwrap();
    let amd64 = &seed["manifests"][0];

    // "arm64-0" sorts before "arm64-1", so it is offered the arm64 job first.
    let liar = ScriptedAgent::join(&farm, "arm64-0", &["linux/arm64"]).await;
    let ctx = context(PER_ARCH_DOCKERFILE);
    let tag = format!("{}:1", farm.repo("liar"));
    let client = farm.spawn_build("linux/arm64", &[&tag], ctx.path());
    let job = liar.next_job(Duration::from_secs(30)).await;
    assert_eq!(job.spec.platform.to_string(), "linux/arm64");
    job.finish(JobOutcome::Pushed(PushedImage {
        digest: amd64["digest"].as_str().unwrap().parse().unwrap(),
        media_type: amd64["mediaType"].as_str().unwrap().to_owned(),
        size: amd64["size"].as_u64().unwrap(),
        bases: vec![],
    }))
    .await;

    let out = tokio::task::block_in_place(|| wait_output(client, Duration::from_secs(120)));
    assert!(out.status.success(), "{}", text(&out));
    let index: serde_json::Value = serde_json::from_slice(&skopeo::raw(&tag)).unwrap();
    let child = format!("{}@{}", farm.repo("liar"), index["manifests"][0]["digest"].as_str().unwrap());
    assert_ne!(index["manifests"][0]["digest"], amd64["digest"], "the wrong image was not published");
    assert_eq!(skopeo::config(&child)["architecture"], "arm64");

    let record = tokio::task::block_in_place(|| farm.build_record(&farm.newest_build()));
    assert_eq!(
        Farm::attempts(&record, 0),
        [("arm64-0".to_owned(), "wrong-image".to_owned()), ("arm64-1".to_owned(), "pushed".to_owned())]
    );
    let state = tokio::task::block_in_place(|| farm.agent_state("arm64-0")).expect("the liar is still listed");
    let reason =
        "quarantined: agent arm64-0: pushed an image whose config says linux/amd64, but the job was for linux/arm64";
    assert!(state.starts_with(reason), "{state}");

    // An administrator lifts the quarantine: the agent is offered jobs again, first by name (in
    // another repository: arm64-1 has the warm cache for this one's).
    let out = tokio::task::block_in_place(|| farm.archfarm(&["agents", "unquarantine", "arm64-0"]));
    assert!(text(&out).contains("agent arm64-0: quarantine lifted and its failures forgotten"), "{}", text(&out));
    assert_eq!(tokio::task::block_in_place(|| farm.agent_state("arm64-0")).as_deref(), Some("ready"));
    let ctx = context(PER_ARCH_DOCKERFILE);
    let client = farm.spawn_build("linux/arm64", &[&format!("{}:1", farm.repo("reformed"))], ctx.path());
    let job = liar.next_job(Duration::from_secs(30)).await;
    assert_eq!(job.spec.platform.to_string(), "linux/arm64");
    drop(job);
    drop(liar);
    // Its connection gone, the job runs again on the real arm64 stand-in.
    let out = tokio::task::block_in_place(|| wait_output(client, Duration::from_secs(120)));
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn two_hundred_concurrent_builds_from_many_clients_all_complete_none_lost_or_duplicated() {
    const BUILDS: usize = 200;
    let amd = AgentSpec { name: "amd64-1", native: None, capacity: 4 };
    let arm = AgentSpec { name: "arm64-1", native: Some("linux/arm64"), capacity: 4 };
    let farm = Farm::builder().agents(&[amd, arm]).patient().start();
    // Each build has its own small context, so a mix-up between builds would show in an image.
    let contexts: Vec<tempfile::TempDir> = (0..BUILDS)
        .map(|i| {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\nCOPY id.txt /id.txt\n").unwrap();
            std::fs::write(dir.path().join("id.txt"), format!("build {i}\n")).unwrap();
            dir
        })
        .collect();
    let started = std::time::Instant::now();
    // Every client is its own process with its own connection, all at once.
    let clients: Vec<_> = contexts
        .iter()
        .enumerate()
        .map(|(i, ctx)| {
            farm.spawn_build("linux/amd64,linux/arm64", &[&format!("{}:b{i}", farm.repo("many"))], ctx.path())
        })
        .collect();
    let mut failed = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let out = wait_output(c, Duration::from_secs(600));
        if !out.status.success() {
            failed.push(format!("build {i}: {}", text(&out)));
        }
    }
    assert!(failed.is_empty(), "{} of {BUILDS} builds failed; the first: {}", failed.len(), failed[0]);
    eprintln!("{BUILDS} two-platform builds in {:.1} s", started.elapsed().as_secs_f64());

    let mut want: Vec<String> = (0..BUILDS).map(|i| format!("b{i}")).collect();
    want.sort();
    assert_eq!(farm.tags("many"), want, "every build published its tag");
    let out = farm.archfarm(&["builds", "ls", "--format", "json", "--limit", "1000"]);
    let builds: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(builds.len(), BUILDS, "one record per build, no duplicates");
    assert!(builds.iter().all(|b| b["state"] == "published"), "all published");
    for b in builds.iter().take(20) {
        let record = farm.build_record(b["build"].as_str().unwrap());
        for job in 0..2 {
            assert_eq!(Farm::attempts(&record, job).len(), 1, "each platform ran once: {record}");
        }
    }
    // Each tag holds its own build's content on both platforms.
    for i in (0..BUILDS).step_by(37) {
        let tag = format!("b{i}");
        assert_eq!(index_platforms(&farm, "many", &tag), ["linux/amd64", "linux/arm64"]);
        let index: serde_json::Value =
            serde_json::from_slice(&skopeo::raw(&format!("{}:{tag}", farm.repo("many")))).unwrap();
        for child in runnable(&index) {
            let reference = format!("{}@{}", farm.repo("many"), child["digest"].as_str().unwrap());
            let id = skopeo::file_from_image(&reference, "id.txt").expect("id.txt in the image");
            assert_eq!(String::from_utf8_lossy(&id), format!("build {i}\n"));
        }
    }
}

#[test]
fn ctrl_c_in_the_client_cancels_or_detaches_as_asked() {
    let mut farm = Farm::start(&[AgentSpec::amd64()]);
    let interrupt = |pid: u32| {
        let ok = Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap().success();
        assert!(ok, "SIGINT delivered");
    };
    // --on-interrupt cancel: the build stops everywhere and nothing is published.
    let ctx = slow_context(30);
    let client = farm.spawn_build_on_interrupt(
        "linux/amd64",
        &[&format!("{}:cancel", farm.repo("ctrlc"))],
        ctx.path(),
        "cancel",
    );
    let id = farm.newest_build();
    farm.proc("agent amd64-1").wait_for_log("job started", Duration::from_secs(30));
    interrupt(client.id());
    let out = wait_output(client, Duration::from_secs(60));
    assert!(!out.status.success());
    assert!(text(&out).contains(&format!("build {id} cancelled")), "{}", text(&out));
    assert_eq!(farm.build_record(&id)["state"], "cancelled");

    // --on-interrupt detach: the client leaves, the build goes on and publishes.
    let quick = slow_context(4);
    let tag = format!("{}:detach", farm.repo("ctrlc"));
    let client = farm.spawn_build_on_interrupt("linux/amd64", &[&tag], quick.path(), "detach");
    wait_until(Duration::from_secs(30), "the second build to be recorded", || {
        (farm.newest_build() != id).then_some(())
    });
    let detached = farm.newest_build();
    interrupt(client.id());
    let out = wait_output(client, Duration::from_secs(60));
    assert!(text(&out).contains(&format!("`archfarm builds watch {detached}`")), "{}", text(&out));
    let out = farm.archfarm(&["builds", "watch", &detached, "--progress", "plain"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(farm.tags("ctrlc"), ["detach"]);
}

#[test]
fn a_registry_refusing_child_pushes_fails_the_build_clearly_without_quarantining_agents() {
    let farm = Farm::start(&[AgentSpec::amd64()]);
    let ctx = context(PER_ARCH_DOCKERFILE);
    // The registry answers 500 to every blob upload into this repository.
    let uploads = farm.registry_repo_dir("pushfail").join("_uploads");
    std::fs::create_dir_all(&uploads).unwrap();
    run_ok(Command::new("chattr").arg("+i").arg(&uploads));
    let out = farm.build("linux/amd64", &[&format!("{}:1", farm.repo("pushfail"))], ctx.path(), &[]);
    run_ok(Command::new("chattr").arg("-i").arg(&uploads));
    let log = text(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("gave up after 3 attempts") && log.contains("push failed 4 times"),
        "bounded retries on both sides: {log}"
    );
    assert!(farm.tags("pushfail").is_empty());
    let record = farm.build_record(&farm.newest_build());
    assert_eq!(
        Farm::attempts(&record, 0).iter().map(|(_, o)| o.as_str()).collect::<Vec<_>>(),
        ["failed", "failed", "failed"]
    );
    let agents = String::from_utf8_lossy(&farm.archfarm(&["agents", "ls"]).stdout).into_owned();
    assert!(
        agents.contains("ready") && !agents.contains("quarantined"),
        "a registry outage is not the agent's fault: {agents}"
    );
    // Healed, the same build goes through.
    let out = farm.build("linux/amd64", &[&format!("{}:1", farm.repo("pushfail"))], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
}
