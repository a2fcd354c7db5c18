//! Runs one job: check the platform was declared, get the context, build with BuildKit, push
//! by digest. Every outcome, good or bad, becomes a [`JobOutcome`] for the coordinator.

use crate::bases::JobBases;
use crate::context_cache::ContextCache;
use crate::engine::{BuildSpec, Engine};
use crate::fault;
use crate::link::{CoordinatorLink, FetchError};
use crate::push;
use crate::reuse::ImageCache;
use archfarm_shared::credentials;
use archfarm_shared::protocol::{FailureKind, JobFailure, JobOutcome, JobSpec};
use archfarm_shared::registry::{self, RegistryClients};
use archfarm_shared::retry::{retry, Policy};
use archfarm_shared::{platform, AgentName, Platform};
use std::sync::Arc;
use tracing::info;

/// What a job needs from the agent.
#[derive(Debug, Clone)]
pub struct Executor {
    /// This agent's name.
    pub name: AgentName,
    /// Platforms it declared.
    pub platforms: Vec<Platform>,
    /// Its x86-64 level, CPU features and labels, as registered.
    pub capabilities: archfarm_shared::capabilities::Capabilities,
    /// Its engine.
    pub engine: Arc<dyn Engine>,
    /// Its context cache.
    pub cache: ContextCache,
    /// One client per registry pushed to, kept between jobs.
    pub registries: Arc<RegistryClients>,
    /// Layers compressed and pushed before.
    pub layers: push::LayerCache,
    /// Images pushed before.
    pub images: ImageCache,
}

/// Runs the jobs an agent is given. The product's runner is [`Executor`]; the control-plane
/// benchmark plugs in one that completes jobs at once.
pub trait Runner: Send + Sync + std::fmt::Debug + 'static {
    /// Runs `spec`, sending output lines to `log`; every outcome is a [`JobOutcome`]. What
    /// the job needs of the coordinator (its context, a hand-over) goes through `link`.
    fn run(
        &self,
        link: &dyn CoordinatorLink,
        spec: JobSpec,
        log: crate::job_log::JobLog,
    ) -> impl std::future::Future<Output = JobOutcome> + Send;

    /// Answers a housekeeping request about this host's caches.
    fn housekeeping(
        &self,
        request: archfarm_shared::protocol::Housekeeping,
    ) -> impl std::future::Future<Output = archfarm_shared::protocol::HousekeepingReply> + Send {
        let _ = request;
        async { archfarm_shared::protocol::HousekeepingReply::Failed("this agent keeps no caches".into()) }
    }
}

impl Runner for Executor {
    fn run(
        &self,
        link: &dyn CoordinatorLink,
        spec: JobSpec,
        log: crate::job_log::JobLog,
    ) -> impl std::future::Future<Output = JobOutcome> + Send {
        self.execute(link, spec, log)
    }

    fn housekeeping(
        &self,
        request: archfarm_shared::protocol::Housekeeping,
    ) -> impl std::future::Future<Output = archfarm_shared::protocol::HousekeepingReply> + Send {
        Executor::housekeeping(self, request)
    }
}

fn failure(kind: FailureKind, message: impl Into<String>, log_tail: Vec<String>) -> JobOutcome {
    JobOutcome::Failed(JobFailure { kind, message: message.into(), log_tail })
}

