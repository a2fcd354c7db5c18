//! An agent hands over blobs only for an attempt it runs, within that attempt's bounds, and
//! what a failed attempt handed over is removed from the coordinator's disk when it ends.

use archfarm_shared::protocol::{CoordinatorMessage, FailureKind, JobFailure, JobOutcome};
use archfarm_shared::JobId;
use archfarm_tests::scripted::ScriptedAgent;
use archfarm_tests::*;
use std::time::Duration;

/// The blob files in the coordinator's store of handed-over images.
fn stored_blobs(farm: &Farm) -> usize {
    std::fs::read_dir(farm.dir.path().join("data/images"))
        .map(|d| d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().starts_with("sha256-")).count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_overs_are_bounded_per_attempt_and_a_failed_attempts_blobs_are_removed() {
    let farm = tokio::task::block_in_place(|| Farm::start(&[]));
    let agent = ScriptedAgent::join(&farm, "amd64-0", &["linux/amd64"]).await;
    // Between jobs, an agent may store nothing.
    let refused = agent.store_blob(&JobId::random(), b"between jobs").await;
    assert!(
        matches!(&refused, CoordinatorMessage::BlobRefused { reason } if reason.contains("runs no hand-over attempt")),
        "{refused:?}"
    );

    let ctx = context(PER_ARCH_DOCKERFILE);
    let out_dir = tempfile::tempdir().unwrap();
    let output = format!("type=local,dest={}", out_dir.path().display());
    let ctx_arg = ctx.path().to_string_lossy().into_owned();
    let mut cmd = farm.command(&["build", "--platform", "linux/amd64", "--output", &output, &ctx_arg]);
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let client = cmd.spawn().unwrap();
    let job = agent.next_job(Duration::from_secs(30)).await;
    assert!(job.spec.repository.is_empty(), "a build that names no registry hands its image over");
    let id = job.spec.job.clone();
    // Another job's id: refused, even while this one runs.
    let other = agent.store_blob(&JobId::random(), b"not mine").await;
    assert!(matches!(other, CoordinatorMessage::BlobRefused { .. }), "{other:?}");
    // Its own: stored, up to the bound on blobs per attempt.
    let before = tokio::task::block_in_place(|| stored_blobs(&farm));
    let mut stored = 0;
    let refusal = loop {
        match agent.store_blob(&id, format!("blob {stored}").as_bytes()).await {
            CoordinatorMessage::BlobStored => stored += 1,
            CoordinatorMessage::BlobRefused { reason } => break reason,
            other => panic!("{other:?}"),
        }
        assert!(stored <= 1000, "no bound on blobs per attempt");
    };
    assert_eq!(stored, 256, "{refusal}");
    assert!(refusal.contains("blobs already"), "{refusal}");
    assert_eq!(tokio::task::block_in_place(|| stored_blobs(&farm)), before + 256);

    // The attempt fails: what it handed over goes with it.
    let failure = JobFailure { kind: FailureKind::Build, message: "the build failed".into(), log_tail: vec![] };
    job.finish(JobOutcome::Failed(failure)).await;
    let out = tokio::task::block_in_place(|| wait_output(client, Duration::from_secs(60)));
    assert!(!out.status.success(), "{}", text(&out));
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(10), "the failed attempt's blobs to be removed", || {
            (stored_blobs(&farm) == before).then_some(())
        })
    });
    drop(agent);
}
