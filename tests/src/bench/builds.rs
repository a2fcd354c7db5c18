//! Figures taken from whole builds on one real farm: P1 (a farm build against a direct build
//! through the Docker API), P2 (two platforms fanned out to two agents against the slower
//! single-platform build), P3 (QEMU emulation of arm64 against a native agent) and P6 (the
//! last verified digest to a readable index).
//!
//! The CPU-bound step is a busybox shell loop, single-threaded. Its build arguments carry a
//! fresh nonce each run, so BuildKit never answers it from cache, while the context stays the
//! same (uploaded once, cached by the agent: the "warm context cache" of P1).
//!
//! No arm64 hardware exists here. The second native platform of P2 is linux/386, which an amd64
//! CPU runs natively. P3's native side is the amd64 agent running the same step: it stands in
//! for an arm64 agent on arm64 hardware of the same speed.

use super::binfmt::Emulation;
use super::report::{at_least, at_most, Figure, Series, Verdict};
use super::Options;
use crate::{fixtures, AgentSpec, Farm};
use archfarm_agent::engine::docker::DockerEngine;
use archfarm_agent::engine::{BuildSpec, Engine as _};
use archfarm_client::{context, upload::upload, Connection, Remote};
use archfarm_shared::protocol::{BuildEvent, BuildRequest, ClientRequest, ClientResponse};
use archfarm_shared::Platform;
use std::time::{Duration, Instant};

const DOCKERFILE: &str =
    "FROM scratch\nARG TARGETARCH\nCOPY bin/${TARGETARCH}/busybox /bin/busybox\nARG ITER=1000\nARG NONCE=none\n\
RUN [\"/bin/busybox\", \"sh\", \"-c\", \"i=0; while [ $i -lt $ITER ]; do i=$((i+1)); done; echo $NONCE > /nonce\"]\n";

/// A context with the CPU-bound Dockerfile and a static busybox per architecture.
fn cpu_context() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for arch in ["amd64", "arm64", "386"] {
        let bin = dir.path().join("bin").join(arch);
        std::fs::create_dir_all(&bin)?;
        std::fs::copy(fixtures(arch), bin.join("busybox"))?;
    }
    std::fs::write(dir.path().join("Dockerfile"), DOCKERFILE)?;
    Ok(dir)
}

/// Loop iterations that take about `seconds` on this CPU, measured with the host's busybox: the
/// fastest of three probes, so a moment of contention does not shrink the step.
fn calibrate(seconds: f64) -> anyhow::Result<u64> {
    let probe = 300_000u64;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let started = Instant::now();
        let status = std::process::Command::new(fixtures("amd64"))
            .args(["sh", "-c", &format!("i=0; while [ $i -lt {probe} ]; do i=$((i+1)); done")])
            .status()?;
        anyhow::ensure!(status.success(), "the calibration loop failed");
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok(((probe as f64 / best * seconds) as u64).max(1000))
}

fn nonce(what: &str) -> String {
    format!("{what}-{:016x}", rand::random::<u64>())
}

fn args(iter: u64, nonce: &str) -> Vec<(String, String)> {
    vec![("ITER".into(), iter.to_string()), ("NONCE".into(), nonce.to_owned())]
}

/// Everything a build figure needs.
struct Bench<'a> {
    farm: &'a Farm,
    engine: DockerEngine,
    rt: &'a tokio::runtime::Runtime,
    ctx: tempfile::TempDir,
}

impl Bench<'_> {
    /// `archfarm build --push` of the CPU-bound context, timed as a user sees it: the whole command.
    fn farm_build(&self, platforms: &str, iter: u64, tag: &str) -> anyhow::Result<f64> {
        let reference = format!("{}/bench/cpu:{tag}", self.farm.registry);
        let (i, n) = (format!("ITER={iter}"), format!("NONCE={}", nonce("farm")));
        let started = Instant::now();
        let out = self.farm.build(platforms, &[&reference], self.ctx.path(), &["--build-arg", &i, "--build-arg", &n]);
        let secs = started.elapsed().as_secs_f64();
        anyhow::ensure!(out.status.success(), "farm build of {platforms} failed:\n{}", crate::text(&out));
        Ok(secs)
    }

    /// The same context built straight through the Docker API on the same engine: pack, build,
    /// nothing else (no push: a local build keeps its image in the engine).
    fn direct_build(&self, platform: &str, iter: u64) -> anyhow::Result<f64> {
        let platform: Platform = platform.parse()?;
        let started = Instant::now();
        let packed = context::pack(self.ctx.path(), None, 8 << 30).map_err(anyhow::Error::msg)?;
        let tag = format!("archfarm-bench/direct:{}", nonce("t"));
        let build_args = args(iter, &nonce("direct"));
        let plain = BuildSpec::plain(packed.file.path(), &packed.dockerfile, &platform, &tag, nonce("archfarm-bench"));
        let spec = BuildSpec { build_args: &build_args, ..plain };
        let result = self.rt.block_on(self.engine.build(spec, &mut |_| {}));
        let secs = started.elapsed().as_secs_f64();
        self.rt.block_on(self.engine.untag(&tag));
        result.map_err(|e| anyhow::anyhow!("direct build for {platform}: {}\n{}", e.message, e.tail.join("\n")))?;
        Ok(secs)
    }
}

