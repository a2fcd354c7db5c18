//! The seams of a build's orchestration ([`super::build`]): the link to an agent, and the
//! registry. The real ones speak QUIC ([`super::agent_link`]) and the distribution API
//! ([`super::registry_images`]); unit tests put scripted ones in their place and run retries,
//! failover, quarantine and publishing in-process.
//!
//! [`ImageStore`] is everything the coordinator asks of registries; [`ImageCheck`] is the
//! narrower view one platform needs (check what an agent pushed into the build's repository,
//! and attest it), which images handed to the coordinator ([`super::handover`]) also offer.

use super::live::Live;
use archfarm_shared::oci::{Attestation, Child};
use archfarm_shared::protocol::{Housekeeping, HousekeepingReply, JobFailure, JobSpec, PushedImage};
use archfarm_shared::reference::ImageRef;
use archfarm_shared::{AgentName, Digest, JobId, Platform};
use futures_util::future::BoxFuture;
use std::time::Duration;

/// What the coordinator asks of a connected agent.
pub trait AgentLink: Send + Sync + std::fmt::Debug {
    /// Runs one attempt of a job on the agent. Log lines go to `live`'s watchers; cancelling
    /// `live.cancel` stops the job on the agent, and so does `idle` passing without a line of
    /// output (a `TimedOut` failure). Dropping the future stops it too. Ends with the image the
    /// agent pushed, or why there is none.
    fn run_job<'a>(
        &'a self,
        spec: JobSpec,
        live: &'a Live,
        idle: Duration,
    ) -> BoxFuture<'a, Result<PushedImage, JobFailure>>;

    /// Whether the link is still up.
    fn is_open(&self) -> bool;

    /// This connection's id, to tell it from a later connection of the same agent.
    fn id(&self) -> usize;

    /// Closes the link: `code` is one of the protocol's close codes, `reason` is shown to the agent.
    fn close(&self, code: u32, reason: &str);

    /// Asks the agent about its host's caches, or to free them.
    fn housekeeping(&self, request: Housekeeping) -> BoxFuture<'_, Result<HousekeepingReply, String>> {
        let _ = request;
        Box::pin(async { Err("this agent link cannot ask about caches".to_owned()) })
    }
}

/// What an agent says it pushed for a job of `platform`: a claim, checked before it is believed.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    /// The job's platform.
    pub platform: &'a Platform,
    /// The agent that ran it.
    pub agent: &'a AgentName,
    /// The image it reported.
    pub pushed: &'a PushedImage,
}

/// A check of a [`Claim`]: the child to list in the index, or why not.
pub type Verifying<'a> = BoxFuture<'a, Result<Child, VerifyError>>;

/// Why a pushed image was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The image is not what the job asked for: the agent is at fault.
    #[error("{0}")]
    Wrong(String),
    /// The registry could not be asked (down, 5xx): nobody's fault yet.
    #[error("{0}")]
    Unavailable(String),
}

/// What the coordinator asks of the registry about an image an agent pushed.
pub trait ImageCheck: Send + Sync + std::fmt::Debug {
    /// Reads the pushed manifest and its config back and checks them against the job's
    /// platform. Returns the child to list in the index.
    fn verify<'a>(&'a self, claim: Claim<'a>) -> Verifying<'a>;

    /// The repository images go to, `registry/name`; empty where they go to no registry.
    fn repository(&self) -> String {
        String::new()
    }

    /// Attempt `job` starts on `agent`: where images are handed over to the coordinator, the
    /// agent may store blobs for it from now on.
    fn attempt_started(&self, _job: &JobId, _agent: &AgentName) {}

    /// Attempt `job` ended, its image `verified` or not: what it handed over without a verified
    /// image is removed.
    fn attempt_ended(&self, _job: &JobId, _verified: bool) {}

    /// Pushes `statement` (an in-toto statement about `subject`) as its attestation manifest,
    /// beside it. Where images go to no registry there is nowhere to put one: `None`.
    fn attest<'a>(
        &'a self,
        _subject: &'a Child,
        _statement: Vec<u8>,
    ) -> BoxFuture<'a, Result<Option<Attestation>, String>> {
        Box::pin(async { Ok(None) })
    }
}

/// Everything the coordinator asks of registries: each call names the repository or image it is
/// about, and the adapter picks the registry's client from it.
pub trait ImageStore: Send + Sync + std::fmt::Debug {
    /// Reads the manifest an agent reported in `repo`, and its config, back and checks them
    /// against the job's platform. Returns the child to list in the index.
    fn verify<'a>(&'a self, repo: &'a ImageRef, claim: Claim<'a>) -> Verifying<'a>;

    /// Pushes `statement` (an in-toto statement about `subject`) into `repo` as its attestation
    /// manifest. Returns what the index lists for it.
    fn attest<'a>(
        &'a self,
        repo: &'a ImageRef,
        subject: &'a Child,
        statement: Vec<u8>,
    ) -> BoxFuture<'a, Result<Attestation, String>>;

    /// Whether the registry serves a manifest under `reference` (a build cache image, say).
    fn has_manifest<'a>(&'a self, reference: &'a ImageRef) -> BoxFuture<'a, bool>;

    /// Makes the image `digest` of repository `from` available under `to` (a tag, perhaps in
    /// another repository of the same registry), mounting its blobs rather than copying them.
    fn copy<'a>(
        &'a self,
        from: &'a ImageRef,
        digest: &'a Digest,
        to: &'a ImageRef,
    ) -> BoxFuture<'a, Result<(), String>>;

    /// What `tag` resolves to now; `None` when the registry has no such tag.
    fn tag_target<'a>(&'a self, tag: &'a ImageRef) -> BoxFuture<'a, Result<Option<Digest>, String>>;

    /// Publishes one index over `children` and their `attestations` under every tag of `tags`
    /// (all in one repository); returns its digest.
    fn publish_index<'a>(
        &'a self,
        tags: &'a [ImageRef],
        children: &'a [Child],
        attestations: &'a [Attestation],
    ) -> BoxFuture<'a, Result<Digest, String>>;
}

/// One repository of an [`ImageStore`], as a platform's orchestration checks images in it.
#[derive(Debug, Clone, Copy)]
pub struct InRepository<'a> {
    /// The registries.
    pub store: &'a dyn ImageStore,
    /// The build's repository.
    pub repo: &'a ImageRef,
}

impl ImageCheck for InRepository<'_> {
    fn verify<'a>(&'a self, claim: Claim<'a>) -> Verifying<'a> {
        self.store.verify(self.repo, claim)
    }

    fn repository(&self) -> String {
        self.repo.name()
    }

    fn attest<'a>(
        &'a self,
        subject: &'a Child,
        statement: Vec<u8>,
    ) -> BoxFuture<'a, Result<Option<Attestation>, String>> {
        Box::pin(async move { self.store.attest(self.repo, subject, statement).await.map(Some) })
    }
}
