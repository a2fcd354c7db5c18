//! The two seams of a platform's orchestration ([`super::build::platform`]): the link to an
//! agent and the registry that checks what it pushed. The real ones speak QUIC
//! ([`super::agent_link`]) and the distribution API ([`super::publish`]); unit tests put
//! scripted ones in their place and run retries, failover and quarantine in-process.

use super::live::Live;
use archfarm_shared::oci::Child;
use archfarm_shared::protocol::{Housekeeping, HousekeepingReply, JobFailure, JobSpec, PushedImage};
use archfarm_shared::{AgentName, Platform};
use futures_util::future::BoxFuture;
use std::time::Duration;

/// What the coordinator asks of a connected agent.
pub trait AgentLink: Send + Sync + std::fmt::Debug {
    /// Runs one attempt of a job on the agent. Log lines go to `live`'s watchers; cancelling
    /// `live.cancel` stops the job on the agent, and so does `idle` passing without a line of
    /// output (a `TimedOut` failure). Dropping the future stops it too. Ends with the image the
    /// agent pushed, or why there is none.
    fn run_job<'a>(
        &'a self,
        spec: JobSpec,
        live: &'a Live,
        idle: Duration,
    ) -> BoxFuture<'a, Result<PushedImage, JobFailure>>;

    /// Whether the link is still up.
    fn is_open(&self) -> bool;

    /// This connection's id, to tell it from a later connection of the same agent.
    fn id(&self) -> usize;

    /// Closes the link: `code` is one of the protocol's close codes, `reason` is shown to the agent.
    fn close(&self, code: u32, reason: &str);

    /// Asks the agent about its host's caches, or to free them.
    fn housekeeping(&self, request: Housekeeping) -> BoxFuture<'_, Result<HousekeepingReply, String>> {
        let _ = request;
        Box::pin(async { Err("this agent link cannot ask about caches".to_owned()) })
    }
}

/// Why a pushed image was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The image is not what the job asked for: the agent is at fault.
    #[error("{0}")]
    Wrong(String),
    /// The registry could not be asked (down, 5xx): nobody's fault yet.
    #[error("{0}")]
    Unavailable(String),
}

/// What the coordinator asks of the registry about an image an agent pushed.
pub trait ImageCheck: Send + Sync + std::fmt::Debug {
    /// Reads the pushed manifest and its config back and checks them against the job's
    /// platform. Returns the child to list in the index.
    fn verify<'a>(
        &'a self,
        platform: &'a Platform,
        agent: &'a AgentName,
        pushed: &'a PushedImage,
    ) -> BoxFuture<'a, Result<Child, VerifyError>>;

    /// The repository images go to, `registry/name`; empty where they go to no registry.
    fn repository(&self) -> String {
        String::new()
    }

    /// Pushes `statement` (an in-toto statement about `subject`) as its attestation manifest,
    /// beside it. Where images go to no registry there is nowhere to put one: `None`.
    fn attest<'a>(
        &'a self,
        _subject: &'a Child,
        _statement: Vec<u8>,
    ) -> BoxFuture<'a, Result<Option<archfarm_shared::oci::Attestation>, String>> {
        Box::pin(async { Ok(None) })
    }
}