impl Executor {
    /// Runs `spec`, sending build output lines to `log`.
    pub async fn execute(&self, link: &dyn CoordinatorLink, spec: JobSpec, log: crate::job_log::JobLog) -> JobOutcome {
        if !self.capabilities.builds(&self.platforms, &spec.platform) {
            return failure(
                FailureKind::PlatformNotDeclared,
                format!(
                    "agent {} was asked to build {} but declares only {} ({}); it never builds a platform it did not \
                     declare",
                    self.name,
                    spec.platform,
                    platform::list(&self.platforms),
                    self.capabilities.summary_or("no level")
                ),
                vec![],
            );
        }
        let fetching = std::time::Instant::now();
        let fetch = self.cache.get(link, &spec.context);
        let context = match with_progress(fetch, &log, "fetching the build context").await {
            Ok(path) => path,
            Err(FetchError::Missing(reason)) => return failure(FailureKind::ContextMissing, reason, vec![]),
            Err(FetchError::Failed(e)) => return failure(fault::kind_of(&e, FailureKind::Context), e, vec![]),
        };
        let tag = format!("archfarm/{}:build", spec.job);
        // Read once for the scope check, the provenance and the layer cache alike.
        let bases = JobBases::new(&context, &spec);
        let logins = match crate::job_credentials::for_job(&spec, &bases, &self.registries).await {
            Ok(logins) => logins,
            Err(refused) => return failure(FailureKind::Build, refused, vec![]),
        };
        // A build whose inputs are all those of one this agent pushed before is not run again.
        let key = self.build_key(&spec, &bases).await;
        let reusing = std::time::Instant::now();
        if let Some(image) = self.push_again_unbuilt(&spec, key.as_ref(), &bases, &log).await {
            let (fetch_ms, push_ms) = ((reusing - fetching).as_millis(), reusing.elapsed().as_millis());
            info!(job = %spec.job, digest = %image.digest, fetch_ms, build_ms = 0, push_ms, "pushed by digest");
            return JobOutcome::Pushed(image);
        }
        let build = BuildSpec {
            context: &context,
            dockerfile: &spec.dockerfile,
            platform: &spec.platform,
            tag: &tag,
            build_args: &spec.build_args,
            labels: &spec.labels,
            target: spec.target.as_deref(),
            no_cache: spec.no_cache,
            pull: spec.pull,
            cache_from: &spec.cache_from,
            inline_cache: spec.inline_cache,
            cache_to_max: spec.cache_to_max.as_deref(),
            session: format!("archfarm-{}-{:x}", spec.job, rand::random::<u32>()),
            logins: &logins,
            // Nothing is pushed before the native tests pass: a build with tests is exported after them.
            push_to: (!spec.repository.is_empty() && spec.tests.is_empty() && spec.test_target.is_none())
                .then_some(spec.repository.as_str()),
        };
        let mut sink = |line: String| {
            log.send(line);
        };
        let started = std::time::Instant::now();
        let pushed = match self.engine.build(build, &mut sink).await {
            Ok(built) => built.pushed,
            Err(e) => {
                if let Some(registry) = fault::refused_pull(&e.message) {
                    return failure(FailureKind::PullRefused, self.pull_refused(&registry, &e.message), e.tail);
                }
                return failure(fault::of_build(&e.message, e.engine_unreachable), e.message, e.tail);
            }
        };
        if let Err(failure) = self.native_tests(&spec, &context, &tag, &log, &logins).await {
            self.engine.untag(&tag).await;
            return JobOutcome::Failed(failure);
        }
        let built = started.elapsed();
        let resolved =
            if spec.repository.is_empty() || !spec.provenance { vec![] } else { bases.resolve(&self.registries).await };
        let outcome = match pushed {
            // BuildKit pushed it already: only what the registry holds is read back.
            Some(digest) => self.pushed_by_engine(&spec.repository, &digest).await,
            None => {
                log.send(format!("pushing {} by digest to {}", spec.platform, spec.repository));
                let push = self.export_and_push(link, &tag, &spec, &bases);
                with_progress(push, &log, "pushing").await.map(|image| (image, None))
            }
        };
        let outcome = match outcome {
            Ok((image, config)) => {
                if let Some(key) = &key {
                    // BuildKit's push says its config; the engine's image id is the config otherwise.
                    let id = match config {
                        Some(config) => Some(config),
                        None => self.engine.image_id(&tag).await,
                    };
                    if let Some(id) = id {
                        self.images.built(key, &id);
                    }
                }
                Ok(image)
            }
            Err(e) => Err(e),
        };
        self.engine.untag(&tag).await;
        match outcome {
            Ok(mut image) => {
                image.bases = resolved;
                let (build_ms, push_ms) = (built.as_millis(), (started.elapsed() - built).as_millis());
                let fetch_ms = (started - fetching).as_millis();
                info!(job = %spec.job, digest = %image.digest, fetch_ms, build_ms, push_ms, "pushed by digest");
                log.send(format!("pushed {}@{}", spec.repository, image.digest));
                JobOutcome::Pushed(image)
            }
            Err((kind, e)) => failure(kind, e, vec![]),
        }
    }

