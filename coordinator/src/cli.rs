//! Command-line interface of the `archfarm` binary.

use archfarm_client::agents::Format;
use archfarm_client::build::BuildArgs;
use archfarm_client::follow::OnInterrupt;
use archfarm_client::progress::Mode;
use archfarm_client::Remote;
use archfarm_shared::{AgentName, BuildId};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// archfarm: multi-platform container images built natively on a farm of agents, published as
/// one verified OCI index.
#[derive(Debug, Parser)]
#[command(name = "archfarm", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator.
    Serve {
        /// Coordinator configuration file (TOML).
        #[arg(short, long, env = "ARCHFARM_CONFIG")]
        config: PathBuf,
    },
    /// Build an image for several platforms, each natively on an agent, and push one index.
    Build(Box<BuildArgs>),
    /// Build history, and acting on one build.
    Builds {
        /// What to do with builds.
        #[command(subcommand)]
        command: BuildsCommand,
    },
    /// Inspect the farm's agents.
    Agents {
        /// What to do with agents.
        #[command(subcommand)]
        command: AgentsCommand,
    },
    /// Client tokens for release engineers and pipelines.
    Tokens {
        /// What to do.
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Inspect images in a registry.
    Imagetools {
        /// What to do.
        #[command(subcommand)]
        command: ImagetoolsCommand,
    },
    /// Manage the farm's certificate authority.
    Ca {
        /// What to do.
        #[command(subcommand)]
        command: CaCommand,
    },
}

