//! The archfarm coordinator (`archfarm serve`) and the `archfarm` binary. The binary also runs
//! the release engineer's commands (`archfarm build`, `builds`, `agents`, `tokens`,
//! `imagetools`), which live in the `archfarm-client` crate: that crate does not depend on this
//! one, so the compiler keeps the client from importing the server.
//!
//! # Layout
//! - [`cli`]: clap definitions of the `archfarm` binary.
//! - [`server`]: the coordinator: connections, scheduling, builds, publishing, durable state.
//! - [`ca`]: creating the farm CA and issuing certificates (`archfarm ca`), on local files.

pub mod ca;
pub mod cli;
pub mod server;

pub use server::run;
