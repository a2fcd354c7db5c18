//! Build cache through a registry, scoped per platform: `--cache-to type=registry` writes each
//! platform's cache to a tag of its own (checked through the registry's HTTP API and skopeo),
//! and after `agents prune --all` has emptied an agent's engine, `--cache-from` brings its
//! steps back as CACHED. `mode=min` is the platform's image with inline cache, on every
//! engine; `mode=max`, the cache of every stage, is exported by BuildKit on the containerd
//! image store only: such a build goes to an agent whose engine can, or is refused at once.
//! The amd64 agent has a current engine of its own (the prune must not take other tests'
//! cache), which reaches the registry through a forwarded port; linux/386 is the second native
//! platform, on Docker Engine 20.10.

use archfarm_tests::*;

const DOCKERFILE: &str =
    "FROM scratch\nARG TARGETARCH\nCOPY bin/${TARGETARCH}/busybox /bin/busybox\nCOPY nonce /nonce\n\
RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox sleep 2; echo built for $TARGETARCH > /built\"]\n";

/// The same steps in a stage of their own, of which the image keeps one file: only a cache of
/// every stage remembers the `RUN`.
const TWO_STAGES: &str = "FROM scratch AS tools\nARG TARGETARCH\nCOPY bin/${TARGETARCH}/busybox /bin/busybox\n\
COPY nonce /nonce\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox sleep 2; echo built for $TARGETARCH > /built\"]\n\
FROM scratch\nCOPY --from=tools /built /built\n";

/// The `RUN` steps (`#N [...] RUN …`) the output shows as CACHED, for `platform`.
fn cached_runs(output: &str, platform: &str) -> Vec<String> {
    let prefix = format!("[{platform}] #");
    let steps: Vec<&str> = output.lines().filter(|l| l.starts_with(&prefix) && l.contains("] RUN ")).collect();
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
    let mut engine = Engine::start_current(&farm.dir.path().join("engine2"));
    let port: u16 = farm.registry.rsplit(':').next().unwrap().parse().unwrap();
    engine.reach(port);
    let amd64 = AgentSpec { name: "amd64-1", native: None, capacity: 1 };
    farm.start_agent_configured(&amd64, &format!("docker_host = \"{}\"\n", engine.host));
    farm.wait_for_agents(&["amd64-1", "i386-1"]);

    let ctx = context(DOCKERFILE);
    std::fs::create_dir_all(ctx.path().join("bin/386")).unwrap();
    std::fs::copy(fixtures("386"), ctx.path().join("bin/386/busybox")).unwrap();
    std::fs::write(ctx.path().join("nonce"), format!("{:?}", std::time::SystemTime::now())).unwrap();
    let tag = |n: u32| format!("{}:{n}", farm.repo("cached/app"));

    // The 20.10 engine exports no cache of every stage: refused before anything runs.
    let max = format!("type=registry,ref={}:m,mode=max", farm.repo("cache/app"));
    let out = farm.build("linux/amd64,linux/386", &[&tag(0)], ctx.path(), &["--cache-to", &max]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("no agent for linux/386 can run this build"), "{said}");
    assert!(said.contains("i386-1 has Docker Engine 20.10"), "{said}");
    assert!(said.contains("agents whose engine can: amd64-1 (linux/amd64)"), "{said}");
    assert!(farm.tags("cache/app").is_empty() && farm.tags("cached/app").is_empty(), "nothing was built");

    // mode=min: one tag per platform, each the platform's own image with its cache in the config.
    let cache = format!("{}:c", farm.repo("cache/app"));
    let out = farm.build(
        "linux/amd64,linux/386",
        &[&tag(1)],
        ctx.path(),
        &["--cache-to", &format!("type=registry,ref={cache}")],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(farm.tags("cache/app"), ["c-linux-386", "c-linux-amd64"]);
    for (tag, arch) in [("c-linux-amd64", "amd64"), ("c-linux-386", "386")] {
        let config = skopeo::config(&format!("{}:{tag}", farm.repo("cache/app")));
        assert_eq!(config["architecture"], arch, "{tag}");
        assert!(config.get("moby.buildkit.cache.v0").is_some(), "{tag} carries BuildKit's inline cache");
    }

    // The amd64 agent's engine forgets everything; the registry cache brings the steps back.
    let prune = |farm: &Farm| {
        let out = farm.archfarm(&["agents", "prune", "amd64-1", "--all"]);
        assert!(out.status.success(), "{}", text(&out));
    };
    prune(&farm);
    let from = format!("type=registry,ref={cache}");
    let out = farm.build("linux/amd64", &[&tag(2)], ctx.path(), &["--cache-from", &from]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains(&format!("build cache from {cache}-linux-amd64")), "{log}");
    assert!(!cached_runs(&log, "linux/amd64").is_empty(), "the RUN step came from the registry cache:\n{log}");

    // mode=max on the containerd store: BuildKit's cache of every stage, at the platform's tag.
    std::fs::write(ctx.path().join("Dockerfile"), TWO_STAGES).unwrap();
    let out = farm.build("linux/amd64", &[&tag(3)], ctx.path(), &["--cache-to", &max]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    let accept = "application/vnd.oci.image.manifest.v1+json";
    let (status, _, body) = farm.registry_get("/v2/cache/app/manifests/m-linux-amd64", accept);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.buildkit.cacheconfig.v0", "{manifest}");
    let image: serde_json::Value = serde_json::from_slice(&skopeo::raw(&tag(3))).unwrap();
    let child = format!("{}@{}", farm.repo("cached/app"), runnable(&image)[0]["digest"].as_str().unwrap());
    let child: serde_json::Value = serde_json::from_slice(&skopeo::raw(&child)).unwrap();
    let (cached, kept) = (manifest["layers"].as_array().unwrap().len(), child["layers"].as_array().unwrap().len());
    assert!(cached >= 3 && kept == 1, "the cache holds the tools stage's layers ({cached}), the image one ({kept})");

    let config =
        skopeo::config(&format!("{}@{}", farm.repo("cached/app"), runnable(&image)[0]["digest"].as_str().unwrap()));
    assert!(config.get("moby.buildkit.cache.v0").is_none(), "mode=max puts no inline cache in the image");

    // Emptied again, the engine runs the tools stage's RUN again without a cache (the prune
    // took the engine's own), and takes it from the cache of every stage with it.
    prune(&farm);
    let out = farm.build("linux/amd64", &[&tag(4)], ctx.path(), &[]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(cached_runs(&log, "linux/amd64").is_empty(), "the prune emptied the engine's cache:\n{log}");
    prune(&farm);
    let from = format!("type=registry,ref={}:m", farm.repo("cache/app"));
    let out = farm.build("linux/amd64", &[&tag(5)], ctx.path(), &["--cache-from", &from]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains(&format!("build cache from {}:m-linux-amd64", farm.repo("cache/app"))), "{log}");
    assert!(
        !cached_runs(&log, "linux/amd64").is_empty(),
        "the tools stage's RUN came from the cache of every stage:\n{log}"
    );
    let image: serde_json::Value = serde_json::from_slice(&skopeo::raw(&tag(5))).unwrap();
    let child = format!("{}@{}", farm.repo("cached/app"), runnable(&image)[0]["digest"].as_str().unwrap());
    assert_eq!(skopeo::file_from_image(&child, "built").as_deref(), Some(&b"built for amd64\n"[..]));
}
