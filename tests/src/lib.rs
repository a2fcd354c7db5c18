//! The end-to-end harness: a real registry (Debian's `docker-registry`), a real coordinator and
//! real agent processes on loopback, driving the host's real Docker Engine. Every wait is
//! bounded; every process is stopped when the [`Farm`] drops, and its log is printed if the
//! test failed.
//!
//! # Layout
//! - [`Farm`]: one farm per test, on free ports in a temporary directory.
//! - [`Proc`]: a child process with its log file, killed on drop.
//! - [`registry`](Farm::registry_get): the registry's HTTP API, as an independent client.
//! - [`skopeo`]: skopeo, the second independent client.
//! - [`fixtures`]: the per-arch static busybox binaries `scripts/setup.sh` provides.
//! - [`scripted`]: a scripted agent, to play one that misbehaves.
//! - [`net`]: hosts in network namespaces, with links that can be cut.
//! - [`bench`]: the benchmark harness behind `scripts/bench.sh` (ratios, not timed tests).

pub mod bench;
pub mod net;
pub mod scripted;

use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use net::{Host, Net};

/// A running child process with its log file; killed and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    /// Short name for log dumps.
    pub name: String,
    /// Combined stdout and stderr.
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    /// Starts `cmd` with its output sent to `log`.
    pub fn start(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        running().lock().unwrap_or_else(|e| e.into_inner()).insert(child.id());
        Proc { name: name.to_owned(), log, child }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits (bounded) until the log contains `needle`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        let log = self.log.clone();
        wait_until(timeout, &format!("{} to log {needle:?}", self.name), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains(needle).then_some(text)
        })
    }

    /// Kills the process with SIGKILL, as a crash or a power cut would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit on its own; returns whether it did.
    pub fn terminate_and_wait(&mut self, timeout: Duration) -> bool {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + timeout;
        while self.running() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Sends SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self) {
        if self.running() {
            let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        running().lock().unwrap_or_else(|e| e.into_inner()).remove(&self.child.id());
    }
}

fn running() -> &'static std::sync::Mutex<std::collections::HashSet<u32>> {
    static RUNNING: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<u32>>> = std::sync::OnceLock::new();
    RUNNING.get_or_init(Default::default)
}

/// Kills every process a [`Proc`] started and has not stopped yet: for a harness interrupted by
/// a signal, which unwinds no stack and so runs no `Drop`.
pub fn kill_started_processes() {
    let pids: Vec<u32> = running().lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
    for pid in pids {
        let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
    }
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A free loopback TCP port.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A free loopback UDP port.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// A binary of the workspace, built by `cargo build --bins` (the test command does it): beside
/// a test binary's `deps/` directory, or beside the running binary (the benchmark harness).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let beside = exe.parent().unwrap();
    let dir = if beside.ends_with("deps") { beside.parent().unwrap() } else { beside };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The per-arch static busybox of `arch` (amd64 or arm64), from `scripts/setup.sh`.
pub fn fixtures(arch: &str) -> PathBuf {
    let path = workspace().join(".farm/fixtures").join(arch).join("busybox");
    assert!(path.is_file(), "{} is missing: run scripts/setup.sh (scripts/test.sh does)", path.display());
    path
}

/// A build context in a temporary directory: `Dockerfile` with `dockerfile`, and
/// `bin/amd64/busybox`, `bin/arm64/busybox`.
pub fn context(dockerfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for arch in ["amd64", "arm64"] {
        std::fs::create_dir_all(dir.path().join("bin").join(arch)).unwrap();
        std::fs::copy(fixtures(arch), dir.path().join("bin").join(arch).join("busybox")).unwrap();
    }
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    dir
}

/// A build that takes at least `seconds` on an amd64 agent: a native RUN step after a COPY of a
/// file unique to this call, so BuildKit's cache (which outlives test runs) never skips it.
pub fn slow_context(seconds: u32) -> tempfile::TempDir {
    let dir = context(&format!(
        "FROM scratch\nCOPY bin/amd64/busybox /bin/busybox\nCOPY nonce /nonce\nRUN [\"/bin/busybox\", \"sleep\", \"{seconds}\"]\n"
    ));
    let nonce = format!("{:?} {}", std::time::SystemTime::now(), std::process::id());
    std::fs::write(dir.path().join("nonce"), nonce).unwrap();
    dir
}

/// The Dockerfile of the end-to-end build: a per-arch static binary chosen by TARGETARCH.
pub const PER_ARCH_DOCKERFILE: &str = "FROM scratch\nARG TARGETARCH\nARG TARGETPLATFORM\nCOPY bin/${TARGETARCH}/busybox /bin/busybox\nENV BUILT_FOR=${TARGETPLATFORM}\nCMD [\"/bin/busybox\", \"sh\", \"-c\", \"echo built for $BUILT_FOR\"]\n";

/// One agent to start.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// Its name (certificate common name).
    pub name: &'static str,
    /// `native_platform` override (to stand in for another host), if any.
    pub native: Option<&'static str>,
    /// Builds at once.
    pub capacity: u32,
}

