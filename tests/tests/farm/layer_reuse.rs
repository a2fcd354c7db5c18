//! A push costs what changed: a rebuild uploads only its new layer, and the same image in
//! another repository of the registry is mounted there, not uploaded. Checked in the registry's
//! own request log. The context costs what changed too: the agent fetches only the chunks of a
//! changed context that no context it holds has.

use archfarm_tests::*;
use std::time::Duration;

const DOCKERFILE: &str = "FROM scratch\nCOPY bin/amd64/busybox /bin/busybox\nCOPY app.txt /app.txt\n";

/// The layer digests of a single-platform image, from its manifest (skopeo).
fn layers(reference: &str) -> Vec<String> {
    let index: serde_json::Value = serde_json::from_slice(&skopeo::raw(reference)).unwrap();
    let child = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let repo = reference.rsplit_once(':').unwrap().0;
    let manifest: serde_json::Value = serde_json::from_slice(&skopeo::raw(&format!("{repo}@{child}"))).unwrap();
    manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_owned()).collect()
}

/// Requests in the registry's log that upload (`PUT …?digest=`) `digest` into `repo`.
fn uploads(log: &str, repo: &str, digest: &str) -> usize {
    let digest = digest.replace(':', "%3A");
    log.lines().filter(|l| l.contains(&format!("\"PUT /v2/{repo}/blobs/uploads/")) && l.contains(&digest)).count()
}

/// The digest of a single-platform image's one child, from its index (skopeo).
fn child(reference: &str) -> String {
    let index: serde_json::Value = serde_json::from_slice(&skopeo::raw(reference)).unwrap();
    index["manifests"][0]["digest"].as_str().unwrap().to_owned()
}