/// Runs the selected build figures on one farm.
pub fn run(o: &Options) -> anyhow::Result<Vec<Figure>> {
    let i386 = AgentSpec { name: "i386-1", native: Some("linux/386"), capacity: 1 };
    let amd64 = AgentSpec { capacity: 1, ..AgentSpec::amd64() };
    let arm64 = AgentSpec { capacity: 1, ..AgentSpec::arm64_standin() };
    eprintln!("bench: starting a farm (registry, coordinator, agents amd64-1, i386-1, arm64-1)");
    let farm = Farm::builder().agents(&[amd64, i386, arm64]).patient().start();
    let rt = tokio::runtime::Runtime::new()?;
    archfarm_shared::tls::install_crypto_provider();
    let engine = rt.block_on(DockerEngine::connect(None)).map_err(anyhow::Error::msg)?;
    let bench = Bench { farm: &farm, engine, rt: &rt, ctx: cpu_context()? };
    let step = o.size(20.0, 0.3);
    let iter = calibrate(step)?;
    eprintln!("bench: the CPU-bound step is {iter} loop iterations (about {step} s here)");
    // Warm-up: uploads the context, fills the agents' caches and BuildKit's cache of the COPY.
    bench.farm_build("linux/amd64,linux/386", 1000, "warm-up")?;
    for p in ["linux/amd64", "linux/386"] {
        bench.direct_build(p, 1000)?;
    }
    let mut figures = Vec::new();
    if o.wants("P1") {
        figures.push(p1(o, &bench, iter)?);
    }
    if o.wants("P2") {
        figures.push(p2(o, &bench, iter)?);
    }
    if o.wants("P3") {
        figures.push(p3(o, &bench)?);
    }
    if o.wants("P6") {
        figures.push(p6(o, &farm, &rt)?);
    }
    Ok(figures)
}

fn p1(o: &Options, b: &Bench, iter: u64) -> anyhow::Result<Figure> {
    // The ratio: the farm build and the direct build run at the same time, each on one of the
    // two cores, so both see the same machine. Run after run, this machine's speed drifts by a
    // third; taken apart, the two sides would measure the drift.
    let (mut farm, mut direct) = (Vec::new(), Vec::new());
    for run in 0..o.runs {
        let (f, d) = std::thread::scope(|scope| {
            let farm_side = scope.spawn(|| b.farm_build("linux/amd64", iter, &format!("p1-{run}")));
            let d = b.direct_build("linux/amd64", iter);
            (farm_side.join().map_err(|_| anyhow::anyhow!("the farm build thread panicked")), d)
        });
        farm.push(f??);
        direct.push(d?);
        eprintln!("bench: P1 run {run}: farm {:.2} s, direct {:.2} s (side by side)", farm[run], direct[run]);
    }
    // The time added: the same Dockerfile with an almost empty step, one after the other, so
    // the difference is the farm's own work and not the step's drift.
    let (mut farm_empty, mut direct_empty) = (Vec::new(), Vec::new());
    for run in 0..o.size(7, 1) {
        if run % 2 == 0 {
            farm_empty.push(b.farm_build("linux/amd64", 1000, &format!("p1-empty-{run}"))?);
            direct_empty.push(b.direct_build("linux/amd64", 1000)?);
        } else {
            direct_empty.push(b.direct_build("linux/amd64", 1000)?);
            farm_empty.push(b.farm_build("linux/amd64", 1000, &format!("p1-empty-{run}"))?);
        }
    }
    let ratio: Vec<f64> = farm.iter().zip(&direct).map(|(f, d)| f / d).collect();
    let added: Vec<f64> = farm_empty.iter().zip(&direct_empty).map(|(f, d)| (f - d) * 1000.0).collect();
    let headline = Series::new("farm build ÷ direct build, side by side", "×", ratio);
    let added = Series::new("time the farm adds (almost empty step)", "ms", added);
    Ok(Figure {
        id: "P1",
        measure: "one-platform farm build ÷ direct build through the Docker API".into(),
        target: "≤ 1.03".into(),
        verdict: at_most(headline.median(), 1.03),
        also: vec![(added.clone(), "≤ 300 ms".into(), at_most(added.median(), 300.0))],
        headline,
        details: vec![
            Series::new("farm build (the whole `archfarm build --push`)", "s", farm),
            Series::new("direct build", "s", direct),
            Series::new("farm build, almost empty step", "s", farm_empty),
            Series::new("direct build, almost empty step", "s", direct_empty),
        ],
        notes: vec![format!(
            "linux/amd64, a single-threaded CPU-bound `RUN` of {iter} busybox shell-loop iterations. The farm side is \
             the whole `archfarm build --push` command: packing, QUIC and TLS, scheduling, the agent's BuildKit build, \
             export, push by digest, verification and the index. The direct side packs the same context and builds it \
             through the same engine's API, and pushes nothing. The ratio's two builds run at the same time, one per \
             core (this machine's speed drifts by a third from minute to minute); the farm's own processes share those \
             cores, which counts against the farm. The time added is measured on the same Dockerfile with a 1,000- \
             iteration step, farm and direct alternating."
        )],
    })
}

