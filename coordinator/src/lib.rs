//! The archfarm coordinator (`archfarm serve`) and the release engineer's client (`archfarm
//! build`, `builds`, `agents`, `tokens`, `imagetools`, `ca`). The two sides share this crate's
//! binary but no code: the client imports nothing from the server.
//!
//! # Layout
//! - [`cli`]: clap definitions of the `archfarm` binary.
//! - [`server`]: the coordinator: connections, scheduling, builds, publishing, durable state.
//! - [`client`]: the release engineer's commands, talking to the coordinator over QUIC.
//! - [`ca`]: creating the farm CA and issuing certificates (`archfarm ca`), on local files.

pub mod ca;
pub mod cli;
pub mod client;
pub mod server;

pub use server::run;
