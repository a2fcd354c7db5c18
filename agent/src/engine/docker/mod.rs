//! The Docker Engine backend of [`Engine`]: the only place bollard is used, plus the raw API
//! calls bollard's types cannot express. Builds always go through the engine's BuildKit (the
//! classic builder mislabels cross-platform `FROM scratch` images), in a BuildKit session of
//! the agent's own. On the overlay2 store the built image leaves the engine as a `docker save`
//! export for the agent to push; on the containerd store BuildKit pushes it by digest itself.
//!
//! # Layout
//! - `raw`: the engine's API beneath bollard, and connections upgraded to h2c.
//! - `session`: the BuildKit session of one build, and the registry logins it serves.
//! - `build`: a BuildKit build through `/build`, naming that session.
//! - `progress`: BuildKit's status turned into buildx-style lines and a failing step's tail.
//! - `run`: a test container.
//! - `build_cache`: the build cache's size and pruning.
//! - `control`: BuildKit's Control API over `/grpc`, for its version.

use super::{BuildError, BuildSpec, Built, Engine, EngineInfo, ImageExport, JobLogins, LineSink, TestRun};
use archfarm_shared::protocol::{DiskUsage, EngineFacts};
use archfarm_shared::{Digest, Platform};
use bollard::query_parameters::{BuildImageOptions, BuilderVersion, RemoveImageOptions};
use bollard::Docker;
use futures_util::future::BoxFuture;

mod build;
mod build_cache;
mod control;
mod progress;
mod raw;
mod run;
mod session;
mod solve;

/// The local Docker Engine, reached through bollard (and its raw API for the build cache).
#[derive(Debug, Clone)]
pub struct DockerEngine {
    docker: Docker,
    raw: raw::RawApi,
    /// Whether the engine keeps images in the containerd store (which takes a build context only
    /// through the session, and whose BuildKit pushes by digest): learned from `/info` at start,
    /// at each probe and each `info`.
    containerd_store: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl DockerEngine {
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
        let engine = DockerEngine { docker, raw: raw::RawApi::new(host), containerd_store: Default::default() };
        engine.learn_store().await.map_err(|e| format!("docker info: {e}"))?;
        Ok(engine)
    }

    /// Reads the engine's image store from `/info` and remembers whether it is containerd's.
    async fn learn_store(&self) -> Result<bollard::models::SystemInfo, bollard::errors::Error> {
        let info = self.docker.info().await?;
        let containerd = uses_containerd_store(&info);
        self.containerd_store.store(containerd, std::sync::atomic::Ordering::Relaxed);
        Ok(info)
    }

    /// `/_ping`, then a one-line build (`FROM scratch` and a label, cached after the first
    /// time): an engine that answers but whose BuildKit is wedged fails the second.
    async fn ping_and_build(&self) -> Result<(), String> {
        self.docker.ping().await.map_err(|e| format!("the engine does not answer /_ping: {e}"))?;
        // An engine restarted on another image store builds the next job the way that store needs.
        self.learn_store().await.map_err(|e| format!("the engine does not answer /info: {e}"))?;
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
        let body = http_body_util::Full::new(bytes::Bytes::from(context.clone()));
        let failed = |info: bollard::models::BuildInfo| info.error_detail.map(|d| d.message.unwrap_or_default());
        let by_session = self.containerd_store.load(std::sync::atomic::Ordering::Relaxed);
        let files = if by_session {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let path = dir.path().join("probe.tar");
            std::fs::write(&path, &context).map_err(|e| e.to_string())?;
            let files = session::ContextFiles::index(&path).await?;
            Some((dir, files))
        } else {
            None
        };
        let options = BuildImageOptions { remote: by_session.then(|| "client-session".to_owned()), ..options };
        let body = if by_session { http_body_util::Full::default() } else { body };
        let logins = JobLogins::default();
        let call = build::Call { options: &options, logins: &logins, files: files.as_ref().map(|(_, f)| f.clone()) };
        build::build(&self.raw, call, body, failed)
            .await
            .map_err(|stopped| format!("the engine's BuildKit fails a one-line build: {}", stopped.message))?;
        Ok(())
    }
}

impl Engine for DockerEngine {
    fn info(&self) -> BoxFuture<'_, Result<EngineInfo, String>> {
        Box::pin(async move {
            let info = self.learn_store().await.map_err(|e| format!("docker info: {e}"))?;
            let version = self.docker.version().await.map_err(|e| format!("docker version: {e}"))?;
            let store = uses_containerd_store(&info);
            let image_store = if store { "containerd".to_owned() } else { info.driver.clone().unwrap_or_default() };
            let os = info.os_type.unwrap_or_else(|| "linux".into());
            let machine = info.architecture.unwrap_or_default();
            let platform = Platform::from_host(&os, &machine)
                .map_err(|e| format!("the engine reports architecture {machine:?}: {e}"))?;
            let engine = EngineFacts {
                version: version.version.unwrap_or_else(|| "unknown".into()),
                api_version: version.api_version.unwrap_or_default(),
                image_store,
                buildkit_version: control::buildkit_version(&self.raw).await,
            };
            Ok(EngineInfo { platform, engine })
        })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.ping_and_build())
    }

    fn build<'a>(&'a self, spec: BuildSpec<'a>, log: LineSink<'a>) -> BoxFuture<'a, Result<Built, BuildError>> {
        Box::pin(self.build_with_buildkit(spec, log))
    }

    fn run_test<'a>(
        &'a self,
        image: &'a str,
        argv: &'a [String],
        log: LineSink<'a>,
    ) -> BoxFuture<'a, Result<TestRun, String>> {
        Box::pin(self.run_container(image, argv, log))
    }

    fn image_id<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, Option<Digest>> {
        Box::pin(async move { self.docker.inspect_image(tag).await.ok()?.id?.parse().ok() })
    }

    /// `RootFS.Layers` of the image.
    fn diff_ids<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, Option<Vec<Digest>>> {
        Box::pin(async move {
            let layers = self.docker.inspect_image(tag).await.ok()?.root_fs?.layers?;
            layers.iter().map(|l| l.parse().ok()).collect()
        })
    }

    /// `docker save` of `tag`.
    fn export(&self, tag: &str) -> ImageExport {
        use futures_util::TryStreamExt as _;
        let what = tag.to_owned();
        let stream = self
            .docker
            .export_image(tag)
            .map_err(move |e| std::io::Error::other(format!("exporting {what} from the engine: {e}")));
        Box::new(tokio_util::io::StreamReader::new(Box::pin(stream)))
    }

    fn untag<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let options = RemoveImageOptions { force: true, noprune: false, ..Default::default() };
            let _ = self.docker.remove_image(tag, Some(options), None).await;
        })
    }

    fn build_cache(&self) -> BoxFuture<'_, Result<DiskUsage, String>> {
        Box::pin(self.raw.build_cache())
    }

    fn prune(&self, all: bool, keep: Option<u64>) -> BoxFuture<'_, Result<u64, String>> {
        Box::pin(self.raw.prune(all, keep))
    }
}

/// Whether `/info` says the engine keeps images in the containerd store (`driver-type:
/// io.containerd.snapshotter.v1` in its driver status).
fn uses_containerd_store(info: &bollard::models::SystemInfo) -> bool {
    let status = info.driver_status.iter().flatten();
    status
        .into_iter()
        .any(|pair| pair.len() == 2 && pair[0] == "driver-type" && pair[1].starts_with("io.containerd.snapshotter"))
}

/// The image the health probe builds, again and again.
const PROBE_TAG: &str = "archfarm-probe:latest";
