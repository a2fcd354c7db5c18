//! `archfarm builds publish`: the index of a build whose platforms are all verified, written
//! again without rebuilding (a publish that failed half-way, or a tag to move back with
//! `--force`).

use super::target::Target;
use crate::server::state::Shared;
use crate::server::tags::rule::Mover;
use crate::server::tags::writes::{self, Publication};
use archfarm_shared::oci::{Blob, Child};
use archfarm_shared::protocol::{BuildState, JobState};
use archfarm_shared::BuildId;
use tracing::info;

/// Publishes the index of a build whose platforms are all verified, without rebuilding. Tags
/// that still point at it are written again (the same bytes); of a build that ended `state`,
/// those pointing elsewhere move only as [`crate::server::tags::rule::may_move`] allows, or with `force`.
pub async fn republish(shared: &Shared, id: &BuildId, state: BuildState, force: bool) -> Result<Publication, String> {
    let req = shared.store.request(id).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("no build {id}"))?;
    if shared.live.get(id).is_some() {
        return Err(format!("build {id} is still running; it publishes on its own when every platform is verified"));
    }
    let Some(target) = Target::of(&req)? else {
        return Err(format!(
            "build {id} named no registry (-t): its images went to the client, and there is nothing to publish to"
        ));
    };
    let (mut children, mut attestations) = (Vec::new(), Vec::new());
    for job in shared.store.jobs(id).await.map_err(|e| e.to_string())? {
        match (job.state, job.verified) {
            (JobState::LeftOut, _) => {}
            (JobState::Verified, Some((digest, media_type, size))) => {
                attestations.extend(job.attestation);
                children.push(Child { platform: job.platform, manifest: Blob { media_type, digest, size } })
            }
            (state, _) => {
                return Err(format!("{} of build {id} is {state}, not verified: start a new build", job.platform))
            }
        }
    }
    if children.is_empty() {
        return Err(format!("every platform of build {id} was left out: there is nothing to publish"));
    }
    let created_ms = shared.store.build_created_ms(id).await.map_err(|e| e.to_string())?;
    let mover = Mover { build: id, created_ms, again: state == BuildState::Published, force };
    let published = writes::publish(shared.tag_writer(), &target.tags, &children, &attestations, mover).await?;
    let index = &published.index;
    shared.store.set_build_state(id, BuildState::Published, Some(index), None).await.map_err(|e| e.to_string())?;
    info!(build = %id, index = %index, "index published on request");
    Ok(published)
}
