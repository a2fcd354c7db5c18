//! The live farm: connected agents, the scheduler, and jobs waiting for an agent. A thin,
//! lock-protected shell around [`Scheduler`]: every decision is the scheduler's.

use crate::scheduler::{NoAgent, Scheduler};
use archfarm_shared::protocol::{AgentInfo, Registration};
use archfarm_shared::{AgentName, JobId, Platform};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// A connected agent, as jobs see it.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    /// Its name (from its certificate).
    pub name: AgentName,
    /// Remote address of its connection.
    pub address: SocketAddr,
    /// What it registered.
    pub registration: Registration,
    /// Its QUIC connection; jobs open streams on it.
    pub conn: quinn::Connection,
}

/// Why a job could not get an agent.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AcquireError {
    /// The last agent of the job's platform left while it waited.
    #[error("the last agent building {0} left the farm before the job could start")]
    Stranded(Platform),
}

type Waiter = (Platform, oneshot::Sender<Result<AgentHandle, AcquireError>>);

#[derive(Debug, Default)]
struct State {
    scheduler: Scheduler,
    agents: HashMap<AgentName, AgentHandle>,
    waiting: HashMap<JobId, Waiter>,
}

/// Shared farm state.
#[derive(Debug, Default)]
pub struct Farm {
    state: Mutex<State>,
}

impl Farm {
    /// An empty farm.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every update is one call).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a registered agent. An agent of the same name still connected is refused: two
    /// hosts must not share a certificate.
    pub fn register(&self, agent: AgentHandle) -> Result<(), String> {
        let mut st = self.lock();
        if let Some(old) = st.agents.get(&agent.name) {
            if old.conn.close_reason().is_none() {
                return Err(format!(
                    "an agent named {} is already connected from {}; each host needs its own certificate \
                     (`archfarm ca issue-agent NAME`)",
                    agent.name, old.address
                ));
            }
        }
        st.scheduler.add_agent(
            agent.name.clone(),
            agent.registration.platforms.clone(),
            agent.registration.capacity,
        );
        st.agents.insert(agent.name.clone(), agent);
        dispatch(&mut st);
        Ok(())
    }

    /// Removes an agent's connection (only if it is still the registered one). Jobs waiting for
    /// a platform no agent builds any more fail.
    pub fn unregister(&self, name: &AgentName, conn_id: usize) {
        let mut st = self.lock();
        if st.agents.get(name).map(|a| a.conn.stable_id()) != Some(conn_id) {
            return;
        }
        st.agents.remove(name);
        let removed = st.scheduler.remove_agent(name);
        for job in removed.stranded {
            if let Some((platform, tx)) = st.waiting.remove(&job) {
                let _ = tx.send(Err(AcquireError::Stranded(platform)));
            }
        }
        dispatch(&mut st);
    }

    /// Refuses platforms no connected agent declares.
    pub fn check(&self, platforms: &[Platform]) -> Result<(), NoAgent> {
        self.lock().scheduler.check(platforms)
    }

    /// Waits for an agent to run `job`. Dropping the future before it resolves gives the slot
    /// back (see [`Farm::release`]).
    pub async fn acquire(
        &self,
        job: JobId,
        platform: Platform,
    ) -> Result<AgentHandle, AcquireError> {
        let rx = {
            let mut st = self.lock();
            let (tx, rx) = oneshot::channel();
            st.waiting.insert(job.clone(), (platform.clone(), tx));
            st.scheduler.enqueue(job, platform);
            dispatch(&mut st);
            rx
        };
        rx.await
            .unwrap_or_else(|_| unreachable!("the farm never drops a waiter without answering"))
    }

    /// Gives back the slot of a finished (or abandoned) job.
    pub fn release(&self, job: &JobId) {
        let mut st = self.lock();
        st.waiting.remove(job);
        st.scheduler.cancel(job);
        st.scheduler.finish(job);
        dispatch(&mut st);
    }

    /// Connected agents for `archfarm agents ls`, sorted by name.
    pub fn agents(&self) -> Vec<AgentInfo> {
        let st = self.lock();
        let mut out: Vec<AgentInfo> = st
            .agents
            .values()
            .map(|a| {
                let (running, capacity) = st
                    .scheduler
                    .load(&a.name)
                    .unwrap_or((0, a.registration.capacity));
                AgentInfo {
                    name: a.name.clone(),
                    address: a.address.to_string(),
                    platforms: a.registration.platforms.clone(),
                    state: if running >= capacity { "busy" } else { "ready" }.to_owned(),
                    running,
                    capacity,
                    engine_version: a.registration.engine_version.clone(),
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
            (Some((_, tx)), Some(handle)) => {
                if tx.send(Ok(handle)).is_err() {
                    // The build went away while queued: free the slot at once.
                    st.scheduler.finish(&assignment.job);
                }
            }
            _ => st.scheduler.finish(&assignment.job),
        }
    }
}
