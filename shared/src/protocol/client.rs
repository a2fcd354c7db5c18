//! A release engineer's client: one request per stream, and the coordinator's answers.

use super::builds::{BuildDetail, BuildEvent, BuildSummary};
use crate::ids::{AgentName, BuildId, Digest};
use crate::platform::Platform;
use serde::{Deserialize, Serialize};

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
    Build(Box<BuildRequest>),
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
    /// Tags that point at a later build, or that moved since this build published, are kept
    /// unless `force`.
    PublishBuild {
        /// Which build.
        build: BuildId,
        /// Move every tag, whatever it points at now.
        force: bool,
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
        /// The only name the agent may enroll under; any free name when absent.
        name: Option<AgentName>,
        /// The only platforms the agent may declare; any when empty.
        platforms: Vec<Platform>,
    },
    /// Revoke an agent's certificates: disconnect it and refuse them from now on.
    RevokeAgent {
        /// The agent.
        name: AgentName,
        /// Only the certificate with this serial (hex); every live one of the agent when absent.
        serial: Option<String>,
    },
    /// Create a named client token.
    CreateClientToken {
        /// A name for it (who or what uses it); builds it starts are recorded as its owner's.
        name: String,
        /// What it may do.
        role: Role,
        /// Repository prefixes a build token may push to (`registry/team/`); empty: any.
        scopes: Vec<String>,
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
    /// A blob of a built image the coordinator holds (a build with no registry): answered
    /// with [`ClientResponse::BlobFollows`] and exactly that many raw bytes, or `Error`.
    FetchBlob {
        /// Its digest.
        digest: Digest,
    },
    /// `archfarm agents inspect NAME`: answered with [`ClientResponse::AgentDetail`].
    InspectAgent {
        /// The agent.
        name: AgentName,
    },
    /// `archfarm agents du [NAME]`: answered with [`ClientResponse::AgentAnswers`].
    AgentDiskUsage {
        /// One agent, or every connected one.
        name: Option<AgentName>,
    },
    /// `archfarm agents prune [NAME]`: answered with [`ClientResponse::AgentAnswers`]. Refused
    /// for an agent that runs a job, unless `force`.
    PruneAgents {
        /// One agent, or every connected one.
        name: Option<AgentName>,
        /// Also build cache in use by images.
        all: bool,
        /// Bytes of build cache to keep.
        keep_storage: Option<u64>,
        /// Prune even while jobs run.
        force: bool,
    },
    /// `archfarm builds prune`: garbage collection now, with the configured retention;
    /// answered with `Done` saying what went.
    PruneBuilds,
    /// `archfarm builds retry ID [--platform P]`: runs the failed (or named) platforms of a
    /// failed or cancelled build again, keeps the verified ones, and publishes; answered like
    /// [`ClientRequest::WatchBuild`].
    RetryBuild {
        /// Which build.
        build: BuildId,
        /// Only these platforms (each must not be verified); every unverified one when empty.
        platforms: Vec<Platform>,
    },
    /// `archfarm agents drain|undrain|unquarantine NAME`: answered with `Done`.
    ChangeAgent {
        /// The agent.
        name: AgentName,
        /// What to change.
        change: AgentChange,
    },
}

/// An administrator's change to what an agent may be given. Each is recorded, so it holds
/// across reconnections and coordinator restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentChange {
    /// Finish the running jobs, take no new ones.
    Drain,
    /// Take jobs again after a drain.
    Undrain,
    /// Lift a quarantine and forget the failures that led to it.
    Unquarantine,
}

impl AgentChange {
    /// The command's word: `drain`, `undrain`, `unquarantine`.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentChange::Drain => "drain",
            AgentChange::Undrain => "undrain",
            AgentChange::Unquarantine => "unquarantine",
        }
    }
}

/// What a client token may do. Tokens in the coordinator's token file without a role, and
/// tokens created before roles existed, are admins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Everything: tokens, join tokens, agents, and every owner's builds.
    Admin,
    /// Builds of its own, to the repositories of its scopes; listing agents.
    Build,
    /// Reading only: agents, and every build on the status page and its metrics. The only
    /// role the status listener takes off loopback, where tokens cross the network in clear.
    Viewer,
}

