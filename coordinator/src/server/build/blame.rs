//! Whose fault a failed attempt is. An agent reporting its own failure is not taken at its
//! word when that would end the platform: a build that fails on one agent is built again on a
//! peer of the platform, if there is one, before it counts as the Dockerfile's. When the peer
//! succeeds, the first agent is blamed; an agent blamed `quarantine_after` times in a row (for
//! this or a failure of its own) is quarantined. A wrong image quarantines at once.

use super::platform::{Attempt, History, Runner};
use crate::server::farm::AgentHandle;
use crate::server::scheduler::fit::Wants;
use crate::server::scheduler::Standing;
use archfarm_shared::outcome::AttemptOutcome;
use archfarm_shared::protocol::{FailureKind, JobFailure};
use archfarm_shared::AgentName;
use tracing::{error, warn};

impl Runner<'_> {
    /// What a failure `agent` reported means for the retry decision.
    pub(super) fn after_failure(
        &self,
        agent: &AgentHandle,
        wants: &Wants,
        history: History<'_>,
        failure: JobFailure,
    ) -> Attempt {
        let retry =
            |blame| Attempt::Retry { outcome: AttemptOutcome::Failed, failure: failure.clone(), blame, doubt: false };
        match failure.kind {
            // The image's own doing, as every agent would build it: once a peer agrees, or when
            // no peer can tell.
            FailureKind::Build | FailureKind::TestFailed => match history.doubted {
                Some((first, _)) => {
                    let message = format!(
                        "{} (it failed on agent {first} before as well: the build's doing, not an agent's)",
                        failure.message
                    );
                    Attempt::Final { outcome: AttemptOutcome::Failed, failure: JobFailure { message, ..failure } }
                }
                None => {
                    let mut tried = history.tried.to_vec();
                    tried.push(agent.name.clone());
                    if self.farm.serves_other(wants, &tried) {
                        let message =
                            format!("{}; building it on another agent, to tell whose fault it is", failure.message);
                        let failure = JobFailure { message, ..failure };
                        Attempt::Retry { outcome: AttemptOutcome::Failed, failure, blame: false, doubt: true }
                    } else {
                        Attempt::Final { outcome: AttemptOutcome::Failed, failure }
                    }
                }
            },
            // The coordinator lost the context: no agent can build it until it is uploaded again.
            FailureKind::ContextMissing => Attempt::Final { outcome: AttemptOutcome::Failed, failure },
            FailureKind::AgentLost => {
                Attempt::Retry { outcome: AttemptOutcome::Lost, failure, blame: false, doubt: false }
            }
            FailureKind::Cancelled => {
                Attempt::Retry { outcome: AttemptOutcome::Cancelled, failure, blame: false, doubt: false }
            }
            // A failing push or pull says more about the registry than the agent: an outage must
            // not quarantine the whole farm. An unhealthy engine already keeps its agent from jobs.
            FailureKind::Push | FailureKind::RegistryUnavailable | FailureKind::EngineUnhealthy => retry(false),
            _ => retry(true),
        }
    }

    /// `first`'s build failed (`failure`) where `peer` built the same job: `first` is blamed.
    pub(super) async fn contradicted(&self, first: &AgentName, peer: &AgentName, failure: &JobFailure) {
        let message = format!("its build failed where agent {peer}'s succeeded: {}", failure.message);
        warn!(agent = %first, "{message}");
        self.count_failure(first, AttemptOutcome::Failed, &message).await;
    }

    pub(super) async fn quarantine(&self, agent: &AgentName, reason: &str) {
        warn!(agent = %agent, "quarantining agent: {reason}");
        if let Err(e) = self.store.quarantine(agent, reason).await {
            error!("cannot record the quarantine: {e}");
        }
        // An agent already quarantined (a late failure of a job it ran before) counts once.
        let before = self.farm.set_standing(agent, Standing::Quarantined(reason.to_owned()));
        if !matches!(before, Some(Standing::Quarantined(_))) {
            self.metrics.quarantined();
        }
    }

    pub(super) async fn count_failure(&self, agent: &AgentName, outcome: AttemptOutcome, message: &str) {
        match self.store.agent_failed(agent).await {
            Ok(n) if n >= self.quarantine_after => {
                self.quarantine(agent, &format!("{n} jobs in a row {outcome}; the last: {message}")).await;
            }
            Ok(_) => {}
            Err(e) => error!("cannot record an agent failure: {e}"),
        }
    }
}
