//! The archfarm coordinator (`archfarm serve`) and the release engineer's client (`archfarm
//! build`, `agents ls`, `imagetools inspect`, `ca`).
//!
//! # Layout
//! - [`cli`]: clap definitions of the `archfarm` binary.
//! - [`server`]: the QUIC endpoint; routes connections by ALPN; shutdown.
//! - [`agent_session`]: one agent's connection: identity, registration, heartbeats, context fetches.
//! - [`client_session`]: one client's connection: token check, then one request per stream.
//! - [`context_upload`]: receiving a context as content-defined chunks, checked as it is written.
//! - [`farm`]: connected agents and waiting jobs around the scheduler.
//! - [`live`]: running builds: their event channels and cancellation.
//! - [`scheduler`]: pure job placement: native platforms only, least-loaded first.
//! - [`store`]: durable state in SQLite (the only user of rusqlite).
//! - [`build`]: one build from request to published index: retries, failover, resume.
//! - [`publish`]: verifying pushed images in the registry and publishing the index.
//! - [`auth`]: client token checks.
//! - [`enroll`]: agents joining with a one-time join token (certificate signing requests).
//! - [`ca`]: creating the farm CA and issuing certificates.
//! - [`client`]: the release engineer's commands.

pub mod agent_session;
pub mod auth;
pub mod build;
pub mod ca;
pub mod cli;
pub mod client;
pub mod client_session;
pub mod context_upload;
pub mod enroll;
pub mod farm;
pub mod live;
pub mod publish;
pub mod scheduler;
pub mod server;
pub mod store;

pub use server::run;
