//! What the archfarm coordinator, agent and client share: the wire protocol and its codec,
//! identifiers, platform names, OCI documents, the registry adapter and TLS setup.
//!
//! # Layout
//! - [`platform`]: `os/arch[/variant]` names, normalised by containerd's rules.
//! - [`ids`]: build, job, agent and digest identifiers, checked when parsed and when decoded.
//! - [`protocol`]: the messages, one enum per direction and role (a file per role), the ALPN
//!   strings and close codes.
//! - [`request`]: the rules a build request must meet, on the client and the coordinator alike.
//! - [`codec`]: length-prefixed bincode frames with size limits (the only user of bincode).
//! - [`stream`]: a stream of framed messages (both halves and the frame limit), typed reads
//!   and writes; what every connection's code takes instead of raw streams.
//! - [`content`]: sha256-addressed files (build contexts), written only once verified.
//! - [`chunking`]: content-defined chunks of a context, so a re-upload sends what changed.
//! - [`chunk_lists`]: the chunk list kept beside each stored context.
//! - [`tls`]: rustls/quinn configuration for coordinator, agents and clients.
//! - [`dial`]: resolving, binding and connecting to the coordinator within a deadline.
//! - [`pki`]: the farm CA: creating it, issuing certificates, client tokens (rcgen).
//! - [`oci`]: media types, canonical index and manifest bytes, image config platforms.
//! - [`registry`]: the registry adapter (the only user of oci-client).
//! - [`credentials`]: registry credentials from the Docker config and its helpers.
//! - [`reference`]: image references and what the farm derives from them.
//! - [`retry`]: one backoff policy per kind of call, and the loop that retries under one.
//! - [`telemetry`]: tracing setup for the binaries.
//! - [`shutdown`]: the cancellation token SIGINT/SIGTERM trip.
//! - [`clock`]: wall-clock milliseconds, as recorded and shown.
//! - [`outcome`]: how an attempt at a job ended.
//! - [`tarball`]: what a build-context tarball may hold.

pub mod cache;
pub mod capabilities;
pub mod chunk_lists;
pub mod chunking;
pub mod clock;
pub mod codec;
pub mod content;
pub mod credentials;
pub mod dial;
pub mod dockerfile;
pub mod dockerignore;
pub mod engine_needs;
pub mod ids;
pub mod images;
pub mod layers;
pub mod oci;
pub mod outcome;
pub mod pki;
pub mod platform;
pub mod protocol;
pub mod provenance;
pub mod reference;
pub mod registry;
pub mod request;
pub mod retry;
pub mod scopes;
pub mod shutdown;
pub mod stream;
pub mod tarball;
pub mod telemetry;
pub mod tls;

pub use ids::{AgentName, BuildId, Digest, JobId};
pub use platform::Platform;
