//! The job failure every role reports: small enough to cross the wire and be shown to the
//! release engineer.

use serde::{Deserialize, Serialize};

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
    /// A registry refused to let the agent pull an image the build starts from (no credentials,
    /// or credentials it does not accept). Appended last: variants are encoded by position.
    PullRefused,
    /// The attempt ran past its time limit, or too long without output, and was stopped on
    /// its agent. Appended last.
    TimedOut,
    /// The coordinator no longer holds the build context the job names: its fault, not the
    /// agent's.
    ContextMissing,
    /// The agent's disk (context cache, engine storage) is full.
    DiskFull,
    /// The agent or its engine ran out of memory.
    OutOfMemory,
    /// The agent's engine fails its health probe: the agent stopped (or refused) the job so it
    /// runs elsewhere. Its standing already keeps jobs away; nobody is blamed.
    EngineUnhealthy,
    /// A registry a build pulls from could not be reached (down, 5xx, no route).
    RegistryUnavailable,
    /// A `--test` command exited non-zero in the built image, or the `--test-target` stage
    /// failed: the image's fault, final, nobody else's.
    TestFailed,
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
            FailureKind::PullRefused => "pull refused",
            FailureKind::TimedOut => "timed out",
            FailureKind::ContextMissing => "context missing",
            FailureKind::DiskFull => "disk full",
            FailureKind::OutOfMemory => "out of memory",
            FailureKind::EngineUnhealthy => "engine unhealthy",
            FailureKind::RegistryUnavailable => "registry unavailable",
            FailureKind::TestFailed => "test failed",
        })
    }
}

/// Longest line of build output that travels or is kept, in bytes: agents cut their lines to
/// it before sending, and the coordinator again on arrival.
pub const MAX_LOG_LINE: usize = 8 * 1024;

/// `text` cut to at most `max` bytes on a character boundary, saying how much went.
pub fn cut(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let dropped = text.len() - max;
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&format!(" … ({dropped} bytes cut)"));
    text
}
