//! The build engine as the agent sees it: one [`Engine`] trait holding everything the agent
//! asks of it (what it is, whether it is healthy, building, the built image, a test container,
//! its build cache), and the small types that cross it. The rest of the agent holds an
//! `Arc<dyn Engine>` and never names the implementation, so another engine backend can sit
//! beside [`docker`] without the executor, health or housekeeping changing.

use archfarm_shared::credentials::Credential;
use archfarm_shared::protocol::DiskUsage;
use archfarm_shared::{Digest, Platform};
use futures_util::future::BoxFuture;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

pub mod docker;

/// A sink for output lines (build progress, a test's output), called once per line.
pub type LineSink<'a> = &'a mut (dyn FnMut(String) + Send);

/// An exported image (`docker save` layout), read as it streams: never held whole.
pub type ImageExport = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// Everything the agent asks of its engine. Errors are what the engine said, in words a
/// platform team can act on; [`BuildError`] also says whose fault a failed build is.
pub trait Engine: Send + Sync + std::fmt::Debug {
    /// The engine's platform and version.
    fn info(&self) -> BoxFuture<'_, Result<EngineInfo, String>>;

    /// Whether the engine answers and still builds; either failing means it cannot take jobs.
    fn probe(&self) -> BoxFuture<'_, Result<(), String>>;

    /// Builds `spec`, sending every output line to `log`. The image is tagged `spec.tag`
    /// locally either way; where the engine can, it has also pushed it by digest into
    /// `spec.push_to` ([`Built::pushed`]).
    fn build<'a>(&'a self, spec: BuildSpec<'a>, log: LineSink<'a>) -> BoxFuture<'a, Result<Built, BuildError>>;

    /// Runs `argv` in `image` (its entrypoint kept, as `docker run IMAGE ARGV…`), with no
    /// network, sending each output line to `log`; the container is removed however it ends.
    fn run_test<'a>(
        &'a self,
        image: &'a str,
        argv: &'a [String],
        log: LineSink<'a>,
    ) -> BoxFuture<'a, Result<TestRun, String>>;

    /// The image id of `tag`: the digest of its config.
    fn image_id<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, Option<Digest>>;

    /// The diff ids of `tag`'s layers, in order.
    fn diff_ids<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, Option<Vec<Digest>>>;

    /// The image `tag`, exported as a stream to read.
    fn export(&self, tag: &str) -> ImageExport;

    /// Removes a local tag (the layers stay in the build cache).
    fn untag<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, ()>;

    /// What the build cache holds (the context-cache fields left at zero).
    fn build_cache(&self) -> BoxFuture<'_, Result<DiskUsage, String>>;

    /// Frees build cache: what no image uses, or all of it with `all`, keeping `keep` bytes
    /// when given. Returns the bytes the engine reclaimed.
    fn prune(&self, all: bool, keep: Option<u64>) -> BoxFuture<'_, Result<u64, String>>;

    /// Prunes the build cache down to `max` bytes when it holds more, the records used least
    /// recently first, whatever uses them. Returns the bytes reclaimed, if it pruned.
    fn keep_within(&self, max: u64) -> BoxFuture<'_, Result<Option<u64>, String>> {
        Box::pin(async move {
            let usage = self.build_cache().await?;
            if usage.build_cache_bytes <= max {
                return Ok(None);
            }
            self.prune(true, Some(max)).await.map(Some)
        })
    }
}

/// Connects to the engine at `host` (`unix://`, `tcp://`), or to `DOCKER_HOST` / the local
/// socket: the local Docker Engine, the only backend so far.
pub async fn connect(host: Option<&str>) -> Result<Arc<dyn Engine>, String> {
    Ok(Arc::new(docker::DockerEngine::connect(host).await?))
}

/// What the engine says about itself.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    /// The engine's platform, normalised (`x86_64` is `linux/amd64`).
    pub platform: Platform,
    /// Its version, API, image store and BuildKit.
    pub engine: archfarm_shared::protocol::EngineFacts,
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
    /// The registry cache (a reference scoped to the platform) BuildKit exports the cache of
    /// every stage to (`--cache-to ...,mode=max`); only the containerd image store's engines can.
    pub cache_to_max: Option<&'a str>,
    /// BuildKit session id, unique per build.
    pub session: String,
    /// The registry logins BuildKit may use, and the scopes that bound the tokens they buy.
    pub logins: &'a JobLogins,
    /// The repository (`registry/name`) BuildKit may push the image into by digest itself,
    /// where the engine's image store lets it (containerd's); the agent pushes otherwise.
    pub push_to: Option<&'a str>,
}

impl<'a> BuildSpec<'a> {
    /// A build of the Dockerfile `dockerfile` in `context` for `platform`, tagged `tag`, with
    /// every option at its default: no build args, labels, target, cache or logins, nothing
    /// pushed by the engine.
    pub fn plain(
        context: &'a Path,
        dockerfile: &'a str,
        platform: &'a Platform,
        tag: &'a str,
        session: String,
    ) -> Self {
        BuildSpec {
            context,
            dockerfile,
            platform,
            tag,
            build_args: &[],
            labels: &[],
            target: None,
            no_cache: false,
            pull: false,
            cache_from: &[],
            inline_cache: false,
            cache_to_max: None,
            session,
            logins: &NO_LOGINS,
            push_to: None,
        }
    }
}

/// What a build left besides its local tag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Built {
    /// The manifest digest BuildKit pushed into [`BuildSpec::push_to`], when it pushed.
    pub pushed: Option<Digest>,
}

/// The registry logins one job may use: only those of the registries it reads or writes,
/// never every login of the agent; on registries that want bearer tokens, only through tokens
/// for the build token's scopes.
#[derive(Debug, Clone, Default)]
pub struct JobLogins {
    /// Credentials by host (`host[:port]`, Docker Hub as `credentials::HUB_HOST`).
    pub credentials: BTreeMap<String, Credential>,
    /// The hosts among them whose registries want bearer tokens.
    pub token_auth: BTreeSet<String>,
    /// The build token's scopes (none: bound by none).
    pub scopes: Vec<String>,
}

/// No logins at all, for builds that read nothing private.
static NO_LOGINS: JobLogins =
    JobLogins { credentials: BTreeMap::new(), token_auth: BTreeSet::new(), scopes: Vec::new() };

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

/// How a test ended.
#[derive(Debug)]
pub struct TestRun {
    /// The command's exit code.
    pub exit_code: i64,
    /// Its last lines of output.
    pub tail: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::FakeEngine;

    #[tokio::test]
    async fn the_build_cache_is_pruned_only_past_its_limit_and_down_to_it() {
        let cache = DiskUsage { build_cache_bytes: 1000, ..Default::default() };
        let engine = FakeEngine { cache, reclaims: 300, ..Default::default() };
        assert_eq!(engine.keep_within(1000).await, Ok(None));
        assert!(engine.calls().is_empty(), "a cache at its limit is left alone");
        assert_eq!(engine.keep_within(700).await, Ok(Some(300)));
        assert_eq!(engine.calls(), ["prune true Some(700)"], "all records, least recently used first, 700 kept");
    }
}