fn p2(o: &Options, b: &Bench, iter: u64) -> anyhow::Result<Figure> {
    let (mut farm, mut amd64, mut i386) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..o.runs {
        amd64.push(b.direct_build("linux/amd64", iter)?);
        farm.push(b.farm_build("linux/amd64,linux/386", iter, &format!("p2-{run}"))?);
        i386.push(b.direct_build("linux/386", iter)?);
        eprintln!(
            "bench: P2 run {run}: farm {:.2} s, direct amd64 {:.2} s, 386 {:.2} s",
            farm[run], amd64[run], i386[run]
        );
    }
    let ratio = farm.iter().zip(amd64.iter().zip(&i386)).map(|(f, (a, i))| f / a.max(*i)).collect();
    let headline = Series::new("two-platform farm build ÷ slower single-platform build", "×", ratio);
    Ok(Figure {
        id: "P2",
        measure: "two-platform farm build on two agents ÷ the slower single-platform build".into(),
        target: "≤ 1.10".into(),
        verdict: at_most(headline.median(), 1.10),
        also: vec![],
        headline,
        details: vec![
            Series::new("farm build, linux/amd64 + linux/386 on agents amd64-1 and i386-1", "s", farm),
            Series::new("direct build, linux/amd64", "s", amd64),
            Series::new("direct build, linux/386", "s", i386),
        ],
        notes: vec![
            "The two platforms are linux/amd64 and linux/386: an amd64 CPU runs both natively, so both builds are \
             real native builds (there is no arm64 hardware here). Each agent builds one platform; they share this \
             machine's engine and its two cores. The single-platform builds are direct builds through the Docker API, \
             so the ratio also carries the farm's own overhead."
                .into(),
        ],
    })
}

fn p3(o: &Options, b: &Bench) -> anyhow::Result<Figure> {
    let step = o.size(5.0, 0.2);
    let iter = calibrate(step)?;
    let (mut emulated, mut native) = (Vec::new(), Vec::new());
    {
        let _qemu = Emulation::register()?;
        b.direct_build("linux/arm64", 1000)?;
        for run in 0..o.runs {
            emulated.push(b.direct_build("linux/arm64", iter)?);
            native.push(b.farm_build("linux/amd64", iter, &format!("p3-{run}"))?);
            eprintln!("bench: P3 run {run}: emulated arm64 {:.2} s, farm native {:.2} s", emulated[run], native[run]);
        }
    }
    let ratio = emulated.iter().zip(&native).map(|(e, n)| e / n).collect();
    let headline = Series::new("emulated arm64 build ÷ farm build on a native agent", "×", ratio);
    Ok(Figure {
        id: "P3",
        measure: "arm64 through QEMU binfmt on one engine ÷ the farm on a native agent".into(),
        target: "report (expected ≥ 3)".into(),
        verdict: if at_least(headline.median(), 3.0) == Verdict::Met { Verdict::Reported } else { Verdict::Missed },
        also: vec![],
        headline,
        details: vec![
            Series::new("direct build for linux/arm64 through qemu-aarch64 (binfmt)", "s", emulated),
            Series::new("farm build on the native agent", "s", native),
        ],
        notes: vec![format!(
            "The same Dockerfile with a shorter step ({iter} iterations, about {step} s native) to keep the emulated \
             side's runs short; fixed costs weigh more on a short step, so the ratio is a lower bound. The emulated side \
             is what `docker buildx` does on one host: the engine runs the aarch64 busybox through QEMU, registered \
             with binfmt for these runs only and removed after. The native side is the farm building the same step on \
             the amd64 agent, standing in for an arm64 agent on arm64 hardware: none exists here."
        )],
    })
}

