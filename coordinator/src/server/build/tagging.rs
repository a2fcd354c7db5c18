//! Writing a build's index under its tags, one tag at a time, each only if it may move
//! ([`crate::server::tags`]) and each recorded once written. A build holds its tags' locks
//! while it decides and writes, so of two builds racing for a tag the later submission wins
//! whichever finishes last; builds of other tags are not held up.

use super::Target;
use crate::server::publish;
use crate::server::state::Shared;
use crate::server::tags::{self, Mover};
use archfarm_shared::oci::{Attestation, Child};
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

/// Publishes the index over `children` under every tag of `target` that `mover` may move.
/// Fails when none moved, or when a write fails; the tags written before that stay recorded,
/// and `archfarm builds publish` writes the rest.
pub async fn publish(
    shared: &Shared,
    target: &Target,
    children: &[Child],
    attestations: &[Attestation],
    mover: Mover<'_>,
) -> Result<Publication, String> {
    let _held = shared.tag_locks.lock(target.tags.iter().map(|t| t.whole())).await;
    let (mut written, mut kept, mut index) = (Vec::new(), Vec::new(), None);
    for tag in &target.tags {
        let whole = tag.whole();
        let record = shared.store.tag(&whole).await.map_err(|e| e.to_string())?;
        // Where the registry has it now matters only against a record: a tag no build wrote
        // may move anyway, and asking costs the registry a request per tag.
        let now = match &record {
            Some(_) => shared
                .metrics
                .registry_call("tag-lookup", target.registry.tag_target(tag))
                .await
                .map_err(|e| e.to_string())?,
            None => None,
        };
        if let Err(why) = tags::may_move(&whole, record.as_ref(), now.as_ref(), mover) {
            warn!("{why}");
            kept.push(why);
            continue;
        }
        let publishing = publish::publish(&target.registry, std::slice::from_ref(tag), children, attestations);
        let digest =
            shared.metrics.registry_call("publish-index", publishing).await.map_err(|e| match written.is_empty() {
                true => e,
                false => format!("{e} (already written: {}; the rest were not)", written.join(", ")),
            })?;
        shared
            .store
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

/// A lock per tag, made when first asked for and forgotten when nobody holds or awaits it.
#[derive(Debug, Default)]
pub struct TagLocks {
    locks: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

impl TagLocks {
    /// Locks every tag of `tags`, in sorted order so that two builds never wait on each other.
    pub async fn lock(&self, tags: impl Iterator<Item = String>) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
        let mut tags: Vec<String> = tags.collect();
        tags.sort();
        tags.dedup();
        let locks: Vec<_> = {
            let mut all = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            all.retain(|_, l| std::sync::Arc::strong_count(l) > 1);
            tags.into_iter().map(|t| all.entry(t).or_default().clone()).collect()
        };
        let mut held = Vec::with_capacity(locks.len());
        for lock in locks {
            held.push(lock.lock_owned().await);
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_tag_is_held_by_one_build_at_a_time_and_others_pass() {
        let locks = TagLocks::default();
        let first = locks.lock(["r/a:1".to_owned(), "r/a:latest".to_owned()].into_iter()).await;
        let other = tokio::time::timeout(Duration::from_millis(50), locks.lock(["r/b:1".to_owned()].into_iter())).await;
        assert!(other.is_ok(), "another tag is not held up");
        drop(other);
        let same =
            tokio::time::timeout(Duration::from_millis(50), locks.lock(["r/a:latest".to_owned()].into_iter())).await;
        assert!(same.is_err(), "the same tag waits");
        drop(first);
        assert!(locks.lock(["r/a:latest".to_owned()].into_iter()).await.len() == 1);
    }
}
