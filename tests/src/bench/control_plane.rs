//! P5: the control plane with a thousand agents. The agents are the product's own agent
//! sessions ([`archfarm_agent::session::Agent`]) in this process, each on its own QUIC
//! connection with its own certificate (mTLS), sharing one UDP socket. Their runner is
//! [`InstantExecutor`], a benchmark-only stand-in that reports a pushed image at once, so the
//! figure measures the coordinator, not BuildKit. The image it reports is real: pushed to the
//! registry once, and verified there by the coordinator for every job, as any image is.
//!
//! One-platform builds are kept in flight, one per agent (a farm with every agent busy), and
//! each job's dispatch is stamped when the agent receives it. The CPU time of the coordinator,
//! the registry and this harness over the run says what bounds the rate on a shared machine.

use super::report::{at_least, at_most, Figure, Series};
use super::Options;
use crate::process::rss_kib;
use crate::Farm;
use archfarm_agent::executor::Runner;
use archfarm_agent::link::CoordinatorLink;
use archfarm_agent::session::Agent;
use archfarm_client::{Connection, Remote};
use archfarm_shared::oci::{self, Blob};
use archfarm_shared::pki::{self, CertifiedKey, Leaf};
use archfarm_shared::protocol::{
    BuildEvent, BuildRequest, ClientRequest, ClientResponse, JobOutcome, JobSpec, PushedImage, Registration, ALPN_AGENT,
};
use archfarm_shared::registry::{self, Registry};
use archfarm_shared::{tls, Digest};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Benchmark-only job runner: completes every job at once with the same pushed image, and
/// stamps when each job arrived. Never part of the product binaries.
#[derive(Debug, Clone)]
pub struct InstantExecutor {
    image: PushedImage,
    arrivals: Arc<Mutex<HashMap<u64, Instant>>>,
}

impl Runner for InstantExecutor {
    fn run(
        &self,
        _link: &dyn CoordinatorLink,
        spec: JobSpec,
        _log: archfarm_agent::job_log::JobLog,
    ) -> impl std::future::Future<Output = JobOutcome> + Send {
        let now = Instant::now();
        if let Some(seq) = spec.labels.iter().find(|(k, _)| k == "bench.seq").and_then(|(_, v)| v.parse().ok()) {
            self.arrivals.lock().unwrap_or_else(|e| e.into_inner()).insert(seq, now);
        }
        let image = self.image.clone();
        async move { JobOutcome::Pushed(image) }
    }
}

/// Pushes a minimal linux/amd64 image (one empty layer) into `repository` by digest.
async fn push_image(repository: &str) -> anyhow::Result<PushedImage> {
    let repo = registry::parse_reference(&format!("{repository}:latest"))?;
    let reg = Registry::for_reference(&repo, &[]);
    reg.authorize_push(&repo).await?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &[0u8; 1024])?;
    let layer = gz.finish()?;
    let diff = Digest::of(&[0u8; 1024]);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{diff}"]}}}}"#
    );
    let layer_blob =
        Blob { media_type: oci::OCI_LAYER_GZIP.into(), digest: Digest::of(&layer), size: layer.len() as u64 };
    let config_blob =
        Blob { media_type: oci::OCI_CONFIG.into(), digest: Digest::of(config.as_bytes()), size: config.len() as u64 };
    reg.push_blob(&repo, layer.into(), &layer_blob.digest).await?;
    reg.push_blob(&repo, config.into_bytes().into(), &config_blob.digest).await?;
    let manifest = oci::manifest_json(&config_blob, &[layer_blob])?;
    let digest = Digest::of(&manifest);
    let size = manifest.len() as u64;
    let by_digest = repo.with_digest(&digest);
    reg.push_manifest(&by_digest, manifest.into(), oci::OCI_MANIFEST).await?;
    Ok(PushedImage { digest, media_type: oci::OCI_MANIFEST.into(), size, bases: vec![] })
}

/// User plus system CPU seconds a process (all its threads) has used.
fn cpu_secs(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| stat_cpu_secs(&s)).unwrap_or(f64::NAN)
}