    /// Why a pull from `registry` was refused, and what the platform team can do about it.
    fn pull_refused(&self, registry: &str, engine_said: &str) -> String {
        let config =
            credentials::config_path().map_or_else(|| "~/.docker/config.json".to_owned(), |p| p.display().to_string());
        let why = if credentials::for_registry(registry).is_some() {
            format!("agent {} has credentials for it in {config}, but the registry did not accept them", self.name)
        } else {
            format!("agent {} has no credentials for it", self.name)
        };
        format!(
            "pulling from {registry} was refused: {why}. Run `docker login {registry}` as the user the agent runs \
             as (or give it a credential helper, or point DOCKER_CONFIG at a config that has them); the agent reads \
             them at every build. The engine said: {engine_said}"
        )
    }

    /// Teaches the layer cache the layers of the build's base images, unless it knows every
    /// layer of the image already.
    async fn learn_bases(&self, tag: &str, spec: &JobSpec, bases: &JobBases, registry: &str) {
        let Some(ids) = self.engine.diff_ids(tag).await else { return };
        if !ids.iter().all(|id| self.layers.get(id).is_some()) {
            bases.seed(&self.layers, &self.registries, &spec.platform, &ids, registry).await;
        }
    }

    async fn export_and_push(
        &self,
        link: &dyn CoordinatorLink,
        tag: &str,
        spec: &JobSpec,
        bases: &JobBases,
    ) -> Result<archfarm_shared::protocol::PushedImage, (FailureKind, String)> {
        let repository = spec.repository.as_str();
        if repository.is_empty() {
            return self.export_and_hand_over(link, tag).await;
        }
        let repo = registry::parse_reference(&format!("{repository}:latest"))
            .map_err(|e| (FailureKind::Push, e.to_string()))?;
        if let Some(id) = self.engine.image_id(tag).await {
            let reg = self.registries.get(&repo);
            if let Some((image, how)) = self.images.push_again(&reg, &repo, &id).await {
                info!(image = %id, "pushed again without an export ({how})");
                return Ok(image);
            }
        }
        self.learn_bases(tag, spec, bases, repo.registry()).await;
        let exporting = std::time::Instant::now();
        let (_work, prepared) = self.export(tag).await?;
        let export_ms = exporting.elapsed().as_millis();
        info!(export_ms, layers = prepared.layers.len(), "exported the image from the engine");
        // A registry blip should not cost a rebuild: retry the push (it is idempotent).
        retry(Policy::IMAGE_PUSH, "push", || {
            push::push(repository, &prepared, &self.layers, &self.images, &self.registries)
        })
        .await
        .map_err(|e| {
            // What the registry answered is the registry's; only compressing is this host's.
            let e = e.into_last();
            let kind =
                if e.starts_with("compressing") { fault::kind_of(&e, FailureKind::Push) } else { FailureKind::Push };
            (kind, format!("push failed {} times; last error: {e}", Policy::IMAGE_PUSH.tries().unwrap_or(1)))
        })
    }
}

impl Executor {
    /// The key of what decides `spec`'s image ([`crate::reuse::build_key`]); `None` for a job
    /// that must build, or whose result is not known from its inputs.
    async fn build_key(&self, spec: &JobSpec, bases: &JobBases) -> Option<archfarm_shared::Digest> {
        if !crate::reuse::may_reuse(spec) {
            return None;
        }
        crate::reuse::build_key(spec, &bases.pinned(&self.registries, &spec.platform).await?)
    }

    /// Pushes again, without building, the image an earlier build of the same `key` made, when
    /// the registry still holds what that needs.
    async fn push_again_unbuilt(
        &self,
        spec: &JobSpec,
        key: Option<&archfarm_shared::Digest>,
        bases: &JobBases,
        log: &crate::job_log::JobLog,
    ) -> Option<archfarm_shared::protocol::PushedImage> {
        let id = self.images.made_by(key?)?;
        let repo = registry::parse_reference(&format!("{}:latest", spec.repository)).ok()?;
        let reg = self.registries.get(&repo);
        let (mut image, how) = self.images.push_again(&reg, &repo, &id).await?;
        info!(job = %spec.job, image = %id, digest = %image.digest, "pushed again without a build ({how})");
        log.send(format!(
            "the inputs are those of an earlier build on this agent (context, options, and the digest of every image \
             the Dockerfile reads): its image is pushed again without building ({how})"
        ));
        if spec.provenance {
            image.bases = bases.resolve(&self.registries).await;
        }
        log.send(format!("pushed {}@{}", spec.repository, image.digest));
        Some(image)
    }

