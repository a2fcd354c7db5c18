//! The wire protocol: one message enum per direction and role. Everything here crosses the
//! network through [`crate::codec`]; variants are encoded by position, so only ever append.
//! `docs/protocol.md` describes the streams and the order of messages on each.
//!
//! The types live in one file per role, and are all used from here (`protocol::JobSpec`):
//! - `agent`: an agent's connection (control, job and context streams);
//! - `client`: a release engineer's requests and their answers;
//! - `builds`: builds, jobs and their events as clients see them;
//! - `enroll`: an agent joining with a join token;
//! - this file: ALPNs, close codes and the job failure every role reports.

mod agent;
mod builds;
mod client;
mod enroll;

pub use agent::{AgentMessage, CoordinatorMessage, JobOutcome, JobSpec, PushedImage, Registration};
pub use builds::{
    AttemptDetail, BuildDetail, BuildEvent, BuildState, BuildSummary, JobDetail, JobState, PlatformResult,
};
pub use client::{AgentInfo, BuildRequest, ClientRequest, ClientResponse};
pub use enroll::{EnrollRequest, EnrollResponse};

use serde::{Deserialize, Serialize};

/// ALPN of agents. The version is part of the string: a peer of another protocol version fails
/// the TLS handshake with a clear "no application protocol" error instead of misreading frames.
pub const ALPN_AGENT: &[u8] = b"archfarm-agent/1";
/// ALPN of release engineers' clients (`archfarm build`, `archfarm agents ls`, ...).
pub const ALPN_CLIENT: &[u8] = b"archfarm-client/1";

/// ALPN of agents enrolling with a join token (no certificate yet).
pub const ALPN_ENROLL: &[u8] = b"archfarm-enroll/1";

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

/// A job failure small enough to cross the wire and be shown to the release engineer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFailure {
    /// Which step failed.
    pub kind: FailureKind,
    /// One-line explanation.
    pub message: String,
    /// The last lines of the failing step's output.
    pub log_tail: Vec<String>,
}

/// The step of a job that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// The agent was asked for a platform it did not declare.
    PlatformNotDeclared,
    /// The build context could not be fetched or was corrupt.
    Context,
    /// The Dockerfile build failed.
    Build,
    /// Exporting or pushing the image failed.
    Push,
    /// The Docker Engine could not be reached.
    Engine,
    /// The coordinator found the pushed image does not match the job (wrong platform, missing).
    Verification,
    /// The agent went away before finishing.
    AgentLost,
    /// The job was cancelled (its build was cancelled, or its agent stopped it while draining).
    Cancelled,
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailureKind::PlatformNotDeclared => "platform not declared",
            FailureKind::Context => "build context",
            FailureKind::Build => "build",
            FailureKind::Push => "push",
            FailureKind::Engine => "docker engine",
            FailureKind::Verification => "verification",
            FailureKind::AgentLost => "agent lost",
            FailureKind::Cancelled => "cancelled",
        })
    }
}
