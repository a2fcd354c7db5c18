//! The archfarm agent: builds the platforms its host runs natively through the local Docker
//! Engine and pushes each image into the target repository by digest.
//!
//! # Layout
//! - [`session`]: connect out, register, heartbeats, reconnect with backoff; job streams; the QUIC link.
//! - [`link`]: the `CoordinatorLink` trait: what a job asks of the coordinator (a context, a hand-over).
//! - [`executor`]: one job: platform check, context, build, push; always a `JobOutcome`.
//! - [`engine`]: the `Engine` trait, all the agent asks of its engine; `engine::docker` (bollard) is one.
//! - [`host`]: which platforms this host declares, and its x86-64 level, CPU features and labels.
//! - [`native_test`]: `--test` and `--test-target`, run on the agent before the push.
//! - [`enroll`]: joining with a one-time join token and renewing the certificate (keys, CSRs).
//! - [`push`]: exporting the image and pushing it by digest as an OCI manifest.
//! - [`reuse`]: images pushed before, and the build that made each: pushed again without an
//!   export, or without a build.
//! - [`handover`]: the image handed to the coordinator, for a build that names no registry.
//! - [`bases`]: a job's base images, read once, their layers learned from the registry to mount.
//! - [`job_credentials`]: the registry logins one job may use, once its reads are in its token's scopes.
//! - [`context_cache`]: build contexts fetched by digest and cached on disk.
//! - [`health`]: probing the engine; an unhealthy engine takes no jobs.
//! - [`housekeeping`]: the host's build and context caches, read and freed.
//! - [`job_log`]: a job's output on its way to the coordinator: bounded, lines cut, drops counted.
//! - [`fault`]: whose fault a failure is (full disk, no memory, a registry), from what was said.
//! - `fakes` (tests only): an engine and a coordinator link that stand in for the real ones.

pub mod bases;
pub mod context_cache;
pub mod engine;
pub mod enroll;
pub mod executor;
#[cfg(test)]
mod fakes;
pub mod fault;
pub mod handover;
pub mod health;
pub mod host;
pub mod housekeeping;
pub mod job_credentials;
pub mod job_log;
pub mod link;
pub mod native_test;
pub mod push;
pub mod reuse;
pub mod session;

use archfarm_config::AgentConfig;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Runs the agent until `shutdown` is cancelled. Without a certificate yet, it first enrolls
/// with `join_token`.
pub async fn run(config: AgentConfig, join_token: Option<&str>, shutdown: CancellationToken) -> anyhow::Result<()> {
    if !config.tls.cert.exists() {
        match join_token {
            Some(token) => enroll::enroll(&config, token).await?,
            None => anyhow::bail!(
                "no agent certificate at {}: issue one with `archfarm ca issue-agent NAME`, or start with \
                 --join-token from `archfarm agents token create`",
                config.tls.cert.display()
            ),
        }
    }
    // A certificate near its end is renewed before it is used, and then twice a day.
    if let Err(e) = enroll::renew_if_due(&config).await {
        warn!("{e:#}; trying again later");
    }
    let agent = Arc::new(session::Agent::new(&config).await?);
    let keeping = tokio::spawn(keep_build_cache(agent.executor.engine.clone(), config.build_cache_max.as_u64()));
    let renewing = tokio::spawn(renew_periodically(config, agent.clone()));
    agent.run(shutdown).await;
    renewing.abort();
    keeping.abort();
    Ok(())
}

/// How often the agent checks its engine's build cache against `build_cache_max`.
const BUILD_CACHE_CHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// Keeps the engine's build cache within `max` bytes, checking every minute.
async fn keep_build_cache(engine: Arc<dyn engine::Engine>, max: u64) {
    let mut every = tokio::time::interval(BUILD_CACHE_CHECK);
    loop {
        every.tick().await;
        match engine.keep_within(max).await {
            Ok(None) => {}
            Ok(Some(freed)) => info!(freed, max, "build cache was over build_cache_max: pruned"),
            Err(e) => warn!("cannot keep the build cache within build_cache_max: {e}"),
        }
    }
}

/// How often a running agent checks whether its certificate is due for renewal.
const RENEW_CHECK: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// Renews the certificate when it is due; the next connection uses the new one.
async fn renew_periodically(config: AgentConfig, agent: Arc<session::Agent<executor::Executor>>) {
    loop {
        tokio::time::sleep(RENEW_CHECK).await;
        match enroll::renew_if_due(&config).await {
            Ok(false) => {}
            Ok(true) => {
                if let Err(e) = agent.reload_identity(&config) {
                    warn!("renewed certificate not usable: {e:#}");
                }
            }
            Err(e) => warn!("{e:#}; trying again in 12 h"),
        }
    }
}
