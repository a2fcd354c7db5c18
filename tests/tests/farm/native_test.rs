//! `archfarm build --test` and `--test-target`: each platform's image is tested on its own
//! agent, natively, before anything is published. The two platforms are linux/amd64 and
//! linux/386, both native to this amd64 machine, so every test really runs and no emulator is
//! involved.

use archfarm_tests::*;
use std::time::Duration;

const DOCKERFILE: &str = "FROM scratch AS app\nARG TARGETARCH\nCOPY bin/${TARGETARCH}/busybox /bin/busybox\n\
RUN [\"/bin/busybox\", \"sh\", \"-c\", \"if [ \\\"$TARGETARCH\\\" = amd64 ]; then /bin/busybox touch /only-on-amd64; fi; echo ok > /ready\"]\n\
FROM app AS test\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"test -f /ready && echo stage-test-ran\"]\n\
FROM app\n";

fn farm_and_context() -> (Farm, tempfile::TempDir) {
    let i386 = AgentSpec { name: "i386-1", native: Some("linux/386"), capacity: 1 };
    let farm = Farm::start(&[AgentSpec::amd64(), i386]);
    let ctx = context(DOCKERFILE);
    std::fs::create_dir_all(ctx.path().join("bin/386")).unwrap();
    std::fs::copy(fixtures("386"), ctx.path().join("bin/386/busybox")).unwrap();
    std::fs::write(ctx.path().join("nonce"), format!("{:?}", std::time::SystemTime::now())).unwrap();
    (farm, ctx)
}

#[test]
fn every_platform_passes_its_tests_natively_before_the_index_is_published() {
    let (farm, ctx) = farm_and_context();
    let tag = format!("{}:1", farm.repo("tested/app"));
    let meta = farm.dir.path().join("meta.json");
    let test = "/bin/busybox sh -c 'test -f /ready && echo native-test-ok on $(/bin/busybox uname -m)'";
    let out = farm.build(
        "linux/amd64,linux/386",
        &[&tag],
        ctx.path(),
        &["--test", test, "--test-target", "test", "--metadata-file", &meta.to_string_lossy()],
    );
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    for platform in ["linux/amd64", "linux/386"] {
        assert!(log.contains(&format!("[{platform}] native-test-ok")), "{platform} ran the test:\n{log}");
        assert!(log.contains(&format!("test stage test passed on {platform}")), "{log}");
        assert!(log.contains(&format!("passed on {platform}")), "{log}");
    }
    assert!(log.contains("stage-test-ran"), "{log}");
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(meta["archfarm.tests"]["passed"], serde_json::json!(["linux/amd64", "linux/386"]), "{meta}");
    assert_eq!(meta["archfarm.tests"]["commands"][0], "stage test");
    let shown = text(&farm.archfarm(&["builds", "show", &farm.newest_build()]));
    assert!(shown.contains("Tests:") && shown.contains("(passed on every platform)"), "{shown}");
    // The published index has both children, read back with skopeo.
    let index: serde_json::Value = serde_json::from_slice(&skopeo::raw(&tag)).unwrap();
    assert_eq!(runnable(&index).len(), 2, "{index}");
}

#[test]
fn a_test_failing_on_one_platform_publishes_nothing_and_names_it() {
    let (farm, ctx) = farm_and_context();
    let tag = format!("{}:1", farm.repo("tested/failing"));
    let started = std::time::Instant::now();
    let out =
        farm.build("linux/amd64,linux/386", &[&tag], ctx.path(), &["--test", "/bin/busybox test -f /only-on-amd64"]);
    let log = text(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("test `/bin/busybox test -f /only-on-amd64` exited with 1 on linux/386 (agent i386-1)"),
        "{log}"
    );
    assert!(farm.tags("tested/failing").is_empty(), "no tag was published");
    let shown = text(&farm.archfarm(&["builds", "show", &farm.newest_build()]));
    assert!(shown.contains("test failed"), "{shown}");
    // A failing test is final: not retried on another agent.
    assert!(started.elapsed() < Duration::from_secs(120));
    assert!(!log.contains("Retrying") && !log.contains("runs again"), "{log}");
}

#[test]
fn a_test_that_floods_its_output_keeps_the_agents_memory_bounded() {
    let farm = Farm::start(&[AgentSpec::amd64()]);
    let ctx = context("FROM scratch\nCOPY bin/amd64/busybox /bin/busybox\n");
    let agent = farm.procs.iter().find(|p| p.name == "agent amd64-1").expect("the agent").pid();
    let before = rss_kib(agent);
    // Lines of 1 KiB as fast as the engine streams them, until the job's time limit stops it.
    let flood = format!("/bin/busybox yes {}", "x".repeat(1024));
    let tag = format!("{}:1", farm.repo("tested/flood"));
    let started = std::time::Instant::now();
    let out = farm.build("linux/amd64", &[&tag], ctx.path(), &["--test", &flood, "--job-timeout", "20s"]);
    assert!(!out.status.success(), "a test that never ends fails at the time limit: {}", text(&out));
    assert!(text(&out).contains("ran past its limit of 20 s"), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(120));
    let peak = peak_kib(agent);
    assert!(peak - before < 96.0 * 1024.0, "the agent grew from {before} KiB to a peak of {peak} KiB");
}
