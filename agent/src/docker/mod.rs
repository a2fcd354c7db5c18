//! The Docker Engine adapter: the only place bollard is used. Builds always go through the
//! engine's BuildKit (the classic builder mislabels cross-platform `FROM scratch` images).

use archfarm_shared::credentials::{self, Credential};
use archfarm_shared::{Digest, Platform};
use bollard::auth::DockerCredentials;
use bollard::models::BuildInfoAux;
use bollard::query_parameters::{BuildImageOptions, BuilderVersion, RemoveImageOptions};
use bollard::Docker;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use tracing::warn;

mod run;
pub use run::TestRun;

/// A Docker Engine.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
}

/// What the engine says about itself.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    /// The engine's platform, normalised (`x86_64` is `linux/amd64`).
    pub platform: Platform,
    /// Engine version, for example 20.10.24.
    pub version: String,
}

/// What to build.
#[derive(Debug)]
pub struct BuildSpec<'a> {
    /// Context tarball on disk.
    pub context: &'a Path,
    /// Dockerfile path inside the context.
    pub dockerfile: &'a str,
    /// Target platform.
    pub platform: &'a Platform,
    /// Local tag for the result.
    pub tag: &'a str,
    /// Build args.
    pub build_args: &'a [(String, String)],
    /// Labels.
    pub labels: &'a [(String, String)],
    /// Target stage.
    pub target: Option<&'a str>,
    /// Build every step again, without the cache.
    pub no_cache: bool,
    /// Fetch base images again even when the engine has them.
    pub pull: bool,
    /// Images to import build cache from.
    pub cache_from: &'a [String],
    /// Put BuildKit's inline cache in the image config.
    pub inline_cache: bool,
    /// BuildKit session id, unique per build.
    pub session: String,
}

/// A failed build: the engine's error and the failing step's last lines.
#[derive(Debug)]
pub struct BuildError {
    /// The engine's error message.
    pub message: String,
    /// The failing step's last lines (or the build's, if no step is named).
    pub tail: Vec<String>,
    /// The engine could not be reached or stopped answering (as opposed to reporting a failed build).
    pub engine_unreachable: bool,
}

impl Engine {
    /// Connects to `host` (`unix://`, `tcp://`), or to `DOCKER_HOST` / the local socket.
    pub async fn connect(host: Option<&str>) -> Result<Self, String> {
        let docker = match host {
            Some(h) => Docker::connect_with_host(h),
            None => Docker::connect_with_defaults(),
        }
        .map_err(|e| format!("cannot use Docker Engine at {}: {e}", host.unwrap_or("the default socket")))?;
        // Old daemons (20.10 speaks API 1.41) refuse requests without a version they know.
        let docker = docker.negotiate_version().await.map_err(|e| {
            format!(
                "cannot reach the Docker Engine at {}: {e} (is dockerd running?)",
                host.unwrap_or("the default socket")
            )
        })?;
        Ok(Engine { docker })
    }

    /// The engine's platform and version.
    pub async fn info(&self) -> Result<EngineInfo, String> {
        let info = self.docker.info().await.map_err(|e| format!("docker info: {e}"))?;
        let version = self.docker.version().await.map_err(|e| format!("docker version: {e}"))?;
        let os = info.os_type.unwrap_or_else(|| "linux".into());
        let machine = info.architecture.unwrap_or_default();
        let platform = Platform::from_host(&os, &machine)
            .map_err(|e| format!("the engine reports architecture {machine:?}: {e}"))?;
        Ok(EngineInfo { platform, version: version.version.unwrap_or_else(|| "unknown".into()) })
    }

