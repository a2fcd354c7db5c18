//! End to end on real parts: dockerd, the CNCF registry, a coordinator and two agent processes.
//! No arm64 hardware exists here: the "arm64" agent is an amd64 host declaring linux/arm64, and
//! the arm64 image it builds is genuinely aarch64 because it copies an aarch64 binary.

use archfarm_tests::*;
use std::process::Command;

#[test]
fn two_platform_build_publishes_a_verified_index_with_a_real_aarch64_child_from_an_amd64_standin() {
    let farm = Farm::start(&[AgentSpec::amd64(), AgentSpec::arm64_standin()]);
    let ctx = context(PER_ARCH_DOCKERFILE);
    let tag = format!("{}:1.0", farm.repo("team/hello"));
    let tag2 = format!("{}:latest", farm.repo("team/hello"));
    let metadata = farm.dir.path().join("metadata.json");
    let out = farm.archfarm(&[
        "build",
        "--platform",
        "linux/amd64,linux/arm64",
        "-t",
        &tag,
        "-t",
        &tag2,
        "--push",
        "--progress",
        "plain",
        "--metadata-file",
        metadata.to_str().unwrap(),
        ctx.path().to_str().unwrap(),
    ]);
    let log = text(&out);
    assert!(out.status.success(), "build failed:\n{log}");
    // The log is live and prefixed per platform, and each platform ran on its own agent.
    assert!(log.contains("[linux/amd64] building natively on agent amd64-1"), "{log}");
    assert!(log.contains("[linux/arm64] building natively on agent arm64-1"), "{log}");
    assert!(log.contains("[linux/arm64] #") && log.contains("COPY bin/arm64/busybox"), "{log}");

    // Independent client 1: the registry HTTP API. The tag resolves to an OCI index whose bytes
    // hash to the digest the registry reports, with exactly amd64 then arm64.
    let (status, served_digest, index_bytes) =
        farm.registry_get("/v2/team/hello/manifests/1.0", "application/vnd.oci.image.index.v1+json");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&index_bytes));
    let index_digest = sha256(&index_bytes);
    assert_eq!(served_digest.as_deref(), Some(index_digest.as_str()));
    let index: serde_json::Value = serde_json::from_slice(&index_bytes).unwrap();
    assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json");
    let children = index["manifests"].as_array().unwrap();
    let platforms: Vec<String> = children
        .iter()
        .map(|m| {
            format!("{}/{}", m["platform"]["os"].as_str().unwrap(), m["platform"]["architecture"].as_str().unwrap())
        })
        .collect();
    // The runnable children in --platform order, then their provenance attestations.
    assert_eq!(
        platforms,
        ["linux/amd64", "linux/arm64", "unknown/unknown", "unknown/unknown"],
        "children in --platform order"
    );
    // Both tags point at the same index, and they are the only tags the registry holds.
    let (_, latest_digest, _) =
        farm.registry_get("/v2/team/hello/manifests/latest", "application/vnd.oci.image.index.v1+json");
    assert_eq!(latest_digest.as_deref(), Some(index_digest.as_str()));
    assert_eq!(farm.tags("team/hello"), ["1.0", "latest"]);

    // Independent client 2: skopeo sees the same index, and each child's config says its platform.
    assert_eq!(skopeo::raw(&tag), index_bytes);
    let child = |i: usize| format!("{}@{}", farm.repo("team/hello"), children[i]["digest"].as_str().unwrap());
    for (i, arch) in [(0, "amd64"), (1, "arm64")] {
        let config = skopeo::config(&child(i));
        assert_eq!((config["os"].as_str(), config["architecture"].as_str()), (Some("linux"), Some(arch)), "child {i}");
        let env = config["config"]["Env"].to_string();
        assert!(env.contains(&format!("BUILT_FOR=linux/{arch}")), "TARGETPLATFORM reached the build: {env}");
    }

    // The arm64 child holds a genuine aarch64 binary; the amd64 child an x86-64 one.
    let arm = skopeo::file_from_image(&child(1), "bin/busybox").expect("arm64 child has /bin/busybox");
    assert_eq!(elf_machine(&arm), Some(EM_AARCH64), "arm64 child's binary is an aarch64 ELF");
    let amd = skopeo::file_from_image(&child(0), "bin/busybox").expect("amd64 child has /bin/busybox");
    assert_eq!(elf_machine(&amd), Some(EM_X86_64));
    if std::path::Path::new("/usr/bin/qemu-aarch64-static").exists() {
        // Proof by execution, under user-mode emulation in the test only.
        let bin = farm.dir.path().join("busybox-arm64");
        std::fs::write(&bin, &arm).unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let out = run_ok(Command::new("qemu-aarch64-static").arg(&bin).args(["uname", "-m"]));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "aarch64");
    }

    // The amd64 child runs natively under docker run.
    let amd64_ref = child(0);
    let out = run_ok(Command::new("docker").args(["run", "--rm", &amd64_ref]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "built for linux/amd64");
    let _ = Command::new("docker").args(["rmi", "-f", &amd64_ref]).output();

    // The metadata file names the index and, per platform, digest, agent and duration.
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&metadata).unwrap()).unwrap();
    assert_eq!(meta["containerimage.digest"], index_digest.as_str());
    let per: Vec<(&str, &str, &str)> = meta["archfarm.platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["platform"].as_str().unwrap(), p["agent"].as_str().unwrap(), p["digest"].as_str().unwrap()))
        .collect();
    assert_eq!(
        per,
        [
            ("linux/amd64", "amd64-1", children[0]["digest"].as_str().unwrap()),
            ("linux/arm64", "arm64-1", children[1]["digest"].as_str().unwrap())
        ]
    );
    assert!(meta["archfarm.platforms"][0]["duration_ms"].as_u64().unwrap() > 0);

    // imagetools inspect shows the index and its platforms.
    let out = farm.archfarm(&["imagetools", "inspect", &tag]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains(&format!("Digest:    {index_digest}")), "{shown}");
    assert!(shown.contains("Platform:  linux/amd64") && shown.contains("Platform:  linux/arm64"), "{shown}");

    // A second build of the same context does not upload it again.
    let out = farm.build("linux/arm64", &[&tag2], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("is already on the coordinator"), "{}", text(&out));
}