/// `archfarm agents ...`
#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Join tokens for enrolling agents.
    Token {
        /// What to do.
        #[command(subcommand)]
        command: JoinTokenCommand,
    },
    /// Revoke an agent's certificates: disconnect it now and refuse them from now on. The name
    /// may enroll again with a new join token.
    Revoke {
        #[command(flatten)]
        /// Coordinator.
        remote: Remote,
        /// Agent name.
        name: AgentName,
        /// Revoke only the certificate with this serial (`agents inspect` shows it), for
        /// example an impostor's under the same name.
        #[arg(long)]
        serial: Option<String>,
    },
    /// Let an agent finish its running jobs and give it no new ones, until `undrain` (admin).
    /// Recorded: it holds when the agent reconnects or the coordinator restarts.
    Drain {
        #[command(flatten)]
        /// Coordinator.
        remote: Remote,
        /// Agent name.
        name: AgentName,
    },
    /// Give a drained agent jobs again (admin).
    Undrain {
        #[command(flatten)]
        /// Coordinator.
        remote: Remote,
        /// Agent name.
        name: AgentName,
    },
    /// Lift an agent's quarantine and forget the failures that led to it (admin).
    Unquarantine {
        #[command(flatten)]
        /// Coordinator.
        remote: Remote,
        /// Agent name.
        name: AgentName,
    },
    /// List connected agents: name, address, platforms, state, running jobs.
    Ls {
        #[command(flatten)]
        /// Coordinator.
        remote: Remote,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// One agent in detail: platforms, engine, capacity, state, its caches and recent jobs.
    Inspect {
        #[command(flatten)]
        /// Coordinator.
        remote: Remote,
        /// Agent name.
        name: AgentName,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// The build cache and context cache of each agent (or one).
    Du {
        #[command(flatten)]
        /// Coordinator.
        remote: Remote,
        /// Agent name; every connected agent when absent.
        name: Option<AgentName>,
    },
    /// Free agents' build cache (through their engine) and context caches; refused for an agent
    /// that runs a job unless --force.
    Prune {
        #[command(flatten)]
        /// Coordinator.
        remote: Remote,
        /// Agent name; every connected agent when absent.
        name: Option<AgentName>,
        /// Also the cache that images still use.
        #[arg(short, long)]
        all: bool,
        /// Build cache to keep, for example 10GB.
        #[arg(long = "keep-storage")]
        keep_storage: Option<String>,
        /// Prune an agent even while it runs jobs.
        #[arg(short, long)]
        force: bool,
    },
}

/// `archfarm builds ...`
#[derive(Debug, Subcommand)]
pub enum BuildsCommand {
    /// List recent builds, newest first.
    Ls {
        #[command(flatten)]
        /// Coordinator.
        remote: Remote,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show one build: each platform's state, agent, attempts, digest and error.
    Show {
        #[command(flatten)]
        /// Coordinator.
        remote: Remote,
        /// Build id (b-...).
        build: BuildId,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Follow a build to its end (reattach after Ctrl-C or a coordinator restart).
    Watch {
        #[command(flatten)]
        /// Coordinator.
        remote: Remote,
        /// Build id.
        build: BuildId,
        /// Progress output.
        #[arg(long, value_enum, default_value = "auto")]
        progress: Mode,
        /// What Ctrl-C does: ask, detach or cancel.
        #[arg(long, value_enum, default_value = "ask")]
        on_interrupt: OnInterrupt,
    },
    /// Run the failed platforms of a failed or cancelled build again, on fresh attempts, keep
    /// its verified platforms, publish, and follow it (not in buildx).
    Retry {
        #[command(flatten)]
        /// Coordinator.
        remote: Remote,
        /// Build id.
        build: BuildId,
        /// Only this platform (repeatable); every platform not verified when absent.
        #[arg(long = "platform", value_delimiter = ',')]
        platforms: Vec<archfarm_shared::Platform>,
        /// Progress output.
        #[arg(long, value_enum, default_value = "auto")]
        progress: Mode,
        /// What Ctrl-C does: ask, detach or cancel.
        #[arg(long, value_enum, default_value = "ask")]
        on_interrupt: OnInterrupt,
    },
    /// Publish the index of a build whose platforms are all verified, without rebuilding.
    Publish {
        #[command(flatten)]
        /// Coordinator.
        remote: Remote,
        /// Build id.
        build: BuildId,
        /// Move every tag to this build's index, even one that points at a later build or was
        /// moved since; without it such tags are kept, and said so.
        #[arg(long)]
        force: bool,
    },
    /// Delete, now, what retention allows: finished builds past `history_days` or
    /// `history_builds`, and build contexts and handed-over image blobs no build needs
    /// (`retention_days`). The coordinator also does this every hour. Admins only.
    Prune {
        #[command(flatten)]
        /// Coordinator.
        remote: Remote,
    },
    /// Cancel a running build: its jobs stop on the agents and nothing is published.
    Cancel {
        #[command(flatten)]
        /// Coordinator.
        remote: Remote,
        /// Build id.
        build: BuildId,
    },
}

/// `archfarm agents token ...`
#[derive(Debug, Subcommand)]
pub enum JoinTokenCommand {
    /// Create a one-time join token; an agent started with `--join-token` enrolls with it.
    Create {
        #[command(flatten)]
        /// Coordinator.
        remote: Remote,
        /// Seconds until the token expires (at most a week).
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// The only name the agent may enroll under.
        #[arg(long)]
        name: Option<AgentName>,
        /// A platform the agent may declare (repeatable); any when none is given.
        #[arg(long = "platform", value_name = "PLATFORM")]
        platforms: Vec<archfarm_shared::Platform>,
    },
}

/// `archfarm tokens ...`
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a named client token (printed once; the coordinator keeps only its hash).
    Create {
        #[command(flatten)]
        /// Coordinator.
        remote: Remote,
        /// Who or what uses it, for example ci-release. Builds it starts are recorded as its.
        name: String,
        /// `build`: builds of its own; `admin`: also tokens, join tokens, agents and every
        /// owner's builds; `viewer`: reading only (agents, and the status page and metrics,
        /// the only role they take off loopback).
        #[arg(long, default_value = "build")]
        role: archfarm_shared::protocol::Role,
        /// Limit a build token to repositories under this prefix, for example
        /// registry.example.com/team/ (repeatable; none: any repository).
        #[arg(long = "scope", value_name = "REGISTRY/PREFIX")]
        scopes: Vec<String>,
    },
    /// Revoke a named client token.
    Revoke {
        #[command(flatten)]
        /// Coordinator.
        remote: Remote,
        /// Its name.
        name: String,
    },
}

/// `archfarm imagetools ...`
#[derive(Debug, Subcommand)]
pub enum ImagetoolsCommand {
    /// Show an image index (or manifest) and its platforms.
    Inspect {
        /// Image reference, REGISTRY/REPOSITORY:TAG or @DIGEST.
        reference: String,
        /// Print the raw JSON.
        #[arg(long)]
        raw: bool,
        /// A registry (host:port) to reach over plain http although it is not on loopback.
        #[arg(long = "insecure-registry")]
        insecure: Vec<String>,
    },
    /// Publish one index over per-platform images already in the registry (by digest or tag,
    /// or an index whose children to take), each checked by its config as the farm checks an
    /// agent's push: the merge step of a CI matrix.
    Create {
        /// Name and tag of the index (repeatable; all in one repository).
        #[arg(short = 't', long = "tag", required = true)]
        tags: Vec<String>,
        /// The images, REGISTRY/REPOSITORY@sha256:… or :TAG, in the registry of the tags.
        #[arg(required = true)]
        sources: Vec<String>,
        /// A registry (host:port) to reach over plain http although it is not on loopback.
        #[arg(long = "insecure-registry")]
        insecure: Vec<String>,
    },
}

/// `archfarm ca ...`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the farm CA, the coordinator's certificate and a client token.
    Init {
        /// Directory to write into.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// DNS name or IP address agents and clients use to reach the coordinator (repeatable;
        /// localhost, 127.0.0.1 and ::1 are always included).
        #[arg(long = "name")]
        names: Vec<String>,
        /// Replace an existing CA (invalidates every agent certificate).
        #[arg(long)]
        force: bool,
    },
    /// Issue an agent certificate; its common name is the agent's name.
    IssueAgent {
        /// Agent name (a-z, 0-9, '-', '_', '.').
        name: String,
        /// Directory holding ca.pem and ca.key.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Where to write NAME.pem and NAME.key (default: --dir).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}
