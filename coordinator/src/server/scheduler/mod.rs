//! Which agent runs which job. Pure: no I/O, no async, no clocks; inputs in, decisions out.
//!
//! Jobs wait in one FIFO queue. A job goes only to an agent that fits it ([`fit`]: its platform,
//! at the x86-64 level it names, with the labels it requires, on an engine that does what the
//! build needs of it) and has a free slot. Of those, the
//! least-loaded one (load = running / capacity) gets it, unless cache affinity prefers the agent
//! that last ran a job of the same repository, Dockerfile and platform, whose BuildKit cache is
//! warm: it does while its load is at most the affinity margin above the least loaded.
//!
//! A build some agent fits is accepted even when those agents are busy; a build no agent fits
//! is refused at once, naming what is missing. Quarantined, draining and drained agents get no
//! new jobs. A retried job avoids the agents its earlier attempts were lost or failed on, unless
//! no other agent fits it.

pub mod fit;
#[cfg(test)]
mod tests;

use fit::{NoAgent, Wants};

use archfarm_shared::capabilities::Capabilities;
use archfarm_shared::platform::Platform;
use archfarm_shared::protocol::EngineFacts;
use archfarm_shared::{AgentName, JobId};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// Most (repository, Dockerfile, platform) keys whose warm agent is remembered; the oldest half
/// is forgotten past it.
const WARM_KEYS: usize = 4096;

/// What an agent may be given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Takes jobs.
    Active,
    /// Finishing what it runs before it exits; takes no new jobs.
    Draining,
    /// Drained by an administrator: finishes what it runs, takes no new jobs until undrained.
    Drained,
    /// Misbehaved (wrong-platform images, repeated failures); takes no jobs.
    Quarantined(String),
    /// Its engine fails its health probe (it says why); takes no jobs until it passes again.
    Unhealthy(String),
}

/// What an agent offers: its platforms, slots and capabilities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// Platforms it declared.
    pub platforms: Vec<Platform>,
    /// Jobs it runs at once (at least 1).
    pub capacity: u32,
    /// Its x86-64 level, CPU features and labels.
    pub capabilities: Capabilities,
    /// Its engine: version, image store, BuildKit.
    pub engine: EngineFacts,
}

/// A job handed to an agent, and why that agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The job.
    pub job: JobId,
    /// The agent to run it.
    pub agent: AgentName,
    /// Why it was chosen, for `builds show`.
    pub reason: String,
}

/// What removing an agent left behind.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Jobs that were running on it (their attempts are lost; their builds rerun them).
    pub running: Vec<JobId>,
}

#[derive(Debug, Clone)]
struct Slots {
    offer: Offer,
    running: u32,
    standing: Standing,
}

impl Slots {
    fn serves(&self, wants: &Wants) -> bool {
        self.standing == Standing::Active && wants.fits(&self.offer)
    }

    fn free(&self) -> bool {
        self.running < self.offer.capacity && self.standing == Standing::Active
    }

    fn ratio(&self) -> f64 {
        f64::from(self.running) / f64::from(self.offer.capacity)
    }

    fn load(&self) -> String {
        format!("{}/{} running", self.running, self.offer.capacity)
    }

    /// Load order: lower running/capacity first, then fewer running.
    fn cmp_load(&self, other: &Slots) -> Ordering {
        (u64::from(self.running) * u64::from(other.offer.capacity))
            .cmp(&(u64::from(other.running) * u64::from(self.offer.capacity)))
            .then(self.running.cmp(&other.running))
    }
}

#[derive(Debug, Clone)]
struct Queued {
    job: JobId,
    wants: Wants,
    avoid: Vec<AgentName>,
}

/// The queue and the agents' slots.
#[derive(Debug, Default)]
pub struct Scheduler {
    agents: BTreeMap<AgentName, Slots>,
    queue: VecDeque<Queued>,
    running: HashMap<JobId, AgentName>,
    /// The affinity margin; no cache affinity when absent.
    affinity: Option<f64>,
    /// Warm key -> the agent that last got a job of it, and when (a dispatch counter).
    warm: HashMap<String, (AgentName, u64)>,
    dispatched: u64,
}

impl Scheduler {
    /// An empty farm without cache affinity.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty farm that prefers warm agents while their load (running / capacity) is at most
    /// `margin` above the least-loaded one's; none at all when `None`.
    pub fn with_affinity(margin: Option<f64>) -> Self {
        Scheduler { affinity: margin.filter(|m| m.is_finite() && *m >= 0.0), ..Self::default() }
    }

    /// Adds an agent, or updates one that re-registered (its running jobs stay counted).
    pub fn add_agent(&mut self, name: AgentName, mut offer: Offer, standing: Standing) {
        let running = self.running.values().filter(|a| **a == name).count() as u32;
        offer.capacity = offer.capacity.max(1);
        self.agents.insert(name, Slots { offer, running, standing });
    }