#[test]
fn agents_ls_lists_name_address_platforms_state_and_jobs() {
    let farm = Farm::start(&[AgentSpec::amd64(), AgentSpec::arm64_standin()]);
    let out = farm.archfarm(&["agents", "ls"]);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME")
            && lines[0].contains("ADDRESS")
            && lines[0].contains("PLATFORMS")
            && lines[0].contains("STATE")
            && lines[0].contains("JOBS"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("amd64-1")
            && lines[1].contains("127.0.0.1:")
            && lines[1].contains("linux/amd64")
            && lines[1].contains("ready")
            && lines[1].contains("0/2"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("arm64-1") && lines[2].contains("linux/arm64") && !lines[2].contains("linux/amd64"),
        "{table}"
    );
    let agent_log = farm.procs.iter().find(|p| p.name == "agent arm64-1").unwrap().log_text();
    assert!(agent_log.contains("stands in for a linux/arm64 host"), "{agent_log}");
}

#[test]
fn build_args_target_labels_and_dockerfile_path_reach_the_build() {
    let farm = Farm::start(&[AgentSpec::amd64()]);
    let dockerfile = "FROM scratch AS base\nARG GREETING=unset\nCOPY bin/amd64/busybox /bin/busybox\nENV GREETING=${GREETING}\n\nFROM base AS final\nENV STAGE=final\n";
    let ctx = context("");
    std::fs::create_dir_all(ctx.path().join("build")).unwrap();
    std::fs::write(ctx.path().join("build/App.Dockerfile"), dockerfile).unwrap();
    let tag = format!("{}:args", farm.repo("opts"));
    let file = ctx.path().join("build/App.Dockerfile");
    let out = farm.archfarm(&[
        "build",
        "--platform",
        "linux/amd64",
        "-t",
        &tag,
        "--push",
        "--progress",
        "plain",
        "-f",
        file.to_str().unwrap(),
        "--build-arg",
        "GREETING=hej",
        "--target",
        "base",
        "--label",
        "team=release",
        ctx.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let index: serde_json::Value = serde_json::from_slice(&skopeo::raw(&tag)).unwrap();
    let child = format!("{}@{}", farm.repo("opts"), index["manifests"][0]["digest"].as_str().unwrap());
    let config = skopeo::config(&child);
    let env = config["config"]["Env"].to_string();
    assert!(env.contains("GREETING=hej"), "build arg: {env}");
    assert!(!env.contains("STAGE=final"), "--target base stops before the final stage: {env}");
    assert_eq!(config["config"]["Labels"]["team"], "release");
}

#[test]
fn agents_reconnect_on_their_own_when_the_coordinator_comes_back() {
    let mut farm = Farm::start(&[AgentSpec::amd64(), AgentSpec::arm64_standin()]);
    farm.restart_coordinator();
    // Agents back off (at most 2 s in this farm, with jitter) and register again.
    farm.wait_for_agents(&["amd64-1", "arm64-1"]);
    let log = farm.proc("agent amd64-1").wait_for_log("reconnecting in", std::time::Duration::from_secs(5));
    assert_eq!(log.matches(" registered coordinator=").count(), 2, "registered, then registered again: {log}");
    assert!(log.contains("disconnected: closed by the coordinator: coordinator shutting down"), "{log}");
    let ctx = context(PER_ARCH_DOCKERFILE);
    let tag = format!("{}:after-restart", farm.repo("restart"));
    let out = farm.build("linux/amd64,linux/arm64", &[&tag], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(farm.tags("restart"), ["after-restart"]);
}
