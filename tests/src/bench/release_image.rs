//! P7, a realistic release image: about 300 MB in three layers (a 200 MB base pulled from the
//! registry, a 90 MB dependencies layer, a 10 MB application layer), partly compressible. Each
//! case is timed as `archfarm build --push` against `docker build` + `docker push` of the same
//! Dockerfile on the same engine and registry, the two taken in turn within each run:
//!
//! - (a) cold: a new context and a new repository (the base is in the engine and the registry);
//! - (b) only the application layer changed, pushed again to the same repository;
//! - (c) the same image to a new repository of the same registry;
//! - (d) an unchanged rebuild, pushed again.
//!
//! The agent's peak memory (VmHWM, reset before each cold build) is reported beside (a).
//!
//! P7c is the same on the containerd image store (the current engine of
//! `scripts/engine-current.sh`), against a direct BuildKit build that pushes by digest through
//! the same engine's API: what `docker buildx build --push` does there.

use super::report::{at_most, Figure, Series, Verdict};
use super::Options;
use crate::process::peak_kib;
use crate::{process, AgentSpec, Farm};
use archfarm_agent::engine::docker::DockerEngine;
use archfarm_agent::engine::{BuildSpec, Engine as _};
use archfarm_client::context;
use archfarm_shared::Platform;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Sizes of the three layers, in MiB.
struct Sizes {
    base: usize,
    deps: usize,
    app: usize,
}

/// Writes `mib` MiB of partly compressible bytes: each 64 KiB block is half random, half text.
fn write_data(path: &Path, mib: usize, seed: &str) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let text: Vec<u8> = format!("{seed} lorem ipsum dolor sit amet, consectetur adipiscing elit\n")
        .bytes()
        .cycle()
        .take(32 << 10)
        .collect();
    let mut random = vec![0u8; 32 << 10];
    for _ in 0..mib * 16 {
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut random);
        out.write_all(&random)?;
        out.write_all(&text)?;
    }
    out.flush()?;
    Ok(())
}

fn nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A context whose Dockerfile starts from `base` and copies a fresh dependencies and
/// application file.
fn release_context(base: &str, sizes: &Sizes) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("deps"))?;
    std::fs::create_dir_all(dir.path().join("app"))?;
    write_data(&dir.path().join("deps/vendor.bin"), sizes.deps, &nonce())?;
    change_app(dir.path(), sizes)?;
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!("FROM {base}\nCOPY deps/ /opt/deps/\nCOPY app/ /opt/app/\n"),
    )?;
    Ok(dir)
}

/// A new application file: only the last layer changes.
fn change_app(ctx: &Path, sizes: &Sizes) -> anyhow::Result<()> {
    write_data(&ctx.join("app/app.bin"), sizes.app, &nonce())
}

/// The docker CLI against the engine at `host` (the machine's own when `None`).
fn docker(host: Option<&str>, args: &[&str]) -> anyhow::Result<()> {
    let out = process::run_bounded(
        {
            let mut c = Command::new("docker");
            if let Some(host) = host {
                c.args(["-H", host]);
            }
            c.args(args);
            c
        },
        Duration::from_secs(600),
    );
    anyhow::ensure!(out.status.success(), "docker {}: {}", args.join(" "), crate::text(&out));
    Ok(())
}

/// Everything P7 needs.
struct Release<'a> {
    farm: &'a Farm,
    engine: DockerEngine,
    /// The engine's address, when not the machine's own: the containerd store's.
    host: Option<String>,
    rt: &'a tokio::runtime::Runtime,
    agent_log: std::path::PathBuf,
}

