//! Which agent runs which job. Pure: no I/O, no async, no clocks; inputs in, decisions out.
//!
//! Jobs wait in one FIFO queue. A job goes only to an agent that declared its platform, and to
//! the least-loaded such agent with a free slot (load = running / capacity). A build whose
//! platforms some agent declares is accepted even when those agents are busy; a build asking
//! for a platform no agent declares is refused at once.
//!
//! Quarantined and draining agents get no new jobs. A retried job avoids the agents its earlier
//! attempts were lost or failed on, unless no other agent declares its platform.

use archfarm_shared::platform::{self, Platform};
use archfarm_shared::{AgentName, JobId};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// The farm cannot build some requested platforms natively.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no agent builds {} natively; the farm has {}. Start an agent on a host of that platform \
     (or declare it in an agent's extra_platforms if its CPU runs it natively), or drop it from --platform",
    platform::list(missing),
    platform::list(available)
)]
pub struct NoAgent {
    /// Requested platforms no connected agent declares, in request order.
    pub missing: Vec<Platform>,
    /// Platforms the farm can build now, sorted.
    pub available: Vec<Platform>,
}

/// What an agent may be given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Takes jobs.
    Active,
    /// Finishing what it runs before it exits; takes no new jobs.
    Draining,
    /// Misbehaved (wrong-platform images, repeated failures); takes no jobs.
    Quarantined(String),
    /// Its engine fails its health probe (it says why); takes no jobs until it passes again.
    Unhealthy(String),
}

/// A job handed to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The job.
    pub job: JobId,
    /// The agent to run it.
    pub agent: AgentName,
}

/// What removing an agent left behind.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Jobs that were running on it (their attempts are lost; their builds rerun them).
    pub running: Vec<JobId>,
}

#[derive(Debug, Clone)]
struct Slots {
    platforms: Vec<Platform>,
    capacity: u32,
    running: u32,
    standing: Standing,
}

impl Slots {
    fn serves(&self, platform: &Platform) -> bool {
        self.standing == Standing::Active && self.platforms.contains(platform)
    }

    fn free(&self) -> bool {
        self.running < self.capacity && self.standing == Standing::Active
    }

    /// Load order: lower running/capacity first, then fewer running.
    fn cmp_load(&self, other: &Slots) -> Ordering {
        (u64::from(self.running) * u64::from(other.capacity))
            .cmp(&(u64::from(other.running) * u64::from(self.capacity)))
            .then(self.running.cmp(&other.running))
    }
}

#[derive(Debug, Clone)]
struct Queued {
    job: JobId,
    platform: Platform,
    avoid: Vec<AgentName>,
}

/// The queue and the agents' slots.
#[derive(Debug, Default)]
pub struct Scheduler {
    agents: BTreeMap<AgentName, Slots>,
    queue: VecDeque<Queued>,
    running: HashMap<JobId, AgentName>,
}

impl Scheduler {
    /// An empty farm.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an agent, or updates one that re-registered (its running jobs stay counted).
    pub fn add_agent(&mut self, name: AgentName, platforms: Vec<Platform>, capacity: u32, standing: Standing) {
        let running = self.running.values().filter(|a| **a == name).count() as u32;
        self.agents.insert(name, Slots { platforms, capacity: capacity.max(1), running, standing });
    }

    /// Changes what an agent may be given. Unknown agents are ignored.
    pub fn set_standing(&mut self, name: &AgentName, standing: Standing) {
        if let Some(s) = self.agents.get_mut(name) {
            s.standing = standing;
        }
    }

    /// An agent's standing.
    pub fn standing(&self, name: &AgentName) -> Option<&Standing> {
        self.agents.get(name).map(|s| &s.standing)
    }

    /// Removes an agent: its running jobs are reported lost. Queued jobs stay queued, also when
    /// no agent of their platform is left: one may come back (the farm bounds the wait).
    pub fn remove_agent(&mut self, name: &AgentName) -> Removed {
        self.agents.remove(name);
        let mut running: Vec<JobId> = self.running.iter().filter(|(_, a)| *a == name).map(|(j, _)| j.clone()).collect();
        running.sort();
        for j in &running {
            self.running.remove(j);
        }
        Removed { running }
    }

    /// Platforms some active agent declares, sorted and unique.
    pub fn platforms(&self) -> Vec<Platform> {
        let set: BTreeSet<&Platform> =
            self.agents.values().filter(|s| s.standing == Standing::Active).flat_map(|s| &s.platforms).collect();
        set.into_iter().cloned().collect()
    }

    /// Whether some active agent declares `platform`.
    pub fn serves(&self, platform: &Platform) -> bool {
        self.agents.values().any(|s| s.serves(platform))
    }

