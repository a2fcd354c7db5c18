//! `archfarm build`: pack and upload the context once, ask for one native build per platform,
//! follow it, and report the published index (or why nothing was published).

use crate::context;
use crate::export;
use crate::follow;
use crate::output::{self, Output};
use crate::progress::{Mode, Progress};
use crate::{Connection, Remote};
use anyhow::{bail, Context as _};
use archfarm_shared::cache::CacheSpec;
use archfarm_shared::protocol::{BuildRequest, ClientRequest, PlatformResult};
use archfarm_shared::request;
use archfarm_shared::{Digest, Platform};
use std::path::PathBuf;
use std::time::Duration;

/// The Dockerfile's path in the context unless `-f` says otherwise.
const DEFAULT_DOCKERFILE: &str = "Dockerfile";
/// Default largest context the client packs (the coordinator has its own limit).
const MAX_CONTEXT: u64 = 8 << 30;

/// `archfarm build` flags; they mean what they mean in `docker buildx build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    #[command(flatten)]
    remote: Remote,
    /// Target platforms, comma-separated or repeated (linux/amd64,linux/arm64). The index lists
    /// them in this order.
    #[arg(long, value_delimiter = ',', required_unless_present = "optional_platforms")]
    platform: Vec<String>,
    /// A platform built only if an agent fits it and it succeeds; otherwise the index is
    /// published without it, and the client, `builds show` and the metadata file say why
    /// (comma-separated or repeated). Not in buildx.
    #[arg(long = "optional-platform", value_delimiter = ',', value_name = "PLATFORM")]
    optional_platforms: Vec<Platform>,
    /// Name and tag, REGISTRY/REPOSITORY:TAG (repeatable; all in one repository).
    #[arg(short = 't', long = "tag")]
    tags: Vec<String>,
    /// Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Build-time variable, KEY=VALUE, or KEY to take it from the environment (repeatable).
    #[arg(long = "build-arg")]
    build_args: Vec<String>,
    /// Build stage to stop at.
    #[arg(long)]
    target: Option<String>,
    /// Image label, KEY=VALUE (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Push the per-platform images and the index to the registry.
    #[arg(long)]
    push: bool,
    /// Load the image into the local Docker Engine under the -t names: the platform that
    /// matches the engine when the build has several.
    #[arg(long)]
    load: bool,
    /// Where the result goes, as in buildx (repeatable): type=oci,dest=FILE (every platform);
    /// type=docker,dest=FILE (one platform, for docker load); type=local,dest=DIR (each
    /// platform's filesystem); type=registry or type=image,push=true (as --push); dest=- is
    /// standard output.
    #[arg(short = 'o', long = "output")]
    outputs: Vec<String>,
    /// A registry (host:port) the client reads over plain http for --load and --output
    /// although it is not on loopback (repeatable).
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Write the result as JSON to this file (index digest; per platform the digest, agent and
    /// duration).
    #[arg(long = "metadata-file")]
    metadata_file: Option<PathBuf>,
    /// Progress output.
    #[arg(long, value_enum, default_value = "auto")]
    progress: Mode,
    /// What Ctrl-C does: ask (on a terminal; detach otherwise), detach (the build goes on;
    /// `archfarm builds watch ID` reattaches) or cancel (stop the build everywhere).
    #[arg(long, value_enum, default_value = "ask")]
    on_interrupt: follow::OnInterrupt,
    /// Longest one attempt of a platform may run, for example 90m or 2h; past it the job is
    /// stopped on its agent and tried again elsewhere if another agent can take it. Default: the
    /// coordinator's job_timeout_secs (1 h unless configured).
    #[arg(long = "job-timeout", value_parser = humantime::parse_duration)]
    job_timeout: Option<Duration>,
    /// Longest one attempt may go without a line of build output, for example 15m. Default: the
    /// coordinator's job_idle_timeout_secs (15 min unless configured).
    #[arg(long = "idle-timeout", value_parser = humantime::parse_duration)]
    idle_timeout: Option<Duration>,
    /// A command to run in each platform's freshly built image, on its own agent, natively,
    /// before anything is pushed or published (repeatable; quoted as a shell would, run without
    /// one: `--test '/app --self-test'`). One that exits non-zero fails its platform.
    #[arg(long = "test")]
    tests: Vec<String>,
    /// A Dockerfile stage (say `test`) built on each platform's agent after the image; if it
    /// fails, its platform fails and nothing is published.
    #[arg(long = "test-target")]
    test_target: Option<String>,
    /// Build cache to import, as in buildx: type=registry,ref=REGISTRY/REPOSITORY:TAG (each
    /// platform reads its own tag, TAG-os-arch, and the reference itself) (repeatable).
    #[arg(long = "cache-from")]
    cache_from: Vec<String>,
    /// Build cache to export, as in buildx: type=registry,ref=REGISTRY/REPOSITORY:TAG writes each
    /// platform's cache to its own tag, TAG-os-arch (mode=max, the cache of every stage, on
    /// agents of the containerd image store); type=inline puts it in the image.
    #[arg(long = "cache-to")]
    cache_to: Vec<String>,
    /// Do not use BuildKit's cache: every step runs again, on every platform's agent.
    #[arg(long = "no-cache")]
    no_cache: bool,
    /// Always fetch base images from their registry, even when an agent's engine has them.
    #[arg(long)]
    pull: bool,
    /// Build only on agents labelled KEY=VALUE (in their config's `labels`), or, as
    /// `cpu=FEATURE`, whose CPU has that feature; `PLATFORM:KEY=VALUE` for one platform only
    /// (repeatable). Not in buildx.
    #[arg(long = "require", value_name = "[PLATFORM:]KEY=VALUE")]
    require: Vec<archfarm_shared::capabilities::Requirement>,
    /// Attach an SLSA provenance attestation to each platform's image, as BuildKit stores one
    /// (on by default, as in buildx; `--provenance=false` for registries that dislike
    /// `unknown/unknown` index entries). `mode=min` and `mode=max` record the same here.
    #[arg(
        long,
        value_name = "true|false|mode=min|mode=max",
        default_value = "true",
        num_args = 0..=1,
        default_missing_value = "true",
        require_equals = true,
        value_parser = provenance_flag
    )]
    provenance: bool,
    /// Build context directory.
    context: PathBuf,
}