    /// The image BuildKit pushed into `repository` as `digest`: its media type and size, as the
    /// registry serves it (the coordinator checks the rest, as for every image), and its config's
    /// digest. This agent remembers it, to push it again without a build.
    async fn pushed_by_engine(
        &self,
        repository: &str,
        digest: &archfarm_shared::Digest,
    ) -> Result<(archfarm_shared::protocol::PushedImage, Option<archfarm_shared::Digest>), (FailureKind, String)> {
        let failed = |e: String| (FailureKind::Push, format!("reading back the image the engine pushed: {e}"));
        let repo = registry::parse_reference(&format!("{repository}:latest")).map_err(|e| failed(e.to_string()))?;
        let reg = self.registries.get(&repo);
        let accept = [archfarm_shared::oci::OCI_MANIFEST, archfarm_shared::oci::DOCKER_MANIFEST];
        let (manifest, _) =
            reg.manifest(&repo.with_digest(digest), &accept).await.map_err(|e| failed(e.to_string()))?;
        let media_type = serde_json::from_slice::<serde_json::Value>(&manifest)
            .ok()
            .and_then(|m| m["mediaType"].as_str().map(str::to_owned))
            .unwrap_or_else(|| archfarm_shared::oci::OCI_MANIFEST.to_owned());
        info!(image = %digest, "pushed by the engine's BuildKit, no export");
        let config = self.remember_pushed(&repo, &manifest, &media_type);
        let image = archfarm_shared::protocol::PushedImage {
            digest: digest.clone(),
            media_type,
            size: manifest.len() as u64,
            bases: vec![],
        };
        Ok((image, config))
    }

    /// Remembers an OCI image manifest BuildKit pushed into `repo`, by its config's digest, for
    /// [`crate::reuse::ImageCache::push_again`]; returns that digest.
    fn remember_pushed(
        &self,
        repo: &archfarm_shared::reference::ImageRef,
        manifest: &bytes::Bytes,
        media_type: &str,
    ) -> Option<archfarm_shared::Digest> {
        // Pushed again, it is pushed as an OCI manifest: only one is remembered.
        if media_type != archfarm_shared::oci::OCI_MANIFEST {
            return None;
        }
        let (config, layers) = archfarm_shared::oci::manifest_blobs(manifest).ok()?;
        let id = config.digest.clone();
        let blobs = std::iter::once(config).chain(layers).collect();
        self.images.insert(&id, manifest.clone(), blobs, &repo.name());
        Some(id)
    }

    /// Exports the image and hands it to the coordinator (a build that names no registry).
    async fn export_and_hand_over(
        &self,
        link: &dyn CoordinatorLink,
        tag: &str,
    ) -> Result<archfarm_shared::protocol::PushedImage, (FailureKind, String)> {
        let (_work, prepared) = self.export(tag).await?;
        crate::handover::hand_over(link, &prepared).await.map_err(|e| (FailureKind::Push, e))
    }

    /// Exports the image `tag` from the engine, unpacked into a work directory that must
    /// outlive what is done with it.
    async fn export(&self, tag: &str) -> Result<(tempfile::TempDir, push::Prepared), (FailureKind, String)> {
        // Exporting and unpacking are this host's work: a full disk there is the host's.
        let local = |e: String| (fault::kind_of(&e, FailureKind::Push), e);
        let work = tempfile::tempdir().map_err(|e| local(format!("cannot create a work directory: {e}")))?;
        // The export streams straight into unpacking: it is never written whole first.
        let saved = tokio_util::io::SyncIoBridge::new(self.engine.export(tag));
        let dir = work.path().to_owned();
        let prepared = tokio::task::spawn_blocking(move || push::prepare(saved, &dir))
            .await
            .map_err(|e| local(format!("preparing the image: {e}")))?
            .map_err(local)?;
        Ok((work, prepared))
    }
}