    /// Builds with BuildKit, sending every output line to `log`.
    pub async fn build(&self, spec: BuildSpec<'_>, log: &mut (dyn FnMut(String) + Send)) -> Result<(), BuildError> {
        // Streamed from the cache file: an agent holds a chunk of a context, never all of it.
        // Reading the cached context is the host's business: reported as the engine's, not the build's.
        let context = tokio::fs::File::open(spec.context).await.map_err(|e| BuildError {
            message: format!("cannot read the build context: {e}"),
            tail: vec![],
            engine_unreachable: true,
        })?;
        let context = tokio_util::io::ReaderStream::with_capacity(context, CONTEXT_CHUNK);
        let options = BuildImageOptions {
            dockerfile: spec.dockerfile.to_owned(),
            t: Some(spec.tag.to_owned()),
            platform: spec.platform.to_string(),
            buildargs: Some(build_args(&spec)),
            labels: Some(spec.labels.iter().cloned().collect::<HashMap<_, _>>()),
            target: spec.target.unwrap_or_default().to_owned(),
            version: BuilderVersion::BuilderBuildKit,
            session: Some(spec.session),
            rm: true,
            nocache: spec.no_cache,
            pull: spec.pull.then(|| "1".to_owned()),
            cachefrom: (!spec.cache_from.is_empty()).then(|| spec.cache_from.to_vec()),
            ..Default::default()
        };
        let credentials = pull_credentials().await;
        let mut stream = self.docker.build_image(options, Some(credentials), Some(bollard::body_try_stream(context)));
        let mut steps = Steps::default();
        // Read the whole stream: status, logs and errors interleave until the end.
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(BuildInfoAux::BuildKit(status)) = info.aux {
                        steps.status(&status, log);
                    }
                    if let Some(text) = info.stream {
                        for line in text.lines().filter(|l| !l.trim().is_empty()) {
                            steps.plain(line.to_owned(), log);
                        }
                    }
                    if let Some(detail) = info.error_detail {
                        return Err(steps.failure(detail.message.unwrap_or_else(|| "build failed".into())));
                    }
                }
                Err(e) => {
                    // A build the engine reports failed is the build's; the engine failing to
                    // answer, or answering with its own 5xx, is the host's.
                    let unreachable = match &e {
                        bollard::errors::Error::DockerStreamError { .. } => false,
                        bollard::errors::Error::DockerResponseServerError { status_code, .. } => *status_code >= 500,
                        _ => true,
                    };
                    return Err(BuildError { engine_unreachable: unreachable, ..steps.failure(stream_error(e)) });
                }
            }
        }
        if let Some(message) = steps.error.take() {
            return Err(steps.failure(message));
        }
        Ok(())
    }

    /// Whether the engine answers and its BuildKit still builds: `/_ping`, then a one-line
    /// build (`FROM scratch` and a label, cached after the first time). Either failing means the
    /// engine cannot take jobs.
    pub async fn probe(&self) -> Result<(), String> {
        self.docker.ping().await.map_err(|e| format!("the engine does not answer /_ping: {e}"))?;
        let mut tar = tar::Builder::new(Vec::new());
        let dockerfile = b"FROM scratch\nLABEL org.archfarm.probe=1\n";
        let mut header = tar::Header::new_gnu();
        header.set_size(dockerfile.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "Dockerfile", &dockerfile[..]).map_err(|e| e.to_string())?;
        let context = tar.into_inner().map_err(|e| e.to_string())?;
        let options = BuildImageOptions {
            dockerfile: "Dockerfile".into(),
            t: Some(PROBE_TAG.into()),
            version: BuilderVersion::BuilderBuildKit,
            session: Some(format!("archfarm-probe-{:x}", rand::random::<u64>())),
            rm: true,
            ..Default::default()
        };
        let mut stream = self.docker.build_image(options, None, Some(bollard::body_full(context.into())));
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) if info.error_detail.is_some() => {
                    let message = info.error_detail.and_then(|d| d.message).unwrap_or_default();
                    return Err(format!("the engine's BuildKit fails a one-line build: {message}"));
                }
                Ok(_) => {}
                Err(e) => return Err(format!("the engine's BuildKit fails a one-line build: {}", stream_error(e))),
            }
        }
        Ok(())
    }

    /// The image id of `tag`: the digest of its config.
    pub async fn image_id(&self, tag: &str) -> Option<Digest> {
        self.docker.inspect_image(tag).await.ok()?.id?.parse().ok()
    }

    /// The diff ids of `tag`'s layers (`RootFS.Layers`), in order.
    pub async fn diff_ids(&self, tag: &str) -> Option<Vec<Digest>> {
        let layers = self.docker.inspect_image(tag).await.ok()?.root_fs?.layers?;
        layers.iter().map(|l| l.parse().ok()).collect()
    }

    /// `docker save` of `tag`, as a stream to read: nothing of it is held whole.
    pub fn export(&self, tag: &str) -> impl tokio::io::AsyncRead + Send + Unpin + 'static {
        use futures_util::TryStreamExt as _;
        let what = tag.to_owned();
        let stream = self
            .docker
            .export_image(tag)
            .map_err(move |e| std::io::Error::other(format!("exporting {what} from the engine: {e}")));
        tokio_util::io::StreamReader::new(Box::pin(stream))
    }

    /// Removes a local tag (the layers stay in the build cache).
    pub async fn untag(&self, tag: &str) {
        let _ = self
            .docker
            .remove_image(tag, Some(RemoveImageOptions { force: true, noprune: false, ..Default::default() }), None)
            .await;
    }
}

/// The build arguments of `spec`, with `BUILDKIT_INLINE_CACHE` when it asks for inline cache.
fn build_args(spec: &BuildSpec<'_>) -> HashMap<String, String> {
    let mut args: HashMap<String, String> = spec.build_args.iter().cloned().collect();
    if spec.inline_cache {
        args.insert("BUILDKIT_INLINE_CACHE".into(), "1".into());
    }
    args
}