/// `--provenance` as buildx takes it.
fn provenance_flag(value: &str) -> Result<bool, String> {
    match value {
        "true" | "1" | "mode=min" | "mode=max" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(format!("{other:?}: expected true, false, mode=min or mode=max")),
    }
}

fn pairs(values: &[String], flag: &str, from_env: bool) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for v in values {
        let (k, val) = match v.split_once('=') {
            Some((k, val)) => (k.to_owned(), val.to_owned()),
            None if from_env => match std::env::var(v) {
                Ok(val) => (v.clone(), val),
                Err(_) => continue, // as docker: an unset KEY is left out
            },
            None => bail!("{flag} {v:?} must be KEY=VALUE"),
        };
        out.push((k, val));
    }
    Ok(out)
}

/// The request the flags ask for, checked by the rules the coordinator applies
/// ([`request::validate`]) before anything is packed or sent. Its context and Dockerfile path
/// are filled in once the context is packed.
fn request_from(args: &BuildArgs, outputs: &[Output]) -> anyhow::Result<BuildRequest> {
    if outputs.is_empty() {
        bail!(
            "no output: the build result would be thrown away. Add --push to push the per-platform images and \
             the index to the registry named by -t, --load to load it here, or --output type=oci,dest=FILE"
        );
    }
    let push = outputs.contains(&Output::Push);
    if args.tags.is_empty() && push {
        bail!("--push needs a name: add -t REGISTRY/REPOSITORY:TAG");
    }

    let mut platforms = args
        .platform
        .iter()
        .filter(|p| !p.trim().is_empty())
        .map(|p| p.parse::<Platform>())
        .collect::<Result<Vec<_>, _>>()?;
    for p in &args.optional_platforms {
        if platforms.contains(p) {
            bail!("{p} is in both --platform and --optional-platform: name it once");
        }
        platforms.push(p.clone());
    }
    let req = BuildRequest {
        platforms,
        tags: args.tags.clone(),
        context: Digest::of(&[]),
        dockerfile: DEFAULT_DOCKERFILE.to_owned(),
        build_args: pairs(&args.build_args, "--build-arg", true)?,
        target: args.target.clone(),
        labels: pairs(&args.labels, "--label", false)?,
        job_timeout_secs: args.job_timeout.map(|d| d.as_secs()),
        idle_timeout_secs: args.idle_timeout.map(|d| d.as_secs()),
        no_cache: args.no_cache,
        pull: args.pull,
        push,
        tests: args
            .tests
            .iter()
            .map(|t| shlex::split(t).with_context(|| format!("--test {t:?}: unbalanced quotes")))
            .collect::<anyhow::Result<_>>()?,
        test_target: args.test_target.clone(),
        cache_from: vec![],
        cache_to: None,
        inline_cache: false,
        requirements: args.require.clone(),
        optional_platforms: args.optional_platforms.clone(),
        provenance: args.provenance,
        cache_max: false,
    };
    let req = with_cache(req, &args.cache_from, &args.cache_to)?;
    request::validate(&req)?;
    if outputs.iter().any(|o| matches!(o, Output::Docker(_))) && req.platforms.len() > 1 {
        bail!(
            "--output type=docker holds one platform, and the build asks for {}: build one --platform, or use \
             --output type=oci for all of them",
            archfarm_shared::platform::list(&req.platforms)
        );
    }
    Ok(req)
}

