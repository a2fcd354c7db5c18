//! One BuildKit build of a job. On the classic image store (Docker Engine 20.10's overlay2) it
//! goes through the engine's `/build` API: the context streamed from its cache file in the
//! body, a BuildKit session of the agent's own serving the job's registry logins
//! ([`super::session`]), and the progress stream read to its end. The engine's health probe
//! builds through `/build` on either store (the session serving its context on containerd's).
//!
//! On the containerd image store the job goes through BuildKit's own API ([`super::solve`])
//! and BuildKit pushes the image itself, by digest, into the job's repository
//! (`type=image,push=true,push-by-digest=true`, as buildx does): only the layers the registry
//! lacks, with the job's logins, and no export. The exporter answers with the pushed
//! manifest's digest (`containerimage.digest`), and the agent tags that image locally, so the
//! test gate and the clean-up find it as on 20.10. The image is not unpacked into the
//! snapshotter after the push (`unpack=false`): a test container unpacks it when it starts, and
//! a build without tests saves the time (an unchanged 300 MB image: 2.1 s to export and push,
//! 1.2 s without).

use super::progress::{Steps, Stopped};
use super::raw::RawApi;
use super::session::{ContextFiles, JobAuth, Session};
use super::DockerEngine;
use crate::engine::{BuildError, BuildSpec, Built, JobLogins, LineSink};
use archfarm_shared::Digest;
use bollard::models::{BuildInfo, BuildInfoAux};
use bollard::query_parameters::{BuildImageOptions, BuilderVersion};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::{Body, Frame};
use std::collections::HashMap;

/// Bytes of a build context read at a time while it streams to the engine.
const CONTEXT_CHUNK: usize = 256 << 10;
/// Longest message of the engine's progress stream read (a status batch of many steps).
const MAX_MESSAGE: usize = 32 << 20;

impl DockerEngine {
    /// Builds `spec` with BuildKit, sending every output line to `log`: on the containerd image
    /// store through BuildKit's own API ([`super::solve`]), on the classic store through `/build`.
    pub(super) async fn build_with_buildkit(
        &self,
        spec: BuildSpec<'_>,
        log: LineSink<'_>,
    ) -> Result<Built, BuildError> {
        // Reading the cached context is the host's business: reported as the engine's, not the build's.
        let unreadable = |e: String| BuildError {
            message: format!("cannot read the build context: {e}"),
            tail: vec![],
            engine_unreachable: true,
        };
        if !self.containerd_store.load(std::sync::atomic::Ordering::Relaxed) {
            return self.build_classic(spec, log).await;
        }
        let mut steps = Steps::default();
        let files = ContextFiles::index(spec.context).await.map_err(unreadable)?;
        let answer = super::solve::solve(&self.raw, &spec, files, &mut steps, log).await;
        let answer = answer
            .map_err(|stopped| BuildError { engine_unreachable: stopped.engine, ..steps.failure(stopped.message) })?;
        // BuildKit's answer is the verdict: a step it marked failed and then did without (a
        // cache it could not import or export) fails nothing.
        if let Some(message) = steps.error.take() {
            tracing::info!("the build succeeded past a failed step: {message}");
        }
        let Some(repository) = spec.push_to else { return Ok(Built::default()) };
        let pushed = answer.get("containerimage.digest").and_then(|d| d.parse::<Digest>().ok()).ok_or_else(|| {
            steps.failure(format!("the engine pushed into {repository} but did not say the image's digest"))
        })?;
        self.tag_locally(&pushed, spec.tag)
            .await
            .map_err(|e| BuildError { engine_unreachable: true, ..steps.failure(e) })?;
        Ok(Built { pushed: Some(pushed) })
    }

