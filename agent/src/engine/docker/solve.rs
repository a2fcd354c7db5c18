//! One build through BuildKit's Control API (`Solve`, and `Status` for its progress, over the
//! engine's `/grpc`), as buildx builds on the docker driver: the containerd image store's path.
//! The Dockerfile frontend reads the context from the agent's session ([`super::session`]),
//! the exporter pushes by digest or names the image in the engine, and cache goes where the
//! job says — the registry cache of every stage (`mode=max`) included, which the engine's
//! `/build` API cannot ask for.
//!
//! The single exporter is named in the request's first exporter fields, which every BuildKit
//! since 0.11 reads (BuildKit 0.13 moved them to a list that earlier ones ignore).

use super::control;
use super::progress::{Steps, Stopped};
use super::raw::RawApi;
use super::session::{ContextFiles, JobAuth, Session};
use crate::engine::{BuildSpec, LineSink};
use bollard::moby::buildkit::v1::{CacheOptions, CacheOptionsEntry, SolveRequest, StatusRequest};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How long the progress stream may run on once the build has ended.
const STATUS_DRAIN: Duration = Duration::from_secs(10);

/// Builds `spec` from the session's `files`, sending its progress to `steps` and `log`;
/// returns the exporter's response (`containerimage.digest`: the manifest it pushed or named).
pub(super) async fn solve(
    raw: &RawApi,
    spec: &BuildSpec<'_>,
    files: Arc<ContextFiles>,
    steps: &mut Steps,
    log: LineSink<'_>,
) -> Result<HashMap<String, String>, Stopped> {
    let engine = |message: String| Stopped { message, engine: true };
    // Open before the build asks for it, and kept open until its last message.
    let _session = Session::start(raw, &spec.session, JobAuth::new(spec.logins), Some(files)).await.map_err(engine)?;
    let mut control = control::connect(raw).await.map_err(engine)?;
    let reference = format!("{}-build", spec.session);
    let mut watcher = control.clone();
    let watch = async {
        let mut stream = watcher.status(StatusRequest { r#ref: reference.clone() }).await?.into_inner();
        while let Some(status) = stream.message().await? {
            steps.status(&status, log);
        }
        Ok::<_, tonic::Status>(())
    };
    let solving = control.solve(request(spec, &reference));
    tokio::pin!(watch, solving);
    // Progress and the build run side by side; the last messages can follow the answer.
    let solved = tokio::select! {
        solved = &mut solving => {
            if tokio::time::timeout(STATUS_DRAIN, &mut watch).await.is_err() {
                tracing::debug!("the build's progress stream did not end with the build");
            }
            solved
        }
        watched = &mut watch => {
            if let Err(e) = watched {
                tracing::debug!("the build's progress stream ended early: {}", e.message());
            }
            solving.await
        }
    };
    match solved {
        Ok(answer) => Ok(answer.into_inner().exporter_response),
        Err(status) => Err(Stopped { message: failure(&status), engine: is_engine_failure(&status) }),
    }
}

/// The engine's words for a failed build, without gRPC's wrapping.
fn failure(status: &tonic::Status) -> String {
    let message = status.message().trim();
    if message.is_empty() {
        format!("the engine's BuildKit failed the build ({:?})", status.code())
    } else {
        message.to_owned()
    }
}

/// Whether `status` says the engine (its connection, its BuildKit) failed rather than the build.
/// A status tonic made from a broken connection carries that error as its source; one the
/// engine's BuildKit sent (a failed step) has none.
fn is_engine_failure(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
        || matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded)
}

/// The `Solve` request for `spec` under the build reference `reference`.
fn request(spec: &BuildSpec<'_>, reference: &str) -> SolveRequest {
    let mut attrs = HashMap::from([
        ("filename".to_owned(), spec.dockerfile.to_owned()),
        ("platform".to_owned(), spec.platform.to_string()),
    ]);
    attrs.extend(spec.build_args.iter().map(|(k, v)| (format!("build-arg:{k}"), v.clone())));
    attrs.extend(spec.labels.iter().map(|(k, v)| (format!("label:{k}"), v.clone())));
    if let Some(target) = spec.target {
        attrs.insert("target".into(), target.to_owned());
    }
    if spec.no_cache {
        attrs.insert("no-cache".into(), String::new());
    }
    if spec.pull {
        attrs.insert("image-resolve-mode".into(), "pull".into());
    }
    let imports: Vec<CacheOptionsEntry> = spec.cache_from.iter().map(|r| entry("registry", &[("ref", r)])).collect();
    if !imports.is_empty() {
        // The frontend reads them too, for the cache of its base images' resolution.
        let listed: Vec<_> = imports.iter().map(|e| serde_json::json!({"Type": e.r#type, "Attrs": e.attrs})).collect();
        attrs.insert("cache-imports".into(), serde_json::Value::from(listed).to_string());
    }
    let mut exports = Vec::new();
    if spec.inline_cache {
        exports.push(entry("inline", &[]));
    }
    if let Some(cache) = spec.cache_to_max {
        // A cache that cannot be written is said in the log and fails no build, as on every engine.
        let attrs = [
            ("ref", cache),
            ("mode", "max"),
            ("oci-mediatypes", "true"),
            ("image-manifest", "true"),
            ("ignore-error", "true"),
        ];
        exports.push(entry("registry", &attrs));
    }
    let (exporter, exporter_attrs) = match spec.push_to {
        Some(repository) => (
            "image",
            pairs(&[
                ("name", repository),
                ("push", "true"),
                ("push-by-digest", "true"),
                ("oci-mediatypes", "true"),
                ("unpack", "false"),
            ]),
        ),
        // The engine's own exporter: the image named in its store, for the tests and the push.
        None => ("moby", pairs(&[("name", spec.tag)])),
    };
    SolveRequest {
        r#ref: reference.to_owned(),
        session: spec.session.clone(),
        frontend: "dockerfile.v0".into(),
        frontend_attrs: attrs,
        exporter_deprecated: exporter.into(),
        exporter_attrs_deprecated: exporter_attrs,
        cache: Some(CacheOptions { exports, imports, ..Default::default() }),
        ..Default::default()
    }
}

fn pairs(list: &[(&str, &str)]) -> HashMap<String, String> {
    list.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn entry(kind: &str, attrs: &[(&str, &str)]) -> CacheOptionsEntry {
    CacheOptionsEntry { r#type: kind.to_owned(), attrs: pairs(attrs) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use archfarm_shared::Platform;

    fn spec(platform: &Platform) -> BuildSpec<'_> {
        BuildSpec::plain(
            std::path::Path::new("/nonexistent"),
            "sub/Dockerfile",
            platform,
            "archfarm-job:1",
            "s1".into(),
        )
    }

    #[test]
    fn a_pushed_build_exports_by_digest_and_its_cache_of_every_stage() {
        let platform = "linux/arm64".parse().unwrap();
        let args = [("V".to_owned(), "1".to_owned())];
        let from = ["reg/app:c-linux-arm64".to_owned()];
        let spec = BuildSpec {
            build_args: &args,
            target: Some("rel"),
            cache_from: &from,
            cache_to_max: Some("reg/app:c-linux-arm64"),
            push_to: Some("reg/app"),
            no_cache: true,
            ..spec(&platform)
        };
        let req = request(&spec, "s1-build");
        assert_eq!(req.frontend, "dockerfile.v0");
        assert_eq!(req.session, "s1");
        assert_eq!(req.frontend_attrs["filename"], "sub/Dockerfile");
        assert_eq!(req.frontend_attrs["platform"], "linux/arm64");
        assert_eq!(req.frontend_attrs["build-arg:V"], "1");
        assert_eq!(req.frontend_attrs["target"], "rel");
        assert_eq!(req.frontend_attrs["no-cache"], "");
        assert!(req.frontend_attrs["cache-imports"].contains("reg/app:c-linux-arm64"));
        assert_eq!(req.exporter_deprecated, "image");
        assert_eq!(req.exporter_attrs_deprecated["push-by-digest"], "true");
        assert_eq!(req.exporter_attrs_deprecated["name"], "reg/app");
        let cache = req.cache.unwrap();
        assert_eq!(cache.exports.len(), 1);
        assert_eq!(cache.exports[0].r#type, "registry");
        assert_eq!(cache.exports[0].attrs["mode"], "max");
        assert_eq!(cache.exports[0].attrs["ignore-error"], "true", "a cache not written fails no build");
        assert_eq!(cache.imports[0].attrs["ref"], "reg/app:c-linux-arm64");
    }

    #[test]
    fn an_unpushed_build_is_named_in_the_engine_with_inline_cache_when_asked() {
        let platform = "linux/amd64".parse().unwrap();
        let req = request(&BuildSpec { inline_cache: true, ..spec(&platform) }, "r");
        assert_eq!(req.exporter_deprecated, "moby");
        assert_eq!(req.exporter_attrs_deprecated["name"], "archfarm-job:1");
        assert_eq!(req.cache.unwrap().exports[0].r#type, "inline");
        assert!(!req.frontend_attrs.contains_key("cache-imports"));
        assert!(!req.frontend_attrs.contains_key("no-cache"));
    }

    #[test]
    fn only_a_lost_engine_is_the_engines_failure() {
        assert!(is_engine_failure(&tonic::Status::unavailable("connection reset")));
        let broken = tonic::Status::from_error(Box::new(std::io::Error::other("connection closed")));
        assert!(is_engine_failure(&broken), "a status made from a broken connection: {broken:?}");
        let failed = tonic::Status::unknown("process \"/bin/sh -c false\" did not complete successfully: exit code: 1");
        assert!(!is_engine_failure(&failed));
        assert!(failure(&failed).starts_with("process"));
    }
}
