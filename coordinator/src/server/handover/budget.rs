//! How much of the coordinator's disk the agents' hand-overs may take. An agent may store blobs
//! only for an attempt of a hand-over job it runs now, at most [`MAX_BLOBS_PER_JOB`] of them and
//! the store's limit in bytes in all, and never past the disk's free-space floor. When the
//! attempt ends without a verified image, the blobs it brought are removed, unless another
//! attempt or a verified image also holds them; a verified image's blobs wait for its client
//! (and then for garbage collection).

use archfarm_shared::content::ContentStore;
use archfarm_shared::{AgentName, Digest, JobId};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Blobs one attempt may hand over: a manifest, a config and the layers of one image.
pub const MAX_BLOBS_PER_JOB: usize = 256;

/// One attempt's hand-overs so far.
#[derive(Debug)]
struct Tally {
    agent: AgentName,
    bytes: u64,
    /// Each blob it stored.
    blobs: Vec<Digest>,
}

#[derive(Debug, Default)]
struct State {
    attempts: HashMap<JobId, Tally>,
    /// How many running attempts stored each blob, and whether an attempt brought it (it was
    /// not in the store before).
    holders: HashMap<Digest, (usize, bool)>,
    /// Blobs of verified images, which their clients fetch.
    kept: HashSet<Digest>,
}

/// The hand-overs of every agent, over the coordinator's store of handed-over blobs.
#[derive(Debug, Clone)]
pub struct HandOvers {
    store: ContentStore,
    /// Bytes the disk keeps free whatever is handed over.
    min_free: u64,
    state: Arc<Mutex<State>>,
}

impl HandOvers {
    /// Hand-overs into `store`, keeping `min_free` bytes free on its disk.
    pub fn new(store: ContentStore, min_free: u64) -> Self {
        HandOvers { store, min_free, state: Arc::default() }
    }

