//! The live farm: connected agents, the scheduler, and jobs waiting for an agent. A thin,
//! lock-protected shell around [`Scheduler`]: every placement decision is the scheduler's.

use super::ports::AgentLink;
use super::scheduler::fit::{NoAgent, Wants};
use super::scheduler::{Offer, Scheduler, Standing};
use super::store::agents::Recorded;
use archfarm_shared::capabilities::Capabilities;
use archfarm_shared::protocol::{AgentInfo, Registration};
use archfarm_shared::{AgentName, JobId, Platform};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// A connected agent, as jobs see it.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    /// Its name (from its certificate).
    pub name: AgentName,
    /// Remote address of its connection.
    pub address: SocketAddr,
    /// What it registered.
    pub registration: Registration,
    /// Serial (hex) of the certificate it connected with.
    pub cert_serial: String,
    /// When that certificate expires, milliseconds since the Unix epoch.
    pub cert_expires_ms: u64,
    /// sha256 of that certificate (DER), hex: what its images' provenance names.
    pub cert_sha256: String,
    /// Its link: jobs run over it.
    pub link: Arc<dyn AgentLink>,
}

/// Why a job could not get an agent.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AcquireError {
    /// No active agent that fits the job was connected for the whole grace period.
    #[error("no agent building {platform} has been connected for {} s (was it stopped, cut off, drained or quarantined, or does none have what the build requires?)", waited.as_secs())]
    NoAgent {
        /// The platform.
        platform: Platform,
        /// How long we waited.
        waited: Duration,
    },
}

/// An agent for a job, and why the scheduler chose it.
pub type Placed = (AgentHandle, String);

type Waiter = oneshot::Sender<Placed>;

#[derive(Debug, Default)]
struct State {
    scheduler: Scheduler,
    agents: HashMap<AgentName, AgentHandle>,
    waiting: HashMap<JobId, Waiter>,
    /// What connected agents last said is wrong with their engine, whatever their standing.
    sick: HashMap<AgentName, String>,
}

/// Shared farm state.
#[derive(Debug)]
pub struct Farm {
    state: Mutex<State>,
    agent_wait: Duration,
}