impl Release<'_> {
    /// `docker build` of `ctx` through the engine's BuildKit, tagged `reference`; with
    /// `push_to`, BuildKit pushes it there by digest too (the containerd store only).
    fn engine_build(&self, ctx: &Path, reference: &str, push_to: Option<&str>) -> anyhow::Result<()> {
        let platform: Platform = "linux/amd64".parse()?;
        let packed = context::pack(ctx, None, 8 << 30).map_err(anyhow::Error::msg)?;
        let session = format!("archfarm-bench-{}", nonce());
        let plain = BuildSpec::plain(packed.file.path(), &packed.dockerfile, &platform, reference, session);
        let spec = BuildSpec { push_to, ..plain };
        self.rt
            .block_on(self.engine.build(spec, &mut |_| {}))
            .map_err(|e| anyhow::anyhow!("docker build of {reference}: {}\n{}", e.message, e.tail.join("\n")))
            .map(drop)
    }

    /// `docker build` + `docker push`, timed; on the containerd store, one BuildKit build
    /// that pushes by digest.
    fn docker_side(&self, ctx: &Path, reference: &str) -> anyhow::Result<f64> {
        let started = Instant::now();
        if self.host.is_some() {
            let repository = reference.rsplit_once(':').map_or(reference, |(r, _)| r);
            self.engine_build(ctx, reference, Some(repository))?;
        } else {
            self.engine_build(ctx, reference, None)?;
            docker(None, &["push", "--quiet", reference])?;
        }
        Ok(started.elapsed().as_secs_f64())
    }

    /// `archfarm build --push`, timed as the user sees it.
    fn farm_side(&self, ctx: &Path, reference: &str) -> anyhow::Result<f64> {
        // When it started, to set beside the farm's logs (kept by `keep_logs`), and what the
        // client said of the context.
        eprintln!(
            "bench: farm build of {reference} at {}",
            humantime::format_rfc3339_millis(std::time::SystemTime::now())
        );
        let started = Instant::now();
        let out = self.farm.build("linux/amd64", &[reference], ctx, &[]);
        let secs = started.elapsed().as_secs_f64();
        anyhow::ensure!(out.status.success(), "farm build of {reference} failed:\n{}", crate::text(&out));
        for line in crate::text(&out).lines().filter(|l| l.starts_with("context ")) {
            eprintln!("bench:   client: {line}");
        }
        Ok(secs)
    }
}

/// Copies the farm's logs (coordinator, agent, registry) to `.farm/bench-logs/ID/`, where the
/// steps of each case can be timed side by side after the farm is gone.
fn keep_logs(farm: &Farm, id: &str) {
    let to = Path::new(".farm/bench-logs").join(id);
    let _ = std::fs::remove_dir_all(&to);
    for entry in walkdir(farm.dir.path()) {
        if entry.extension().is_some_and(|e| e == "log") {
            let name = entry.strip_prefix(farm.dir.path()).unwrap_or(&entry).to_string_lossy().replace('/', "-");
            if std::fs::create_dir_all(&to).and_then(|()| std::fs::copy(&entry, to.join(name))).is_err() {
                eprintln!("bench: cannot keep {} in {}", entry.display(), to.display());
            }
        }
    }
    eprintln!("bench: {id}'s farm logs are in {}", to.display());
}

/// The files under `dir`, two levels deep (a farm's logs lie at its top and in each process's folder).
fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let list = |d: &Path| std::fs::read_dir(d).into_iter().flatten().flatten().map(|e| e.path()).collect::<Vec<_>>();
    let mut out = Vec::new();
    for path in list(dir) {
        if path.is_dir() {
            out.extend(list(&path).into_iter().filter(|p| p.is_file()));
        } else {
            out.push(path);
        }
    }
    out
}

/// Starts the peak over (`clear_refs` 5 resets VmHWM).
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// One run's four cases, farm and docker, in seconds.
#[derive(Default)]
struct Runs {
    farm: [Vec<f64>; 4],
    docker: [Vec<f64>; 4],
    memory: Vec<f64>,
}

