//! The archfarm agent: builds the platforms its host runs natively through the local Docker
//! Engine and pushes each image into the target repository by digest.
//!
//! # Layout
//! - [`session`]: connect out, register, heartbeats, reconnect with backoff; job streams.
//! - [`executor`]: one job: platform check, context, build, push; always a `JobOutcome`.
//! - [`host`]: which platforms this host declares.
//! - [`docker`]: the Docker Engine adapter (the only user of bollard).
//! - [`publish`]: exporting the image and pushing it by digest as an OCI manifest.
//! - [`context_cache`]: build contexts fetched by digest and cached on disk.

pub mod context_cache;
pub mod docker;
pub mod executor;
pub mod host;
pub mod publish;
pub mod session;

use archfarm_config::AgentConfig;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let agent = Arc::new(session::Agent::new(&config).await?);
    agent.run(shutdown).await;
    Ok(())
}
