//! A farm mixing engines: an agent on Docker Engine 20.10 (overlay2) and one on a current
//! engine (26.1, the containerd image store), which takes a build context only through the
//! BuildKit session and pushes by digest itself. A two-platform build publishes both children,
//! checked through the registry's HTTP API and skopeo, with the Dockerfile named inside the
//! context, and writes them into an OCI archive. On the containerd store alone: a private base,
//! `RUN`, the test gate, cache and push in proportion to the change; `--load` and a local tree;
//! and an agent lost mid-build, replaced by a 20.10 one.

use archfarm_tests::*;

/// A farm whose one agent, `amd64-cur`, builds on the current engine (the containerd store).
fn farm_with_a_current_agent() -> Farm {
    let engine = current_engine();
    let mut farm = Farm::start(&[]);
    let amd64 = AgentSpec { name: "amd64-cur", native: None, capacity: 1 };
    farm.start_agent_configured(&amd64, &format!("docker_host = \"{engine}\"\n"));
    farm.wait_for_agents(&["amd64-cur"]);
    farm
}

#[test]
fn a_farm_mixing_a_20_10_engine_and_a_containerd_store_engine_publishes_both_platforms() {
    let engine = current_engine();
    let mut farm = Farm::start(&[AgentSpec::amd64()]);
    let arm = AgentSpec { name: "arm64-cur", native: Some("linux/arm64"), capacity: 1 };
    farm.start_agent_configured(&arm, &format!("docker_host = \"{engine}\"\n"));
    farm.wait_for_agents(&["amd64-1", "arm64-cur"]);
    // The fleet knows its engines: version, API, image store, BuildKit.
    let listed: serde_json::Value =
        serde_json::from_slice(&farm.archfarm(&["agents", "ls", "--format", "json"]).stdout).unwrap();
    let agent = |name: &str| listed.as_array().unwrap().iter().find(|a| a["name"] == name).unwrap().clone();
    let (old, new) = (agent("amd64-1"), agent("arm64-cur"));
    assert!(old["engine"].as_str().unwrap().starts_with("20.10."), "{old}");
    assert_eq!((old["engine_api"].as_str(), old["image_store"].as_str()), (Some("1.41"), Some("overlay2")), "{old}");
    assert!(new["engine"].as_str().unwrap().starts_with("26.1.5"), "{new}");
    assert_eq!((new["engine_api"].as_str(), new["image_store"].as_str()), (Some("1.45"), Some("containerd")), "{new}");
    assert!(new["buildkit"].as_str().unwrap().starts_with("v0."), "BuildKit says its version: {new}");
    let shown = text(&farm.archfarm(&["agents", "inspect", "arm64-cur"]));
    assert!(shown.contains("(API 1.45, containerd store, BuildKit v0."), "{shown}");

    // The Dockerfile lives in a folder of the context, beside files the build does not copy.
    let ctx = context("FROM scratch\n");
    std::fs::create_dir_all(ctx.path().join("docker")).unwrap();
    let dockerfile = format!("{PER_ARCH_DOCKERFILE}COPY docker/notes/a.txt /notes/a.txt\n");
    std::fs::write(ctx.path().join("docker/Dockerfile"), dockerfile).unwrap();
    std::fs::create_dir_all(ctx.path().join("docker/notes")).unwrap();
    std::fs::write(ctx.path().join("docker/notes/a.txt"), "a note\n").unwrap();
    std::fs::write(ctx.path().join("docker/notes/b.txt"), "not copied\n").unwrap();
    let tag = format!("{}:1", farm.repo("team/mixed"));
    let file = ctx.path().join("docker/Dockerfile");
    let archive = farm.dir.path().join("mixed.tar");
    let oci = format!("type=oci,dest={}", archive.display());
    let out = farm.build("linux/amd64,linux/arm64", &[&tag], ctx.path(), &["-f", file.to_str().unwrap(), "-o", &oci]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("[linux/arm64] building natively on agent arm64-cur"), "{log}");

    let (status, _, index) = farm.registry_get("/v2/team/mixed/manifests/1", "application/vnd.oci.image.index.v1+json");
    assert_eq!(status, 200);
    let index: serde_json::Value = serde_json::from_slice(&index).unwrap();
    let children = runnable(&index);
    let archs: Vec<&str> = children.iter().map(|c| c["platform"]["architecture"].as_str().unwrap()).collect();
    assert_eq!(archs, ["amd64", "arm64"]);
    let child = format!("{}@{}", farm.repo("team/mixed"), children[1]["digest"].as_str().unwrap());
    let busybox = skopeo::file_from_image(&child, "bin/busybox").expect("the arm64 child has /bin/busybox");
    assert_eq!(elf_machine(&busybox), Some(EM_AARCH64), "built from the context the session served");
    let note = skopeo::file_from_image(&child, "notes/a.txt").expect("the arm64 child has /notes/a.txt");
    assert_eq!(note, b"a note\n");

    // `-o type=oci` holds the image the containerd store's BuildKit pushed, as any other.
    let archive_ref = format!("oci-archive:{}", archive.display());
    let inspect = ["inspect", "--config", "--raw", "--override-arch", "arm64", &archive_ref];
    let config: serde_json::Value =
        serde_json::from_slice(&run_ok(std::process::Command::new("skopeo").args(inspect)).stdout).unwrap();
    assert_eq!(config["architecture"], "arm64", "{config}");
}