fn one_run(r: &Release, run: usize, base: &str, sizes: &Sizes, agent_pid: u32, runs: &mut Runs) -> anyhow::Result<()> {
    let registry = &r.farm.registry;
    let (fctx, dctx) = (release_context(base, sizes)?, release_context(base, sizes)?);
    let id = nonce();
    let (frepo, drepo) = (format!("{registry}/bench/p7-farm-{id}"), format!("{registry}/bench/p7-docker-{id}"));
    // Alternate which side goes first, so neither always finds the machine fresher.
    let farm_first = run.is_multiple_of(2);
    let mut case = |i: usize, farm_ref: String, docker_ref: String, fctx: &Path, dctx: &Path| -> anyhow::Result<()> {
        let (f, d) = if farm_first {
            if i == 0 {
                reset_peak(agent_pid);
            }
            let f = r.farm_side(fctx, &farm_ref)?;
            (f, r.docker_side(dctx, &docker_ref)?)
        } else {
            let d = r.docker_side(dctx, &docker_ref)?;
            if i == 0 {
                reset_peak(agent_pid);
            }
            (r.farm_side(fctx, &farm_ref)?, d)
        };
        if i == 0 {
            runs.memory.push(peak_kib(agent_pid) / 1024.0);
        }
        let agent = std::fs::read_to_string(&r.agent_log).unwrap_or_default();
        let split = agent
            .lines()
            .rev()
            .find(|l| l.contains("pushed by digest"))
            .map_or("", |l| l.rsplit_once("fetch_ms").map_or("", |(_, t)| t));
        eprintln!(
            "bench: P7 run {run} case {}: farm {f:.2} s (agent: fetch_ms{split}), docker build + push {d:.2} s",
            ["a", "b", "c", "d"][i]
        );
        runs.farm[i].push(f);
        runs.docker[i].push(d);
        Ok(())
    };
    case(0, format!("{frepo}:1"), format!("{drepo}:1"), fctx.path(), dctx.path())?;
    change_app(fctx.path(), sizes)?;
    change_app(dctx.path(), sizes)?;
    case(1, format!("{frepo}:2"), format!("{drepo}:2"), fctx.path(), dctx.path())?;
    case(2, format!("{frepo}-copy:1"), format!("{drepo}-copy:1"), fctx.path(), dctx.path())?;
    case(3, format!("{frepo}:3"), format!("{drepo}:3"), fctx.path(), dctx.path())?;
    Ok(())
}

/// Builds and pushes the base image with docker, so the registry and the engine hold it.
fn push_base(r: &Release, sizes: &Sizes) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("bin"))?;
    std::fs::copy(crate::fixtures("amd64"), dir.path().join("bin/busybox"))?;
    write_data(&dir.path().join("base.bin"), sizes.base, &nonce())?;
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY bin/busybox /bin/busybox\nCOPY base.bin /usr/lib/base.bin\n",
    )?;
    let base = format!("{}/bench/p7-base:{}", r.farm.registry, nonce());
    r.engine_build(dir.path(), &base, None)?;
    docker(r.host.as_deref(), &["push", "--quiet", &base])?;
    Ok(base)
}

fn ratios(farm: &[f64], docker: &[f64]) -> Vec<f64> {
    farm.iter().zip(docker).map(|(f, d)| f / d).collect()
}

/// Runs P7 on a farm of its own, on the machine's engine (overlay2 store).
pub fn run(o: &Options) -> anyhow::Result<Figure> {
    run_on(o, None)
}

/// Runs P7c: P7 with the agent on the current engine, on the containerd store.
pub fn run_containerd(o: &Options) -> anyhow::Result<Figure> {
    run_on(o, Some(crate::current_engine()))
}

fn run_on(o: &Options, host: Option<String>) -> anyhow::Result<Figure> {
    let sizes = o.size(Sizes { base: 200, deps: 90, app: 10 }, Sizes { base: 8, deps: 3, app: 1 });
    let id = if host.is_some() { "P7c" } else { "P7" };
    eprintln!("bench: {id} starting a farm (registry, coordinator, agent amd64-1)");
    let mut farm = Farm::builder().agents(&[]).patient().start();
    let extra = host.as_ref().map(|h| format!("docker_host = \"{h}\"\n")).unwrap_or_default();
    farm.start_agent_configured(&AgentSpec { capacity: 1, ..AgentSpec::amd64() }, &extra);
    farm.wait_for_agents(&["amd64-1"]);
    let agent_pid = farm.proc("agent amd64-1").pid();
    let agent_log = farm.proc("agent amd64-1").log_path().to_owned();
    let rt = tokio::runtime::Runtime::new()?;
    archfarm_shared::tls::install_crypto_provider();
    let engine = rt.block_on(DockerEngine::connect(host.as_deref())).map_err(anyhow::Error::msg)?;
    let r = Release { farm: &farm, engine, host, rt: &rt, agent_log };
    let base = push_base(&r, &sizes)?;
    eprintln!("bench: P7 base image {base} ({} MiB)", sizes.base);
    let mut runs = Runs::default();
    let done = (0..o.runs).try_for_each(|run| one_run(&r, run, &base, &sizes, agent_pid, &mut runs));
    // Kept whether the runs passed or not: a failed one is when they matter most.
    keep_logs(&farm, id);
    done?;
    Ok(figure(o, &sizes, runs, r.host.is_some()))
}

