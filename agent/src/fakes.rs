//! Stand-ins for the agent's two outside parties, for unit tests: an [`Engine`] that builds
//! nothing and exports a prepared image, and a [`CoordinatorLink`] that serves one context from
//! memory and keeps what is handed over. Both note what they were asked, for tests to check.

use crate::engine::{BuildError, BuildSpec, Built, Engine, EngineInfo, ImageExport, LineSink, TestRun};
use crate::executor::Executor;
use crate::link::{ContextDownload, CoordinatorLink, FetchError, Held};
use archfarm_shared::protocol::{DiskUsage, JobSpec};
use archfarm_shared::registry::RegistryClients;
use archfarm_shared::{BuildId, Digest, JobId};
use futures_util::future::BoxFuture;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt};

/// An engine whose builds succeed at once and whose every image exports as [`FakeEngine::export`].
#[derive(Debug, Default)]
pub struct FakeEngine {
    /// What `export` streams (a `docker save` tarball).
    pub export: Vec<u8>,
    /// What the build cache holds.
    pub cache: DiskUsage,
    /// What a prune reclaims.
    pub reclaims: u64,
    /// Every call, in order: `build TAG`, `untag TAG`, `prune ALL KEEP`, ….
    pub calls: Mutex<Vec<String>>,
}

impl FakeEngine {
    fn note(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Engine for FakeEngine {
    fn info(&self) -> BoxFuture<'_, Result<EngineInfo, String>> {
        Box::pin(async {
            Ok(EngineInfo {
                platform: "linux/amd64".parse().unwrap(),
                engine: archfarm_shared::protocol::EngineFacts::of_version("fake"),
            })
        })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    fn build<'a>(&'a self, spec: BuildSpec<'a>, log: LineSink<'a>) -> BoxFuture<'a, Result<Built, BuildError>> {
        self.note(format!("build {}", spec.tag));
        log(format!("#1 building {}", spec.tag));
        Box::pin(async { Ok(Built::default()) })
    }

    fn run_test<'a>(&'a self, _: &'a str, _: &'a [String], _: LineSink<'a>) -> BoxFuture<'a, Result<TestRun, String>> {
        Box::pin(async { Ok(TestRun { exit_code: 0, tail: vec![] }) })
    }

    fn image_id<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Option<Digest>> {
        Box::pin(async { None })
    }

    fn diff_ids<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Option<Vec<Digest>>> {
        Box::pin(async { None })
    }

    fn export(&self, tag: &str) -> ImageExport {
        self.note(format!("export {tag}"));
        Box::new(std::io::Cursor::new(self.export.clone()))
    }

    fn untag<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, ()> {
        self.note(format!("untag {tag}"));
        Box::pin(async {})
    }

    fn build_cache(&self) -> BoxFuture<'_, Result<DiskUsage, String>> {
        Box::pin(async { Ok(self.cache.clone()) })
    }

    fn prune(&self, all: bool, keep: Option<u64>) -> BoxFuture<'_, Result<u64, String>> {
        self.note(format!("prune {all} {keep:?}"));
        Box::pin(async move { Ok(self.reclaims) })
    }
}

/// A coordinator that answers a context fetch with `context`, and keeps the blobs handed over.
#[derive(Debug)]
pub struct FakeLink {
    /// The answer to every context fetch: its bytes, or why there are none.
    pub context: Result<Vec<u8>, FetchError>,
    /// Context fetches asked for.
    pub fetches: Mutex<u32>,
    /// Bytes of the context sent, per fetch (chunks the caller held are not).
    pub sent: Mutex<Vec<u64>>,
    /// Blobs handed over, in order.
    pub blobs: Mutex<Vec<(Digest, Vec<u8>)>>,
}

impl FakeLink {
    /// A link that serves `context`.
    pub fn serving(context: Result<Vec<u8>, FetchError>) -> Self {
        FakeLink { context, fetches: Mutex::new(0), sent: Mutex::default(), blobs: Mutex::default() }
    }
}

impl CoordinatorLink for FakeLink {
    fn fetch_context<'a>(
        &'a self,
        _: &'a Digest,
        held: Held<'a>,
    ) -> BoxFuture<'a, Result<ContextDownload, FetchError>> {
        *self.fetches.lock().unwrap() += 1;
        let answer = self.context.clone().map(|whole| {
            let chunks = archfarm_shared::chunking::chunks_of(&whole);
            let sent: Vec<bool> = chunks.iter().map(|c| !held(&c.digest)).collect();
            let (mut bytes, mut at) = (Vec::new(), 0usize);
            for (c, send) in chunks.iter().zip(&sent) {
                if *send {
                    bytes.extend_from_slice(&whole[at..at + c.size as usize]);
                }
                at += c.size as usize;
            }
            self.sent.lock().unwrap().push(bytes.len() as u64);
            ContextDownload { size: whole.len() as u64, chunks, sent, bytes: Box::new(std::io::Cursor::new(bytes)) }
        });
        Box::pin(async move { answer })
    }

    fn hand_over_blob<'a>(
        &'a self,
        digest: &'a Digest,
        size: u64,
        bytes: &'a mut (dyn AsyncRead + Send + Unpin),
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let mut got = Vec::new();
            bytes.read_to_end(&mut got).await.map_err(|e| e.to_string())?;
            assert_eq!(got.len() as u64, size, "{digest} is as long as said");
            self.blobs.lock().unwrap().push((digest.clone(), got));
            Ok(())
        })
    }
}

/// A tarball of `(path, bytes)` entries.
pub fn tarball(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, path, *data).unwrap();
    }
    tar.into_inner().unwrap()
}

/// A linux/amd64 job over the context `context`, pushing to `repository` (none: a hand-over).
pub fn job(context: &[u8], repository: &str) -> JobSpec {
    JobSpec {
        job: JobId::random(),
        build: BuildId::random(),
        platform: "linux/amd64".parse().unwrap(),
        context: Digest::of(context),
        dockerfile: "Dockerfile".into(),
        build_args: vec![],
        target: None,
        labels: vec![],
        repository: repository.into(),
        attempt: 1,
        no_cache: false,
        pull: false,
        tests: vec![],
        test_target: None,
        cache_from: vec![],
        inline_cache: false,
        provenance: true,
        read_scopes: vec![],
        cache_to_max: None,
    }
}

/// An executor for linux/amd64 over `engine`, caching contexts in `dir`.
pub fn executor(engine: Arc<FakeEngine>, dir: &std::path::Path) -> Executor {
    let platforms = vec!["linux/amd64".parse().unwrap()];
    Executor {
        name: "fake-1".parse().unwrap(),
        platforms,
        capabilities: Default::default(),
        engine,
        cache: crate::context_cache::ContextCache::open(dir.to_owned(), 1 << 30).unwrap(),
        registries: Arc::new(RegistryClients::new(vec![])),
        layers: Default::default(),
        images: Default::default(),
    }
}
