//! The wire protocol: one message enum per direction and role. Everything here crosses the
//! network through [`crate::codec`]; variants are encoded by position, so only ever append.
//! `docs/protocol.md` describes the streams and the order of messages on each.

use crate::ids::{AgentName, BuildId, Digest, JobId};
use crate::platform::Platform;
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

/// Messages an agent sends to the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentMessage {
    /// First frame on the control stream.
    Register(Registration),
    /// Periodic liveness on the control stream.
    Heartbeat {
        /// Jobs the agent is running right now.
        running: u32,
    },
    /// First frame on a context stream opened by the agent: send me this build context.
    FetchContext {
        /// Content digest of the context tarball.
        digest: Digest,
    },
    /// One line of build output, on a job stream.
    JobLog {
        /// The line, without its newline.
        line: String,
    },
    /// Last frame on a job stream.
    JobFinished(JobOutcome),
    /// On the control stream: the agent is shutting down; it finishes what it runs and takes no
    /// new jobs.
    Draining,
}

/// What an agent declares when it registers. Its name comes from its certificate, not from here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    /// Platforms this agent builds natively, its engine's own first.
    pub platforms: Vec<Platform>,
    /// How many builds it runs at once.
    pub capacity: u32,
    /// Docker Engine version, for `archfarm agents ls`.
    pub engine_version: String,
    /// The agent's own version.
    pub agent_version: String,
}

/// Messages the coordinator sends to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CoordinatorMessage {
    /// Reply to [`AgentMessage::Register`]: the agent is in the farm.
    Registered {
        /// How often the agent must send a heartbeat, in milliseconds.
        heartbeat_interval_ms: u64,
    },
    /// Reply to [`AgentMessage::Register`]: the agent is refused; the connection closes next.
    Refused {
        /// Why, in words meant for the agent's operator.
        reason: String,
    },
    /// First frame on a job stream opened by the coordinator.
    AssignJob(Box<JobSpec>),
    /// Reply to [`AgentMessage::FetchContext`]: exactly `size` raw bytes follow on the stream.
    ContextFollows {
        /// Length of the tarball.
        size: u64,
    },
    /// Reply to [`AgentMessage::FetchContext`]: the coordinator does not hold that context.
    ContextMissing {
        /// Why.
        reason: String,
    },
    /// Answer to each [`AgentMessage::Heartbeat`] on the control stream, so the agent notices a
    /// coordinator that died without closing the connection.
    HeartbeatAck,
}

/// One platform of a build, as an agent receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// This job.
    pub job: JobId,
    /// The build it belongs to.
    pub build: BuildId,
    /// The platform to build; the agent must have declared it.
    pub platform: Platform,
    /// The build context tarball, fetched from the coordinator by digest.
    pub context: Digest,
    /// Path of the Dockerfile inside the context.
    pub dockerfile: String,
    /// `--build-arg` pairs, in the order given.
    pub build_args: Vec<(String, String)>,
    /// `--target` stage.
    pub target: Option<String>,
    /// `--label` pairs.
    pub labels: Vec<(String, String)>,
    /// Repository to push into by digest, `registry/name` (the repository of the requested tags).
    pub repository: String,
    /// Attempt number of this job, from 1. Each attempt has its own stream; a result is only
    /// ever read from the stream of the attempt it belongs to.
    pub attempt: u32,
}

/// How a job ended on the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobOutcome {
    /// Built and pushed by digest.
    Pushed(PushedImage),
    /// Did not produce an image.
    Failed(JobFailure),
}

/// The per-arch image an agent pushed. The coordinator checks all of it against the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushedImage {
    /// Digest of the image manifest.
    pub digest: Digest,
    /// Media type of the manifest.
    pub media_type: String,
    /// Size of the manifest in bytes.
    pub size: u64,
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

/// Messages a client sends to the coordinator. Each request opens its own bidirectional stream;
/// the first stream of a connection carries [`ClientRequest::Hello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Authenticate this connection with a bearer token.
    Hello {
        /// The client token from `archfarm ca init` (never logged).
        token: String,
    },
    /// Does the coordinator already hold this build context?
    HasContext {
        /// Content digest of the tarball.
        digest: Digest,
    },
    /// Upload a context: exactly `size` raw bytes follow this frame.
    UploadContext {
        /// Content digest the bytes must hash to.
        digest: Digest,
        /// Length of the tarball.
        size: u64,
    },
    /// Start a build and stream its events on this stream.
    Build(BuildRequest),
    /// List connected agents.
    ListAgents,
    /// The most recent builds, newest first.
    ListBuilds {
        /// How many.
        limit: u32,
    },
    /// One build with each platform's state, agent, attempts, digest and error.
    ShowBuild {
        /// Which build.
        build: BuildId,
    },
    /// Follow a build: a `BuildDetail` snapshot, then its events until it ends.
    WatchBuild {
        /// Which build.
        build: BuildId,
    },
    /// Publish (again) the index of a build whose platforms are all verified, without rebuilding.
    PublishBuild {
        /// Which build.
        build: BuildId,
    },
    /// Cancel a build: stop its jobs on the agents; nothing is published.
    CancelBuild {
        /// Which build.
        build: BuildId,
    },
    /// Create a one-time join token for enrolling an agent.
    CreateJoinToken {
        /// Seconds until it expires.
        ttl_secs: u64,
    },
    /// Revoke an agent: disconnect it and refuse it from now on.
    RevokeAgent {
        /// The agent.
        name: AgentName,
    },
    /// Create a named client token.
    CreateClientToken {
        /// A name for it (who or what uses it).
        name: String,
    },
    /// Revoke a named client token.
    RevokeClientToken {
        /// Its name.
        name: String,
    },
    /// Upload a context as content-defined chunks. The coordinator answers
    /// [`ClientResponse::ChunksWanted`]; exactly the bytes of the wanted chunks follow, in that
    /// order; then it answers `ContextStored` or `Error`.
    UploadChunked {
        /// Content digest of the whole tarball.
        digest: Digest,
        /// Length of the whole tarball.
        size: u64,
        /// Its chunks in order; their sizes add up to `size`.
        chunks: Vec<crate::chunking::Chunk>,
    },
}