fn figure(o: &Options, sizes: &Sizes, runs: Runs, containerd: bool) -> Figure {
    let ratio = |i: usize| ratios(&runs.farm[i], &runs.docker[i]);
    let added: Vec<f64> = runs.farm[1].iter().zip(&runs.docker[1]).map(|(f, d)| f - d).collect();
    let direct = if containerd { "direct BuildKit build and push" } else { "docker build + push" };
    let store = if containerd { ", containerd store" } else { "" };
    let head = Series::new(format!("(a) cold build and push{store}: farm ÷ {direct}"), "×", ratio(0));
    let b = Series::new(format!("(b) application layer changed{store}: farm ÷ {direct}"), "×", ratio(1));
    let b_added = Series::new(format!("(b) time the farm adds over {direct}{store}"), "s", added);
    let c = Series::new(format!("(c) same image to a new repository{store}: farm"), "s", runs.farm[2].clone());
    let d = Series::new(format!("(d) unchanged rebuild{store}: farm"), "s", runs.farm[3].clone());
    let cold_push = Series::new(format!("(a) cold: {direct}{store}"), "s", runs.docker[0].clone());
    let tenth = cold_push.median() / 10.0;
    let mem = Series::new("agent peak memory during (a)", "MiB", runs.memory.clone());
    let verdict = at_most(head.median(), 1.10);
    let added_target = if containerd { 0.5 } else { 1.5 };
    // On the containerd store each of (c) and (d) must also stay within a tenth of a cold push.
    let quick_target = if containerd { tenth.min(1.0) } else { 1.0 };
    let also = vec![
        (b.clone(), "≤ 1.10".to_owned(), at_most(b.median(), 1.10)),
        (b_added.clone(), format!("≤ {added_target} s"), at_most(b_added.median(), added_target)),
        (c.clone(), format!("≤ {quick_target:.2} s"), at_most(c.median(), quick_target)),
        (d.clone(), format!("≤ {quick_target:.2} s"), at_most(d.median(), quick_target)),
        (cold_push, "report it".to_owned(), Verdict::Reported),
        (mem, "report it".to_owned(), Verdict::Reported),
    ];
    let names = ["(a) cold", "(b) application layer changed", "(c) new repository", "(d) unchanged rebuild"];
    let mut details = Vec::new();
    for (i, name) in names.iter().enumerate() {
        details.push(Series::new(format!("{name}: farm"), "s", runs.farm[i].clone()));
        details.push(Series::new(format!("{name}: {direct}"), "s", runs.docker[i].clone()));
    }
    let engine = if containerd {
        "One amd64 agent on the current engine (Debian 13's 26.1.5, the containerd image store), whose BuildKit \
         pushes by digest. The baseline is a BuildKit build through the same engine's API that pushes by digest \
         itself (what `docker buildx build --push` does there)."
    } else {
        "One amd64 agent on the host's engine. The baseline is a BuildKit build through the same engine's API and \
         `docker push`."
    };
    Figure {
        id: if containerd { "P7c" } else { "P7" },
        measure: format!("a realistic release image (300 MB in three layers){store}: farm ÷ {direct}"),
        target: "≤ 1.10".into(),
        headline: head,
        also,
        verdict,
        details,
        notes: vec![format!(
            "{engine} The image is FROM a {} MiB base in the registry, then a {} MiB dependencies layer and a {} MiB \
             application layer (each 64 KiB half random, half text). Each run makes fresh contexts and repositories \
             for both sides, then takes the four cases in turn, the farm and the baseline alternating which goes \
             first. {} runs.",
            sizes.base, sizes.deps, sizes.app, o.runs
        )],
    }
}