/// Makes sure the coordinator holds the context `survey` lists: not packed again when these very
/// files were packed before and the coordinator still holds the result; packed and uploaded
/// otherwise. Returns the context's digest and the Dockerfile's path in it.
async fn send_context(conn: &Connection, survey: context::Survey, chatty: bool) -> anyhow::Result<(Digest, String)> {
    let survey = std::sync::Arc::new(survey);
    // Taken before anything is read: a file that changes while it is packed changes it.
    let signature = {
        let survey = survey.clone();
        tokio::task::spawn_blocking(move || crate::known_contexts::signature(&survey)).await?
    };
    let recalled = signature.as_ref().and_then(crate::known_contexts::recall);
    if let Some(known) = recalled {
        if crate::upload::present(conn, &known.digest).await? {
            if chatty {
                eprintln!(
                    "context {} ({} bytes) is already on the coordinator; its files are as when it was packed",
                    known.digest, known.size
                );
            }
            return Ok((known.digest, known.dockerfile));
        }
    }
    let packed = {
        let survey = survey.clone();
        tokio::task::spawn_blocking(move || context::plan_surveyed(&survey, MAX_CONTEXT)).await?
    }
    .map_err(|e| anyhow::anyhow!(e))?;
    crate::upload::upload(conn, &packed, survey, chatty).await?;
    let (digest, dockerfile) = (packed.digest.clone(), packed.dockerfile.clone());
    if let Some(signature) = signature {
        tokio::task::spawn_blocking(move || crate::known_contexts::remember(&signature, &packed)).await?;
    }
    Ok((digest, dockerfile))
}

/// Runs `archfarm build`. Returns whether every output was written.
pub async fn run(args: BuildArgs) -> anyhow::Result<bool> {
    let outputs = output::outputs(args.push, args.load, &args.outputs)?;
    let mut request = request_from(&args, &outputs)?;
    if outputs.contains(&Output::Load) {
        // Before anything is built: the local engine must be there and run one of the platforms.
        export::load::Engine::connect().await?.check(&request.platforms)?;
    }
    let (context_dir, file) = (args.context.clone(), args.file.clone());
    let survey = tokio::task::spawn_blocking(move || context::survey(&context_dir, file.as_deref()))
        .await?
        .map_err(|e| anyhow::anyhow!(e))?;
    let conn = Connection::open(&args.remote).await?;
    let chatty = args.progress != Mode::Quiet;
    let (digest, dockerfile) = send_context(&conn, survey, chatty).await?;
    request.context = digest;
    request.dockerfile = dockerfile;
    let progress = Progress::new(args.progress, &request.platforms);
    let request_tags = request.tags.clone();
    let request_tests = request::tests_of(&request);
    let mut stream = conn.request(&ClientRequest::Build(Box::new(request))).await?;
    stream.finish().await;
    let built = follow::follow(&conn, stream, &progress, args.on_interrupt, args.metadata_file.as_deref()).await?;
    let Some(platforms) = built else {
        conn.close().await;
        return Ok(false);
    };
    if let Some(path) = args.metadata_file.as_deref().filter(|_| !request_tests.is_empty()) {
        note_tests(path, &request_tests, &platforms).await?;
    }
    // A pushed build's images are in the registry of its tags; the others' on the coordinator.
    let source = match request_tags.first().filter(|_| outputs.contains(&Output::Push)) {
        Some(first) => export::Source::Registry(
            archfarm_shared::registry::RegistryClients::new(args.insecure_registries.clone()),
            archfarm_shared::registry::parse_reference(first)?,
        ),
        None => export::Source::Coordinator(&conn),
    };
    let written = export::write(&outputs, &request_tags, &platforms, &source).await;
    drop(source);
    conn.close().await;
    written?;
    Ok(true)
}