/// utime + stime from a `/proc/PID/stat` line, in seconds. The command name may hold spaces
/// and parentheses; counting starts after its last ')', at the state (field 3): utime is field
/// 14, stime 15, in clock ticks (USER_HZ, 100 on Linux).
fn stat_cpu_secs(stat: &str) -> Option<f64> {
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// The requests of the registry's access log from line `from` on, counted by method and kind
/// of path (`GET /v2/`, `PUT manifests by tag`, `POST blob uploads`…), and how many in all.
fn registry_requests(log: &std::path::Path, from: usize) -> (usize, usize, std::collections::BTreeMap<String, usize>) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut kinds = std::collections::BTreeMap::new();
    let (mut lines, mut counted) = (0, 0);
    for line in text.lines() {
        lines += 1;
        if lines <= from {
            continue;
        }
        let Some(request) = line.split('"').nth(1) else { continue };
        let mut parts = request.split_whitespace();
        let (Some(method), Some(path)) = (parts.next(), parts.next()) else { continue };
        let path = path.split('?').next().unwrap_or_default();
        let kind = if path == "/v2/" {
            "/v2/"
        } else if path.contains("/blobs/uploads") {
            "blob uploads"
        } else if path.contains("/blobs/") {
            "blobs"
        } else if let Some((_, reference)) = path.split_once("/manifests/") {
            if reference.starts_with("sha256:") {
                "manifests by digest"
            } else {
                "manifests by tag"
            }
        } else {
            "other"
        };
        *kinds.entry(format!("{method} {kind}")).or_insert(0) += 1;
        counted += 1;
    }
    (lines, counted, kinds)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One phase's stamps: when each build was submitted and when its job reached an agent.
struct Phase {
    submitted: Vec<Instant>,
    arrived: Vec<Instant>,
    published: usize,
    elapsed: f64,
}

/// One phase's builds: numbered from `first_seq`, `window` of them in flight, with provenance or not.
struct Batch {
    first_seq: u64,
    jobs: u64,
    window: usize,
    provenance: bool,
}

/// Submits `jobs` one-platform builds over `clients`, keeping `window` in flight, and waits
/// (bounded) until every build has ended.
async fn fire(
    clients: &[Arc<Connection>],
    registry: &str,
    arrivals: &Arc<Mutex<HashMap<u64, Instant>>>,
    batch: Batch,
    context: &Digest,
) -> anyhow::Result<Phase> {
    let Batch { first_seq, jobs, window, provenance } = batch;
    let slots = Arc::new(tokio::sync::Semaphore::new(window));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(jobs as usize);
    let mut submitted = Vec::with_capacity(jobs as usize);
    for n in 0..jobs {
        let slot = slots.clone().acquire_owned().await?;
        let seq = first_seq + n;
        let conn = clients[n as usize % clients.len()].clone();
        let request = BuildRequest {
            labels: vec![("bench.seq".into(), seq.to_string())],
            provenance,
            ..BuildRequest::new(
                vec!["linux/amd64".parse()?],
                vec![format!("{registry}/bench/p5:j{seq}")],
                context.clone(),
                "Dockerfile",
            )
        };
        submitted.push(Instant::now());
        tasks.push(tokio::spawn(async move {
            let _slot = slot;
            let mut stream = conn.request(&ClientRequest::Build(Box::new(request))).await?;
            stream.finish().await;
            while let Some(response) = conn.next(&mut stream).await? {
                match response {
                    ClientResponse::Build(BuildEvent::Published { .. }) => return Ok(true),
                    ClientResponse::Build(BuildEvent::Failed { reason }) => {
                        anyhow::bail!("build {seq} failed: {reason}")
                    }
                    ClientResponse::Error { message } => anyhow::bail!("build {seq} refused: {message}"),
                    _ => {}
                }
            }
            Ok(false)
        }));
    }
    let mut published = 0;
    let mut first_error = None;
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(600), t).await {
            Ok(Ok(Ok(true))) => published += 1,
            Ok(Ok(Err(e))) => {
                first_error.get_or_insert(e);
            }
            _ => {}
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(e) = &first_error {
        eprintln!(
            "bench: P5 {} of {jobs} builds were not published; the first error: {e:#}",
            jobs as usize - published
        );
    }
    let seen = arrivals.lock().unwrap_or_else(|e| e.into_inner());
    let mut arrived = Vec::with_capacity(jobs as usize);
    for n in 0..jobs {
        match seen.get(&(first_seq + n)) {
            Some(t) => arrived.push(*t),
            None => anyhow::bail!(
                "job {} never reached an agent ({published} of {jobs} published){}",
                first_seq + n,
                first_error.map(|e| format!("; first error: {e:#}")).unwrap_or_default()
            ),
        }
    }
    Ok(Phase { submitted, arrived, published, elapsed })
}

/// Runs P5.
pub fn run(o: &Options) -> anyhow::Result<Figure> {
    let (agents, jobs, capacity) = o.size((1000u32, 10_000u64, 10u32), (50, 500, 10));
    let farm = Farm::builder().patient().registry_in_memory().start();
    tls::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new()?;
    let coordinator_pid = farm.procs.iter().find(|p| p.name == "coordinator").expect("a coordinator").pid();
    let ca_dir = farm.dir.path().join("ca");
    let ca = CertifiedKey {
        cert_pem: std::fs::read_to_string(ca_dir.join("ca.pem"))?,
        key_pem: std::fs::read_to_string(ca_dir.join("ca.key"))?,
    };
    eprintln!("bench: P5 issuing {agents} agent certificates");
    let mut certs = Vec::new();
    for i in 0..agents {
        let name = format!("bench-{i:04}");
        certs.push((name.clone(), pki::issue(&ca, Leaf::Agent { name: &name })?));
    }
    let image = rt.block_on(push_image(&format!("{}/bench/p5", farm.registry)))?;
    let arrivals: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let remote = Remote { coordinator: farm.coordinator.clone(), token: farm.token.clone(), ca: ca_dir.join("ca.pem") };
    let idle_rss = rss_kib(coordinator_pid);
    let registry_pid = farm.procs.iter().find(|p| p.name == "registry").expect("a registry").pid();
    let registry_log = farm.dir.path().join("registry.log");
    let cpu =
        [("coordinator", coordinator_pid), ("registry", registry_pid), ("harness and agents", std::process::id())];
    let shutdown = CancellationToken::new();

    let result = rt.block_on(async {
        let endpoint = tls::endpoint("127.0.0.1:0".parse()?, None)?;
        for (name, cert) in &certs {
            let client_config = tls::client_config(
                &ca.cert_pem,
                Some((&cert.cert_pem, &cert.key_pem)),
                ALPN_AGENT,
                tls::Transport::default(),
            )?;
            let agent = Arc::new(Agent {
                executor: InstantExecutor { image: image.clone(), arrivals: arrivals.clone() },
                name: name.parse()?,
                max_frame: archfarm_shared::codec::DEFAULT_MAX_FRAME,
                registration: Registration {
                    platforms: vec!["linux/amd64".parse()?],
                    capacity,
                    engine: archfarm_shared::protocol::EngineFacts::of_version("bench"),
                    agent_version: "bench".into(),
                    capabilities: Default::default(),
                    credentials_for: vec![],
                },
                coordinator: farm.coordinator.clone(),
                server_name: "localhost".into(),
                endpoint: endpoint.clone(),
                client_config: client_config.into(),
                max_backoff: Duration::from_secs(2),
                drain_timeout: Duration::from_secs(5),
                running: Default::default(),
                abort: CancellationToken::new(),
                health: archfarm_agent::health::HealthWatch::always_healthy(),
            });
            tokio::spawn(agent.run(shutdown.child_token()));
        }
        let admin = Connection::open(&remote).await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            // The listing comes in pages under the frame limit.
            let page = |r| match r {
                ClientResponse::Agents(a) => Some(a),
                _ => None,
            };
            let listed = admin.listing(&ClientRequest::ListAgents, page).await?.len();
            if listed == agents as usize {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "only {listed} of {agents} agents registered within 120 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Settle: let registration and the first heartbeats pass before reading memory.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let connected_rss = rss_kib(coordinator_pid);
        eprintln!(
            "bench: P5 {agents} agents connected; coordinator RSS {idle_rss:.0} KiB before, {connected_rss:.0} KiB now"
        );

        // Every build uses one tiny context, uploaded once.
        let ctx = tempfile::tempdir()?;
        std::fs::write(ctx.path().join("Dockerfile"), "FROM scratch\n")?;
        let packed = archfarm_client::context::pack(ctx.path(), None, 1 << 20).map_err(anyhow::Error::msg)?;
        let survey = Arc::new(archfarm_client::context::survey(ctx.path(), None).map_err(anyhow::Error::msg)?);
        archfarm_client::upload::upload(&admin, &packed, survey, false).await?;
        let mut clients = Vec::new();
        for _ in 0..32 {
            clients.push(Arc::new(Connection::open(&remote).await?));
        }
        // Warm-up: a few hundred builds through every path.
        let window = agents as usize;
        let warm = (jobs / 20).max(50);
        fire(&clients, &farm.registry, &arrivals, Batch { first_seq: 0, jobs: warm, window, provenance: true }, &packed.digest).await?;
        let mut runs = Vec::new();
        let mut bursts = Vec::new();
        let mut seq = warm;
        // Each run is `jobs` whole builds; one or two of each kind make the figure. A burst
        // submits them all at once (the agents' slots, capacity × agents, hold every one); it
        // runs last, as it leaves the registry with thousands of tags and connections.
        // In flight, with provenance (the default) and without, alternating.
        for run in 0..o.runs.min(2) * 2 {
            let provenance = run % 2 == 0;
            let before = cpu.iter().map(|(_, pid)| cpu_secs(*pid)).collect::<Vec<_>>();
            let (log_before, _, _) = registry_requests(&registry_log, usize::MAX);
            let phase =
                fire(&clients, &farm.registry, &arrivals, Batch { first_seq: seq, jobs, window, provenance }, &packed.digest).await?;
            let used: Vec<f64> = cpu.iter().zip(&before).map(|((_, pid), b)| cpu_secs(*pid) - b).collect();
            let (_, requests, kinds) = registry_requests(&registry_log, log_before);
            seq += jobs;
            eprintln!(
                "bench: P5 run {run} (provenance {}): {} published in {:.1} s; CPU s: {}; registry requests per build {:.1}: {}",
                if provenance { "on" } else { "off" },
                phase.published,
                phase.elapsed,
                cpu.iter().zip(&used).map(|((n, _), u)| format!("{n} {u:.1}")).collect::<Vec<_>>().join(", "),
                requests as f64 / jobs as f64,
                kinds.iter().map(|(k, n)| format!("{k} {:.2}", *n as f64 / jobs as f64)).collect::<Vec<_>>().join(", ")
            );
            runs.push((phase, used, requests as f64 / jobs as f64, provenance));
        }
        eprintln!("bench: P5 coordinator RSS {:.0} KiB after the runs, before the bursts", rss_kib(coordinator_pid));
        for run in 0..o.runs.min(2) {
            let phase =
                fire(
                &clients,
                &farm.registry,
                &arrivals,
                Batch { first_seq: seq, jobs, window: jobs as usize, provenance: true },
                &packed.digest,
            ).await?;
            seq += jobs;
            eprintln!("bench: P5 burst {run}: {} published in {:.1} s", phase.published, phase.elapsed);
            bursts.push(phase);
        }
        // The allocator returns freed pages to the system after its decay time (jemalloc: 10 s).
        tokio::time::sleep(Duration::from_secs(12)).await;
        let after_rss = rss_kib(coordinator_pid);
        for c in clients {
            if let Ok(c) = Arc::try_unwrap(c) {
                c.close().await;
            }
        }
        admin.close().await;
        shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(500)).await;
        anyhow::Ok((runs, bursts, connected_rss, after_rss))
    });
    let (runs, bursts, connected_rss, after_rss) = result?;

    let rate = |p: &Phase| {
        let first = p.submitted.iter().min().copied().unwrap_or_else(Instant::now);
        let last = p.arrived.iter().max().copied().unwrap_or(first);
        p.arrived.len() as f64 / last.saturating_duration_since(first).as_secs_f64().max(1e-9)
    };
    let latencies = |p: &Phase| {
        let mut l: Vec<f64> = p
            .submitted
            .iter()
            .zip(&p.arrived)
            .map(|(s, a)| a.saturating_duration_since(*s).as_secs_f64() * 1000.0)
            .collect();
        l.sort_by(f64::total_cmp);
        l
    };
    let with = |on: bool| runs.iter().filter(move |r| r.3 == on);
    let phases: Vec<&Phase> = with(true).map(|r| &r.0).collect();
    let phases_off: Vec<&Phase> = with(false).map(|r| &r.0).collect();
    let cpu_per_job = |i: usize, on: bool| -> Vec<f64> { with(on).map(|r| r.1[i] * 1e6 / jobs as f64).collect() };
    let requests = |on: bool| -> Vec<f64> { with(on).map(|r| r.2).collect() };
    let published = |ps: &[&Phase]| -> Vec<f64> { ps.iter().map(|p| p.published as f64 / p.elapsed).collect() };
    let pct = |ps: &[&Phase], p: f64| -> Vec<f64> { ps.iter().map(|ph| percentile(&latencies(ph), p)).collect() };
    let bursts: Vec<&Phase> = bursts.iter().collect();
    let headline = Series::new(
        format!("dispatches per second, {jobs} jobs submitted at once"),
        "/s",
        bursts.iter().map(|p| rate(p)).collect(),
    );
    let p99 = Series::new(
        format!("p99 dispatch latency, submit → agent, {agents} builds in flight"),
        "ms",
        pct(&phases, 0.99),
    );
    let per_agent =
        Series::new("coordinator RSS per connected agent", "KiB", vec![(connected_rss - idle_rss) / agents as f64]);
    let retained = Series::new(
        "coordinator RSS after every run ÷ RSS with the agents connected",
        "×",
        vec![after_rss / connected_rss],
    );
    Ok(Figure {
        id: "P5",
        measure: format!("control plane: {agents} agents over QUIC + mTLS, {jobs} one-platform jobs"),
        target: "≥ 5,000 /s".into(),
        verdict: at_least(headline.median(), 5000.0),
        also: vec![
            (p99.clone(), "≤ 10 ms".into(), at_most(p99.median(), 10.0)),
            (per_agent.clone(), "≤ 64 KiB".into(), at_most(per_agent.median(), 64.0)),
            (retained.clone(), "≤ 2×".into(), at_most(retained.median(), 2.0)),
        ],
        headline,
        details: vec![
            Series::new(format!("p50 dispatch latency, {agents} builds in flight"), "ms", pct(&phases, 0.5)),
            Series::new(format!("p50 dispatch latency, {jobs} submitted at once"), "ms", pct(&bursts, 0.5)),
            Series::new(format!("p99 dispatch latency, {jobs} submitted at once"), "ms", pct(&bursts, 0.99)),
            Series::new(
                format!("dispatches per second, {agents} builds in flight"),
                "/s",
                phases.iter().map(|p| rate(p)).collect(),
            ),
            Series::new(
                format!("builds verified and published per second, {agents} in flight, provenance on"),
                "/s",
                published(&phases),
            ),
            Series::new(
                format!("builds verified and published per second, {agents} in flight, provenance off"),
                "/s",
                published(&phases_off),
            ),
            Series::new("coordinator CPU per build, provenance on", "µs", cpu_per_job(0, true)),
            Series::new("coordinator CPU per build, provenance off", "µs", cpu_per_job(0, false)),
            Series::new("registry CPU per build, provenance on", "µs", cpu_per_job(1, true)),
            Series::new("registry CPU per build, provenance off", "µs", cpu_per_job(1, false)),
            Series::new("registry requests per build, provenance on", "", requests(true)),
            Series::new("registry requests per build, provenance off", "", requests(false)),
            Series::new("harness CPU per build (agents and clients)", "µs", cpu_per_job(2, true)),
            Series::new("coordinator RSS, no agents", "MiB", vec![idle_rss / 1024.0]),
            Series::new("coordinator RSS, agents connected", "MiB", vec![connected_rss / 1024.0]),
            Series::new("coordinator RSS after every run", "MiB", vec![after_rss / 1024.0]),
        ],
        notes: vec![format!(
            "{agents} agent sessions (the product's session code, capacity {capacity} each) run in the harness process \
             over real QUIC connections with their own certificates; their runner is the benchmark-only \
             `InstantExecutor`, which reports a real, pre-pushed linux/amd64 image at once. Every job is a whole build: \
             the coordinator records it, dispatches it, verifies the reported digest in the registry and publishes an \
             index under its own tag. Builds are submitted over 32 client connections, in two ways: all {jobs} at \
             once (the agents' {slots} slots hold every one), and {agents} kept in flight, a new one submitted as \
             each ends. A dispatch is stamped when the agent receives the job. The rate is jobs over the time from \
             the first submission to the last arrival; the latency is submit → arrival, so in a burst it includes \
             waiting behind the rest of the burst. The CPU rows divide each process's CPU time (user and system) \
             over the in-flight runs by the builds: the coordinator, the registry and the harness share two cores. \
             The in-flight runs alternate builds with provenance (the default: an attestation manifest and its \
             blobs per platform) and without; the registry requests are counted from its access log. \
             The registry keeps its storage in memory (tmpfs) for this figure only, so that its own disk syncs do \
             not set the pace; the build figures use a registry on disk.",
            slots = agents as u64 * capacity as u64,
        )],
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_time_is_read_after_the_command_name_from_the_state_on() {
        let line = "4242 (docker (re)gistry) S 1 4242 4242 0 -1 4194560 9000 0 3 0 1234 567 8 9 20 0 12 0 100";
        assert_eq!(super::stat_cpu_secs(line), Some(18.01));
        assert_eq!(super::stat_cpu_secs("garbage"), None);
        let own = super::cpu_secs(std::process::id());
        assert!(own.is_finite() && own >= 0.0, "{own}");
    }
}