impl AgentSpec {
    /// The native amd64 agent.
    pub fn amd64() -> Self {
        AgentSpec { name: "amd64-1", native: None, capacity: 2 }
    }

    /// An amd64 host declaring linux/arm64: a stand-in for arm64 hardware.
    pub fn arm64_standin() -> Self {
        AgentSpec { name: "arm64-1", native: Some("linux/arm64"), capacity: 2 }
    }
}

/// A farm for one test.
#[derive(Debug)]
pub struct Farm {
    /// Temporary directory holding certificates, configs, data and logs.
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:PORT` of the registry.
    pub registry: String,
    /// `127.0.0.1:PORT` of the coordinator.
    pub coordinator: String,
    /// The client token.
    pub token: String,
    /// Processes: registry, coordinator, then agents.
    pub procs: Vec<Proc>,
    /// With several hosts: the network, and each process's host (by process name).
    pub net: Option<Net>,
    hosts: std::collections::HashMap<String, Host>,
    heartbeat_timeout_secs: u64,
    registry_storage: Option<tempfile::TempDir>,
}

impl Farm {
    /// Starts a registry, a coordinator and `agents`, and waits until every agent is registered.
    pub fn start(agents: &[AgentSpec]) -> Farm {
        Self::start_inner(agents, None, 4)
    }

    /// Like [`Farm::start`], with the coordinator's production heartbeat timeout (15 s) instead
    /// of the short one the failover tests use: for tests that load the machine so much that a
    /// healthy agent's heartbeat can be late by seconds.
    pub fn start_patient(agents: &[AgentSpec]) -> Farm {
        Self::start_inner(agents, None, 15)
    }

    /// Like [`Farm::start`], but the coordinator and each agent are separate hosts: each in its
    /// own network namespace, reaching each other and the registry over a bridge.
    pub fn start_on_hosts(agents: &[AgentSpec]) -> Farm {
        Self::start_inner(agents, Some(Net::create()), 4)
    }

    /// Like [`Farm::start_patient`], with the registry's storage in memory (tmpfs under
    /// /dev/shm): for the control-plane benchmark, which must measure the coordinator rather than
    /// the registry's disk syncs.
    pub fn start_patient_with_registry_in_memory(agents: &[AgentSpec]) -> Farm {
        let storage = tempfile::tempdir_in("/dev/shm").expect("a directory in /dev/shm");
        Self::start_full(agents, None, 15, Some(storage))
    }

    fn start_inner(agents: &[AgentSpec], net: Option<Net>, heartbeat_timeout_secs: u64) -> Farm {
        Self::start_full(agents, net, heartbeat_timeout_secs, None)
    }

    fn start_full(
        agents: &[AgentSpec],
        mut net: Option<Net>,
        heartbeat_timeout_secs: u64,
        registry_storage: Option<tempfile::TempDir>,
    ) -> Farm {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = d.join("ca");
        let mut hosts = std::collections::HashMap::new();
        let (registry, coordinator) = match &mut net {
            Some(n) => {
                let coord = n.add_host("coord");
                for a in agents {
                    hosts.insert(format!("agent {}", a.name), n.add_host(a.name));
                }
                let addrs = (format!("{}:{}", n.bridge_ip(), free_tcp_port()), format!("{}:7000", coord.ip));
                hosts.insert("coordinator".to_owned(), coord);
                addrs
            }
            None => (format!("127.0.0.1:{}", free_tcp_port()), format!("127.0.0.1:{}", free_udp_port())),
        };
        let coordinator_ip = coordinator.rsplit_once(':').unwrap().0.to_owned();
        run_ok(Command::new(bin("archfarm")).args(["ca", "init", "--name", &coordinator_ip, "--dir"]).arg(&ca));
        for a in agents {
            run_ok(Command::new(bin("archfarm")).args(["ca", "issue-agent", a.name, "--dir"]).arg(&ca));
        }
        let token = std::fs::read_to_string(ca.join("client.token")).unwrap().trim().to_owned();
        let mut farm = Farm {
            dir,
            registry,
            coordinator,
            token,
            procs: Vec::new(),
            net,
            hosts,
            heartbeat_timeout_secs,
            registry_storage,
        };
        farm.start_registry();
        farm.start_coordinator();
        for a in agents {
            farm.start_agent(a, &ca.join(format!("{}.pem", a.name)), &ca.join(format!("{}.key", a.name)));
        }
        let names: Vec<&str> = agents.iter().map(|a| a.name).collect();
        farm.wait_for_agents(&names);
        farm
    }

    /// A command for process `name`: in its host's namespace when the farm has hosts.
    fn host_command(&self, name: &str, program: &Path) -> Command {
        match self.hosts.get(name) {
            Some(h) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &h.ns]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// The host a process runs on, when the farm has hosts.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts.get(name).unwrap_or_else(|| panic!("{name} has no host of its own"))
    }

    /// `insecure_registries` for configs: the registry, when it is not on loopback.
    fn insecure_line(&self) -> String {
        if self.net.is_some() {
            format!("insecure_registries = [\"{}\"]\n", self.registry)
        } else {
            String::new()
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Stops the registry and starts it again on the same address and storage.
    pub fn restart_registry(&mut self) {
        self.stop_registry();
        self.start_registry();
    }

    /// Stops the registry process.
    pub fn stop_registry(&mut self) {
        if let Some(i) = self.procs.iter().position(|p| p.name == "registry") {
            let mut old = self.procs.remove(i);
            old.stop();
            let _ = std::fs::rename(self.path("registry.log"), self.path(&format!("registry.{}.log", rand_suffix())));
        }
    }

    /// The registry's storage directory of a repository's tags (for fault injection).
    pub fn registry_tags_dir(&self, repo: &str) -> PathBuf {
        self.registry_repo_dir(repo).join("_manifests/tags")
    }

    /// The registry's storage directory of a repository (uploads go to its `_uploads`).
    pub fn registry_repo_dir(&self, repo: &str) -> PathBuf {
        self.registry_root().join("docker/registry/v2/repositories").join(repo)
    }

    fn registry_root(&self) -> PathBuf {
        match &self.registry_storage {
            Some(dir) => dir.path().to_owned(),
            None => self.path("registry-data"),
        }
    }

    /// Starts the registry.
    pub fn start_registry(&mut self) {
        let config = self.path("registry.yml");
        let yaml = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {}\n",
            self.registry_root().display(),
            self.registry
        );
        std::fs::write(&config, yaml).unwrap();
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(&config);
        self.procs.push(Proc::start("registry", cmd, self.path("registry.log")));
        let url = format!("http://{}/v2/", self.registry);
        wait_until(Duration::from_secs(15), "the registry to answer", || ureq::get(&url).call().ok());
    }

    /// Stops the coordinator (SIGTERM) and starts a new one on the same address and state.
    pub fn restart_coordinator(&mut self) {
        let i = self.procs.iter().position(|p| p.name == "coordinator").expect("a coordinator");
        let mut old = self.procs.remove(i);
        old.stop();
        let previous = self.path("coordinator.log");
        std::fs::rename(&previous, self.path("coordinator.before-restart.log")).unwrap();
        self.start_coordinator();
    }

    /// Starts the coordinator (again, after [`Proc::kill9`] for example) on the same address and state.
    pub fn start_coordinator(&mut self) {
        if let Some(i) = self.procs.iter().position(|p| p.name == "coordinator") {
            let mut old = self.procs.remove(i);
            old.stop();
            let _ =
                std::fs::rename(self.path("coordinator.log"), self.path(&format!("coordinator.{}.log", rand_suffix())));
        }
        let config = self.path("coordinator.toml");
        let toml = format!(
            "listen = \"{}\"\ndata_dir = \"data\"\nheartbeat_interval_secs = {}\nheartbeat_timeout_secs = {}\nagent_wait_secs = 8\n\
             [tls]\nca_cert = \"ca/ca.pem\"\ncert = \"ca/coordinator.pem\"\nkey = \"ca/coordinator.key\"\nclient_tokens = \"ca/client-tokens\"\nca_key = \"ca/ca.key\"\n",
            self.coordinator, (self.heartbeat_timeout_secs / 4).max(1), self.heartbeat_timeout_secs
        );
        let toml = self.insecure_line() + &toml;
        std::fs::write(&config, toml).unwrap();
        let mut cmd = self.host_command("coordinator", &bin("archfarm"));
        cmd.arg("serve").arg("--config").arg(&config).env("RUST_LOG", "info");
        let mut p = Proc::start("coordinator", cmd, self.path("coordinator.log"));
        p.wait_for_log("coordinator listening", Duration::from_secs(15));
        self.procs.push(p);
    }

    /// Starts an agent with the given certificate and key (normally issued by the farm CA).
    pub fn start_agent(&mut self, spec: &AgentSpec, cert: &Path, key: &Path) {
        self.start_agent_with(spec, cert, key, &[]);
    }

    /// Starts an agent that has no certificate yet and enrolls with a join token; its key and
    /// certificate go to its own directory.
    pub fn start_joining_agent(&mut self, spec: &AgentSpec, token: &str) -> PathBuf {
        let dir = self.path(&format!("agent-{}", spec.name));
        let (cert, key) = (dir.join("tls/agent.pem"), dir.join("tls/agent.key"));
        self.start_agent_with(spec, &cert, &key, &["--join-token", token]);
        cert
    }

    /// Starts an agent with extra command-line arguments.
    pub fn start_agent_with(&mut self, spec: &AgentSpec, cert: &Path, key: &Path, args: &[&str]) {
        let dir = self.path(&format!("agent-{}", spec.name));
        std::fs::create_dir_all(&dir).unwrap();
        let mut toml = format!(
            "coordinator = \"{}\"\nname = \"{}\"\nserver_name = \"localhost\"\ncapacity = {}\ncache_dir = \"cache\"\nmax_backoff_secs = 2\n",
            self.coordinator, spec.name, spec.capacity
        );
        if let Some(native) = spec.native {
            toml.push_str(&format!("native_platform = \"{native}\"\n"));
        }
        toml.push_str(&self.insecure_line());
        toml.push_str(&format!(
            "[tls]\nca_cert = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            self.path("ca/ca.pem").display(),
            cert.display(),
            key.display()
        ));
        let config = dir.join("agent.toml");
        std::fs::write(&config, toml).unwrap();
        let mut cmd = self.host_command(&format!("agent {}", spec.name), &bin("archfarm-agent"));
        cmd.arg("--config").arg(&config).args(args).env("RUST_LOG", "info");
        self.procs.push(Proc::start(&format!("agent {}", spec.name), cmd, dir.join("agent.log")));
    }

    /// Waits until `agents ls` lists every name.
    pub fn wait_for_agents(&self, names: &[&str]) {
        wait_until(Duration::from_secs(30), &format!("agents {names:?} to register"), || {
            let out = self.archfarm(&["agents", "ls", "--format", "json"]);
            let listed: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let listed: Vec<&str> = listed.as_array()?.iter().filter_map(|a| a["name"].as_str()).collect();
            names.iter().all(|n| listed.contains(n)).then_some(())
        });
    }

    /// A process by name.
    pub fn proc(&mut self, name: &str) -> &mut Proc {
        self.procs.iter_mut().find(|p| p.name == name).unwrap_or_else(|| panic!("no process {name}"))
    }

    /// An `archfarm` client command with the farm's coordinator, token and CA in its environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("archfarm"));
        cmd.args(args)
            .env("ARCHFARM_COORDINATOR", &self.coordinator)
            .env("ARCHFARM_TOKEN", &self.token)
            .env("ARCHFARM_CA", self.path("ca/ca.pem"))
            .env_remove("RUST_LOG");
        cmd
    }

    /// Runs an `archfarm` client command to completion (bounded to 5 minutes).
    pub fn archfarm(&self, args: &[&str]) -> Output {
        run_bounded(self.command(args), Duration::from_secs(300))
    }

    /// `archfarm build --push --progress plain` of `ctx` for `platforms` (comma-separated) under
    /// `tags`, with `extra` flags before the context.
    pub fn build(&self, platforms: &str, tags: &[&str], ctx: &Path, extra: &[&str]) -> Output {
        let mut args = vec!["build", "--platform", platforms, "--push", "--progress", "plain"];
        for t in tags {
            args.extend(["-t", t]);
        }
        args.extend_from_slice(extra);
        let ctx = ctx.to_str().expect("utf-8 context path");
        args.push(ctx);
        self.archfarm(&args)
    }

    /// Starts `archfarm build` in the background (for faults injected mid-build).
    pub fn spawn_build(&self, platforms: &str, tags: &[&str], ctx: &Path) -> Child {
        self.spawn_build_on_interrupt(platforms, tags, ctx, "detach")
    }

    /// Starts `archfarm build` in the background with `--on-interrupt ACTION`.
    pub fn spawn_build_on_interrupt(&self, platforms: &str, tags: &[&str], ctx: &Path, action: &str) -> Child {
        let mut args =
            vec!["build", "--platform", platforms, "--push", "--progress", "plain", "--on-interrupt", action];
        for t in tags {
            args.extend(["-t", t]);
        }
        let ctx = ctx.to_str().expect("utf-8 context path");
        args.push(ctx);
        self.command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start archfarm build")
    }

    /// The id of the newest build, from `archfarm builds ls`.
    pub fn newest_build(&self) -> String {
        wait_until(Duration::from_secs(30), "a build to be recorded", || {
            let out = self.archfarm(&["builds", "ls", "--format", "json", "--limit", "1"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            v[0]["build"].as_str().map(str::to_owned)
        })
    }

    /// `archfarm builds show ID --format json`: what the coordinator's database holds.
    pub fn build_record(&self, id: &str) -> serde_json::Value {
        let out = self.archfarm(&["builds", "show", id, "--format", "json"]);
        assert!(out.status.success(), "builds show: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The (agent, outcome) of each attempt at job `job` of a build record, oldest first.
    pub fn attempts(record: &serde_json::Value, job: usize) -> Vec<(String, String)> {
        record["jobs"][job]["attempts"]
            .as_array()
            .expect("attempts")
            .iter()
            .map(|a| (a["agent"].as_str().unwrap().to_owned(), a["outcome"].as_str().unwrap_or("running").to_owned()))
            .collect()
    }

    /// The agent the coordinator assigned attempt `attempt` of a job to, from its log.
    pub fn assigned_agent(&mut self, attempt: u32) -> String {
        let needle = format!(" attempt={attempt}");
        let log = self.proc("coordinator").wait_for_log(&needle, Duration::from_secs(60));
        let line = log.lines().find(|l| l.contains("job assigned") && l.contains(&needle)).expect("an assignment line");
        let agent = line.split(" agent=").nth(1).expect("agent field");
        agent.split_whitespace().next().unwrap().to_owned()
    }

    /// `REGISTRY/name` of a repository in this farm's registry.
    pub fn repo(&self, name: &str) -> String {
        format!("{}/{name}", self.registry)
    }

    /// GET on the registry's HTTP API. Returns status, `Docker-Content-Digest` and body.
    pub fn registry_get(&self, path: &str, accept: &str) -> (u16, Option<String>, Vec<u8>) {
        let url = format!("http://{}{path}", self.registry);
        let resp = match ureq::get(&url).set("Accept", accept).call() {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("GET {url}: {e}"),
        };
        let status = resp.status();
        let digest = resp.header("Docker-Content-Digest").map(str::to_owned);
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).unwrap();
        (status, digest, body)
    }

    /// The tags the registry lists for a repository (none if it does not exist).
    pub fn tags(&self, name: &str) -> Vec<String> {
        let (status, _, body) = self.registry_get(&format!("/v2/{name}/tags/list"), "application/json");
        if status == 404 {
            return vec![];
        }
        assert_eq!(status, 200, "tags/list: {}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let mut tags: Vec<String> =
            v["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_owned)).collect();
        tags.sort();
        tags
    }

    /// Every process's log, for a failing test.
    pub fn dump_logs(&self) {
        let mut err = std::io::stderr().lock();
        for p in &self.procs {
            let _ = writeln!(err, "===== {} ({}) =====\n{}", p.name, p.log.display(), p.log_text());
        }
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        // Agents first, the registry last.
        while let Some(mut p) = self.procs.pop() {
            p.stop();
        }
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// Waits (bounded) for a spawned command and returns its output. Its pipes are drained while
/// it runs, so a command that prints more than a pipe holds cannot block.
pub fn wait_output(mut child: Child, timeout: Duration) -> Output {
    fn drain<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let out = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
            panic!("command did not finish within {timeout:?}: {out}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() }
}

/// Runs a command to completion, killing it after `timeout`.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    wait_output(child, timeout)
}

/// Runs a command and fails the test unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Output {
    let program = format!("{cmd:?}");
    let out = run_bounded(std::mem::replace(cmd, Command::new("true")), Duration::from_secs(300));
    assert!(
        out.status.success(),
        "{program} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// skopeo against a plain-http loopback registry.
pub mod skopeo {
    use super::*;

    /// `skopeo inspect --raw` of a reference: the manifest or index bytes as served.
    pub fn raw(reference: &str) -> Vec<u8> {
        run_ok(
            Command::new("skopeo")
                .args(["inspect", "--raw", "--tls-verify=false"])
                .arg(format!("docker://{reference}")),
        )
        .stdout
    }

    /// `skopeo inspect --config --raw`: the image config of a single-platform reference.
    pub fn config(reference: &str) -> serde_json::Value {
        let out = run_ok(
            Command::new("skopeo")
                .args(["inspect", "--config", "--raw", "--tls-verify=false"])
                .arg(format!("docker://{reference}")),
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Copies a single-platform image to a `dir:` layout and returns the bytes of `file` from
    /// its layers (last layer wins).
    pub fn file_from_image(reference: &str, file: &str) -> Option<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        run_ok(
            Command::new("skopeo")
                .args(["copy", "-q", "--src-tls-verify=false"])
                .arg(format!("docker://{reference}"))
                .arg(format!("dir:{}", dir.path().join("img").display())),
        );
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("img/manifest.json")).unwrap()).unwrap();
        let mut found = None;
        for layer in manifest["layers"].as_array().unwrap() {
            let hex = layer["digest"].as_str().unwrap().trim_start_matches("sha256:");
            let blob = std::fs::File::open(dir.path().join("img").join(hex)).unwrap();
            let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(blob));
            for entry in ar.entries().unwrap() {
                let mut entry = entry.unwrap();
                if entry.path().unwrap().to_string_lossy().trim_start_matches("./").trim_start_matches('/') == file {
                    let mut bytes = Vec::new();
                    std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
                    found = Some(bytes);
                }
            }
        }
        found
    }
}

/// The ELF machine of a binary: 62 is x86-64, 183 is AArch64.
pub fn elf_machine(bytes: &[u8]) -> Option<u16> {
    (bytes.len() > 20 && bytes.starts_with(b"\x7fELF")).then(|| u16::from_le_bytes([bytes[18], bytes[19]]))
}

/// ELF machine number of x86-64.
pub const EM_X86_64: u16 = 62;
/// ELF machine number of AArch64.
pub const EM_AARCH64: u16 = 183;

/// The sha256 digest of bytes, `sha256:<hex>`.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Output as text, for assertions and messages.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}