/// The main path on the containerd store: a private base pulled with the agent's login, a
/// native `RUN`, the native test gate and a registry cache, all through an agent on the
/// current engine. A build with tests is pushed only after them; one without is pushed by
/// digest by BuildKit itself, and a rebuild with one file changed uploads that layer only.
#[test]
fn on_the_containerd_store_a_private_base_a_run_step_the_test_gate_and_the_cache_work() {
    const USER: &str = "ci";
    const PASSWORD: &str = "s3cret-current";
    let mut farm = farm_with_a_current_agent();
    let private = farm.start_private_registry(USER, PASSWORD);
    farm.set_logins(&[(&private, USER, PASSWORD)]);
    let base = format!("{private}/base:1");
    let out = farm.build("linux/amd64", &[&base], context(PER_ARCH_DOCKERFILE).path(), &[]);
    assert!(out.status.success(), "pushing the private base:\n{}", text(&out));

    let ctx = context(&format!(
        "FROM {base}\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo ran on $(/bin/busybox uname -m) > /ran.txt\"]\n\
         COPY app.txt /app.txt\n"
    ));
    std::fs::write(ctx.path().join("app.txt"), format!("{:?}\n", std::time::SystemTime::now())).unwrap();
    let tag = format!("{}:1", farm.repo("team/current"));
    let cache = format!("{}:cache", farm.repo("team/current-cache"));
    let test = "/bin/busybox sh -c 'test -f /ran.txt && echo gate-passed'";
    let cache_to = format!("type=registry,ref={cache}");
    let out = farm.build("linux/amd64", &[&tag], ctx.path(), &["--test", test, "--cache-to", &cache_to]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("[linux/amd64] gate-passed"), "the test ran natively on the current engine:\n{log}");

    let index: serde_json::Value = serde_json::from_slice(&skopeo::raw(&tag)).unwrap();
    let child = format!("{}@{}", farm.repo("team/current"), runnable(&index)[0]["digest"].as_str().unwrap());
    assert_eq!(skopeo::file_from_image(&child, "ran.txt").as_deref(), Some(&b"ran on x86_64\n"[..]));
    let busybox = skopeo::file_from_image(&child, "bin/busybox").expect("the private base's busybox");
    assert_eq!(elf_machine(&busybox), Some(EM_X86_64));
    assert_eq!(farm.tags("team/current-cache"), ["cache-linux-amd64"], "the platform's cache, by the registry's API");

    // Who wrote what, by the registry's log: writes into team/current whose line names `needle`.
    let writers = |log: &str, skip: usize, needle: &str| -> Vec<String> {
        log.lines()
            .skip(skip)
            .filter(|l| {
                l.contains("/v2/team/current/") && l.contains(needle) && (l.contains("\"PUT ") || l.contains("\"POST "))
            })
            .map(|l| l.rsplit('"').nth(1).unwrap_or_default().to_owned())
            .collect()
    };
    // With tests, nothing is pushed before they pass: the agent pushed this one after them.
    let log = std::fs::read_to_string(farm.dir.path().join("registry.log")).unwrap();
    let digest = runnable(&index)[0]["digest"].as_str().unwrap().to_owned();
    let by = writers(&log, 0, &format!("/manifests/{digest}"));
    assert!(!by.is_empty() && by.iter().all(|ua| ua.starts_with("archfarm/")), "{by:?}");

    // Without tests BuildKit pushes by digest itself: the manifest and the one layer that
    // changed (only the application file did), and nothing else again.
    let before = log.lines().count();
    std::fs::write(ctx.path().join("app.txt"), "changed\n").unwrap();
    let tag2 = format!("{}:2", farm.repo("team/current"));
    let out = farm.build("linux/amd64", &[&tag2], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let index2: serde_json::Value = serde_json::from_slice(&skopeo::raw(&tag2)).unwrap();
    let digest2 = runnable(&index2)[0]["digest"].as_str().unwrap().to_owned();
    let child2 = format!("{}@{digest2}", farm.repo("team/current"));
    let manifest2: serde_json::Value = serde_json::from_slice(&skopeo::raw(&child2)).unwrap();
    let layers2 = manifest2["layers"].as_array().unwrap();
    let log = std::fs::read_to_string(farm.dir.path().join("registry.log")).unwrap();
    let by = writers(&log, before, &format!("/manifests/{digest2}"));
    assert!(!by.is_empty() && by.iter().all(|ua| ua.starts_with("buildkit/")), "{by:?}");
    for (i, layer) in layers2.iter().enumerate() {
        let hex = layer["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let uploads = writers(&log, before, hex);
        let puts = log.lines().skip(before).filter(|l| l.contains("\"PUT /v2/team/current/blobs/") && l.contains(hex));
        let (sent, expected) = (puts.count(), usize::from(i + 1 == layers2.len()));
        assert_eq!(sent, expected, "layer {i} of {} uploaded {sent} times", layers2.len());
        assert!(uploads.iter().all(|ua| ua.starts_with("buildkit/")), "layer {i} written by {uploads:?}");
    }
}

/// `--load` and `-o type=local` of an image built on the containerd store and, with no
/// registry, handed to the coordinator by the agent: the image runs in the local engine (checked
/// with docker) and the tree holds the built files.
#[test]
fn on_the_containerd_store_load_and_a_local_tree_come_from_its_build() {
    let farm = farm_with_a_current_agent();
    // An image of its own (the nonce), so no other test loads or removes the same one.
    let ctx = context(&format!("{PER_ARCH_DOCKERFILE}COPY nonce /nonce\n"));
    let nonce = format!("{:?} {}", std::time::SystemTime::now(), std::process::id());
    std::fs::write(ctx.path().join("nonce"), &nonce).unwrap();
    let tree = farm.dir.path().join("tree");
    let local = format!("type=local,dest={}", tree.display());
    let tag = format!("archfarm-test-current/app:{}", std::process::id());
    let ctx_path = ctx.path().to_str().unwrap();
    let args =
        ["build", "--platform", "linux/amd64", "--progress", "plain", "-t", &tag, "--load", "-o", &local, ctx_path];
    let out = farm.archfarm(&args);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("building natively on agent amd64-cur"), "{log}");
    let inspect =
        run_ok(std::process::Command::new("docker").args(["image", "inspect", "--format", "{{.Architecture}}", &tag]));
    assert_eq!(String::from_utf8_lossy(&inspect.stdout).trim(), "amd64");
    let ran = run_ok(std::process::Command::new("docker").args(["run", "--rm", &tag]));
    assert_eq!(String::from_utf8_lossy(&ran.stdout).trim(), "built for linux/amd64");
    run_ok(std::process::Command::new("docker").args(["rmi", "-f", &tag]));
    assert_eq!(std::fs::read_to_string(tree.join("nonce")).unwrap(), nonce);
    assert_eq!(elf_machine(&std::fs::read(tree.join("bin/busybox")).unwrap()), Some(EM_X86_64));
}

/// An agent on the containerd store killed mid-build: the platform runs again on a 20.10 agent
/// that joined meanwhile, and the build publishes.
#[test]
fn an_agent_on_the_containerd_store_killed_mid_build_is_replaced_by_a_20_10_agent() {
    let mut farm = farm_with_a_current_agent();
    // Long enough for a second agent to join before the first is killed.
    let ctx = slow_context(15);
    let tag = format!("{}:1", farm.repo("team/failover-current"));
    let client = farm.spawn_build("linux/amd64", &[&tag], ctx.path());
    assert_eq!(farm.assigned_agent(1), "amd64-cur");
    farm.proc("agent amd64-cur").wait_for_log("job started", std::time::Duration::from_secs(30));
    farm.start_agent_configured(&AgentSpec::amd64(), "");
    farm.wait_for_agents(&["amd64-cur", "amd64-1"]);
    farm.proc("agent amd64-cur").kill9();

    let out = wait_output(client, std::time::Duration::from_secs(120));
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("retrying (attempt 2)"), "the client is told: {log}");
    let record = farm.build_record(&farm.newest_build());
    assert_eq!(record["state"], "published");
    let ran = Farm::attempts(&record, 0);
    assert_eq!(ran, [("amd64-cur".to_owned(), "lost".to_owned()), ("amd64-1".to_owned(), "pushed".to_owned())]);
    let index: serde_json::Value = serde_json::from_slice(&skopeo::raw(&tag)).unwrap();
    assert_eq!(runnable(&index)[0]["platform"]["architecture"], "amd64");
}