/// P6: a two-platform build followed in-process; a second thread polls the registry for the
/// tag. The figure is the time from the last `PlatformDone` (sent after the coordinator verified
/// the digest) to the first successful GET of the index.
fn p6(o: &Options, farm: &Farm, rt: &tokio::runtime::Runtime) -> anyhow::Result<Figure> {
    let ctx = tempfile::tempdir()?;
    for arch in ["amd64", "arm64"] {
        let bin = ctx.path().join("bin").join(arch);
        std::fs::create_dir_all(&bin)?;
        std::fs::copy(fixtures(arch), bin.join("busybox"))?;
    }
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nARG TARGETARCH\nCOPY bin/${TARGETARCH}/busybox /bin/busybox\n",
    )?;
    let packed = context::pack(ctx.path(), None, 1 << 30).map_err(anyhow::Error::msg)?;
    let survey = std::sync::Arc::new(context::survey(ctx.path(), None).map_err(anyhow::Error::msg)?);
    let remote = Remote {
        coordinator: farm.coordinator.clone(),
        token: farm.token.clone(),
        ca: farm.dir.path().join("ca/ca.pem"),
    };
    let runs = o.size(o.runs.max(5), 1);
    let (mut latency, mut seen) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        let tag = nonce("p6");
        let (verified, published, readable) = rt.block_on(timed_build(farm, &remote, (&packed, &survey), &tag))?;
        // The first run warms the connection pools and the registry's repository.
        if run > 0 {
            latency.push(readable.saturating_duration_since(verified).as_secs_f64() * 1000.0);
            seen.push(published.saturating_duration_since(verified).as_secs_f64() * 1000.0);
        }
    }
    let headline = Series::new("last verified digest → index readable in the registry", "ms", latency);
    Ok(Figure {
        id: "P6",
        measure: "last platform's verified digest → index readable in a loopback registry".into(),
        target: "≤ 100 ms".into(),
        verdict: at_most(headline.median(), 100.0),
        also: vec![],
        headline,
        details: vec![Series::new("last verified digest → the client told `Published`", "ms", seen)],
        notes: vec![
            "linux/amd64 and linux/arm64 (the arm64 agent is an amd64 host declaring arm64; the image's arm64 content \
             is a genuine aarch64 busybox), a fresh tag per run. The clock starts when the client receives the last \
             platform's `PlatformDone`, which the coordinator sends after verifying the digest in the registry; it \
             stops at the first 200 of a GET of the tag, polled every 2 ms by an independent HTTP client."
                .into(),
        ],
    })
}

async fn timed_build(
    farm: &Farm,
    remote: &Remote,
    (packed, survey): (&context::Packed, &std::sync::Arc<context::Survey>),
    tag: &str,
) -> anyhow::Result<(Instant, Instant, Instant)> {
    let conn = Connection::open(remote).await?;
    upload(&conn, packed, survey.clone(), false).await?;
    let url = format!("http://{}/v2/bench/p6/manifests/{tag}", farm.registry);
    let poller = std::thread::spawn(move || poll_until_readable(&url, Duration::from_secs(120)));
    let request = BuildRequest {
        labels: vec![("org.archfarm.bench.run".into(), tag.to_owned())],
        ..BuildRequest::new(
            vec!["linux/amd64".parse()?, "linux/arm64".parse()?],
            vec![format!("{}/bench/p6:{tag}", farm.registry)],
            packed.digest.clone(),
            packed.dockerfile.clone(),
        )
    };
    let mut stream = conn.request(&ClientRequest::Build(Box::new(request))).await?;
    stream.finish().await;
    let (mut verified, mut published) = (None, None);
    while let Some(response) = conn.next(&mut stream).await? {
        match response {
            ClientResponse::Build(BuildEvent::PlatformDone(_)) => verified = Some(Instant::now()),
            ClientResponse::Build(BuildEvent::Published { .. }) => {
                published = Some(Instant::now());
                break;
            }
            ClientResponse::Build(BuildEvent::Failed { reason }) => anyhow::bail!("P6 build failed: {reason}"),
            ClientResponse::Error { message } => anyhow::bail!("P6 build refused: {message}"),
            _ => {}
        }
    }
    conn.close().await;
    let readable = poller.join().map_err(|_| anyhow::anyhow!("the registry poller panicked"))??;
    match (verified, published) {
        (Some(v), Some(p)) => Ok((v, p, readable)),
        _ => anyhow::bail!("the P6 build ended without PlatformDone and Published"),
    }
}

fn poll_until_readable(url: &str, timeout: Duration) -> anyhow::Result<Instant> {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let answer = agent
            .get(url)
            .set("Accept", "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json")
            .call();
        if let Ok(r) = answer {
            if r.status() == 200 {
                return Ok(Instant::now());
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    anyhow::bail!("{url} was not readable within {timeout:?}")
}