impl Role {
    /// `admin`, `build` or `viewer`, as the command line and the database spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Build => "build",
            Role::Viewer => "viewer",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "build" => Ok(Role::Build),
            "viewer" => Ok(Role::Viewer),
            other => Err(format!("unknown role {other:?}: use admin, build or viewer")),
        }
    }
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
    /// `--job-timeout`, in seconds: the longest one attempt of this build may run; the
    /// coordinator's `job_timeout_secs` when absent. On the wire every field is always present
    /// (bincode has no optional fields: the ALPN version changed with them); `default` lets
    /// builds stored before them read as absent.
    #[serde(default)]
    pub job_timeout_secs: Option<u64>,
    /// `--idle-timeout`, in seconds: the longest one attempt may go without a line of output;
    /// the coordinator's `job_idle_timeout_secs` when absent.
    #[serde(default)]
    pub idle_timeout_secs: Option<u64>,
    /// `--no-cache`: build every step again, without BuildKit's cache.
    #[serde(default)]
    pub no_cache: bool,
    /// `--pull`: fetch base images again even when the agent's engine has them.
    #[serde(default)]
    pub pull: bool,
    /// `--push`: publish the index under the tags. Without it the agents still push each
    /// platform's image by digest (untagged) into the tags' repository, where the client takes
    /// it for `--load` or `--output`; builds stored before this field all pushed.
    #[serde(default = "pushes")]
    pub push: bool,
    /// `--test`: commands (argument vectors) run in each platform's freshly built image on its
    /// own agent, natively, before it is pushed; one that exits non-zero fails the platform.
    #[serde(default)]
    pub tests: Vec<Vec<String>>,
    /// `--test-target`: a stage built on each platform's agent after the image; if it fails,
    /// the platform fails.
    #[serde(default)]
    pub test_target: Option<String>,
    /// `--cache-from type=registry,ref=R`: each platform reads build cache from its own tag of R
    /// (`crate::cache::scoped`) and from R itself.
    #[serde(default)]
    pub cache_from: Vec<String>,
    /// `--cache-to type=registry,ref=R`: each platform's cache image is tagged at its own tag
    /// of R, in the registry of the tags.
    #[serde(default)]
    pub cache_to: Option<String>,
    /// The images carry BuildKit's inline cache (`--cache-to type=inline`, and a registry cache
    /// of `mode=min`, which is the platform's image with inline cache).
    #[serde(default)]
    pub inline_cache: bool,
    /// `--require [PLATFORM:]KEY=VALUE`: agents must carry these labels (or CPU features).
    #[serde(default)]
    pub requirements: Vec<crate::capabilities::Requirement>,
    /// `--optional-platform`: platforms (also listed in `platforms`) built when an agent fits
    /// them and they succeed; otherwise the index is published without them.
    #[serde(default)]
    pub optional_platforms: Vec<Platform>,
    /// Attach an SLSA provenance attestation to each platform's image (`--provenance`, on by
    /// default; builds stored before it had none).
    #[serde(default)]
    pub provenance: bool,
    /// `--cache-to type=registry,...,mode=max`: each platform's BuildKit exports the cache of
    /// every stage to its own tag of `cache_to` (agents on the containerd image store only).
    #[serde(default)]
    pub cache_max: bool,
}

impl BuildRequest {
    /// Whether `platform` is optional in this build.
    pub fn is_optional(&self, platform: &Platform) -> bool {
        self.optional_platforms.contains(platform)
    }
}

fn pushes() -> bool {
    true
}

impl BuildRequest {
    /// A pushed build of `platforms` under `tags`, from `context`, with every other option at
    /// its default: no build args, labels, target, time limits, tests or cache.
    pub fn new(platforms: Vec<Platform>, tags: Vec<String>, context: Digest, dockerfile: impl Into<String>) -> Self {
        BuildRequest {
            platforms,
            tags,
            context,
            dockerfile: dockerfile.into(),
            build_args: vec![],
            target: None,
            labels: vec![],
            job_timeout_secs: None,
            idle_timeout_secs: None,
            no_cache: false,
            pull: false,
            push: true,
            tests: vec![],
            test_target: None,
            cache_from: vec![],
            cache_to: None,
            inline_cache: false,
            requirements: vec![],
            optional_platforms: vec![],
            provenance: true,
            cache_max: false,
        }
    }
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
    /// Answer to [`ClientRequest::FetchBlob`]: exactly `size` raw bytes follow.
    BlobFollows {
        /// Length of the blob.
        size: u64,
    },
    /// Answer to [`ClientRequest::InspectAgent`].
    AgentDetail(Box<super::housekeeping::AgentDetail>),
    /// Answer to [`ClientRequest::AgentDiskUsage`] and [`ClientRequest::PruneAgents`]: one
    /// answer per agent, by name.
    AgentAnswers(Vec<super::housekeeping::AgentAnswer>),
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
    /// What its engine is.
    pub engine: super::agent::EngineFacts,
    /// Serial (hex) of the certificate it connected with.
    pub cert_serial: String,
    /// When that certificate expires, milliseconds since the Unix epoch.
    pub cert_expires_ms: u64,
    /// Its x86-64 level, CPU features and labels.
    pub capabilities: crate::capabilities::Capabilities,
}