    /// Changes what an agent may be given; returns what it was. Unknown agents are ignored.
    pub fn set_standing(&mut self, name: &AgentName, standing: Standing) -> Option<Standing> {
        self.agents.get_mut(name).map(|s| std::mem::replace(&mut s.standing, standing))
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
            self.agents.values().filter(|s| s.standing == Standing::Active).flat_map(|s| &s.offer.platforms).collect();
        set.into_iter().cloned().collect()
    }

    /// Whether some active agent fits `wants`.
    pub fn serves(&self, wants: &Wants) -> bool {
        self.agents.values().any(|s| s.serves(wants))
    }

    /// Whether an active agent other than those in `avoid` fits `wants`.
    pub fn serves_other(&self, wants: &Wants, avoid: &[AgentName]) -> bool {
        self.agents.iter().any(|(name, s)| !avoid.contains(name) && s.serves(wants))
    }

    /// Refuses a request that some active agent does not fit, naming what is missing.
    pub fn check(&self, requested: &[Wants]) -> Result<(), NoAgent> {
        let active: Vec<(&AgentName, &Offer)> =
            self.agents.iter().filter(|(_, s)| s.standing == Standing::Active).map(|(n, s)| (n, &s.offer)).collect();
        fit::check(&active, requested, self.platforms())
    }

    /// Queues a job, to avoid `avoid` if any other agent can build it. Call
    /// [`Scheduler::dispatch`] afterwards.
    pub fn enqueue(&mut self, job: JobId, wants: Wants, avoid: Vec<AgentName>) {
        self.queue.push_back(Queued { job, wants, avoid });
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
            match self.choose(&q) {
                Some((agent, reason)) => {
                    if let Some(s) = self.agents.get_mut(&agent) {
                        s.running += 1;
                    }
                    self.running.insert(q.job.clone(), agent.clone());
                    if let Some(key) = q.wants.warm_key {
                        self.remember_warm(key, agent.clone());
                    }
                    out.push(Assignment { job: q.job, agent, reason });
                }
                None => waiting.push_back(q),
            }
        }
        self.queue = waiting;
        out
    }

    /// The agent for a queued job, and why; none while no agent that fits it is free.
    fn choose(&self, q: &Queued) -> Option<(AgentName, String)> {
        // Agents to avoid are used only when no other agent fits the job at all.
        let others_exist = self.agents.iter().any(|(n, s)| s.serves(&q.wants) && !q.avoid.contains(n));
        let avoided = |n: &AgentName| others_exist && q.avoid.contains(n);
        let eligible: Vec<(&AgentName, &Slots)> =
            self.agents.iter().filter(|(n, s)| s.free() && s.serves(&q.wants) && !avoided(n)).collect();
        let (least, least_slots) = eligible.iter().min_by(|(an, a), (bn, b)| a.cmp_load(b).then(an.cmp(bn)))?;
        let mut reason = format!("least loaded ({})", least_slots.load());
        let warm = q.wants.warm_key.as_ref().and_then(|k| self.warm.get(k)).map(|(a, _)| a);
        if let (Some(margin), Some(warm)) = (self.affinity, warm) {
            let platform = &q.wants.platform;
            if warm == *least {
                reason =
                    format!("warm cache: it ran this repository's Dockerfile for {platform} last; least loaded too");
            } else {
                match eligible.iter().find(|(n, _)| *n == warm) {
                    Some((_, w)) if w.ratio() - least_slots.ratio() <= margin + 1e-9 => {
                        let why = format!(
                            "warm cache: it ran this repository's Dockerfile for {platform} last ({}; {least} has {})",
                            w.load(),
                            least_slots.load()
                        );
                        return Some((warm.clone(), why));
                    }
                    Some((_, w)) => reason.push_str(&format!(
                        "; {warm} has the warm cache but is busier by more than the margin {margin} ({})",
                        w.load()
                    )),
                    None => reason.push_str(&format!("; {warm} has the warm cache but cannot take it now")),
                }
            }
        }
        if others_exist && !q.avoid.is_empty() {
            let avoid: Vec<String> = q.avoid.iter().map(ToString::to_string).collect();
            reason.push_str(&format!("; avoiding {} (earlier attempts)", avoid.join(", ")));
        }
        Some(((*least).clone(), reason))
    }

    fn remember_warm(&mut self, key: String, agent: AgentName) {
        self.dispatched += 1;
        self.warm.insert(key, (agent, self.dispatched));
        if self.warm.len() > WARM_KEYS {
            let mut ages: Vec<u64> = self.warm.values().map(|(_, at)| *at).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            self.warm.retain(|_, (_, at)| *at > cut);
        }
    }

    /// Running jobs and capacity of an agent.
    pub fn load(&self, agent: &AgentName) -> Option<(u32, u32)> {
        self.agents.get(agent).map(|s| (s.running, s.offer.capacity))
    }

    /// Jobs waiting for a slot.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Jobs waiting for a slot, per platform, sorted by platform.
    pub fn queued_by_platform(&self) -> Vec<(Platform, usize)> {
        let mut counts: BTreeMap<&Platform, usize> = BTreeMap::new();
        for q in &self.queue {
            *counts.entry(&q.wants.platform).or_default() += 1;
        }
        counts.into_iter().map(|(p, n)| (p.clone(), n)).collect()
    }
}