/// How often a long quiet step says it is still at work.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs `work`, saying in the job's log every [`PROGRESS_EVERY`] that it is still at it: a
/// long fetch, export or upload is quiet otherwise, and must not look like a hung build to
/// the coordinator's idle limit.
async fn with_progress<T>(work: impl std::future::Future<Output = T>, log: &crate::job_log::JobLog, what: &str) -> T {
    tokio::pin!(work);
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(started + PROGRESS_EVERY, PROGRESS_EVERY);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => {
                log.send(format!("{what}: still at it after {} s", started.elapsed().as_secs()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{self, FakeEngine, FakeLink};
    use archfarm_shared::Digest;

    async fn run(executor: &Executor, link: &FakeLink, spec: JobSpec) -> JobOutcome {
        let (tx, _rx) = crate::job_log::channel();
        executor.execute(link, spec, tx).await
    }

    fn failure_of(outcome: JobOutcome) -> JobFailure {
        match outcome {
            JobOutcome::Failed(f) => f,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_context_not_had_fails_the_job_with_whose_fault_it_is_and_builds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let engine = std::sync::Arc::new(FakeEngine::default());
        let executor = fakes::executor(engine.clone(), dir.path());
        let spec = fakes::job(b"context", "r:5000/app");

        let gone = FakeLink::serving(Err(FetchError::Missing("collected an hour ago".into())));
        let f = failure_of(run(&executor, &gone, spec.clone()).await);
        assert_eq!((f.kind, f.message.as_str()), (FailureKind::ContextMissing, "collected an hour ago"));
        let full = FakeLink::serving(Err(FetchError::Failed("writing: No space left on device (os error 28)".into())));
        assert_eq!(failure_of(run(&executor, &full, spec.clone()).await).kind, FailureKind::DiskFull);
        // The cache checks the digest, whatever the link delivers.
        let wrong = FakeLink::serving(Ok(b"other bytes".to_vec()));
        assert_eq!(failure_of(run(&executor, &wrong, spec).await).kind, FailureKind::Context);
        assert!(engine.calls().is_empty(), "nothing is built without its context: {:?}", engine.calls());
    }

    #[tokio::test]
    async fn a_build_with_no_registry_hands_its_image_over_manifest_last_and_reuses_its_context() {
        let layer = fakes::tarball(&[("bin/app", b"\x7fELF")]);
        let config: &[u8] = br#"{"architecture":"amd64","os":"linux"}"#;
        let listing: &[u8] = br#"[{"Config":"c.json","Layers":["l1/layer.tar"]}]"#;
        let saved = fakes::tarball(&[("c.json", config), ("l1/layer.tar", &layer), ("manifest.json", listing)]);
        let engine = std::sync::Arc::new(FakeEngine { export: saved, ..Default::default() });
        let dir = tempfile::tempdir().unwrap();
        let executor = fakes::executor(engine.clone(), dir.path());
        let context = fakes::tarball(&[("Dockerfile", b"FROM scratch\nCOPY app /app\n")]);
        let link = FakeLink::serving(Ok(context.clone()));
        for _ in 0..2 {
            let spec = fakes::job(&context, "");
            let tag = format!("archfarm/{}:build", spec.job);
            let image = match run(&executor, &link, spec).await {
                JobOutcome::Pushed(image) => image,
                other => panic!("expected an image, got {other:?}"),
            };
            let blobs = std::mem::take(&mut *link.blobs.lock().unwrap());
            assert_eq!(blobs.len(), 3, "the layer, the config, the manifest");
            assert_eq!(blobs[1], (Digest::of(config), config.to_vec()));
            let (digest, manifest) = &blobs[2];
            assert_eq!((digest, &Digest::of(manifest)), (&image.digest, &image.digest));
            assert_eq!(
                engine.calls()[engine.calls().len() - 3..],
                [format!("build {tag}"), format!("export {tag}"), format!("untag {tag}")]
            );
        }
        assert_eq!(*link.fetches.lock().unwrap(), 1, "the second job finds the context in the cache");
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_quiet_step_says_it_is_still_at_work() {
        let (tx, mut rx) = crate::job_log::channel();
        let out = with_progress(tokio::time::sleep(std::time::Duration::from_secs(95)), &tx, "pushing").await;
        assert_eq!(out, ());
        let lines = rx.rest();
        assert_eq!(
            lines,
            ["pushing: still at it after 30 s", "pushing: still at it after 60 s", "pushing: still at it after 90 s"]
        );
    }
}
