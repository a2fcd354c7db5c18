//! Agent standing: failures in a row, quarantine, an administrator's drain, and names revoked by
//! older coordinators.

use super::{Result, Store, StoreError};
use archfarm_shared::protocol::AgentAttempt;
use archfarm_shared::AgentName;
use rusqlite::{params, OptionalExtension};

/// An agent's recorded standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Nothing holds it back.
    Active,
    /// An administrator drained it.
    Drained,
    /// Quarantined, and why.
    Quarantined(String),
}

impl Store {
    /// Counts an infrastructure failure against an agent; returns its consecutive failures.
    pub async fn agent_failed(&self, agent: &AgentName) -> Result<u32> {
        let agent = agent.to_string();
        self.writer
            .write(move |c| {
                c.execute(
                    "INSERT INTO agents (name, failures) VALUES (?1, 1) \
                     ON CONFLICT(name) DO UPDATE SET failures = failures + 1",
                    params![agent],
                )?;
                Ok(c.query_row("SELECT failures FROM agents WHERE name = ?1", params![agent], |r| r.get::<_, i64>(0))?
                    as u32)
            })
            .await
    }

    /// Quarantines an agent: it stays connected but gets no jobs.
    pub async fn quarantine(&self, agent: &AgentName, reason: &str) -> Result<()> {
        self.execute(
            "INSERT INTO agents (name, quarantined, reason) VALUES (?1, 1, ?2) \
             ON CONFLICT(name) DO UPDATE SET quarantined = 1, reason = ?2",
            (agent.to_string(), reason.to_owned()),
        )
        .await?;
        Ok(())
    }

    /// Lifts an agent's quarantine and forgets its failures in a row; whether it was quarantined.
    pub async fn unquarantine(&self, agent: &AgentName) -> Result<bool> {
        let changed = self
            .execute(
                "UPDATE agents SET quarantined = 0, reason = NULL, failures = 0 WHERE name = ?1 AND quarantined = 1",
                (agent.to_string(),),
            )
            .await?;
        Ok(changed > 0)
    }

    /// Records an administrator's drain (or its end); whether that changed anything.
    pub async fn set_drained(&self, agent: &AgentName, drained: bool) -> Result<bool> {
        let changed = self
            .execute(
                "INSERT INTO agents (name, drained) VALUES (?1, ?2) \
                 ON CONFLICT(name) DO UPDATE SET drained = ?2 WHERE drained != ?2",
                (agent.to_string(), i64::from(drained)),
            )
            .await?;
        Ok(changed > 0)
    }

    /// What the administrator and the agent's record say it may be given: quarantined (why)
    /// before drained before active.
    pub async fn recorded_standing(&self, agent: &AgentName) -> Result<Recorded> {
        let agent = agent.to_string();
        self.read(move |c| {
            Ok(c.query_row("SELECT quarantined, reason, drained FROM agents WHERE name = ?1", params![agent], |r| {
                Ok(match (r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, i64>(2)?) {
                    (1, reason, _) => Recorded::Quarantined(reason.unwrap_or_default()),
                    (_, _, 1) => Recorded::Drained,
                    _ => Recorded::Active,
                })
            })
            .optional()?
            .unwrap_or(Recorded::Active))
        })
        .await
    }

    /// Why an agent is quarantined, if it is.
    #[cfg(test)]
    pub async fn quarantined(&self, agent: &AgentName) -> Result<Option<String>> {
        let agent = agent.to_string();
        self.read(move |c| {
            Ok(c.query_row("SELECT reason FROM agents WHERE name = ?1 AND quarantined = 1", params![agent], |r| {
                r.get::<_, Option<String>>(0)
            })
            .optional()?
            .map(Option::unwrap_or_default))
        })
        .await
    }

    /// Whether an agent's name was revoked by a coordinator from before certificates were
    /// revoked one by one ([`super::certificates`]); such names stay refused.
    pub async fn agent_revoked(&self, name: &AgentName) -> Result<bool> {
        self.exists("SELECT 1 FROM revoked_agents WHERE name = ?1", name.to_string()).await
    }

    /// The most recent attempts `agent` ran, newest first, with their build's state.
    pub async fn recent_attempts(&self, agent: &AgentName, limit: u32) -> Result<Vec<AgentAttempt>> {
        let agent = agent.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT j.build, j.platform, a.number, a.started_ms, a.finished_ms, a.outcome, b.state \
                 FROM attempts a JOIN jobs j ON j.id = a.job JOIN builds b ON b.id = j.build \
                 WHERE a.agent = ?1 ORDER BY a.started_ms DESC, a.number DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![agent, limit], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, String>(6)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (build, platform, number, started, finished, outcome, state) = row?;
                let corrupt = |e: String| StoreError::Corrupt(format!("attempt of {build}: {e}"));
                out.push(AgentAttempt {
                    build: build.parse().map_err(|e| corrupt(format!("{e}")))?,
                    platform: platform.parse().map_err(|e| corrupt(format!("{e}")))?,
                    attempt: number as u32,
                    started_ms: started as u64,
                    finished_ms: finished.map(|f| f as u64),
                    outcome,
                    build_state: state.parse().ok(),
                });
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn agent_standing_persists() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        let a: AgentName = "arm64-2".parse().unwrap();
        assert_eq!(s.agent_failed(&a).await.unwrap(), 1);
        assert_eq!(s.agent_failed(&a).await.unwrap(), 2);
        assert_eq!(s.quarantined(&a).await.unwrap(), None);
        s.quarantine(&a, "pushed linux/amd64 for a linux/arm64 job").await.unwrap();
        assert_eq!(s.quarantined(&a).await.unwrap().as_deref(), Some("pushed linux/amd64 for a linux/arm64 job"));
        assert!(s.set_drained(&a, true).await.unwrap());
        assert!(!s.set_drained(&a, true).await.unwrap(), "draining twice changes nothing");
        assert_eq!(
            s.recorded_standing(&a).await.unwrap(),
            Recorded::Quarantined("pushed linux/amd64 for a linux/arm64 job".into()),
            "a quarantine outranks a drain"
        );
        assert!(s.unquarantine(&a).await.unwrap());
        assert!(!s.unquarantine(&a).await.unwrap());
        assert_eq!(s.recorded_standing(&a).await.unwrap(), Recorded::Drained);
        assert_eq!(s.agent_failed(&a).await.unwrap(), 1, "failures are forgotten with the quarantine");
        assert!(s.set_drained(&a, false).await.unwrap());
        assert_eq!(s.recorded_standing(&a).await.unwrap(), Recorded::Active);
        let new: AgentName = "never-seen".parse().unwrap();
        assert_eq!(s.recorded_standing(&new).await.unwrap(), Recorded::Active);
    }

    #[tokio::test]
    async fn names_revoked_before_certificates_stay_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        let a: AgentName = "new-1".parse().unwrap();
        assert!(!s.agent_revoked(&a).await.unwrap());
        s.execute("INSERT INTO revoked_agents (name, revoked_ms) VALUES ('new-1', 1)", ()).await.unwrap();
        assert!(s.agent_revoked(&a).await.unwrap());
    }
}
