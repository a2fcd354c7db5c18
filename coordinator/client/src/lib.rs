//! The release engineer's side of archfarm: connecting to the coordinator with a token, and the
//! `build`, `builds`, `agents`, `tokens` and `imagetools` commands of the `archfarm` binary.
//! This crate depends on `archfarm-shared` only, never on the coordinator, so the compiler
//! keeps it from importing the server.
//!
//! # Layout
//! - [`connection`]: an authenticated connection to the coordinator ([`Connection`], [`Remote`]).
//! - [`build`]: `archfarm build`: flags, request, pack, upload, follow.
//! - [`context`]: packing a deterministic context tarball, or taking its digest and chunks alone.
//! - [`cut`]: cutting the chunks asked for out of that tarball made again.
//! - [`dockerignore`]: `.dockerignore` matching with Docker's rules.
//! - [`upload`]: uploading a context as content-defined chunks.
//! - [`follow`]: following a build's events to its end; what Ctrl-C does.
//! - [`progress`]: showing a build as it happens (`--progress`).
//! - [`output`]: `--output` and `--load`, parsed.
//! - [`export`]: writing the verified images where `--output` and `--load` ask.
//! - [`builds`]: `archfarm builds ls|show|watch|retry|publish|cancel`.
//! - [`agents`]: `archfarm agents ls`, and the one-answer admin requests (tokens, drain, revoke).
//! - [`housekeeping`]: `archfarm agents inspect|du|prune`: the agents' hosts.
//! - [`imagetools`]: `archfarm imagetools inspect|create`.
//! - [`table`]: the aligned tables `ls` commands print.

pub mod agents;
pub mod build;
pub mod builds;
pub mod connection;
pub mod context;
pub mod cut;
pub mod export;
pub mod follow;
pub mod housekeeping;
pub mod imagetools;
pub mod known_contexts;
pub mod output;
pub mod progress;
pub mod table;
pub mod upload;

pub use connection::{Connection, Remote};
