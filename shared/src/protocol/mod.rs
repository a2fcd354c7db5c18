//! The wire protocol: one message enum per direction and role. Everything here crosses the
//! network through [`crate::codec`]; variants are encoded by position, so only ever append.
//! `docs/protocol.md` describes the streams and the order of messages on each.
//!
//! The types live in one file per role, and are all used from here (`protocol::JobSpec`):
//! - `agent`: an agent's connection (control, job and context streams);
//! - `client`: a release engineer's requests and their answers;
//! - `builds`: builds, jobs and their events as clients see them;
//! - `enroll`: an agent joining with a join token;
//! - `failure`: the job failure every role reports;
//! - `housekeeping`: an agent host's caches, read and freed;
//! - this file: ALPNs and close codes.

mod agent;
mod builds;
mod client;
mod enroll;
mod failure;
mod housekeeping;

pub use agent::{
    AgentMessage, CoordinatorMessage, EngineFacts, JobOutcome, JobSpec, PushedImage, Registration, MAX_CREDENTIALED,
};
pub use builds::{
    AttemptDetail, BuildDetail, BuildEvent, BuildState, BuildSummary, JobDetail, JobState, PlatformResult,
};
pub use client::{AgentChange, AgentInfo, BuildRequest, ClientRequest, ClientResponse, Role};
pub use enroll::{EnrollRequest, EnrollResponse};
pub use failure::{cut, FailureKind, JobFailure, MAX_LOG_LINE};
pub use housekeeping::{AgentAnswer, AgentAttempt, AgentDetail, DiskUsage, Housekeeping, HousekeepingReply, Pruned};

/// ALPN of agents. The version is part of the string: a peer of another protocol version fails
/// the TLS handshake with a clear "no application protocol" error instead of misreading frames.
pub const ALPN_AGENT: &[u8] = b"archfarm-agent/9";
/// ALPN of release engineers' clients (`archfarm build`, `archfarm agents ls`, ...).
pub const ALPN_CLIENT: &[u8] = b"archfarm-client/7";

/// ALPN of agents enrolling with a join token (no certificate yet), or renewing their certificate.
pub const ALPN_ENROLL: &[u8] = b"archfarm-enroll/2";

/// QUIC application close codes the coordinator and agents use.
pub mod close {
    /// Orderly shutdown.
    pub const NORMAL: u32 = 0;
    /// The peer sent a frame that could not be decoded, was oversized, or was unexpected.
    pub const PROTOCOL: u32 = 1;
    /// The peer failed authentication (bad token, missing certificate, duplicate agent name).
    pub const REFUSED: u32 = 2;
    /// The peer stopped sending heartbeats.
    pub const TIMEOUT: u32 = 3;
}

/// Error codes the coordinator resets a job stream with; the agent stops the job on either.
pub mod reset {
    /// The job is cancelled (its build was cancelled).
    pub const CANCELLED: u32 = 1;
    /// The job went without output past its idle limit: the agent probes its engine at once.
    pub const SILENT: u32 = 2;
}
