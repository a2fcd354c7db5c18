//! An agent's connection: what it sends on its control, job and context streams, and what the
//! coordinator answers.

use super::failure::JobFailure;
use crate::ids::{BuildId, Digest, JobId};
use crate::platform::Platform;
use serde::{Deserialize, Serialize};

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
    /// First frame on a context stream opened by the agent: send me this build context. The
    /// coordinator answers [`CoordinatorMessage::ContextChunks`] and the list of its chunks; the
    /// agent answers with a bitmap of the chunks it wants (it has the others in contexts it
    /// holds), and finishes its side; exactly the bytes of the wanted chunks follow, in order.
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
    /// On the control stream: the engine's health changed. With a problem the agent takes no
    /// jobs (and has stopped those it ran); without one it takes jobs again. Appended last.
    Health {
        /// What is wrong with the engine; none when it is healthy again.
        problem: Option<String>,
    },
    /// On a housekeeping stream: the answer to [`CoordinatorMessage::Housekeeping`].
    Housekeeping(super::housekeeping::HousekeepingReply),
    /// First frame on a stream the agent opens to hand one blob of a built image to the
    /// coordinator (a build with no registry): exactly `size` raw bytes follow. The coordinator
    /// answers [`CoordinatorMessage::BlobStored`] or [`CoordinatorMessage::BlobRefused`].
    StoreBlob {
        /// The blob's digest; the bytes must hash to it.
        digest: Digest,
        /// Its length.
        size: u64,
        /// The job whose image it belongs to: the coordinator takes blobs only for an attempt
        /// the agent runs now, within that attempt's bounds.
        job: JobId,
    },
}

/// Registries with credentials one agent reports at most ([`Registration::credentials_for`]).
pub const MAX_CREDENTIALED: usize = 64;

/// What an agent's engine is, as the agent read it from the engine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineFacts {
    /// Docker Engine version, for example `26.1.5+dfsg1`.
    pub version: String,
    /// The API version it speaks, for example `1.45`.
    pub api_version: String,
    /// Its image store: `containerd`, or the storage driver of the classic store (`overlay2`).
    pub image_store: String,
    /// Its BuildKit's version (`v0.13.2`); empty when the engine does not say (BuildKit before 0.11).
    pub buildkit_version: String,
}

impl EngineFacts {
    /// An engine known only by its version.
    pub fn of_version(version: &str) -> Self {
        EngineFacts { version: version.to_owned(), ..Default::default() }
    }

    /// `26.1.5+dfsg1 (API 1.45, containerd store, BuildKit v0.13.2)`, leaving out what is not known.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if !self.api_version.is_empty() {
            parts.push(format!("API {}", self.api_version));
        }
        if !self.image_store.is_empty() {
            parts.push(format!("{} store", self.image_store));
        }
        if !self.buildkit_version.is_empty() {
            parts.push(format!("BuildKit {}", self.buildkit_version));
        }
        if parts.is_empty() {
            return self.version.clone();
        }
        format!("{} ({})", self.version, parts.join(", "))
    }

    /// Its four fields, named, for checks and labels.
    pub fn fields(&self) -> [(&'static str, &str); 4] {
        [
            ("engine version", &self.version),
            ("engine API version", &self.api_version),
            ("image store", &self.image_store),
            ("BuildKit version", &self.buildkit_version),
        ]
    }
}

/// What an agent declares when it registers. Its name comes from its certificate, not from here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    /// Platforms this agent builds natively, its engine's own first.
    pub platforms: Vec<Platform>,
    /// How many builds it runs at once.
    pub capacity: u32,
    /// What its engine is: version, API, image store, BuildKit.
    pub engine: EngineFacts,
    /// The agent's own version.
    pub agent_version: String,
    /// Its x86-64 level, CPU features and labels.
    pub capabilities: crate::capabilities::Capabilities,
    /// The registries (`host[:port]`, Docker Hub as `registry-1.docker.io`) its Docker config
    /// holds credentials for when it starts, never the credentials: the coordinator refuses a
    /// build reading outside its token's scopes there before it runs.
    pub credentials_for: Vec<String>,
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
    /// Reply to [`AgentMessage::FetchContext`]: the context is `size` bytes in `chunks`
    /// content-defined chunks; their list follows as `chunks` raw records of
    /// [`crate::chunking::LISTED_CHUNK`] bytes ([`crate::chunking::encode_list`]). The agent then
    /// sends `chunks.div_ceil(8)` bytes, bit `i % 8` (least significant first) of byte `i / 8` set
    /// for each chunk `i` it wants, and the coordinator sends those chunks' bytes in order.
    ContextChunks {
        /// Length of the tarball.
        size: u64,
        /// How many chunks it has.
        chunks: u32,
    },
    /// Reply to [`AgentMessage::FetchContext`]: the coordinator does not hold that context.
    ContextMissing {
        /// Why.
        reason: String,
    },
    /// Answer to each [`AgentMessage::Heartbeat`] on the control stream, so the agent notices a
    /// coordinator that died without closing the connection.
    HeartbeatAck,
    /// First frame on a housekeeping stream opened by the coordinator: the agent answers with
    /// [`AgentMessage::Housekeeping`] and the stream ends.
    Housekeeping(super::housekeeping::Housekeeping),
    /// Answer to [`AgentMessage::StoreBlob`]: stored.
    BlobStored,
    /// Answer to [`AgentMessage::StoreBlob`]: not stored, and why.
    BlobRefused {
        /// Why.
        reason: String,
    },
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
    /// Empty when the build names no registry: the agent then hands the image to the
    /// coordinator ([`AgentMessage::StoreBlob`]).
    pub repository: String,
    /// Attempt number of this job, from 1. Each attempt has its own stream; a result is only
    /// ever read from the stream of the attempt it belongs to.
    pub attempt: u32,
    /// `--no-cache`: build every step again.
    pub no_cache: bool,
    /// `--pull`: fetch base images again.
    pub pull: bool,
    /// `--test` commands, run in the built image before it is pushed.
    pub tests: Vec<Vec<String>>,
    /// `--test-target` stage, built after the image.
    pub test_target: Option<String>,
    /// Images to import build cache from, already scoped to this job's platform.
    pub cache_from: Vec<String>,
    /// Build with BuildKit's inline cache in the image config.
    pub inline_cache: bool,
    /// The build records provenance: the agent resolves its base images by digest.
    pub provenance: bool,
    /// The scopes of the token that started the build (`registry/team/` prefixes); empty when
    /// it has none. The agent reads no image outside them from a registry it holds credentials
    /// for ([`crate::scopes::check_reads`]).
    pub read_scopes: Vec<String>,
    /// `--cache-to type=registry,...,mode=max`: the registry cache, already scoped to this
    /// job's platform, that BuildKit exports the cache of every stage to. Only engines on the
    /// containerd image store take such jobs ([`crate::engine_needs`]).
    pub cache_to_max: Option<String>,
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
    /// The build's base images as the registry resolved them, for its provenance.
    pub bases: Vec<crate::provenance::ResolvedBase>,
}