    /// Whether an active agent other than those in `avoid` declares `platform`.
    pub fn serves_other(&self, platform: &Platform, avoid: &[AgentName]) -> bool {
        self.agents.iter().any(|(name, s)| !avoid.contains(name) && s.serves(platform))
    }

    /// Refuses a request naming a platform no active agent declares.
    pub fn check(&self, requested: &[Platform]) -> Result<(), NoAgent> {
        let missing: Vec<Platform> = requested.iter().filter(|p| !self.serves(p)).cloned().collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(NoAgent { missing, available: self.platforms() })
        }
    }

    /// Queues a job, to avoid `avoid` if any other agent can build it. Call
    /// [`Scheduler::dispatch`] afterwards.
    pub fn enqueue(&mut self, job: JobId, platform: Platform, avoid: Vec<AgentName>) {
        self.queue.push_back(Queued { job, platform, avoid });
    }

    /// Takes a job out of the queue before it was dispatched (its build went away).
    pub fn cancel(&mut self, job: &JobId) -> bool {
        let before = self.queue.len();
        self.queue.retain(|q| &q.job != job);
        before != self.queue.len()
    }

    /// Frees the slot of a finished job. Unknown jobs are ignored (a late or duplicate report).
    pub fn finish(&mut self, job: &JobId) {
        if let Some(agent) = self.running.remove(job) {
            if let Some(slots) = self.agents.get_mut(&agent) {
                slots.running = slots.running.saturating_sub(1);
            }
        }
    }

    /// Hands queued jobs to free agents, oldest job first. A job no free agent can take stays
    /// queued without blocking jobs of other platforms behind it.
    pub fn dispatch(&mut self) -> Vec<Assignment> {
        let mut out = Vec::new();
        let mut waiting = VecDeque::with_capacity(self.queue.len());
        while let Some(q) = self.queue.pop_front() {
            // Agents to avoid are used only when no other agent declares the platform at all.
            let others_exist = self.agents.iter().any(|(n, s)| s.serves(&q.platform) && !q.avoid.contains(n));
            let best = self
                .agents
                .iter()
                .filter(|(n, s)| {
                    s.free() && s.platforms.contains(&q.platform) && !(others_exist && q.avoid.contains(n))
                })
                .min_by(|(an, a), (bn, b)| a.cmp_load(b).then(an.cmp(bn)))
                .map(|(name, _)| name.clone());
            match best {
                Some(agent) => {
                    if let Some(s) = self.agents.get_mut(&agent) {
                        s.running += 1;
                    }
                    self.running.insert(q.job.clone(), agent.clone());
                    out.push(Assignment { job: q.job, agent });
                }
                None => waiting.push_back(q),
            }
        }
        self.queue = waiting;
        out
    }

    /// Running jobs and capacity of an agent.
    pub fn load(&self, agent: &AgentName) -> Option<(u32, u32)> {
        self.agents.get(agent).map(|s| (s.running, s.capacity))
    }

    /// Jobs waiting for a slot.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(n: &str) -> AgentName {
        n.parse().unwrap()
    }
    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }
    fn j(n: u32) -> JobId {
        format!("j-{n:x}").parse().unwrap()
    }
    fn farm() -> Scheduler {
        let mut s = Scheduler::new();
        s.add_agent(a("amd-1"), vec![p("linux/amd64"), p("linux/386")], 2, Standing::Active);
        s.add_agent(a("amd-2"), vec![p("linux/amd64")], 1, Standing::Active);
        s.add_agent(a("arm-1"), vec![p("linux/arm64")], 1, Standing::Active);
        s
    }

    #[test]
    fn jobs_go_only_to_agents_declaring_their_platform() {
        let mut s = farm();
        s.enqueue(j(1), p("linux/arm64"), vec![]);
        s.enqueue(j(2), p("linux/386"), vec![]);
        let got = s.dispatch();
        assert_eq!(got, vec![Assignment { job: j(1), agent: a("arm-1") }, Assignment { job: j(2), agent: a("amd-1") }]);
    }

    #[test]
    fn least_loaded_first_by_ratio_then_name() {
        let mut s = farm();
        for n in 1..=3 {
            s.enqueue(j(n), p("linux/amd64"), vec![]);
        }
        let agents: Vec<_> = s.dispatch().into_iter().map(|x| x.agent.to_string()).collect();
        // Both idle: name breaks the tie; then amd-1 (1/2) beats amd-2 (1/1).
        assert_eq!(agents, ["amd-1", "amd-2", "amd-1"]);
        assert_eq!(s.load(&a("amd-1")), Some((2, 2)));
    }

    #[test]
    fn full_agents_leave_jobs_queued_until_a_slot_frees() {
        let mut s = farm();
        s.enqueue(j(1), p("linux/arm64"), vec![]);
        s.enqueue(j(2), p("linux/arm64"), vec![]);
        s.enqueue(j(3), p("linux/amd64"), vec![]);
        let first = s.dispatch();
        assert_eq!(first.len(), 2, "arm-1 has one slot; amd64 must not wait behind arm64");
        assert_eq!(s.queued(), 1);
        assert!(s.dispatch().is_empty());
        s.finish(&j(1));
        assert_eq!(s.dispatch(), vec![Assignment { job: j(2), agent: a("arm-1") }]);
        s.finish(&j(1)); // late duplicate: ignored
        assert_eq!(s.load(&a("arm-1")), Some((1, 1)));
    }

    #[test]
    fn unknown_platforms_are_refused_naming_missing_and_available() {
        let s = farm();
        assert!(s.check(&[p("linux/amd64"), p("linux/arm64")]).is_ok());
        let err = s.check(&[p("linux/amd64"), p("linux/s390x"), p("linux/arm/v7")]).unwrap_err();
        assert_eq!(err.missing, vec![p("linux/s390x"), p("linux/arm/v7")]);
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "no agent builds linux/s390x, linux/arm/v7 natively; the farm has linux/386, linux/amd64, linux/arm64."
            ),
            "{msg}"
        );
        let empty = Scheduler::new().check(&[p("linux/amd64")]).unwrap_err().to_string();
        assert!(empty.contains("the farm has none"), "{empty}");
    }

    #[test]
    fn removing_an_agent_reports_running_and_stranded_jobs() {
        let mut s = farm();
        s.enqueue(j(1), p("linux/arm64"), vec![]);
        s.enqueue(j(2), p("linux/arm64"), vec![]);
        s.enqueue(j(3), p("linux/amd64"), vec![]);
        s.dispatch();
        let removed = s.remove_agent(&a("arm-1"));
        assert_eq!(removed, Removed { running: vec![j(1)] });
        assert_eq!(s.queued(), 1, "a stranded job stays queued: an agent may come back");
        assert!(s.check(&[p("linux/arm64")]).is_err());
        // The amd64 job is untouched.
        s.finish(&j(3));
        assert_eq!(s.load(&a("amd-1")), Some((0, 2)));
    }

    #[test]
    fn re_registering_keeps_counting_running_jobs() {
        let mut s = farm();
        s.enqueue(j(1), p("linux/arm64"), vec![]);
        s.dispatch();
        s.add_agent(a("arm-1"), vec![p("linux/arm64")], 2, Standing::Active);
        assert_eq!(s.load(&a("arm-1")), Some((1, 2)));
    }

    #[test]
    fn cancelled_jobs_leave_the_queue() {
        let mut s = Scheduler::new();
        s.add_agent(a("x"), vec![p("linux/amd64")], 1, Standing::Active);
        s.enqueue(j(1), p("linux/amd64"), vec![]);
        s.enqueue(j(2), p("linux/amd64"), vec![]);
        assert!(s.cancel(&j(2)));
        assert!(!s.cancel(&j(2)));
        assert_eq!(s.dispatch().len(), 1);
        assert_eq!(s.queued(), 0);
    }

    #[test]
    fn quarantined_and_draining_agents_get_no_jobs() {
        let mut s = farm();
        s.set_standing(&a("arm-1"), Standing::Quarantined("wrong platform".into()));
        assert!(!s.serves(&p("linux/arm64")));
        assert!(s.check(&[p("linux/arm64")]).is_err(), "a quarantined agent does not count");
        s.enqueue(j(1), p("linux/arm64"), vec![]);
        assert!(s.dispatch().is_empty());
        s.set_standing(&a("arm-1"), Standing::Active);
        assert_eq!(s.dispatch().len(), 1);

        s.set_standing(&a("amd-1"), Standing::Draining);
        s.enqueue(j(2), p("linux/amd64"), vec![]);
        assert_eq!(s.dispatch(), vec![Assignment { job: j(2), agent: a("amd-2") }]);
        assert_eq!(s.standing(&a("amd-1")), Some(&Standing::Draining));
    }

    #[test]
    fn retries_avoid_earlier_agents_unless_no_other_declares_the_platform() {
        let mut s = farm();
        s.enqueue(j(1), p("linux/amd64"), vec![a("amd-1")]);
        assert_eq!(s.dispatch(), vec![Assignment { job: j(1), agent: a("amd-2") }]);
        // amd-2 is busy now: the retry waits for it rather than going back to amd-1.
        s.enqueue(j(2), p("linux/amd64"), vec![a("amd-1")]);
        assert!(s.dispatch().is_empty());
        // arm-1 is the only arm64 agent: avoiding it would strand the job.
        s.enqueue(j(3), p("linux/arm64"), vec![a("arm-1")]);
        assert_eq!(s.dispatch(), vec![Assignment { job: j(3), agent: a("arm-1") }]);
    }
}
