//! Housekeeping of agents' caches: `archfarm agents inspect`, `du` and `prune`. Each asks the agents over a
//! housekeeping stream of their own; agents are asked side by side, and one that cannot answer
//! is reported by name without holding up the others.

use crate::server::farm::AgentHandle;
use crate::server::reply::Reply;
use crate::server::state::Shared;
use archfarm_shared::protocol::{AgentAnswer, AgentDetail, ClientResponse, Housekeeping, HousekeepingReply};
use archfarm_shared::AgentName;
use futures_util::future::join_all;
use tracing::info;

/// Attempts shown by `agents inspect`.
const RECENT: u32 = 10;

fn unknown(name: &AgentName) -> Reply {
    Reply::error(format!("no agent {name} is connected; `archfarm agents ls` lists those that are"))
}

async fn ask(agent: &AgentHandle, request: Housekeeping) -> AgentAnswer {
    let reply = agent.link.housekeeping(request).await.unwrap_or_else(HousekeepingReply::Failed);
    AgentAnswer { agent: agent.name.clone(), reply }
}

/// `archfarm agents inspect NAME`: what `ls` shows, the caches, the recent attempts.
pub async fn inspect(shared: &Shared, name: &AgentName) -> Reply {
    let Some(mut info) = shared.farm.agents().into_iter().find(|a| a.name == *name) else { return unknown(name) };
    let Some((handle, _)) = shared.farm.handles(Some(name)).pop() else { return unknown(name) };
    // One agent's CPU features fit a frame (at most 512 of 64 bytes); `ls` leaves them out.
    info.capabilities.cpu_features = handle.registration.capabilities.cpu_features.clone();
    let usage = match ask(&handle, Housekeeping::DiskUsage).await.reply {
        HousekeepingReply::Usage(u) => Ok(u),
        HousekeepingReply::Failed(e) => Err(e),
        HousekeepingReply::Pruned(_) => Err("the agent answered another question".to_owned()),
    };
    let recent = match shared.store.recent_attempts(name, RECENT).await {
        Ok(recent) => recent,
        Err(e) => return Reply::error(e.to_string()),
    };
    Reply::one(ClientResponse::AgentDetail(Box::new(AgentDetail { info, usage, recent })))
}

/// `archfarm agents du [NAME]`.
pub async fn disk_usage(shared: &Shared, name: Option<&AgentName>) -> Reply {
    let agents = shared.farm.handles(name);
    if agents.is_empty() {
        return name.map_or_else(|| Reply::error("no agent is connected"), unknown);
    }
    let answers = join_all(agents.iter().map(|(a, _)| ask(a, Housekeeping::DiskUsage))).await;
    Reply::one(ClientResponse::AgentAnswers(answers))
}

/// `archfarm agents prune [NAME]`: refused for an agent running a job unless `force`; the
/// others are pruned.
pub async fn prune(shared: &Shared, name: Option<&AgentName>, all: bool, keep: Option<u64>, force: bool) -> Reply {
    let agents = shared.farm.handles(name);
    if agents.is_empty() {
        return name.map_or_else(|| Reply::error("no agent is connected"), unknown);
    }
    let request = Housekeeping::Prune { all, keep_storage: keep };
    let answers = join_all(agents.iter().map(|(agent, running)| {
        let request = request.clone();
        async move {
            if *running > 0 && !force {
                let why = format!(
                    "not pruned: it runs {running} job(s) now, whose cache a prune would take away; \
                     try again when it is idle, or add --force"
                );
                return AgentAnswer { agent: agent.name.clone(), reply: HousekeepingReply::Failed(why) };
            }
            info!(agent = %agent.name, all, ?keep, force, "pruning an agent's caches");
            ask(agent, request).await
        }
    }))
    .await;
    Reply::one(ClientResponse::AgentAnswers(answers))
}