impl Farm {
    /// An empty farm. A queued job no agent fits fails after `agent_wait`. Cache affinity
    /// prefers warm agents within `affinity_margin` ([`Scheduler::with_affinity`]).
    pub fn new(agent_wait: Duration, affinity_margin: Option<f64>) -> Arc<Self> {
        let state = State { scheduler: Scheduler::with_affinity(affinity_margin), ..State::default() };
        Arc::new(Farm { state: Mutex::new(state), agent_wait })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update is one call under the lock, so a poisoned lock still holds consistent data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a registered agent. An agent of the same name still connected is refused: two
    /// hosts must not share a certificate.
    pub fn register(&self, agent: AgentHandle, standing: Standing) -> Result<(), String> {
        let mut st = self.lock();
        if let Some(old) = st.agents.get(&agent.name) {
            if old.link.is_open() {
                return Err(format!(
                    "an agent named {} is already connected from {}; each host needs its own certificate \
                     (`archfarm ca issue-agent NAME`)",
                    agent.name, old.address
                ));
            }
        }
        let r = &agent.registration;
        let offer = Offer {
            platforms: r.platforms.clone(),
            capacity: r.capacity,
            capabilities: r.capabilities.clone(),
            engine: r.engine.clone(),
        };
        st.scheduler.add_agent(agent.name.clone(), offer, standing);
        st.agents.insert(agent.name.clone(), agent);
        dispatch(&mut st);
        Ok(())
    }

    /// Removes an agent's connection (only if it is still the registered one).
    pub fn unregister(&self, name: &AgentName, conn_id: usize) {
        let mut st = self.lock();
        if st.agents.get(name).map(|a| a.link.id()) != Some(conn_id) {
            return;
        }
        st.agents.remove(name);
        st.sick.remove(name);
        let removed = st.scheduler.remove_agent(name);
        if !removed.running.is_empty() {
            tracing::info!(agent = %name, jobs = removed.running.len(), "agent left with jobs running; they run again");
        }
        dispatch(&mut st);
    }

    /// Changes what an agent may be given (quarantine, drain); returns what it was, if the
    /// agent is connected.
    pub fn set_standing(&self, name: &AgentName, standing: Standing) -> Option<Standing> {
        let mut st = self.lock();
        let before = st.scheduler.set_standing(name, standing);
        dispatch(&mut st);
        before
    }

    /// Applies what the store records of an agent (an administrator's drain or quarantine, or
    /// neither) to a connected agent. An agent draining before it exits stays so, and an
    /// unhealthy one stays unhealthy until its engine passes its probe. Returns its running jobs.
    pub fn apply_recorded(&self, name: &AgentName, recorded: &Recorded) -> Option<u32> {
        let mut st = self.lock();
        let current = st.scheduler.standing(name)?.clone();
        let sick = st.sick.get(name).cloned();
        let next = match (current, recorded, sick) {
            (Standing::Draining, _, _) => Standing::Draining,
            (_, Recorded::Quarantined(why), _) => Standing::Quarantined(why.clone()),
            (_, Recorded::Drained, _) => Standing::Drained,
            // An engine that went bad while the agent was held back is still bad.
            (_, Recorded::Active, Some(why)) => Standing::Unhealthy(why),
            (_, Recorded::Active, None) => Standing::Active,
        };
        st.scheduler.set_standing(name, next);
        dispatch(&mut st);
        st.scheduler.load(name).map(|(running, _)| running)
    }

    /// Whether a connected, active agent other than those in `avoid` fits `wants`.
    pub fn serves_other(&self, wants: &Wants, avoid: &[AgentName]) -> bool {
        self.lock().scheduler.serves_other(wants, avoid)
    }

    /// Records what an agent says of its engine's health. Only an active or unhealthy agent
    /// changes now: a quarantine or a drain stands whatever the engine does, and the engine's
    /// state is kept for when it is lifted ([`Farm::apply_recorded`]).
    pub fn set_health(&self, name: &AgentName, problem: Option<String>) {
        let mut st = self.lock();
        match &problem {
            Some(why) => st.sick.insert(name.clone(), why.clone()),
            None => st.sick.remove(name),
        };
        let next = match (st.scheduler.standing(name), problem) {
            (Some(Standing::Active | Standing::Unhealthy(_)), Some(why)) => Standing::Unhealthy(why),
            (Some(Standing::Unhealthy(_)), None) => Standing::Active,
            _ => return,
        };
        st.scheduler.set_standing(name, next);
        dispatch(&mut st);
    }

    /// Refuses jobs no connected, active agent fits.
    pub fn check(&self, jobs: &[Wants]) -> Result<(), NoAgent> {
        self.lock().scheduler.check(jobs)
    }

    /// Jobs waiting for an agent, per platform: every platform an active agent declares (none
    /// waiting, perhaps) and every platform a job waits for.
    pub fn queued_by_platform(&self) -> Vec<(Platform, usize)> {
        let st = self.lock();
        let mut all: std::collections::BTreeMap<Platform, usize> =
            st.scheduler.platforms().into_iter().map(|p| (p, 0)).collect();
        all.extend(st.scheduler.queued_by_platform());
        all.into_iter().collect()
    }

    /// Waits for an agent to run `job`, avoiding `avoid` if another agent fits it. Fails when no
    /// agent that fits has been connected for the farm's grace period. Dropping the future
    /// before it resolves is fine: call [`Farm::release`].
    pub async fn acquire(&self, job: &JobId, wants: &Wants, avoid: Vec<AgentName>) -> Result<Placed, AcquireError> {
        let platform = &wants.platform;
        let mut rx = {
            let mut st = self.lock();
            let (tx, rx) = oneshot::channel();
            st.waiting.insert(job.clone(), tx);
            st.scheduler.enqueue(job.clone(), wants.clone(), avoid);
            dispatch(&mut st);
            rx
        };
        let mut unserved_since: Option<Instant> = None;
        loop {
            tokio::select! {
                handle = &mut rx => return Ok(handle.unwrap_or_else(|_| unreachable!("waiters are answered or removed under the lock"))),
                () = tokio::time::sleep(Duration::from_millis(250)) => {
                    if self.lock().scheduler.serves(wants) {
                        unserved_since = None;
                        continue;
                    }
                    let since = *unserved_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.agent_wait {
                        let mut st = self.lock();
                        st.waiting.remove(job);
                        st.scheduler.cancel(job);
                        drop(st);
                        // Dispatched between the check and the lock: take it after all.
                        if let Ok(handle) = rx.try_recv() {
                            return Ok(handle);
                        }
                        return Err(AcquireError::NoAgent { platform: platform.clone(), waited: self.agent_wait });
                    }
                }
            }
        }
    }

    /// Gives back the slot of a finished (or abandoned) job.
    pub fn release(&self, job: &JobId) {
        let mut st = self.lock();
        st.waiting.remove(job);
        st.scheduler.cancel(job);
        st.scheduler.finish(job);
        dispatch(&mut st);
    }

    /// Closes a connected agent's link (revocation), if it connected with one of `serials` (any,
    /// when `None`). The agent's session then unregisters it.
    pub fn disconnect(&self, name: &AgentName, serials: Option<&[String]>, code: u32, reason: &str) {
        let link = self
            .lock()
            .agents
            .get(name)
            .filter(|a| serials.is_none_or(|s| s.contains(&a.cert_serial)))
            .map(|a| a.link.clone());
        if let Some(link) = link {
            link.close(code, reason);
        }
    }

    /// Connected agents with their running jobs: `name`, or all of them, sorted by name.
    pub fn handles(&self, name: Option<&AgentName>) -> Vec<(AgentHandle, u32)> {
        let st = self.lock();
        let mut out: Vec<(AgentHandle, u32)> = st
            .agents
            .values()
            .filter(|a| name.is_none_or(|n| *n == a.name))
            .map(|a| (a.clone(), st.scheduler.load(&a.name).map_or(0, |(running, _)| running)))
            .collect();
        out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        out
    }

    /// The registries some connected agent holds credentials for: a build reads there only
    /// inside its token's scopes.
    pub fn credentialed_registries(&self) -> std::collections::BTreeSet<String> {
        let st = self.lock();
        st.agents.values().flat_map(|a| a.registration.credentials_for.iter().cloned()).collect()
    }

    /// Connected agents for `archfarm agents ls`, sorted by name.
    pub fn agents(&self) -> Vec<AgentInfo> {
        let st = self.lock();
        let mut out: Vec<AgentInfo> = st
            .agents
            .values()
            .map(|a| {
                let (running, capacity) = st.scheduler.load(&a.name).unwrap_or((0, a.registration.capacity));
                let state = match st.scheduler.standing(&a.name) {
                    Some(Standing::Quarantined(why)) => format!("quarantined: {why}"),
                    Some(Standing::Draining) => "draining".to_owned(),
                    Some(Standing::Drained) => "drained".to_owned(),
                    Some(Standing::Unhealthy(why)) => format!("unhealthy: {why}"),
                    _ if running >= capacity => "busy".to_owned(),
                    _ => "ready".to_owned(),
                };
                AgentInfo {
                    name: a.name.clone(),
                    address: a.address.to_string(),
                    platforms: a.registration.platforms.clone(),
                    state,
                    running,
                    capacity,
                    engine: a.registration.engine.clone(),
                    cert_serial: a.cert_serial.clone(),
                    cert_expires_ms: a.cert_expires_ms,
                    // Every CPU flag of every agent would outgrow a frame: `agents inspect` has them.
                    capabilities: Capabilities { cpu_features: vec![], ..a.registration.capabilities.clone() },
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

fn dispatch(st: &mut State) {
    for assignment in st.scheduler.dispatch() {
        let handle = st.agents.get(&assignment.agent).cloned();
        match (st.waiting.remove(&assignment.job), handle) {
            (Some(tx), Some(handle)) => {
                if tx.send((handle, assignment.reason)).is_err() {
                    // The build went away while queued: free the slot at once.
                    st.scheduler.finish(&assignment.job);
                }
            }
            _ => st.scheduler.finish(&assignment.job),
        }
    }
}