/// Bytes of the last context the agent fetched: its size, those sent, those it held.
fn last_fetch(farm: &mut Farm) -> (u64, u64, u64) {
    let log = farm.proc("agent amd64-1").wait_for_log("fetched build context", Duration::from_secs(10));
    let line = log.lines().rfind(|l| l.contains("fetched build context")).unwrap();
    let field = |name: &str| -> u64 {
        let at = line.find(&format!(" {name}=")).unwrap_or_else(|| panic!("no {name} in {line}")) + name.len() + 2;
        line[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    (field("bytes"), field("sent"), field("held"))
}

/// The last `layers in place` line the agent logged.
fn last_counts(farm: &mut Farm) -> String {
    let log = farm.proc("agent amd64-1").wait_for_log("layers in place", Duration::from_secs(10));
    log.lines().rfind(|l| l.contains("layers in place")).unwrap().to_owned()
}

#[test]
fn a_rebuild_uploads_only_its_new_layer_and_another_repository_mounts_the_rest() {
    let mut farm = Farm::start(&[AgentSpec::amd64()]);
    let ctx = context(DOCKERFILE);
    std::fs::write(ctx.path().join("app.txt"), format!("app 1 {:?}\n", std::time::SystemTime::now())).unwrap();
    // 16 MiB of assets the image does not copy: a context of many chunks.
    let mut assets = vec![0u8; 16 << 20];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut assets);
    std::fs::write(ctx.path().join("assets.bin"), &assets).unwrap();
    let v1 = format!("{}:1", farm.repo("team/a"));
    let out = farm.build("linux/amd64", &[&v1], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let (size, sent, held) = last_fetch(&mut farm);
    assert_eq!((sent, held), (size, 0), "the first context comes whole");

    // Only the application file changes: its layer is the only one uploaded.
    std::fs::write(ctx.path().join("app.txt"), format!("app 2 {:?}\n", std::time::SystemTime::now())).unwrap();
    let v2 = format!("{}:2", farm.repo("team/a"));
    let out = farm.build("linux/amd64", &[&v2], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let counts = last_counts(&mut farm);
    assert!(counts.contains("present=1") && counts.contains("uploaded=1"), "{counts}");
    // The changed context: only the chunks around app.txt travel (a chunk is at most 4 MiB, and
    // a change moves at most two), the rest is copied from the first context on the agent.
    let (size2, sent, held) = last_fetch(&mut farm);
    assert_eq!(sent + held, size2);
    assert!(sent <= 8 << 20 && held >= size2 - (8 << 20), "sent {sent}, held {held} of {size2}");
    let app = skopeo::file_from_image(&format!("{}@{}", farm.repo("team/a"), child(&v2)), "app.txt").unwrap();
    assert!(String::from_utf8_lossy(&app).starts_with("app 2 "), "the image has the new app.txt");
    let (old, new) = (layers(&v1), layers(&v2));
    assert_eq!(old[0], new[0], "the busybox layer is the same blob");
    assert_ne!(old[1], new[1]);
    let log = std::fs::read_to_string(farm.dir.path().join("registry.log")).unwrap();
    assert_eq!(uploads(&log, "team/a", &new[0]), 1, "the unchanged layer was uploaded once, by the first build");
    assert_eq!(uploads(&log, "team/a", &new[1]), 1);

    // An unchanged rebuild: the inputs are those of the last build, so nothing is built,
    // exported, compressed or uploaded.
    let again = format!("{}:3", farm.repo("team/a"));
    let out = farm.build("linux/amd64", &[&again], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    farm.proc("agent amd64-1").wait_for_log("pushed again without a build (unchanged", Duration::from_secs(10));
    let log = std::fs::read_to_string(farm.dir.path().join("registry.log")).unwrap();
    assert_eq!((uploads(&log, "team/a", &new[0]), uploads(&log, "team/a", &new[1])), (1, 1), "no upload");
    assert_eq!(layers(&again), new);

    // A change to a file the image does not copy: a new context, so it is built, but into the
    // same image, which is found by its id and pushed without an export.
    assets[..4096].fill(0);
    std::fs::write(ctx.path().join("assets.bin"), &assets).unwrap();
    let same = format!("{}:4", farm.repo("team/a"));
    let out = farm.build("linux/amd64", &[&same], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    farm.proc("agent amd64-1").wait_for_log("pushed again without an export (unchanged", Duration::from_secs(10));
    assert_eq!(layers(&same), new);

    // The same image in another repository: its layers and config are mounted from team/a,
    // without a build.
    let other = format!("{}:1", farm.repo("team/b"));
    let out = farm.build("linux/amd64", &[&other], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    farm.proc("agent amd64-1").wait_for_log("pushed again without a build (mounted", Duration::from_secs(10));
    let log = std::fs::read_to_string(farm.dir.path().join("registry.log")).unwrap();
    for layer in &new {
        assert_eq!(uploads(&log, "team/b", layer), 0, "{layer} was mounted, not uploaded");
        assert!(mounted(&log, "team/b", layer), "no mount of {layer} from team/a in the registry's log:\n{log}");
    }
    assert_eq!(layers(&other), new, "team/b holds the same layers");

    // A new application layer in a third repository: the unchanged base layer is mounted.
    std::fs::write(ctx.path().join("app.txt"), format!("app 3 {:?}\n", std::time::SystemTime::now())).unwrap();
    let third = format!("{}:1", farm.repo("team/c"));
    let out = farm.build("linux/amd64", &[&third], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let counts = last_counts(&mut farm);
    assert!(counts.contains("mounted=1") && counts.contains("uploaded=1"), "{counts}");
    let log = std::fs::read_to_string(farm.dir.path().join("registry.log")).unwrap();
    assert_eq!(uploads(&log, "team/c", &new[0]), 0);
    assert!(layers(&third)[0] == new[0]);
}

/// A context holding the same file twice: the chunks inside it repeat, and are sent once.
/// Before, the coordinator looked for the repeats among its stored chunks, found none, and
/// refused every upload of such a context.
#[test]
fn a_context_holding_the_same_file_twice_sends_its_chunks_once_and_builds() {
    let farm = Farm::start(&[AgentSpec::amd64()]);
    let ctx = context("FROM scratch\nCOPY bin/amd64/busybox /bin/busybox\nCOPY a.bin b.bin /\n");
    // Seeded: where the chunks of the second copy fall in line with the first's depends on the
    // bytes, and this test is about repeats, not about chunk boundaries.
    let mut file = vec![0u8; 12 << 20];
    rand::RngCore::fill_bytes(&mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(12), &mut file);
    std::fs::write(ctx.path().join("a.bin"), &file).unwrap();
    std::fs::write(ctx.path().join("b.bin"), &file).unwrap();
    let image = format!("{}:twice", farm.repo("team/twice"));
    let out = farm.build("linux/amd64", &[&image], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    // The client's account: "N of SIZE bytes sent": the second copy's inner chunks stayed home.
    let said = text(&out);
    let line = said.lines().find(|l| l.contains(" bytes sent (")).unwrap_or_else(|| panic!("{said}"));
    let numbers: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let (sent, size) = (numbers[0], numbers[1]);
    assert!(sent + (8 << 20) <= size, "sent {sent} of {size}: {line}");
    let child = child(&image);
    let repo = farm.repo("team/twice");
    for name in ["a.bin", "b.bin"] {
        let got = skopeo::file_from_image(&format!("{repo}@{child}"), name).unwrap();
        assert!(got == file, "{name} in the image is not the file");
    }
}

/// Whether the registry's log holds a successful mount of `digest` into `repo` from another.
fn mounted(log: &str, repo: &str, digest: &str) -> bool {
    mounted_from(log, repo, digest, "team%2F")
}

/// Whether the registry's log holds a successful mount of `digest` into `repo` from a
/// repository whose escaped name starts with `from`.
fn mounted_from(log: &str, repo: &str, digest: &str, from: &str) -> bool {
    log.lines().any(|l| {
        l.contains(&format!("\"POST /v2/{repo}/blobs/uploads/?"))
            && l.contains(&digest.replace(':', "%3A"))
            && l.contains(&format!("from={from}"))
            && l.contains("\" 201 ")
    })
}

fn docker(args: &[&str]) {
    run_ok(std::process::Command::new("docker").env("DOCKER_BUILDKIT", "0").args(args));
}

#[test]
fn a_base_image_pushed_by_docker_is_mounted_from_its_repository_not_uploaded_again() {
    let farm = Farm::start(&[AgentSpec::amd64()]);
    // The base: built and pushed by docker, so the agent has never pushed its layer.
    let base_ctx = context("FROM scratch\nCOPY bin/amd64/busybox /bin/busybox\nCOPY base.txt /base.txt\n");
    std::fs::write(base_ctx.path().join("base.txt"), format!("base {:?}\n", std::time::SystemTime::now())).unwrap();
    let base = format!("{}:1", farm.repo("base/img"));
    docker(&["build", "-q", "-t", &base, &base_ctx.path().to_string_lossy()]);
    docker(&["push", "-q", &base]);
    let manifest: serde_json::Value = serde_json::from_slice(&skopeo::raw(&base)).unwrap();
    let base_layers: Vec<String> =
        manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_owned()).collect();
    docker(&["rmi", "-f", &base]);

    let ctx = context(&format!("FROM {base}\nCOPY app.txt /app.txt\n"));
    std::fs::write(ctx.path().join("app.txt"), "app\n").unwrap();
    let target = format!("{}:1", farm.repo("team/app"));
    let out = farm.build("linux/amd64", &[&target], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let built = layers(&target);
    assert_eq!(built[..base_layers.len()], base_layers[..], "the base layers are docker's blobs, not recompressed");
    let log = std::fs::read_to_string(farm.dir.path().join("registry.log")).unwrap();
    for layer in &base_layers {
        assert_eq!(uploads(&log, "team/app", layer), 0, "{layer} was uploaded again:\n{log}");
        assert!(mounted_from(&log, "team/app", layer, "base%2Fimg"), "no mount of {layer} from base/img:\n{log}");
    }
    assert_eq!(uploads(&log, "team/app", &built[built.len() - 1]), 1, "the new layer is uploaded");
}

#[test]
fn a_jobs_base_manifest_is_fetched_once_for_its_provenance_and_its_layers_alike() {
    let mut farm = Farm::start(&[AgentSpec::amd64()]);
    let base_ctx = context("FROM scratch\nCOPY bin/amd64/busybox /bin/busybox\nCOPY base.txt /base.txt\n");
    std::fs::write(base_ctx.path().join("base.txt"), format!("base {:?}\n", std::time::SystemTime::now())).unwrap();
    let base = format!("{}:1", farm.repo("base/once"));
    docker(&["build", "-q", "-t", &base, &base_ctx.path().to_string_lossy()]);
    docker(&["push", "-q", &base]);
    docker(&["rmi", "-f", &base]);

    let ctx = context(&format!("FROM {base}\nCOPY app.txt /app.txt\n"));
    std::fs::write(ctx.path().join("app.txt"), "app\n").unwrap();
    let out = farm.build("linux/amd64", &[&format!("{}:1", farm.repo("team/once"))], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let agent = farm.proc("agent amd64-1").wait_for_log("learned the layers of a base image", Duration::from_secs(10));
    assert!(agent.contains("base/once"), "{agent}");
    // The agent's own requests (BuildKit's pulls are the engine's): one manifest fetch for the
    // provenance's digest and the layer cache's seeding together.
    let log = std::fs::read_to_string(farm.dir.path().join("registry.log")).unwrap();
    let fetches =
        log.lines().filter(|l| l.contains("GET /v2/base/once/manifests/1 ") && l.contains("archfarm/")).count();
    assert_eq!(fetches, 1, "{log}");
}
