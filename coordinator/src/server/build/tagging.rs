//! Writing a build's index under its tags, one tag at a time, each only if it may move
//! ([`crate::server::tags`]) and each recorded once written. Tag writes of all builds go one
//! at a time, so of two builds racing for a tag the later submission wins whichever finishes
//! last.

use super::Target;
use crate::server::publish;
use crate::server::state::Shared;
use crate::server::tags::{self, Mover};
use archfarm_shared::oci::Child;
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
    mover: Mover<'_>,
) -> Result<Publication, String> {
    let _one_at_a_time = shared.tag_writes.lock().await;
    let (mut written, mut kept, mut index) = (Vec::new(), Vec::new(), None);
    for tag in &target.tags {
        let whole = tag.whole();
        let record = shared.store.tag(&whole).await.map_err(|e| e.to_string())?;
        let now = target.registry.tag_target(tag).await.map_err(|e| e.to_string())?;
        if let Err(why) = tags::may_move(&whole, record.as_ref(), now.as_ref(), mover) {
            warn!("{why}");
            kept.push(why);
            continue;
        }
        let digest = publish::publish(&target.registry, std::slice::from_ref(tag), children).await.map_err(|e| {
            match written.is_empty() {
                true => e,
                false => format!("{e} (already written: {}; the rest were not)", written.join(", ")),
            }
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