    /// The store the blobs go to.
    pub fn store(&self) -> &ContentStore {
        &self.store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets `agent` hand over blobs for attempt `job`, until [`HandOvers::ended`].
    pub fn started(&self, job: &JobId, agent: &AgentName) {
        let tally = Tally { agent: agent.clone(), bytes: 0, blobs: vec![] };
        self.lock().attempts.insert(job.clone(), tally);
    }

    /// Whether `agent` may store blob `digest` of `size` bytes for `job` in `dir`: `Err` says
    /// why not. Once admitted, the blob counts against the attempt whether or not it arrives.
    pub fn admit(&self, agent: &AgentName, job: &JobId, digest: &Digest, size: u64) -> Result<(), String> {
        let dir = self.store.path(digest).parent().map(Path::to_path_buf).unwrap_or_default();
        // A disk whose free space cannot be read is taken as full.
        let free = crate::server::disk::free_bytes(&dir).unwrap_or(0);
        let mut state = self.lock();
        let State { attempts, holders, .. } = &mut *state;
        let Some(tally) = attempts.get_mut(job).filter(|t| &t.agent == agent) else {
            return Err(format!("agent {agent} runs no hand-over attempt of job {job}: it has no image to hand over"));
        };
        if tally.blobs.contains(digest) {
            return Ok(());
        }
        if tally.blobs.len() >= MAX_BLOBS_PER_JOB {
            return Err(format!("job {job} handed over {MAX_BLOBS_PER_JOB} blobs already, the most one image has"));
        }
        let max = self.store.max_bytes();
        if tally.bytes.saturating_add(size) > max {
            return Err(format!(
                "job {job} would hand over more than {} in all (max_context_bytes)",
                bytesize::ByteSize::b(max)
            ));
        }
        if free.saturating_sub(size) < self.min_free {
            return Err(format!(
                "the coordinator's disk has {} free; storing {} more would leave less than min_free_space ({})",
                bytesize::ByteSize::b(free),
                bytesize::ByteSize::b(size),
                bytesize::ByteSize::b(self.min_free)
            ));
        }
        tally.bytes += size;
        tally.blobs.push(digest.clone());
        let held = holders.entry(digest.clone()).or_insert_with(|| (0, !self.store.contains(digest)));
        held.0 += 1;
        Ok(())
    }

    /// Attempt `job` ended; `kept` when its image was verified: its blobs wait for the client.
    /// Without one, each blob an attempt brought is removed once no running attempt holds it,
    /// unless a verified image names it.
    pub fn ended(&self, job: &JobId, kept: bool) {
        let mut state = self.lock();
        let Some(tally) = state.attempts.remove(job) else { return };
        if kept {
            state.kept.extend(tally.blobs.iter().cloned());
        }
        for digest in tally.blobs {
            let Some(held) = state.holders.get_mut(&digest) else { continue };
            held.0 -= 1;
            if held.0 == 0 {
                let brought = held.1;
                state.holders.remove(&digest);
                if brought && !state.kept.contains(&digest) {
                    let _ = std::fs::remove_file(self.store.path(&digest));
                }
            }
        }
    }

    /// Forgets kept blobs whose files garbage collection removed.
    pub fn forget_removed(&self) {
        let store = self.store.clone();
        self.lock().kept.retain(|d| store.contains(d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> ContentStore {
        ContentStore::open(dir, 1 << 20).unwrap().of_image_blobs()
    }

    #[tokio::test]
    async fn only_a_running_attempt_hands_over_within_its_bounds_and_a_failed_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let handovers = HandOvers::new(store(dir.path()), 0);
        let (agent, other): (AgentName, AgentName) = ("amd64-1".parse().unwrap(), "amd64-2".parse().unwrap());
        let (job, job2) = (JobId::random(), JobId::random());
        let blob = |n: u8| (Digest::of(&[n]), vec![n]);
        let (d1, b1) = blob(1);
        assert!(handovers.admit(&agent, &job, &d1, 1).unwrap_err().contains("runs no hand-over attempt"));
        handovers.started(&job, &agent);
        assert!(handovers.admit(&other, &job, &d1, 1).is_err(), "another agent's job");
        assert!(handovers.admit(&agent, &job, &d1, 2 << 20).unwrap_err().contains("more than"));
        handovers.admit(&agent, &job, &d1, 1).unwrap();
        handovers.store().receive(&d1, 1, &mut &b1[..]).await.unwrap();
        // A second attempt stores the same blob, then the first fails: the blob stays.
        handovers.started(&job2, &agent);
        handovers.admit(&agent, &job2, &d1, 1).unwrap();
        handovers.ended(&job, false);
        assert!(handovers.store().contains(&d1), "another attempt holds it");
        handovers.ended(&job2, false);
        assert!(!handovers.store().contains(&d1), "nobody holds it: removed");

        // A verified image's blobs stay; a count past the bound is refused.
        let job3 = JobId::random();
        handovers.started(&job3, &agent);
        handovers.admit(&agent, &job3, &d1, 1).unwrap();
        handovers.store().receive(&d1, 1, &mut &b1[..]).await.unwrap();
        for n in 1..MAX_BLOBS_PER_JOB {
            handovers.admit(&agent, &job3, &Digest::of(&n.to_be_bytes()), 1).unwrap();
        }
        assert!(handovers.admit(&agent, &job3, &Digest::of(b"one more"), 1).unwrap_err().contains("blobs already"));
        handovers.ended(&job3, true);
        assert!(handovers.store().contains(&d1), "kept for its client");
    }

    #[test]
    fn the_free_space_floor_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let handovers = HandOvers::new(store(dir.path()), u64::MAX / 2);
        let (agent, job) = ("amd64-1".parse().unwrap(), JobId::random());
        handovers.started(&job, &agent);
        assert!(handovers.admit(&agent, &job, &Digest::of(b"x"), 1).unwrap_err().contains("min_free_space"));
    }
}