/// On the containerd store BuildKit exports and pushes even an unchanged image; the agent does
/// not build a job whose inputs (context, options, the digest of every image the Dockerfile
/// reads) are those of one it pushed: it pushes that image again, writing nothing into the same
/// repository and mounting its blobs into another. When the base's tag moves, the inputs differ
/// and the image is built again, on the new base.
#[test]
fn on_the_containerd_store_the_same_inputs_are_not_built_again_and_a_moved_base_is() {
    let mut farm = farm_with_a_current_agent();
    let builds = |farm: &mut Farm| {
        let log = farm.proc("agent amd64-cur").wait_for_log("registered", std::time::Duration::from_secs(10));
        log.matches("pushed by the engine's BuildKit").count()
    };
    let child = |reference: &str| -> String {
        let index: serde_json::Value = serde_json::from_slice(&skopeo::raw(reference)).unwrap();
        runnable(&index)[0]["digest"].as_str().unwrap().to_owned()
    };
    let base_ctx = context("FROM scratch\nCOPY bin/amd64/busybox /bin/busybox\nCOPY base.txt /base.txt\n");
    std::fs::write(base_ctx.path().join("base.txt"), "base 1\n").unwrap();
    let base = format!("{}:1", farm.repo("base/img"));
    let out = farm.build("linux/amd64", &[&base], base_ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));

    let ctx = context(&format!("FROM {base}\nCOPY app.txt /app.txt\n"));
    std::fs::write(ctx.path().join("app.txt"), format!("{:?}\n", std::time::SystemTime::now())).unwrap();
    let v1 = format!("{}:1", farm.repo("team/same"));
    let out = farm.build("linux/amd64", &[&v1], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(builds(&mut farm), 2, "the base and the application, each built");

    // The same inputs again: not built, and the registry already holds the image.
    let v2 = format!("{}:2", farm.repo("team/same"));
    let out = farm.build("linux/amd64", &[&v2], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    farm.proc("agent amd64-cur")
        .wait_for_log("pushed again without a build (unchanged", std::time::Duration::from_secs(10));
    assert_eq!(builds(&mut farm), 2, "not built again");
    assert_eq!(child(&v2), child(&v1));

    // Into another repository: every blob mounted, none uploaded, the same manifest.
    let before = std::fs::read_to_string(farm.dir.path().join("registry.log")).unwrap().lines().count();
    let other = format!("{}:1", farm.repo("team/other"));
    let out = farm.build("linux/amd64", &[&other], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    farm.proc("agent amd64-cur")
        .wait_for_log("pushed again without a build (mounted", std::time::Duration::from_secs(10));
    assert_eq!(builds(&mut farm), 2);
    assert_eq!(child(&other), child(&v1));
    let log = std::fs::read_to_string(farm.dir.path().join("registry.log")).unwrap();
    let image = format!("{}@{}", farm.repo("team/other"), child(&other));
    let manifest: serde_json::Value = serde_json::from_slice(&skopeo::raw(&image)).unwrap();
    let blobs = manifest["layers"].as_array().unwrap().iter().chain([&manifest["config"]]);
    for blob in blobs.map(|b| b["digest"].as_str().unwrap().replace(':', "%3A")) {
        let put = log.lines().skip(before).filter(|l| l.contains("\"PUT /v2/team/other/blobs/") && l.contains(&blob));
        assert_eq!(put.count(), 0, "{blob} uploaded into team/other, not mounted");
        let mounted = log
            .lines()
            .skip(before)
            .any(|l| l.contains("\"POST /v2/team/other/blobs/uploads/?") && l.contains(&blob) && l.contains("\" 201 "));
        assert!(mounted, "{blob} mounted into team/other");
    }
    let app = skopeo::file_from_image(&format!("{}@{}", farm.repo("team/other"), child(&other)), "app.txt");
    assert_eq!(app, std::fs::read(ctx.path().join("app.txt")).ok());

    // The base's tag moves: the application is built again, on the new base.
    std::fs::write(base_ctx.path().join("base.txt"), "base 2\n").unwrap();
    let out = farm.build("linux/amd64", &[&base], base_ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let v3 = format!("{}:3", farm.repo("team/same"));
    let out = farm.build("linux/amd64", &[&v3], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(builds(&mut farm), 4, "the new base and the application on it, each built");
    let on = skopeo::file_from_image(&format!("{}@{}", farm.repo("team/same"), child(&v3)), "base.txt");
    assert_eq!(on.as_deref(), Some(&b"base 2\n"[..]));
}