/// The request with its `--cache-from` and `--cache-to`, saying what the engine's BuildKit
/// makes of them.
fn with_cache(mut req: BuildRequest, from: &[String], to: &[String]) -> anyhow::Result<BuildRequest> {
    for value in from {
        match CacheSpec::parse(value, "--cache-from").map_err(anyhow::Error::msg)? {
            CacheSpec::Registry { reference, .. } => req.cache_from.push(reference),
            CacheSpec::Inline => {
                bail!("--cache-from type=inline means nothing: name the image, type=registry,ref=IMAGE")
            }
        }
    }
    for value in to {
        match CacheSpec::parse(value, "--cache-to").map_err(anyhow::Error::msg)? {
            CacheSpec::Inline => req.inline_cache = true,
            CacheSpec::Registry { reference, max } => {
                if req.cache_to.replace(reference).is_some() {
                    bail!("one --cache-to type=registry per build: each platform writes its own tag of it");
                }
                // Placed on agents whose engine exports such a cache, or refused naming them.
                req.cache_max = max;
            }
        }
    }
    request::validate(&req)?;
    Ok(req)
}

/// Adds the tests every platform passed to the metadata file `follow` wrote.
async fn note_tests(path: &std::path::Path, tests: &[String], platforms: &[PlatformResult]) -> anyhow::Result<()> {
    let text = tokio::fs::read_to_string(path).await?;
    let mut doc: serde_json::Value = serde_json::from_str(&text)?;
    doc["archfarm.tests"] = serde_json::json!({
        "commands": tests,
        "passed": platforms.iter().map(|p| p.platform.to_string()).collect::<Vec<_>>(),
    });
    tokio::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
        .await
        .map_err(|e| anyhow::anyhow!("cannot write --metadata-file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BuildArgs,
    }

    fn request_from_flags(args: &BuildArgs) -> anyhow::Result<BuildRequest> {
        request_from(args, &output::outputs(args.push, args.load, &args.outputs)?)
    }

    fn parse(extra: &[&str]) -> BuildArgs {
        let mut argv = vec!["archfarm", "--coordinator", "h:1", "--token", "t", "--ca", "ca.pem"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn refuses_builds_without_push_saying_what_to_add() {
        let err =
            request_from_flags(&parse(&["--platform", "linux/amd64", "-t", "127.0.0.1:5000/a:1", "."])).unwrap_err();
        assert!(err.to_string().contains("Add --push"), "{err}");
        let req = request_from_flags(&parse(&["--platform", "linux/amd64", "--load", "."])).unwrap();
        assert!(req.tags.is_empty() && !req.push, "--load needs no registry");
        let req =
            request_from_flags(&parse(&["--platform", "linux/amd64", "-o", "type=oci,dest=a.tar", "-t", "r/a:1", "."]));
        assert!(!req.unwrap().push, "an OCI archive alone writes no tag");
        let req = request_from_flags(&parse(&["--platform", "linux/amd64", "-o", "type=registry", "-t", "r/a:1", "."]));
        assert!(req.unwrap().push, "type=registry means --push");
    }

    #[test]
    fn validates_tags_platforms_and_pairs_up_front() {
        let err =
            request_from_flags(&parse(&["--push", "--platform", "linux/amd64", "-t", "127.0.0.1:5000/a:bad tag", "."]))
                .unwrap_err();
        assert!(err.to_string().contains("invalid image reference"), "{err}");
        let err = request_from_flags(&parse(&["--push", "--platform", "linux/amd64,linux/x86_64", "-t", "r/a:1", "."]))
            .unwrap_err();
        assert_eq!(err.to_string(), "--platform lists linux/amd64 twice");
        let err = request_from_flags(&parse(&[
            "--push",
            "--platform",
            "linux/amd64",
            "-t",
            "r/a:1",
            "--label",
            "novalue",
            ".",
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("must be KEY=VALUE"), "{err}");
        let err = request_from_flags(&parse(&["--push", "--platform", "linux/amd64", "."])).unwrap_err();
        assert!(err.to_string().contains("add -t"), "{err}");
        let BuildRequest { platforms: p, build_args: args, labels, .. } = request_from_flags(&parse(&[
            "--push",
            "--platform",
            "linux/arm64",
            "--platform",
            "linux/amd64",
            "-t",
            "r/a:1",
            "--build-arg",
            "A=1",
            "--build-arg",
            "ARCHFARM_SURELY_UNSET_VAR",
            "--label",
            "k=v=w",
            ".",
        ]))
        .unwrap();
        assert_eq!(p.iter().map(ToString::to_string).collect::<Vec<_>>(), ["linux/arm64", "linux/amd64"]);
        assert_eq!(args, [("A".to_owned(), "1".to_owned())]);
        assert_eq!(labels, [("k".to_owned(), "v=w".to_owned())]);
    }
}
