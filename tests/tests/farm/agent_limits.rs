//! What an agent may send and fetch, bounded: a flood of long log lines is cut to size and held
//! to a rate while the coordinator's memory stays put, failure texts are cut when they arrive,
//! and an agent fetches the context of the job it runs and no other.

use archfarm_shared::protocol::{CoordinatorMessage, FailureKind, JobFailure, JobOutcome};
use archfarm_tests::scripted::ScriptedAgent;
use archfarm_tests::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_flood_is_cut_and_rate_limited_and_an_agent_fetches_only_its_own_jobs_context() {
    let mut farm = tokio::task::block_in_place(|| Farm::start(&[]));
    let pid = farm.proc("coordinator").pid();
    let agent = ScriptedAgent::join(&farm, "flood-1", &["linux/amd64"]).await;
    // Another build's context, uploaded first: the agent has no business with it.
    let other = context("FROM scratch\nLABEL other=1\n");
    let out = tokio::task::block_in_place(|| {
        farm.archfarm(&["build", "--platform", "linux/386", other.path().to_str().unwrap()])
    });
    assert!(!out.status.success(), "no linux/386 agent: {}", text(&out));

    let ctx = context(PER_ARCH_DOCKERFILE);
    let tag = format!("{}:1", farm.repo("flood"));
    let client = farm.spawn_build("linux/amd64", &[&tag], ctx.path());
    let mut job = agent.next_job(Duration::from_secs(30)).await;
    match agent.fetch_context(&job.spec.context).await {
        CoordinatorMessage::ContextChunks { .. } => {}
        other => panic!("its own job's context: {other:?}"),
    }
    // Wanting every chunk brings exactly the context; a bitmap of another length, or one that
    // asks past the last chunk, brings nothing, and the coordinator serves on.
    let (answer, bytes) = agent.fetch_context_wanting(&job.spec.context, None).await;
    let CoordinatorMessage::ContextChunks { size, chunks } = answer else { panic!("{answer:?}") };
    assert_eq!((bytes.len() as u64, archfarm_shared::Digest::of(&bytes)), (size, job.spec.context.clone()));
    let too_long = vec![0xff; (chunks as usize).div_ceil(8) + 1];
    let (_, bytes) = agent.fetch_context_wanting(&job.spec.context, Some(too_long)).await;
    assert!(bytes.is_empty(), "{} bytes for a bitmap of the wrong length", bytes.len());
    if !chunks.is_multiple_of(8) {
        let past = vec![0xff; (chunks as usize).div_ceil(8)];
        let (_, bytes) = agent.fetch_context_wanting(&job.spec.context, Some(past)).await;
        assert!(bytes.is_empty(), "{} bytes for a bitmap past the last chunk", bytes.len());
    }
    let stranger = archfarm_shared::Digest::of(b"a context of some other build");
    match agent.fetch_context(&stranger).await {
        CoordinatorMessage::ContextMissing { reason } => {
            assert!(reason.contains("belongs to no job this agent runs now"), "{reason}")
        }
        other => panic!("another context: {other:?}"),
    }

    // 2,000 lines of 512 KiB each, as fast as the stream takes them: 1 GB of output.
    let before = rss_kib(pid);
    let line = "x".repeat(512 * 1024);
    let mut sent = 0;
    for _ in 0..2_000 {
        if !job.log(line.clone()).await {
            break;
        }
        sent += 1;
    }
    let during = rss_kib(pid);
    // Then 20,000 short lines at once: far over the rate however loaded the machine is, and a
    // last line a second later, which carries the notice of what was dropped.
    for n in 0..20_000 {
        assert!(job.log(format!("short line {n}")).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(job.log("the last line".into()).await);
    job.finish(JobOutcome::Failed(JobFailure {
        kind: FailureKind::Build,
        message: "m".repeat(500_000),
        log_tail: vec!["t".repeat(4000); 100],
    }))
    .await;

    let out = tokio::task::block_in_place(|| wait_output(client, Duration::from_secs(120)));
    assert!(!out.status.success());
    // Freed memory goes back to the system after the allocator's decay time (10 s).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let after = rss_kib(pid);
    eprintln!("{sent} lines of 512 KiB; coordinator RSS {before:.0} KiB before, {during:.0} KiB while they arrive, {after:.0} KiB after the build");
    // Kept whole, the last 512 lines alone would hold 256 MiB while the build is known.
    assert!(after - before < 32.0 * 1024.0, "RSS grew from {before:.0} to {after:.0} KiB");
    let shown = text(&out);
    assert!(shown.contains("lines of output dropped: over 500 lines a second"), "the rate limit is said");
    assert!(shown.contains("bytes cut)"), "long lines and the failure are cut");
    // Of 1 GB sent, the client sees what the burst and the rate let through, in lines of 8 KiB.
    assert!(shown.len() < 64 << 20, "the client got {} bytes", shown.len());
    // The failure as stored is cut too: the listing and the record stay small.
    let record = tokio::task::block_in_place(|| farm.build_record(&farm.newest_build()));
    let stored = record.to_string();
    assert!(stored.len() < 64 * 1024, "the stored record is {} bytes", stored.len());
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_registration_is_refused_and_agents_ls_pages_a_fleet_larger_than_a_frame() {
    // A small frame, so that a dozen agents outgrow one `agents ls` answer.
    let farm = tokio::task::block_in_place(|| Farm::builder().coordinator_toml("max_frame_bytes = 4096\n").start());
    let mut huge = ScriptedAgent::registration(&["linux/amd64"]);
    huge.engine.image_store = "x".repeat(3000);
    let why = ScriptedAgent::register(&farm, "huge-1", huge).await.expect_err("a 3000-byte engine version");
    assert!(why.contains("image store is 3000 bytes") && why.contains("at most 128"), "{why}");
    let many: Vec<String> = (0..40).map(|v| format!("linux/arm/v{v}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let why =
        ScriptedAgent::register(&farm, "many-1", ScriptedAgent::registration(&many)).await.expect_err("40 platforms");
    assert!(why.contains("declares 40 platforms; at most 16"), "{why}");
    let mut greedy = ScriptedAgent::registration(&["linux/amd64"]);
    greedy.capacity = 1_000_000;
    let why = ScriptedAgent::register(&farm, "greedy-1", greedy).await.expect_err("a capacity of a million");
    assert!(why.contains("capacity of 1000000; at most 256"), "{why}");

    let mut agents = Vec::new();
    for n in 0..16 {
        let platforms = ["linux/amd64", "linux/386", "linux/arm64", "linux/arm/v7", "linux/arm/v6", "linux/ppc64le"];
        agents.push(ScriptedAgent::join(&farm, &format!("fleet-{n:02}"), &platforms).await);
    }
    let out = tokio::task::block_in_place(|| farm.archfarm(&["agents", "ls", "--format", "json"]));
    assert!(out.status.success(), "{}", text(&out));
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), 16, "every agent, over several pages");
    assert!(listed.iter().all(|a| !a["name"].as_str().unwrap_or_default().starts_with("huge")));
    drop(agents);
}