    /// Builds `spec` through `/build`, the context streamed from its cache file in the request
    /// body: an agent holds a chunk of a context, never all of it. The engine exports into its
    /// own image store, under the job's tag; the agent pushes.
    async fn build_classic(&self, spec: BuildSpec<'_>, log: LineSink<'_>) -> Result<Built, BuildError> {
        if spec.cache_to_max.is_some() {
            // The coordinator places such jobs on engines that can; an older agent's word is not trusted.
            return Err(BuildError {
                message: "this agent's engine exports no registry cache of every stage (--cache-to mode=max needs \
                          the containerd image store)"
                    .into(),
                tail: vec![],
                // Not the build's fault: the job runs again on an agent whose engine can.
                engine_unreachable: true,
            });
        }
        let context = tokio::fs::File::open(spec.context).await.map_err(|e| BuildError {
            message: format!("cannot read the build context: {e}"),
            tail: vec![],
            engine_unreachable: true,
        })?;
        let context = tokio_util::io::ReaderStream::with_capacity(context, CONTEXT_CHUNK);
        let body = StreamBody::new(context.map_ok(Frame::data));
        let options = BuildImageOptions {
            dockerfile: spec.dockerfile.to_owned(),
            t: Some(spec.tag.to_owned()),
            platform: spec.platform.to_string(),
            buildargs: Some(build_args(&spec)),
            labels: Some(spec.labels.iter().cloned().collect::<HashMap<_, _>>()),
            target: spec.target.unwrap_or_default().to_owned(),
            version: BuilderVersion::BuilderBuildKit,
            session: Some(spec.session.clone()),
            rm: true,
            nocache: spec.no_cache,
            pull: spec.pull.then(|| "1".to_owned()),
            cachefrom: (!spec.cache_from.is_empty()).then(|| spec.cache_from.to_vec()),
            ..Default::default()
        };
        let mut steps = Steps::default();
        // Every message is read: status, logs and errors interleave until the end.
        let mut each = |info: BuildInfo, steps: &mut Steps| {
            if let Some(BuildInfoAux::BuildKit(status)) = info.aux {
                steps.status(&status, log);
            }
            if let Some(text) = info.stream {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    steps.plain(line.to_owned(), log);
                }
            }
            info.error_detail.map(|d| d.message.unwrap_or_else(|| "build failed".into()))
        };
        let call = Call { options: &options, logins: spec.logins, files: None };
        let result = build(&self.raw, call, body, |info| each(info, &mut steps)).await;
        if let Err(stopped) = result {
            return Err(BuildError { engine_unreachable: stopped.engine, ..steps.failure(stopped.message) });
        }
        if let Some(message) = steps.error.take() {
            return Err(steps.failure(message));
        }
        Ok(Built::default())
    }

    /// Tags the image `id` as `tag` (`name:tag`) in the engine.
    async fn tag_locally(&self, id: &Digest, tag: &str) -> Result<(), String> {
        let (repo, version) = tag.rsplit_once(':').unwrap_or((tag, "latest"));
        let options =
            bollard::query_parameters::TagImageOptions { repo: Some(repo.to_owned()), tag: Some(version.to_owned()) };
        self.docker
            .tag_image(&id.to_string(), Some(options))
            .await
            .map_err(|e| format!("tagging the built image {id} as {tag}: {e}"))
    }
}

/// What one `/build` call asks.
pub(super) struct Call<'a> {
    /// Its query parameters.
    pub(super) options: &'a BuildImageOptions,
    /// The logins its session serves.
    pub(super) logins: &'a JobLogins,
    /// The context, when the session serves it.
    pub(super) files: Option<std::sync::Arc<ContextFiles>>,
}

/// Runs one BuildKit build `call` of the context `body` (or the session's files), in a session
/// of its own, handing each message of the engine's answer to `each`, which says when one
/// reports the build failed.
pub(super) async fn build<B>(
    raw: &RawApi,
    call: Call<'_>,
    body: B,
    mut each: impl FnMut(BuildInfo) -> Option<String>,
) -> Result<(), Stopped>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let engine = |message: String| Stopped { message, engine: true };
    let Call { options, logins, files } = call;
    let id = options.session.as_deref().unwrap_or_default();
    // Open before the build asks for it, and kept open until its last message.
    let _session = Session::start(raw, id, JobAuth::new(logins), files).await.map_err(engine)?;
    let query =
        serde_urlencoded::to_string(options).map_err(|e| engine(format!("encoding the build's options: {e}")))?;
    let request = hyper::Request::post(format!("/build?{query}"))
        .header(hyper::header::CONTENT_TYPE, "application/x-tar")
        .body(body)
        .map_err(|e| engine(e.to_string()))?;
    let response = raw.send(request).await.map_err(engine)?;
    let status = response.status();
    if !status.is_success() {
        // A build the engine refuses (a bad option) is the build's; its own 5xx is the host's.
        let said = Limited::new(response.into_body(), 64 << 10).collect().await.map(|b| b.to_bytes());
        let said = said.unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&said)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&said).trim().to_owned());
        return Err(Stopped { message: format!("{status}: {message}"), engine: status.is_server_error() });
    }
    let answer =
        tokio_util::io::StreamReader::new(response.into_body().into_data_stream().map_err(std::io::Error::other));
    let mut lines =
        tokio_util::codec::FramedRead::new(answer, tokio_util::codec::LinesCodec::new_with_max_length(MAX_MESSAGE));
    while let Some(line) = lines.next().await {
        let line = line.map_err(|e| engine(format!("reading the build's progress from the engine: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let info = serde_json::from_str::<BuildInfo>(&line)
            .unwrap_or_else(|_| BuildInfo { stream: Some(line), ..Default::default() });
        if let Some(message) = each(info) {
            return Err(Stopped { message, engine: false });
        }
    }
    Ok(())
}

/// The build arguments of `spec`, with `BUILDKIT_INLINE_CACHE` when it asks for inline cache.
fn build_args(spec: &BuildSpec<'_>) -> HashMap<String, String> {
    let mut args: HashMap<String, String> = spec.build_args.iter().cloned().collect();
    if spec.inline_cache {
        args.insert("BUILDKIT_INLINE_CACHE".into(), "1".into());
    }
    args
}
