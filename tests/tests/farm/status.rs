//! The coordinator's HTTP listener: Prometheus metrics scraped by a real Prometheus server
//! during a build and checked with promtool, the status page loaded in headless Chromium (a
//! screenshot kept under target/test-artifacts/), and a token required off loopback.

use archfarm_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A farm with `agents` and the status listener on a loopback port; its base URL.
fn farm_with_status(agents: &[AgentSpec]) -> (Farm, String) {
    let port = free_tcp_port();
    let farm =
        Farm::builder().coordinator_toml(&format!("metrics_listen = \"127.0.0.1:{port}\"\n")).agents(agents).start();
    (farm, format!("http://127.0.0.1:{port}"))
}

fn get(url: &str) -> (u16, String) {
    try_get(url).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// Status and body; an error when nothing answers.
fn try_get(url: &str) -> Result<(u16, String), String> {
    match ureq::get(url).timeout(Duration::from_secs(10)).call() {
        Ok(r) => Ok((r.status(), r.into_string().unwrap_or_default())),
        Err(ureq::Error::Status(code, r)) => Ok((code, r.into_string().unwrap_or_default())),
        Err(e) => Err(e.to_string()),
    }
}

/// A Prometheus server of the test's own, scraping `target` every second.
fn prometheus(dir: &Path, target: &str) -> (Proc, String) {
    let port = free_tcp_port();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\nscrape_configs:\n  - job_name: archfarm\n    \
             static_configs: [{{targets: ['{target}']}}]\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("prometheus-data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    let proc = Proc::start("prometheus", cmd, dir.join("prometheus.log"));
    let url = format!("http://127.0.0.1:{port}");
    wait_until(Duration::from_secs(30), "prometheus to be ready", || {
        (try_get(&format!("{url}/-/ready")).ok()?.0 == 200).then_some(())
    });
    (proc, url)
}

/// The value of a PromQL query with one result, once it has one.
fn query(prometheus: &str, promql: &str) -> Option<f64> {
    let url = format!("{prometheus}/api/v1/query?query={}", urlencode(promql));
    let (status, body) = get(&url);
    let v: serde_json::Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn a_real_prometheus_scrapes_the_farm_during_a_build_and_promtool_accepts_the_metrics() {
    let (farm, base) = farm_with_status(&[AgentSpec::amd64()]);
    let (_prometheus, prom) = prometheus(farm.dir.path(), base.trim_start_matches("http://"));
    let slow = slow_context(6);
    let client = farm.spawn_build("linux/amd64", &[&format!("{}:1", farm.repo("metrics/app"))], slow.path());
    // Scraped while the job runs: the agent's running job and the build in state running.
    wait_until(Duration::from_secs(30), "prometheus to see the running job", || {
        (query(&prom, "archfarm_agent_running_jobs{agent=\"amd64-1\"}")? >= 1.0).then_some(())
    });
    assert_eq!(query(&prom, "archfarm_builds{state=\"running\"}"), Some(1.0));
    assert!(wait_output(client, Duration::from_secs(120)).status.success());
    wait_until(Duration::from_secs(30), "prometheus to see the published build", || {
        (query(&prom, "archfarm_builds_finished_total{state=\"published\"}")? >= 1.0).then_some(())
    });
    assert_eq!(query(&prom, "up{job=\"archfarm\"}"), Some(1.0));
    let pushed = "archfarm_attempt_duration_seconds_count{platform=\"linux/amd64\",outcome=\"pushed\"}";
    wait_until(Duration::from_secs(10), "the attempt's duration", || (query(&prom, pushed)? >= 1.0).then_some(()));
    let slow_enough = "archfarm_attempt_duration_seconds_bucket{platform=\"linux/amd64\",outcome=\"pushed\",le=\"5\"}";
    assert_eq!(query(&prom, slow_enough), Some(0.0), "the 6 s attempt is not under 5 s");

    // The text itself, through promtool.
    let (status, text) = get(&format!("{base}/metrics"));
    assert_eq!(status, 200);
    for needle in [
        "archfarm_queue_depth",
        "archfarm_queue_wait_seconds_count{platform=\"linux/amd64\"} 1",
        "archfarm_agents{state=\"ready\"} 1",
        "archfarm_registry_request_duration_seconds_count{operation=\"verify\"} 1",
        "archfarm_context_upload_bytes_total",
        "archfarm_quarantines_total 0",
        "archfarm_agent_engine_info{agent=\"amd64-1\",engine_version=\"20.10.",
        "api_version=\"1.41\",image_store=\"overlay2\",buildkit_version=\"\"} 1",
    ] {
        assert!(text.contains(needle), "{needle} in\n{text}");
    }
    // The one agent held nothing before: it was sent the whole context the client uploaded.
    let value = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}"));
        line[name.len() + 1..].parse().unwrap()
    };
    let uploaded = value("archfarm_context_upload_bytes_total");
    assert!(uploaded > 0.0);
    assert_eq!(value("archfarm_context_fetch_sent_bytes_total"), uploaded);
    assert_eq!(value("archfarm_context_fetch_held_bytes_total"), 0.0);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let checked = wait_output(promtool, Duration::from_secs(30));
    assert!(checked.status.success(), "promtool check metrics: {}", text_of(&checked));
}

fn text_of(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Headless Chromium with the flags this closed network needs, and a fresh profile.
fn chromium(args: &[&str], url: &str) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    wait_output(cmd.spawn().expect("chromium (scripts/setup.sh installs it)"), Duration::from_secs(90))
}

fn dom(url: &str) -> String {
    let out = chromium(&["--virtual-time-budget=3000", "--dump-dom"], url);
    assert!(out.status.success(), "chromium --dump-dom: {}", text_of(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Takes a screenshot of `url` at `size` into target/test-artifacts/`name`; returns its path.
fn screenshot(url: &str, size: &str, name: &str) -> PathBuf {
    let dir = workspace().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let out = chromium(&[&format!("--screenshot={}", path.display()), &format!("--window-size={size}")], url);
    assert!(out.status.success(), "chromium --screenshot: {}", text_of(&out));
    let png = std::fs::read(&path).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "{} bytes", png.len());
    path
}

#[test]
fn the_status_page_in_headless_chromium_shows_agents_queue_and_builds_and_refreshes_itself() {
    let (farm, base) = farm_with_status(&[AgentSpec::amd64(), AgentSpec::arm64_standin()]);
    // A published two-platform build and a failed one first, so the page has digests and a
    // failure reason to show.
    let ctx = context(PER_ARCH_DOCKERFILE);
    let out = farm.build("linux/amd64,linux/arm64", &[&format!("{}:1.0", farm.repo("team/web"))], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let failing = context("FROM scratch\nCOPY bin/amd64/busybox /bin/busybox\nRUN [\"/bin/busybox\", \"false\"]\n");
    let out = farm.build("linux/amd64", &[&format!("{}:bad", farm.repo("status/app"))], failing.path(), &[]);
    assert!(!out.status.success());
    let failed = farm.newest_build();

    let slow = slow_context(8);
    let client = farm.spawn_build("linux/amd64,linux/arm64", &[&format!("{}:1", farm.repo("status/app"))], slow.path());
    let running = wait_until(Duration::from_secs(30), "the slow build to be recorded", || {
        Some(farm.newest_build()).filter(|id| *id != failed)
    });
    wait_until(Duration::from_secs(60), "the build to run", || farm.last_attempt(&running).map(drop));

    let page = dom(&format!("{base}/"));
    assert!(page.contains("<meta http-equiv=\"refresh\" content=\"5\">"), "{page}");
    assert!(page.contains("name=\"viewport\""), "{page}");
    assert!(!page.contains("<script"), "no script: {page}");
    for needle in
        ["amd64-1", "arm64-1", "linux/arm64", "1/2", "expires in 89 days", &running, &failed, "running", "failed"]
    {
        assert!(page.contains(needle), "{needle} on the page:\n{page}");
    }
    assert!(
        page.contains("exit code: 1") || page.contains("did not complete successfully"),
        "the failure reason:\n{page}"
    );
    screenshot(&format!("{base}/"), "1280,900", "status-page.png");
    screenshot(&format!("{base}/"), "390,844", "status-page-phone.png");

    assert!(wait_output(client, Duration::from_secs(120)).status.success());
    let page = dom(&format!("{base}/"));
    let record = farm.build_record(&running);
    let digest = record["jobs"][0]["digest"].as_str().unwrap();
    assert!(page.contains(&digest[..19]), "the digest {digest} on the page:\n{page}");
    assert!(page.contains("published"), "{page}");

    // Read only.
    let post = ureq::post(&format!("{base}/")).timeout(Duration::from_secs(10)).call();
    assert!(matches!(post, Err(ureq::Error::Status(405, _))), "{post:?}");
}

#[test]
fn off_loopback_every_request_needs_a_viewer_token_and_no_token_that_can_build_is_taken() {
    let port = free_tcp_port();
    let farm = Farm::builder()
        .on_hosts()
        .coordinator_toml(&format!("metrics_listen = \"0.0.0.0:{port}\"\n"))
        .agents(&[AgentSpec::amd64()])
        .start();
    let host = farm.coordinator.rsplit_once(':').unwrap().0.to_owned();
    let base = format!("http://{host}:{port}");
    let ctx = context(PER_ARCH_DOCKERFILE);
    let out = farm.build("linux/amd64", &[&format!("{}:1", farm.repo("private/app"))], ctx.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let admins = farm.newest_build();
    let token = |role: &str| {
        let out = farm.archfarm(&["tokens", "create", role, "--role", role]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let (viewer, builder) = (token("viewer"), token("build"));
    // Status and body of a GET with a bearer token.
    let with = |path: &str, token: &str| -> (u16, String) {
        match ureq::get(&format!("{base}{path}"))
            .set("Authorization", &format!("Bearer {token}"))
            .timeout(Duration::from_secs(10))
            .call()
        {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(e) => panic!("GET {path}: {e}"),
        }
    };

    let (status, body) = get(&format!("{base}/metrics"));
    assert_eq!(status, 401, "{body}");
    assert_eq!(with("/", "00ff").0, 401);
    // Tokens that can build or administer are refused: plain HTTP would carry them in clear.
    for strong in [&farm.token, &builder] {
        let (status, body) = with("/metrics", strong);
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("takes viewer tokens only"), "{body}");
    }
    let (status, metrics) = with("/metrics", &viewer);
    assert_eq!(status, 200, "{metrics}");
    assert!(metrics.contains("archfarm_builds_finished_total{state=\"published\"} 1"), "{metrics}");
    // A browser sends the token as the basic-authentication password; a viewer sees every build.
    let page = dom(&format!("http://anyone:{viewer}@{host}:{port}/"));
    assert!(page.contains("amd64-1") && page.contains(&admins), "{page}");
    // A viewer reads only: it starts no build.
    let mut cmd = farm.command(&[
        "build",
        "--platform",
        "linux/amd64",
        "--push",
        "-t",
        &format!("{}:2", farm.repo("private/app")),
    ]);
    cmd.arg(ctx.path()).env("ARCHFARM_TOKEN", &viewer);
    let out = run_bounded(cmd, Duration::from_secs(60));
    assert!(!out.status.success());
    assert!(text(&out).contains("is a viewer: it reads only"), "{}", text(&out));
}