/// The image the health probe builds, again and again.
const PROBE_TAG: &str = "archfarm-probe:latest";

/// Bytes of a build context read at a time while it streams to the engine.
const CONTEXT_CHUNK: usize = 256 << 10;

/// How long reading the Docker config and its credential helpers may take before a build.
const CREDENTIALS_DEADLINE: Duration = Duration::from_secs(10);

/// Credentials for every registry this agent's Docker config knows, keyed by host as BuildKit
/// asks for them through the build's session, so `FROM` and `COPY --from` images in private
/// registries pull. Read for each build: a `docker login` counts from the next build on.
async fn pull_credentials() -> HashMap<String, DockerCredentials> {
    let read = tokio::task::spawn_blocking(credentials::all);
    let found = match tokio::time::timeout(CREDENTIALS_DEADLINE, read).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            warn!("reading registry credentials failed: {e}; pulls are anonymous");
            return HashMap::new();
        }
        Err(_) => {
            warn!("reading registry credentials took over {CREDENTIALS_DEADLINE:?}; pulls are anonymous");
            return HashMap::new();
        }
    };
    found
        .into_iter()
        .map(|(host, credential)| {
            let mut c = DockerCredentials { serveraddress: Some(host.clone()), ..Default::default() };
            match credential {
                Credential::Basic { username, password } => (c.username, c.password) = (Some(username), Some(password)),
                Credential::IdentityToken(token) => c.identitytoken = Some(token),
            }
            (host, c)
        })
        .collect()
}

fn stream_error(e: bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerStreamError { error } => error,
        bollard::errors::Error::DockerResponseServerError { message, .. } => message,
        other => other.to_string(),
    }
}

const TAIL: usize = 20;

/// BuildKit progress turned into buildx-style plain lines (`#3 [2/2] COPY ...`), remembering
/// each step's last lines so a failure can show the failing step's output.
#[derive(Default)]
struct Steps {
    numbers: HashMap<String, usize>,
    names: HashMap<String, String>,
    done: std::collections::HashSet<String>,
    tails: HashMap<String, Vec<String>>,
    recent: Vec<String>,
    failed_vertex: Option<String>,
    error: Option<String>,
}

impl Steps {
    fn number(&mut self, vertex: &str) -> usize {
        let next = self.numbers.len() + 1;
        *self.numbers.entry(vertex.to_owned()).or_insert(next)
    }

    fn emit(&mut self, vertex: Option<&str>, line: String, log: &mut (dyn FnMut(String) + Send)) {
        let push = |v: &mut Vec<String>, l: &str| {
            if v.len() == TAIL {
                v.remove(0);
            }
            v.push(l.to_owned());
        };
        push(&mut self.recent, &line);
        if let Some(v) = vertex {
            push(self.tails.entry(v.to_owned()).or_default(), &line);
        }
        log(line);
    }

    fn plain(&mut self, line: String, log: &mut (dyn FnMut(String) + Send)) {
        self.emit(None, line, log);
    }

    fn status(&mut self, status: &bollard::moby::buildkit::v1::StatusResponse, log: &mut (dyn FnMut(String) + Send)) {
        for v in &status.vertexes {
            let n = self.number(&v.digest);
            if !self.names.contains_key(&v.digest) && !v.name.is_empty() {
                self.names.insert(v.digest.clone(), v.name.clone());
                self.emit(Some(&v.digest), format!("#{n} {}", v.name), log);
            }
            if !v.error.is_empty() {
                if self.failed_vertex.is_none() {
                    self.failed_vertex = Some(v.digest.clone());
                    self.error = Some(v.error.clone());
                }
                self.emit(Some(&v.digest), format!("#{n} ERROR: {}", v.error), log);
            } else if v.completed.is_some() && self.done.insert(v.digest.clone()) {
                let word = if v.cached { "CACHED" } else { "DONE" };
                self.emit(Some(&v.digest), format!("#{n} {word}"), log);
            }
        }
        for l in &status.logs {
            let n = self.number(&l.vertex);
            let text = String::from_utf8_lossy(&l.msg).into_owned();
            for line in text.lines().filter(|s| !s.trim().is_empty()) {
                self.emit(Some(&l.vertex), format!("#{n} {}", truncate(line)), log);
            }
        }
    }

    fn failure(&mut self, message: String) -> BuildError {
        let tail =
            self.failed_vertex.as_ref().and_then(|v| self.tails.get(v)).cloned().unwrap_or_else(|| self.recent.clone());
        BuildError { message, tail, engine_unreachable: false }
    }
}

fn truncate(line: &str) -> &str {
    const MAX: usize = 4000;
    if line.len() <= MAX {
        return line;
    }
    let mut end = MAX;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}
