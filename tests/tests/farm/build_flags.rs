//! `--no-cache` and `--pull` reach every platform's engine and mean what they mean in buildx.

use archfarm_tests::*;

/// The layer digests of the child for `arch` of the index at `reference` (skopeo).
fn layers(reference: &str, arch: &str) -> Vec<String> {
    let index: serde_json::Value = serde_json::from_slice(&skopeo::raw(reference)).unwrap();
    let child = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == arch)
        .unwrap_or_else(|| panic!("no {arch} child in {index}"))["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let repo = reference.rsplit_once(':').unwrap().0;
    let manifest: serde_json::Value = serde_json::from_slice(&skopeo::raw(&format!("{repo}@{child}"))).unwrap();
    manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_owned()).collect()
}

/// The Dockerfile steps (`#N [i/n] ...`) the build output shows as `CACHED`.
fn cached_steps(output: &str) -> Vec<String> {
    let steps: Vec<&str> = output
        .lines()
        .filter_map(|l| l.split_once("] #")?.1.split_once(" [")?.0.parse::<u32>().ok().map(|_| l))
        .filter(|l| l.contains("/2] "))
        .collect();
    steps
        .iter()
        .filter_map(|l| {
            let id = l.split_once("] #")?.1.split_once(' ')?.0;
            output.lines().any(|o| o.ends_with(&format!("#{id} CACHED"))).then(|| l.to_string())
        })
        .collect()
}

#[test]
fn no_cache_runs_every_step_again() {
    let farm = Farm::start(&[AgentSpec::amd64()]);
    // The RUN step writes random bytes: a cached step keeps them, a step run again does not.
    let ctx = context(
        "FROM scratch\nARG TARGETARCH\nCOPY bin/amd64/busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox head -c 16 /dev/urandom > /random\"]\n",
    );
    std::fs::write(ctx.path().join("nonce"), format!("{:?}", std::time::SystemTime::now())).unwrap();
    let tag = |n: u32| format!("{}:{n}", farm.repo("flags/nocache"));
    let out = farm.build("linux/amd64", &[&tag(1)], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    // A file the image does not copy changed: a new context, built from BuildKit's cache.
    std::fs::write(ctx.path().join("nonce"), format!("{:?}", std::time::SystemTime::now())).unwrap();
    let out = farm.build("linux/amd64", &[&tag(2)], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(cached_steps(&text(&out)).len(), 2, "a plain rebuild uses the cache:\n{}", text(&out));
    assert_eq!(layers(&tag(1), "amd64"), layers(&tag(2), "amd64"), "a cached rebuild gives the same layers");
    // Nothing changed: the agent does not even build; the same image is pushed again.
    let out = farm.build("linux/amd64", &[&tag(4)], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("pushed again without building"), "{}", text(&out));
    assert_eq!(layers(&tag(4), "amd64"), layers(&tag(2), "amd64"));

    let out = farm.build("linux/amd64", &[&tag(3)], ctx.path(), &["--no-cache"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(cached_steps(&text(&out)), Vec::<String>::new(), "--no-cache left a step cached:\n{}", text(&out));
    let (before, after) = (layers(&tag(2), "amd64"), layers(&tag(3), "amd64"));
    assert_eq!(before.len(), after.len());
    assert_ne!(before[1], after[1], "the RUN step ran again and wrote new random bytes");
}

#[test]
fn pull_fetches_the_base_again_although_the_engine_has_it() {
    let farm = Farm::start(&[AgentSpec::amd64()]);
    // A base in the registry, also left in the engine by its own build.
    // Its own image (the nonce): the test removes it at the end, and no other build may share it.
    let base_ctx = context("FROM scratch\nCOPY bin/amd64/busybox /bin/busybox\nCOPY nonce /nonce\n");
    std::fs::write(base_ctx.path().join("nonce"), format!("{:?}", std::time::SystemTime::now())).unwrap();
    let base = format!("{}:1", farm.repo("flags/base"));
    let out = farm.build("linux/amd64", &[&base], base_ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    run_ok(std::process::Command::new("docker").args(["pull", "-q", &base]));
    let ctx = context(&format!("FROM {base}\nCOPY nonce /nonce\n"));
    std::fs::write(ctx.path().join("nonce"), "1").unwrap();

    // The engine's own fetches of the base (BuildKit's user agent), not the agent's lookups.
    let engine_fetches = |farm: &Farm| {
        let log = std::fs::read_to_string(farm.dir.path().join("registry.log")).unwrap();
        log.lines()
            .filter(|l| l.contains("\"GET /v2/flags/base/manifests/") || l.contains("\"HEAD /v2/flags/base/manifests/"))
            .filter(|l| !l.contains("oci-client") && !l.contains("archfarm/") && !l.contains("skopeo"))
            .count()
    };
    let before = engine_fetches(&farm);
    let out = farm.build("linux/amd64", &[&format!("{}:1", farm.repo("flags/app"))], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let plain = engine_fetches(&farm) - before;
    assert_eq!(plain, 0, "without --pull the engine uses the base it has");
    let out = farm.build("linux/amd64", &[&format!("{}:2", farm.repo("flags/app"))], ctx.path(), &["--pull"]);
    assert!(out.status.success(), "{}", text(&out));
    let pulled = engine_fetches(&farm) - before;
    assert!(pulled > 0, "--pull made the engine fetch the base from the registry again");
    run_ok(std::process::Command::new("docker").args(["rmi", "-f", &base]));
}
