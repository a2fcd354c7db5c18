//! Build cache through a registry, scoped per platform: `--cache-to type=registry` writes each
//! platform's cache image to a tag of its own (checked through the registry's HTTP API and
//! skopeo), and after `agents prune --all` has emptied an agent's engine, `--cache-from` brings
//! its steps back as CACHED. The amd64 agent has a dockerd of its own (the prune must not take
//! other tests' cache), which reaches the registry through a forwarded port; linux/386 is the
//! second native platform.

use archfarm_tests::*;

const DOCKERFILE: &str =
    "FROM scratch\nARG TARGETARCH\nCOPY bin/${TARGETARCH}/busybox /bin/busybox\nCOPY nonce /nonce\n\
RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox sleep 2; echo built for $TARGETARCH > /built\"]\n";

/// The Dockerfile steps (`#N [i/n] …`) the output shows as CACHED, for `platform`.
fn cached_steps(output: &str, platform: &str) -> Vec<String> {
    let prefix = format!("[{platform}] #");
    let steps: Vec<&str> = output.lines().filter(|l| l.starts_with(&prefix) && l.contains("/3] ")).collect();
    steps
        .iter()
        .filter_map(|l| {
            let id = l.strip_prefix(&prefix)?.split_once(' ')?.0;
            output.lines().any(|o| o == format!("{prefix}{id} CACHED")).then(|| l.to_string())
        })
        .collect()
}

#[test]
fn each_platform_writes_its_own_cache_and_a_pruned_agent_reads_it_back() {
    let i386 = AgentSpec { name: "i386-1", native: Some("linux/386"), capacity: 1 };
    let mut farm = Farm::start(&[i386]);
    let mut engine = Engine::start(&farm.dir.path().join("engine2"));
    let port: u16 = farm.registry.rsplit(':').next().unwrap().parse().unwrap();
    engine.reach(port);
    let amd64 = AgentSpec { name: "amd64-1", native: None, capacity: 1 };
    farm.start_agent_configured(&amd64, &format!("docker_host = \"{}\"\n", engine.host));
    farm.wait_for_agents(&["amd64-1", "i386-1"]);

    let ctx = context(DOCKERFILE);
    std::fs::create_dir_all(ctx.path().join("bin/386")).unwrap();
    std::fs::copy(fixtures("386"), ctx.path().join("bin/386/busybox")).unwrap();
    std::fs::write(ctx.path().join("nonce"), format!("{:?}", std::time::SystemTime::now())).unwrap();
    let cache = format!("{}:c", farm.repo("cache/app"));
    let started = std::time::Instant::now();
    let out = farm.build(
        "linux/amd64,linux/386",
        &[&format!("{}:1", farm.repo("cached/app"))],
        ctx.path(),
        &["--cache-to", &format!("type=registry,ref={cache},mode=max")],
    );
    let cold = started.elapsed();
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("mode=max needs a cache exporter"), "mode=max is not silently dropped:\n{log}");

    // One tag per platform, each the platform's own image with its cache in the config.
    assert_eq!(farm.tags("cache/app"), ["c-linux-386", "c-linux-amd64"]);
    for (tag, arch) in [("c-linux-amd64", "amd64"), ("c-linux-386", "386")] {
        let config = skopeo::config(&format!("{}:{tag}", farm.repo("cache/app")));
        assert_eq!(config["architecture"], arch, "{tag}");
        assert!(config.get("moby.buildkit.cache.v0").is_some(), "{tag} carries BuildKit's inline cache");
    }

    // The amd64 agent's engine forgets everything; the registry cache brings the steps back.
    let out = farm.archfarm(&["agents", "prune", "amd64-1", "--all"]);
    assert!(out.status.success(), "{}", text(&out));
    let started = std::time::Instant::now();
    let out = farm.build(
        "linux/amd64",
        &[&format!("{}:2", farm.repo("cached/app"))],
        ctx.path(),
        &["--cache-from", &format!("type=registry,ref={cache}")],
    );
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    // Reported, not asserted (timings are the benchmarks' business): the 2 s step is skipped.
    eprintln!(
        "cold two-platform build {:.1} s; after the prune, with --cache-from {:.1} s",
        cold.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let cached = cached_steps(&log, "linux/amd64");
    assert!(cached.iter().any(|l| l.contains("RUN")), "the RUN step came from the registry cache:\n{log}");
}
