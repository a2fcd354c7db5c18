//! Garbage collection: `builds prune` deletes what retention allows (old contexts and their
//! chunks, builds past the history kept), while a running build's context survives and the
//! build completes. A coordinator short of disk space refuses new builds, saying why.

use archfarm_tests::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The stored files of `dir`, without partial files of transfers under way.
fn files(dir: &Path) -> BTreeSet<PathBuf> {
    let stored = |p: &PathBuf| !p.file_name().unwrap().to_string_lossy().starts_with('.');
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(stored).collect()
}

fn bytes(dir: &Path) -> u64 {
    files(dir).iter().map(|f| std::fs::metadata(f).unwrap().len()).sum()
}

/// Makes a file look last used two hours ago.
fn age(file: &Path) {
    let f = std::fs::File::options().append(true).open(file).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(7200)).unwrap();
}

#[test]
fn prune_shrinks_the_data_directory_while_a_running_builds_context_survives() {
    let mut farm = Farm::builder()
        .agents(&[AgentSpec { name: "amd64-1", native: None, capacity: 2 }])
        .coordinator_toml("retention_days = 0\nhistory_builds = 1\n")
        .start();
    let contexts = farm.dir.path().join("data/contexts");
    let chunks = farm.dir.path().join("data/chunks");
    // Two finished builds with contexts of their own.
    let (a, c) = (slow_context(0), slow_context(0));
    for ctx in [&a, &c] {
        let out = farm.build("linux/amd64", &[&format!("{}:1", farm.repo("gc"))], ctx.path(), &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let first = farm.build_record(&farm.newest_build());
    let finished = files(&contexts);
    assert_eq!(finished.len(), 2, "{finished:?}");
    // A build that runs while the collection does.
    let slow = slow_context(6);
    let running = farm.spawn_build("linux/amd64", &[&format!("{}:2", farm.repo("gc"))], slow.path());
    let its = wait_until(Duration::from_secs(30), "the running build's context to arrive", || {
        files(&contexts).difference(&finished).next().cloned()
    });
    for f in files(&contexts) {
        age(&f);
    }
    let (before, chunks_before) = (bytes(&contexts), files(&chunks).len());

    let out = farm.archfarm(&["builds", "prune"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("removed 1 builds from the history, 2 build contexts"), "{}", text(&out));
    assert_eq!(files(&contexts), BTreeSet::from([its.clone()]), "only the running build's context is left");
    assert!(bytes(&contexts) < before, "the data directory shrank");
    assert!(files(&chunks).len() < chunks_before, "chunk references into deleted contexts are forgotten");

    // The running build completes; the history keeps the newest finished build and it.
    let out = wait_output(running, Duration::from_secs(180));
    assert!(out.status.success(), "{}", text(&out));
    let listed = text(&farm.archfarm(&["builds", "ls"]));
    assert_eq!(listed.lines().count(), 3, "a header, the newest finished build and the running one: {listed}");
    assert!(listed.contains(first["build"].as_str().unwrap()), "{listed}");
    farm.proc("coordinator").wait_for_log("garbage collection: removed", Duration::from_secs(5));
}

#[test]
fn a_coordinator_short_of_disk_space_refuses_new_builds_and_says_why() {
    // A floor no disk here reaches: every new build and upload is refused.
    let farm = Farm::builder().agents(&[AgentSpec::amd64()]).coordinator_toml("min_free_space = \"1PB\"\n").start();
    let ctx = context(PER_ARCH_DOCKERFILE);
    let out = farm.build("linux/amd64", &[&format!("{}:1", farm.repo("full"))], ctx.path(), &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("disk is nearly full") && text(&out).contains("min_free_space"), "{}", text(&out));
    // Nothing was recorded or pushed, and the coordinator still answers.
    let listed = text(&farm.archfarm(&["builds", "ls"]));
    assert_eq!(listed.lines().count(), 1, "{listed}");
    let (_, _, catalog) = farm.registry_get("/v2/_catalog", "application/json");
    assert!(!String::from_utf8_lossy(&catalog).contains("full"));
}
