//! Writing a build's index under its tags, one tag at a time, each only if it may move
//! ([`super::rule`]) and each recorded once written. A build holds its tags' locks
//! ([`super::locks`]) while it decides and writes, so of two builds racing for a tag the later
//! submission wins whichever finishes last; builds of other tags are not held up.

use super::locks::TagLocks;
use super::rule::{self, Mover};
use crate::server::metrics::Metrics;
use crate::server::ports::ImageStore;
use crate::server::store::Store;
use archfarm_shared::oci::{self, Attestation, Child};
use archfarm_shared::reference::ImageRef;
use archfarm_shared::Digest;
use tracing::{info, warn};

/// What a publish did.
#[derive(Debug)]
pub struct Publication {
    /// The index.
    pub index: Digest,
    /// Tags now pointing at it.
    pub written: Vec<String>,
    /// Why each other tag was kept where it was.
    pub kept: Vec<String>,
}

/// What writing tags takes: the record of each tag's last write, the registry, the locks.
#[derive(Debug, Clone, Copy)]
pub struct TagWriter<'a> {
    /// Where each write is recorded.
    pub store: &'a Store,
    /// Where the index goes.
    pub registry: &'a dyn ImageStore,
    /// Held per tag while deciding and writing.
    pub locks: &'a TagLocks,
    /// Counts registry calls.
    pub metrics: &'a Metrics,
}

/// Publishes the index over `children` under every tag of `tags` that `mover` may move.
/// Fails when none moved, or when a write fails; the tags written before that stay recorded,
/// and `archfarm builds publish` writes the rest.
pub async fn publish(
    w: TagWriter<'_>,
    tags: &[ImageRef],
    children: &[Child],
    attestations: &[Attestation],
    mover: Mover<'_>,
) -> Result<Publication, String> {
    let _held = w.locks.lock(tags.iter().map(|t| t.whole())).await;
    // The index's bytes, and so its digest, follow from its children: it is known before it is
    // pushed, and recorded as the write's intent.
    let planned = Digest::of(&oci::index_json_with(children, attestations).map_err(|e| e.to_string())?);
    let (mut written, mut kept, mut index) = (Vec::new(), Vec::new(), None);
    for tag in tags {
        let whole = tag.whole();
        let recorded = w.store.tag(&whole).await.map_err(|e| e.to_string())?;
        let intent = w.store.tag_intent(&whole).await.map_err(|e| e.to_string())?;
        // Where the registry has it now matters only against a record: a tag no build wrote
        // may move anyway, and asking costs the registry a request per tag.
        let now = match (&recorded, &intent) {
            (None, None) => None,
            _ => w.metrics.registry_call("tag-lookup", w.registry.tag_target(tag)).await?,
        };
        let record = rule::settle(recorded.clone(), intent, now.as_ref());
        if let Some(done) = record.as_ref().filter(|r| Some(*r) != recorded.as_ref()) {
            info!(tag = %whole, index = %done.digest, build = %done.build, "a write cut off by a restart had reached the registry");
            w.store
                .tag_written(&whole, &done.build, done.build_created_ms, &done.digest)
                .await
                .map_err(|e| e.to_string())?;
        }
        if let Err(why) = rule::may_move(&whole, record.as_ref(), now.as_ref(), mover) {
            warn!("{why}");
            kept.push(why);
            continue;
        }
        w.store
            .tag_intended(&whole, mover.build, mover.created_ms, &planned)
            .await
            .map_err(|e| format!("the coordinator cannot record that it writes {whole}, so it does not: {e}"))?;
        let publishing = w.registry.publish_index(std::slice::from_ref(tag), children, attestations);
        let digest =
            w.metrics.registry_call("publish-index", publishing).await.map_err(|e| match written.is_empty() {
                true => e,
                false => format!("{e} (already written: {}; the rest were not)", written.join(", ")),
            })?;
        w.store
            .tag_written(&whole, mover.build, mover.created_ms, &digest)
            .await
            .map_err(|e| format!("{whole} was written, but the coordinator cannot record it: {e}"))?;
        info!(tag = %whole, index = %digest, "tag written");
        written.push(whole);
        index = Some(digest);
    }
    match index {
        Some(index) => Ok(Publication { index, written, kept }),
        None => Err(format!("no tag was moved:\n{}", kept.join("\n"))),
    }
}
