//! Failures are classified by whose fault they are: a full disk on one agent is that host's,
//! so the job moves to a peer instead of failing as if the Dockerfile were wrong.

use archfarm_tests::*;
use std::path::PathBuf;
use std::process::Command;

/// A small tmpfs mounted over a directory for the test's duration, then unmounted.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn full(dir: PathBuf) -> Tmpfs {
        run_ok(Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(&dir));
        let tmpfs = Tmpfs(dir);
        // Fill it: dd stops, and fails, at the end of the space.
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=4k", "count=64"])
            .arg(format!("of={}", tmpfs.0.join("filler").display()))
            .output();
        tmpfs
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn an_agent_whose_cache_disk_is_full_hands_the_job_to_a_peer_and_is_not_blamed_as_a_dockerfile() {
    let second = AgentSpec { name: "amd64-2", native: None, capacity: 2 };
    let farm = Farm::start(&[AgentSpec::amd64(), second]);
    let full = Tmpfs::full(farm.dir.path().join("agent-amd64-1/cache"));

    let ctx = slow_context(0);
    let tag = format!("{}:1", farm.repo("full"));
    let out = farm.build("linux/amd64", &[&tag], ctx.path(), &[]);
    assert!(out.status.success(), "the peer builds it:\n{}", text(&out));
    let record = farm.build_record(&farm.newest_build());
    assert_eq!(
        Farm::attempts(&record, 0),
        [("amd64-1".to_owned(), "failed".to_owned()), ("amd64-2".to_owned(), "pushed".to_owned())],
        "{record}"
    );
    let detail = record["jobs"][0]["attempts"][0]["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.starts_with("disk full: ") && detail.contains("No space left on device"), "{detail}");
    assert_eq!(farm.tags("full"), ["1"]);
    drop(full);
    // Room again: the agent builds as before.
    let ctx = slow_context(0);
    let out = farm.build("linux/amd64", &[&format!("{}:2", farm.repo("full"))], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
}
