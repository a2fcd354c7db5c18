//! One BuildKit build through the engine's API: the context streamed from its cache file, the
//! job's registry credentials handed to BuildKit's session, and the progress stream read to its
//! end.

use super::progress::Steps;
use super::{stream_error, DockerEngine};
use crate::engine::{BuildError, BuildSpec, LineSink};
use archfarm_shared::credentials::Credential;
use bollard::auth::DockerCredentials;
use bollard::models::BuildInfoAux;
use bollard::query_parameters::{BuildImageOptions, BuilderVersion};
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};

impl DockerEngine {
    /// Builds `spec` with BuildKit, sending every output line to `log`.
    pub(super) async fn build_with_buildkit(&self, spec: BuildSpec<'_>, log: LineSink<'_>) -> Result<(), BuildError> {
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
        let credentials = session_credentials(spec.credentials);
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
}

/// The build arguments of `spec`, with `BUILDKIT_INLINE_CACHE` when it asks for inline cache.
fn build_args(spec: &BuildSpec<'_>) -> HashMap<String, String> {
    let mut args: HashMap<String, String> = spec.build_args.iter().cloned().collect();
    if spec.inline_cache {
        args.insert("BUILDKIT_INLINE_CACHE".into(), "1".into());
    }
    args
}

/// Bytes of a build context read at a time while it streams to the engine.
const CONTEXT_CHUNK: usize = 256 << 10;

/// The job's credentials as BuildKit's session hands them out, keyed by host.
fn session_credentials(credentials: &BTreeMap<String, Credential>) -> HashMap<String, DockerCredentials> {
    credentials
        .iter()
        .map(|(host, credential)| {
            let mut c = DockerCredentials { serveraddress: Some(host.clone()), ..Default::default() };
            match credential {
                Credential::Basic { username, password } => {
                    (c.username, c.password) = (Some(username.clone()), Some(password.clone()))
                }
                Credential::IdentityToken(token) => c.identitytoken = Some(token.clone()),
            }
            (host.clone(), c)
        })
        .collect()
}
