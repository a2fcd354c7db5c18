//! `--output` and `--load`, as in buildx, checked with skopeo (OCI archives), `docker load`,
//! `docker image inspect` and `docker run` (loaded images), and the registry's HTTP API (no tag
//! written without `--push`).

use archfarm_tests::*;
use std::path::Path;
use std::process::Command;

/// `archfarm build --progress plain` without `--push`: `args` hold the outputs.
fn build(farm: &Farm, platforms: &str, tag: &str, ctx: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["build", "--platform", platforms, "--progress", "plain", "-t", tag];
    all.extend_from_slice(args);
    all.push(ctx.to_str().unwrap());
    farm.archfarm(&all)
}

fn skopeo(args: &[&str]) -> Vec<u8> {
    run_ok(Command::new("skopeo").args(args)).stdout
}

fn docker(args: &[&str]) -> std::process::Output {
    run_ok(Command::new("docker").args(args))
}

#[test]
fn an_oci_archive_and_local_trees_hold_every_platform_natively_built() {
    let farm = Farm::start(&[AgentSpec::amd64(), AgentSpec::arm64_standin()]);
    let ctx = context(PER_ARCH_DOCKERFILE);
    let out_dir = tempfile::tempdir().unwrap();
    let (archive, tree) = (out_dir.path().join("app.tar"), out_dir.path().join("fs"));
    let tag = format!("{}:1", farm.repo("out/app"));
    let oci = format!("type=oci,dest={}", archive.display());
    let local = format!("type=local,dest={}", tree.display());
    let out = build(&farm, "linux/amd64,linux/arm64", &tag, ctx.path(), &["--push", "-o", &oci, "-o", &local]);
    assert!(out.status.success(), "{}", text(&out));

    // The archive holds the index the push published, byte for byte.
    let (status, published, _) = farm.registry_get("/v2/out/app/manifests/1", archfarm_shared::oci::OCI_INDEX);
    assert_eq!(status, 200);
    let archive_ref = format!("oci-archive:{}", archive.display());
    let index = skopeo(&["inspect", "--raw", &archive_ref]);
    assert_eq!(Some(sha256(&index)), published, "the archive's index is the published one");
    for (arch, machine) in [("amd64", 62), ("arm64", 183)] {
        let config: serde_json::Value =
            serde_json::from_slice(&skopeo(&["inspect", "--config", "--raw", "--override-arch", arch, &archive_ref]))
                .unwrap();
        assert_eq!(config["architecture"], arch, "{config}");
        // Each platform's filesystem, split as buildx splits it.
        let busybox = std::fs::read(tree.join(format!("linux_{arch}/bin/busybox"))).unwrap();
        assert_eq!(elf_machine(&busybox), Some(machine), "linux_{arch}/bin/busybox");
    }

    // dest=- writes the archive to standard output.
    let out = build(&farm, "linux/amd64,linux/arm64", &tag, ctx.path(), &["-o", "type=oci,dest=-"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let piped = out_dir.path().join("piped.tar");
    std::fs::write(&piped, &out.stdout).unwrap();
    let again = skopeo(&["inspect", "--raw", &format!("oci-archive:{}", piped.display())]);
    // The same images (their provenance names another build, so its attestations differ).
    let children = |bytes: &[u8]| -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        serde_json::Value::Array(v["manifests"].as_array().unwrap()[..2].to_vec())
    };
    assert_eq!(children(&again), children(&index), "the same images give the same children");
}

#[test]
fn load_puts_the_native_platform_in_the_local_engine_and_a_docker_archive_loads_too() {
    let farm = Farm::start(&[AgentSpec::amd64(), AgentSpec::arm64_standin()]);
    // Each step builds an image of its own (a new nonce): removing one image must not take away
    // what the engine's BuildKit still refers to for the next build of identical content.
    let ctx = context(&format!("{PER_ARCH_DOCKERFILE}COPY nonce /nonce\n"));
    let fresh = |ctx: &tempfile::TempDir| {
        std::fs::write(ctx.path().join("nonce"), format!("{:?} {}", std::time::SystemTime::now(), std::process::id()))
            .unwrap()
    };
    fresh(&ctx);
    let out_dir = tempfile::tempdir().unwrap();
    let tag = format!("{}:2", farm.repo("out/loaded"));
    let archive = out_dir.path().join("one.tar");
    let to_file = format!("type=docker,dest={}", archive.display());

    // No --push: the image is loaded and written, and no tag appears in the registry.
    let out = build(&farm, "linux/amd64", &tag, ctx.path(), &["--load", "-o", &to_file]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(farm.tags("out/loaded").is_empty(), "nothing is tagged without --push");
    let inspect = docker(&["image", "inspect", "--format", "{{.Architecture}} {{.Os}}", &tag]);
    assert_eq!(String::from_utf8_lossy(&inspect.stdout).trim(), "amd64 linux");
    let ran = docker(&["run", "--rm", &tag]);
    assert_eq!(String::from_utf8_lossy(&ran.stdout).trim(), "built for linux/amd64");
    docker(&["rmi", "-f", &tag]);
    let loaded = docker(&["load", "-i", &archive.to_string_lossy()]);
    assert!(String::from_utf8_lossy(&loaded.stdout).contains(&tag), "{}", text(&loaded));
    let ran = docker(&["run", "--rm", &tag]);
    assert_eq!(String::from_utf8_lossy(&ran.stdout).trim(), "built for linux/amd64");
    docker(&["rmi", "-f", &tag]);

    // Two platforms: the engine's own is loaded, and the client says which.
    fresh(&ctx);
    let out = build(&farm, "linux/amd64,linux/arm64", &tag, ctx.path(), &["--load"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("loaded linux/amd64 into the local engine"), "{}", text(&out));
    assert!(text(&out).contains("also made linux/arm64"), "{}", text(&out));
    let inspect = docker(&["image", "inspect", "--format", "{{.Architecture}}", &tag]);
    assert_eq!(String::from_utf8_lossy(&inspect.stdout).trim(), "amd64");
    docker(&["rmi", "-f", &tag]);

    // Without --push a name needs no registry behind it, as with buildx --load.
    let local = format!("archfarm-test-local/app:{}", std::process::id());
    fresh(&ctx);
    let out = build(&farm, "linux/amd64", &local, ctx.path(), &["--load"]);
    assert!(out.status.success(), "{}", text(&out));
    let ran = docker(&["run", "--rm", &local]);
    assert_eq!(String::from_utf8_lossy(&ran.stdout).trim(), "built for linux/amd64");
    docker(&["rmi", "-f", &local]);

    // None native: refused before anything is built, naming both sides.
    let out = build(&farm, "linux/arm64", &tag, ctx.path(), &["--load"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("the local engine is linux/amd64, and the build asks for linux/arm64"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("accepted"), "no build was started:\n{}", text(&out));
    // A docker archive holds one platform.
    let out = build(&farm, "linux/amd64,linux/arm64", &tag, ctx.path(), &["-o", &to_file]);
    assert!(!out.status.success());
    assert!(text(&out).contains("holds one platform"), "{}", text(&out));
}

#[test]
fn with_no_registry_the_images_come_from_the_agents_through_the_coordinator() {
    let farm = Farm::start(&[AgentSpec::amd64(), AgentSpec::arm64_standin()]);
    // An image of its own (the nonce), so no other test loads or removes the same one.
    let ctx = context(&format!("{PER_ARCH_DOCKERFILE}COPY nonce /nonce\n"));
    std::fs::write(ctx.path().join("nonce"), format!("{:?}", std::time::SystemTime::now())).unwrap();
    let (_, _, before) = farm.registry_get("/v2/_catalog", "application/json");
    let out_dir = tempfile::tempdir().unwrap();
    let (archive, tree) = (out_dir.path().join("app.tar"), out_dir.path().join("fs"));
    let oci = format!("type=oci,dest={}", archive.display());
    let local = format!("type=local,dest={}", tree.display());
    let ctx_path = ctx.path().to_str().unwrap();
    let out = farm.archfarm(&[
        "build",
        "--platform",
        "linux/amd64,linux/arm64",
        "--progress",
        "plain",
        "-o",
        &oci,
        "-o",
        &local,
        "--load",
        ctx_path,
    ]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    // Nothing went through the registry.
    let (_, _, after) = farm.registry_get("/v2/_catalog", "application/json");
    assert_eq!(after, before, "the registry was not used");
    // The archive holds both platforms, natively built (skopeo; the ELF machine of each busybox).
    let archive_ref = format!("oci-archive:{}", archive.display());
    for (arch, machine) in [("amd64", 62), ("arm64", 183)] {
        let config: serde_json::Value =
            serde_json::from_slice(&skopeo(&["inspect", "--config", "--raw", "--override-arch", arch, &archive_ref]))
                .unwrap();
        assert_eq!(config["architecture"], arch);
        let busybox = std::fs::read(tree.join(format!("linux_{arch}/bin/busybox"))).unwrap();
        assert_eq!(elf_machine(&busybox), Some(machine));
    }
    // --load put the engine's own platform there, untagged: run it by its id.
    let line = log
        .lines()
        .find(|l| l.starts_with("loaded linux/amd64 into the local engine as image "))
        .unwrap_or_else(|| panic!("{log}"));
    let id = line.split_whitespace().nth(8).unwrap();
    let ran = docker(&["run", "--rm", id]);
    assert_eq!(String::from_utf8_lossy(&ran.stdout).trim(), "built for linux/amd64");
    docker(&["rmi", "-f", id]);
}