/// A build as the release engineer asked for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildRequest {
    /// Platforms in command-line order; the index lists children in this order.
    pub platforms: Vec<Platform>,
    /// Full references to publish the index under, all in one repository.
    pub tags: Vec<String>,
    /// Digest of the uploaded context.
    pub context: Digest,
    /// Path of the Dockerfile inside the context.
    pub dockerfile: String,
    /// `--build-arg` pairs.
    pub build_args: Vec<(String, String)>,
    /// `--target` stage.
    pub target: Option<String>,
    /// `--label` pairs.
    pub labels: Vec<(String, String)>,
}

/// Messages the coordinator sends to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// The token was accepted.
    Welcome {
        /// Coordinator version.
        version: String,
    },
    /// The token was refused; the connection closes next.
    Refused {
        /// Why.
        reason: String,
    },
    /// Answer to [`ClientRequest::HasContext`].
    ContextPresent(bool),
    /// The uploaded context was stored.
    ContextStored,
    /// Progress of a build.
    Build(BuildEvent),
    /// Answer to [`ClientRequest::ListAgents`].
    Agents(Vec<AgentInfo>),
    /// The request failed.
    Error {
        /// What failed and what to do.
        message: String,
    },
    /// Answer to [`ClientRequest::ListBuilds`].
    Builds(Vec<BuildSummary>),
    /// Answer to [`ClientRequest::ShowBuild`], and the first answer to `WatchBuild`.
    BuildDetail(BuildDetail),
    /// The request was carried out.
    Done {
        /// What happened.
        message: String,
    },
    /// A secret just created: shown once, stored only as a hash.
    Token {
        /// The token.
        token: String,
        /// When it expires, milliseconds since the Unix epoch.
        expires_ms: Option<u64>,
    },
    /// Answer to [`ClientRequest::UploadChunked`]: indexes of the chunks to send, ascending.
    ChunksWanted(Vec<u32>),
}

/// The one message of an enrolling agent (ALPN `archfarm-enroll/1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The one-time join token (never logged).
    pub token: String,
    /// The name the agent asks for; it becomes its certificate's common name.
    pub name: AgentName,
    /// A PEM certificate signing request for a key the agent generated and keeps.
    pub csr_pem: String,
}

/// The coordinator's answer to an [`EnrollRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EnrollResponse {
    /// The agent's certificate, signed by the farm CA.
    Certificate {
        /// PEM certificate.
        cert_pem: String,
    },
    /// Refused, with why.
    Refused {
        /// Why, and what to do.
        reason: String,
    },
}

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

text_enum!(BuildState { Running => "running", Publishing => "publishing", Published => "published", Failed => "failed", Cancelled => "cancelled" });
text_enum!(JobState { Queued => "queued", Running => "running", Verified => "verified", Failed => "failed", Cancelled => "cancelled" });

impl BuildState {
    /// Whether the build will not change any more on its own.
    pub fn is_final(self) -> bool {
        matches!(self, BuildState::Published | BuildState::Failed | BuildState::Cancelled)
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
    /// Why it failed.
    pub error: Option<String>,
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
    /// `pushed`, `failed`, `lost`, `wrong-platform`, `cancelled`, or none while running.
    pub outcome: Option<String>,
    /// What happened.
    pub detail: Option<String>,
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
    /// The index was published under every tag. Last event of a successful build.
    Published {
        /// Digest of the OCI image index.
        index: Digest,
        /// The tags now pointing at it.
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
}

/// One agent as `archfarm agents ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Name from its certificate.
    pub name: AgentName,
    /// Remote address of its connection.
    pub address: String,
    /// Platforms it declared.
    pub platforms: Vec<Platform>,
    /// `ready` or `busy`.
    pub state: String,
    /// Jobs running on it.
    pub running: u32,
    /// How many it runs at once.
    pub capacity: u32,
    /// Its Docker Engine version.
    pub engine_version: String,
}
