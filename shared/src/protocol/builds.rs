//! Builds and their jobs as clients see them: states, summaries, details and the events of a
//! running build.

use super::failure::JobFailure;
use crate::ids::{AgentName, BuildId, Digest, JobId};
use crate::outcome::AttemptOutcome;
use crate::platform::Platform;
use serde::{Deserialize, Serialize};

/// Where a build is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BuildState {
    /// Jobs are queued or running.
    Running,
    /// Every platform is verified; the index is being published (or publishing failed and can be
    /// retried with `archfarm builds publish`).
    Publishing,
    /// The index is published under every tag.
    Published,
    /// A platform failed; nothing was published.
    Failed,
    /// Cancelled; nothing was published.
    Cancelled,
    /// Every platform is verified, and the build did not ask to push: no tag was written
    /// (`archfarm builds publish` tags it).
    Built,
}

/// Where a platform's job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// Waiting for an agent.
    Queued,
    /// An attempt is running on an agent.
    Running,
    /// Pushed and verified in the registry.
    Verified,
    /// Failed for good.
    Failed,
    /// Cancelled with its build.
    Cancelled,
    /// An optional platform that was not built (no agent fitted it, or it failed): the index
    /// was published without it. Its error says why.
    LeftOut,
}

macro_rules! text_enum {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            /// The state as stored and shown.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s { $($s => Ok(Self::$v),)* other => Err(format!("unknown state {other:?}")) }
            }
        }
    };
}

text_enum!(BuildState { Running => "running", Publishing => "publishing", Published => "published", Failed => "failed", Cancelled => "cancelled", Built => "built" });
text_enum!(JobState { Queued => "queued", Running => "running", Verified => "verified", Failed => "failed", Cancelled => "cancelled", LeftOut => "left-out" });

impl BuildState {
    /// Whether the build will not change any more on its own.
    pub fn is_final(self) -> bool {
        matches!(self, BuildState::Published | BuildState::Failed | BuildState::Cancelled | BuildState::Built)
    }
}

/// One line of `archfarm builds ls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildSummary {
    /// The build.
    pub build: BuildId,
    /// Its state.
    pub state: BuildState,
    /// When it was accepted, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// When it ended.
    pub finished_ms: Option<u64>,
    /// Requested platforms, in order.
    pub platforms: Vec<Platform>,
    /// Requested tags.
    pub tags: Vec<String>,
    /// The published index.
    pub index: Option<Digest>,
    /// What each platform's image was tested with (`--test` commands, `--test-target`
    /// stage), as the release engineer wrote them.
    pub tests: Vec<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// The name of the client token that started it (`-` for builds from before owners).
    pub owner: String,
}

/// `archfarm builds show`: a build and each platform's job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildDetail {
    /// The build.
    pub summary: BuildSummary,
    /// Its jobs, in platform order.
    pub jobs: Vec<JobDetail>,
}

/// One platform of a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDetail {
    /// The job.
    pub job: JobId,
    /// Its platform.
    pub platform: Platform,
    /// Its state.
    pub state: JobState,
    /// The verified digest.
    pub digest: Option<Digest>,
    /// The agent whose image was verified.
    pub agent: Option<AgentName>,
    /// Time from first assignment to verified digest.
    pub duration_ms: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Every attempt, oldest first.
    pub attempts: Vec<AttemptDetail>,
}

/// One attempt at a job on one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptDetail {
    /// Attempt number, from 1.
    pub number: u32,
    /// The agent.
    pub agent: AgentName,
    /// When it started.
    pub started_ms: u64,
    /// When it ended.
    pub finished_ms: Option<u64>,
    /// How it ended; none while it runs. Sent as its text (`pushed`, `lost`, …).
    pub outcome: Option<AttemptOutcome>,
    /// What happened.
    pub detail: Option<String>,
    /// Why the scheduler chose this agent (least loaded, warm cache, …); empty for attempts
    /// recorded before reasons were.
    pub placement: String,
}

/// What happens to a build, streamed to the client that started it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BuildEvent {
    /// The build was accepted and has this id.
    Accepted {
        /// Its id.
        build: BuildId,
    },
    /// A platform's job was handed to an agent.
    Started {
        /// The platform.
        platform: Platform,
        /// The agent building it.
        agent: AgentName,
    },
    /// One line of a platform's build output.
    Log {
        /// The platform.
        platform: Platform,
        /// The line.
        line: String,
    },
    /// A platform's image was pushed and verified in the registry.
    PlatformDone(PlatformResult),
    /// A platform failed; no index will be published.
    PlatformFailed {
        /// The platform.
        platform: Platform,
        /// The agent that ran it, if any did.
        agent: Option<AgentName>,
        /// What went wrong.
        failure: JobFailure,
    },
    /// The index was published. Last event of a successful build.
    Published {
        /// Digest of the OCI image index.
        index: Digest,
        /// The tags now pointing at it: every requested tag, less those `TagKept` named.
        tags: Vec<String>,
        /// Each platform's child, in index order.
        platforms: Vec<PlatformResult>,
    },
    /// The build failed and nothing was published. Last event of a failed build.
    Failed {
        /// Why, naming platforms and agents.
        reason: String,
    },
    /// An attempt at a platform ended without an image; the platform runs again.
    Retrying {
        /// The platform.
        platform: Platform,
        /// The agent of the attempt that ended.
        agent: AgentName,
        /// What happened to it.
        reason: String,
        /// The number of the next attempt.
        next_attempt: u32,
    },
    /// Every platform was verified in the registry, and the build did not ask to push: no tag
    /// was written. Last event of such a build; `archfarm builds publish` tags it later.
    Built {
        /// Each platform's child, in index order.
        platforms: Vec<PlatformResult>,
    },
    /// A tag was not moved to this build's index, and why (it points at a later build, or was
    /// moved by another writer). Comes before `Published`, which lists the tags that moved.
    TagKept {
        /// Why, naming the tag, and how to move it anyway.
        reason: String,
    },
    /// An optional platform was left out: no agent fitted it, or it failed. The index is
    /// published without it.
    PlatformLeftOut {
        /// The platform.
        platform: Platform,
        /// Why.
        reason: String,
    },
}

/// A verified per-platform image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformResult {
    /// The platform.
    pub platform: Platform,
    /// Digest of its manifest.
    pub digest: Digest,
    /// The agent that built it.
    pub agent: AgentName,
    /// Time from assignment to verified digest, in milliseconds.
    pub duration_ms: u64,
    /// Its provenance attestation manifest, when the build records provenance.
    pub attestation: Option<crate::oci::Attestation>,
}
