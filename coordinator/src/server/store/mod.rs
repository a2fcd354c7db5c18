//! The coordinator's durable state: builds, jobs, attempts, verified digests, published
//! indexes and agent standing, in one SQLite file (WAL, synchronous=FULL). Every change is
//! committed before the coordinator acts on it or acknowledges it: changes go to one writer
//! thread that commits whatever is waiting together ([`writer`]), so a thousand builds share
//! disk syncs and no async task blocks on one. Reads use their own connection. The only user
//! of rusqlite.

mod writer;

use archfarm_shared::clock::now_ms;
use archfarm_shared::outcome::AttemptOutcome;
use archfarm_shared::protocol::{
    AttemptDetail, BuildDetail, BuildRequest, BuildState, BuildSummary, JobDetail, JobState,
};
use archfarm_shared::{AgentName, BuildId, Digest, JobId, Platform};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Mutex;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A row holds something this version cannot read.
    #[error("state database: {0}")]
    Corrupt(String),
    /// The transaction holding a change could not be committed.
    #[error("state database: {0}")]
    Commit(String),
    /// The writer thread is gone (the coordinator is stopping).
    #[error("state database: the writer has stopped")]
    Closed,
}

type Result<T> = std::result::Result<T, StoreError>;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS builds (
    id          TEXT PRIMARY KEY,
    created_ms  INTEGER NOT NULL,
    finished_ms INTEGER,
    state       TEXT NOT NULL,
    request     TEXT NOT NULL,
    index_digest TEXT,
    error       TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    build       TEXT NOT NULL REFERENCES builds(id),
    position    INTEGER NOT NULL,
    platform    TEXT NOT NULL,
    state       TEXT NOT NULL,
    digest      TEXT,
    media_type  TEXT,
    size        INTEGER,
    agent       TEXT,
    duration_ms INTEGER,
    error       TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_build ON jobs(build, position);
CREATE TABLE IF NOT EXISTS attempts (
    job         TEXT NOT NULL REFERENCES jobs(id),
    number      INTEGER NOT NULL,
    agent       TEXT NOT NULL,
    started_ms  INTEGER NOT NULL,
    finished_ms INTEGER,
    outcome     TEXT,
    detail      TEXT,
    PRIMARY KEY (job, number)
);
CREATE TABLE IF NOT EXISTS join_tokens (
    hash        TEXT PRIMARY KEY,
    expires_ms  INTEGER NOT NULL,
    used_ms     INTEGER,
    used_by     TEXT
);
CREATE TABLE IF NOT EXISTS client_tokens (
    name        TEXT PRIMARY KEY,
    hash        TEXT NOT NULL UNIQUE,
    created_ms  INTEGER NOT NULL,
    revoked_ms  INTEGER
);
CREATE TABLE IF NOT EXISTS revoked_agents (
    name        TEXT PRIMARY KEY,
    revoked_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS agents (
    name        TEXT PRIMARY KEY,
    quarantined INTEGER NOT NULL DEFAULT 0,
    reason      TEXT,
    failures    INTEGER NOT NULL DEFAULT 0
);
";

/// A job as recovery needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredJob {
    /// The job.
    pub job: JobId,
    /// Its platform.
    pub platform: Platform,
    /// Its state.
    pub state: JobState,
    /// Verified manifest (digest, media type, size), if any.
    pub verified: Option<(Digest, String, u64)>,
    /// The agent whose image was verified.
    pub agent: Option<AgentName>,
    /// Duration to verification.
    pub duration_ms: Option<u64>,
    /// Attempts made so far.
    pub attempts: u32,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// A `builds` row: id, created, finished, state, request, index, error.
type SummaryRow = (String, i64, Option<i64>, String, String, Option<String>, Option<String>);

/// The state database.
#[derive(Debug)]
pub struct Store {
    reader: Mutex<Connection>,
    writer: writer::Writer,
}

fn parse<T: std::str::FromStr>(s: &str, what: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e| StoreError::Corrupt(format!("{what} {s:?}: {e}")))
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        let reader = Connection::open(path)?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Store { reader: Mutex::new(reader), writer: writer::Writer::start(conn)? })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One statement as one change; returns the rows it changed.
    async fn execute(&self, sql: &'static str, params: impl rusqlite::Params + Send + 'static) -> Result<usize> {
        self.writer.write(move |c| Ok(c.execute(sql, params)?)).await
    }

    /// Records a new build and its jobs (one per platform, in order), all queued.
    pub async fn create_build(&self, build: &BuildId, req: &BuildRequest, jobs: &[(JobId, Platform)]) -> Result<()> {
        let request = serde_json::to_string(req).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let build = build.to_string();
        let jobs: Vec<(String, String)> = jobs.iter().map(|(j, p)| (j.to_string(), p.to_string())).collect();
        self.writer
            .write(move |c| {
                c.execute(
                    "INSERT INTO builds (id, created_ms, state, request) VALUES (?1, ?2, ?3, ?4)",
                    params![build, now_ms() as i64, BuildState::Running.as_str(), request],
                )?;
                for (position, (job, platform)) in jobs.iter().enumerate() {
                    c.execute(
                        "INSERT INTO jobs (id, build, position, platform, state) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![job, build, position as i64, platform, JobState::Queued.as_str()],
                    )?;
                }
                Ok(())
            })
            .await
    }

    /// Starts attempt `number` of `job` on `agent`.
    pub async fn start_attempt(&self, job: &JobId, number: u32, agent: &AgentName) -> Result<()> {
        let (job, agent) = (job.to_string(), agent.to_string());
        self.writer
            .write(move |c| {
                c.execute(
                    "INSERT INTO attempts (job, number, agent, started_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![job, number, agent, now_ms() as i64],
                )?;
                c.execute("UPDATE jobs SET state = ?2 WHERE id = ?1", params![job, JobState::Running.as_str()])?;
                Ok(())
            })
            .await
    }

    /// Ends an attempt. Only the first end counts: a late report for an attempt already ended
    /// (fenced) changes nothing, and the call returns false.
    pub async fn finish_attempt(
        &self,
        job: &JobId,
        number: u32,
        outcome: AttemptOutcome,
        detail: &str,
    ) -> Result<bool> {
        let (job, detail) = (job.to_string(), detail.to_owned());
        self.writer.write(move |c| Ok(finish_attempt(c, &job, number, outcome, &detail)?)).await
    }

    /// Marks a job queued again (after a lost or failed attempt).
    pub async fn requeue(&self, job: &JobId) -> Result<()> {
        self.execute("UPDATE jobs SET state = ?2 WHERE id = ?1", (job.to_string(), JobState::Queued.as_str())).await?;
        Ok(())
    }

    /// Records in one change that an attempt pushed an image which was verified: the attempt
    /// ends as pushed, the job holds the image, the agent's run of failures is reset.
    pub async fn attempt_verified(&self, job: &JobId, number: u32, image: VerifiedImage) -> Result<()> {
        let job = job.to_string();
        self.writer
            .write(move |c| {
                let VerifiedImage { digest, media_type, size, agent, duration_ms } = image;
                finish_attempt(c, &job, number, AttemptOutcome::Pushed, digest.as_str())?;
                c.execute("UPDATE agents SET failures = 0 WHERE name = ?1", params![agent.as_str()])?;
                c.execute(
                    "UPDATE jobs SET state = ?2, digest = ?3, media_type = ?4, size = ?5, agent = ?6, duration_ms = ?7, \
                     error = NULL WHERE id = ?1",
                    params![
                        job,
                        JobState::Verified.as_str(),
                        digest.as_str(),
                        media_type,
                        size as i64,
                        agent.as_str(),
                        duration_ms as i64
                    ],
                )?;
                Ok(())
            })
            .await
    }

    /// Ends a job without an image (failed or cancelled).
    pub async fn job_ended(&self, job: &JobId, state: JobState, error: &str) -> Result<()> {
        self.execute(
            "UPDATE jobs SET state = ?2, error = ?3 WHERE id = ?1 AND state != 'verified'",
            (job.to_string(), state.as_str(), error.to_owned()),
        )
        .await?;
        Ok(())
    }

    /// Sets a build's state; a final state also records when, and the index or the error.
    pub async fn set_build_state(
        &self,
        build: &BuildId,
        state: BuildState,
        index: Option<&Digest>,
        error: Option<&str>,
    ) -> Result<()> {
        let finished = state.is_final().then(|| now_ms() as i64);
        self.execute(
            "UPDATE builds SET state = ?2, finished_ms = COALESCE(?3, finished_ms), \
             index_digest = COALESCE(?4, index_digest), error = ?5 WHERE id = ?1",
            (build.to_string(), state.as_str(), finished, index.map(Digest::to_string), error.map(str::to_owned)),
        )
        .await?;
        Ok(())
    }

    /// The request a build was started with.
    pub fn request(&self, build: &BuildId) -> Result<Option<BuildRequest>> {
        let text: Option<String> = self
            .conn()
            .query_row("SELECT request FROM builds WHERE id = ?1", params![build.as_str()], |r| r.get(0))
            .optional()?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("request of {build}: {e}"))))
            .transpose()
    }

    /// A build's jobs, in platform order.
    pub fn jobs(&self, build: &BuildId) -> Result<Vec<StoredJob>> {
        read_jobs(&self.conn(), build)
    }

    /// Builds that have not reached a final state, oldest first (recovered at start).
    pub fn unfinished(&self) -> Result<Vec<BuildId>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT id FROM builds WHERE state IN ('running', 'publishing') ORDER BY created_ms")?;
        let ids = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<std::result::Result<Vec<_>, _>>()?;
        ids.iter().map(|s| parse(s, "build id")).collect()
    }

    fn summary_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SummaryRow> {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
    }

    fn summary(row: SummaryRow) -> Result<BuildSummary> {
        let (id, created, finished, state, request, index, error) = row;
        let req: BuildRequest =
            serde_json::from_str(&request).map_err(|e| StoreError::Corrupt(format!("request of {id}: {e}")))?;
        Ok(BuildSummary {
            build: parse(&id, "build id")?,
            state: parse(&state, "build state")?,
            created_ms: created as u64,
            finished_ms: finished.map(|f| f as u64),
            platforms: req.platforms,
            tags: req.tags,
            index: index.map(|d| parse(&d, "digest")).transpose()?,
            error,
        })
    }

    /// The newest builds.
    pub fn list(&self, limit: u32) -> Result<Vec<BuildSummary>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, created_ms, finished_ms, state, request, index_digest, error FROM builds \
             ORDER BY created_ms DESC, rowid DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit], Self::summary_row)?.collect::<std::result::Result<Vec<_>, _>>()?;
        rows.into_iter().map(Self::summary).collect()
    }

    /// One build with its jobs and attempts.
    pub fn detail(&self, build: &BuildId) -> Result<Option<BuildDetail>> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT id, created_ms, finished_ms, state, request, index_digest, error FROM builds WHERE id = ?1",
                params![build.as_str()],
                Self::summary_row,
            )
            .optional()?;
        let Some(row) = row else { return Ok(None) };
        let summary = Self::summary(row)?;
        let jobs = read_jobs(&conn, build)?;
        let mut attempts_stmt = conn.prepare(
            "SELECT number, agent, started_ms, finished_ms, outcome, detail FROM attempts WHERE job = ?1 ORDER BY number",
        )?;
        let mut out = Vec::new();
        for job in jobs {
            let attempts = attempts_stmt
                .query_map(params![job.job.as_str()], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ))
                })?
                .collect::<std::result::Result<Vec<_>, _>>()?
                .into_iter()
                .map(|(number, agent, started, finished, outcome, detail)| {
                    Ok(AttemptDetail {
                        number: number as u32,
                        agent: parse(&agent, "agent name")?,
                        started_ms: started as u64,
                        finished_ms: finished.map(|f| f as u64),
                        outcome,
                        detail,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            out.push(JobDetail {
                digest: job.verified.map(|(d, _, _)| d),
                job: job.job,
                platform: job.platform,
                state: job.state,
                agent: job.agent,
                duration_ms: job.duration_ms,
                error: job.error,
                attempts,
            });
        }
        Ok(Some(BuildDetail { summary, jobs: out }))
    }

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

    /// Why an agent is quarantined, if it is.
    pub fn quarantined(&self, agent: &AgentName) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row("SELECT reason FROM agents WHERE name = ?1 AND quarantined = 1", params![agent.as_str()], |r| {
                r.get::<_, Option<String>>(0)
            })
            .optional()?
            .map(Option::unwrap_or_default))
    }

    /// Records a join token (by hash) valid until `expires_ms`.
    pub async fn add_join_token(&self, hash: &str, expires_ms: u64) -> Result<()> {
        self.execute(
            "INSERT INTO join_tokens (hash, expires_ms) VALUES (?1, ?2)",
            (hash.to_owned(), expires_ms as i64),
        )
        .await?;
        Ok(())
    }

    /// Uses a join token for `name`: succeeds once, before it expires.
    pub async fn use_join_token(&self, hash: &str, name: &AgentName) -> Result<std::result::Result<(), &'static str>> {
        let (hash, name) = (hash.to_owned(), name.to_string());
        self.writer
            .write(move |c| {
                let row: Option<(i64, Option<i64>)> = c
                    .query_row("SELECT expires_ms, used_ms FROM join_tokens WHERE hash = ?1", params![hash], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()?;
                Ok(match row {
                    None => Err("unknown join token"),
                    Some((_, Some(_))) => Err("this join token was already used"),
                    Some((expires, None)) if expires as u64 <= now_ms() => Err("this join token has expired"),
                    Some(_) => {
                        c.execute(
                            "UPDATE join_tokens SET used_ms = ?2, used_by = ?3 WHERE hash = ?1 AND used_ms IS NULL",
                            params![hash, now_ms() as i64, name],
                        )?;
                        Ok(())
                    }
                })
            })
            .await
    }

    /// Records a named client token (by hash). Fails if the name is taken.
    pub async fn add_client_token(&self, name: &str, hash: &str) -> Result<std::result::Result<(), String>> {
        let n = self
            .execute(
                "INSERT OR IGNORE INTO client_tokens (name, hash, created_ms) VALUES (?1, ?2, ?3)",
                (name.to_owned(), hash.to_owned(), now_ms() as i64),
            )
            .await?;
        Ok(if n == 1 { Ok(()) } else { Err(format!("a client token named {name:?} already exists")) })
    }

    /// Revokes a named client token; returns whether it existed and was live.
    pub async fn revoke_client_token(&self, name: &str) -> Result<bool> {
        let n = self
            .execute(
                "UPDATE client_tokens SET revoked_ms = ?2 WHERE name = ?1 AND revoked_ms IS NULL",
                (name.to_owned(), now_ms() as i64),
            )
            .await?;
        Ok(n == 1)
    }

    /// Whether a live (not revoked) client token has this hash.
    pub fn client_token_live(&self, hash: &str) -> Result<bool> {
        Ok(self
            .conn()
            .query_row("SELECT 1 FROM client_tokens WHERE hash = ?1 AND revoked_ms IS NULL", params![hash], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Revokes an agent by name, for good.
    pub async fn revoke_agent(&self, name: &AgentName) -> Result<()> {
        self.execute(
            "INSERT OR IGNORE INTO revoked_agents (name, revoked_ms) VALUES (?1, ?2)",
            (name.to_string(), now_ms() as i64),
        )
        .await?;
        Ok(())
    }

    /// Whether an agent is revoked.
    pub fn agent_revoked(&self, name: &AgentName) -> Result<bool> {
        Ok(self
            .conn()
            .query_row("SELECT 1 FROM revoked_agents WHERE name = ?1", params![name.as_str()], |_| Ok(()))
            .optional()?
            .is_some())
    }
}

/// What a verified attempt records.
#[derive(Debug, Clone)]
pub struct VerifiedImage {
    /// The manifest's digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// The agent that pushed it.
    pub agent: AgentName,
    /// Time from the job's start to verification.
    pub duration_ms: u64,
}

fn finish_attempt(
    c: &Connection,
    job: &str,
    number: u32,
    outcome: AttemptOutcome,
    detail: &str,
) -> rusqlite::Result<bool> {
    let n = c.execute(
        "UPDATE attempts SET finished_ms = ?3, outcome = ?4, detail = ?5 \
         WHERE job = ?1 AND number = ?2 AND finished_ms IS NULL",
        params![job, number, now_ms() as i64, outcome.as_str(), detail],
    )?;
    Ok(n == 1)
}

/// A build's job rows, in platform order: what recovery and `builds show` both read.
fn read_jobs(conn: &Connection, build: &BuildId) -> Result<Vec<StoredJob>> {
    let mut stmt = conn.prepare(
        "SELECT j.id, j.platform, j.state, j.digest, j.media_type, j.size, j.agent, j.duration_ms, \
         (SELECT COUNT(*) FROM attempts a WHERE a.job = j.id), j.error \
         FROM jobs j WHERE j.build = ?1 ORDER BY j.position",
    )?;
    let rows = stmt.query_map(params![build.as_str()], |r| {
        Ok((
            (r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?),
            (r.get::<_, Option<String>>(3)?, r.get::<_, Option<String>>(4)?, r.get::<_, Option<i64>>(5)?),
            (
                r.get::<_, Option<String>>(6)?,
                r.get::<_, Option<i64>>(7)?,
                r.get::<_, i64>(8)?,
                r.get::<_, Option<String>>(9)?,
            ),
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let ((id, platform, state), (digest, media_type, size), (agent, duration, attempts, error)) = row?;
        let verified = match (digest, media_type, size) {
            (Some(d), Some(m), Some(s)) => Some((parse(&d, "digest")?, m, s as u64)),
            _ => None,
        };
        out.push(StoredJob {
            job: parse(&id, "job id")?,
            platform: parse(&platform, "platform")?,
            state: parse(&state, "job state")?,
            verified,
            agent: agent.map(|a| parse(&a, "agent name")).transpose()?,
            duration_ms: duration.map(|d| d as u64),
            attempts: attempts as u32,
            error,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> BuildRequest {
        BuildRequest {
            platforms: vec!["linux/amd64".parse().unwrap(), "linux/arm64".parse().unwrap()],
            tags: vec!["127.0.0.1:5000/a:1".into()],
            context: Digest::of(b"ctx"),
            dockerfile: "Dockerfile".into(),
            build_args: vec![("A".into(), "1".into())],
            target: None,
            labels: vec![],
        }
    }

    #[tokio::test]
    async fn a_build_survives_reopening_with_jobs_attempts_and_digests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let build = BuildId::random();
        let (j1, j2) = (JobId::random(), JobId::random());
        let agent: AgentName = "amd64-1".parse().unwrap();
        {
            let s = Store::open(&path).unwrap();
            let req = request();
            s.create_build(
                &build,
                &req,
                &[(j1.clone(), req.platforms[0].clone()), (j2.clone(), req.platforms[1].clone())],
            )
            .await
            .unwrap();
            s.start_attempt(&j1, 1, &agent).await.unwrap();
            assert!(s.finish_attempt(&j1, 1, AttemptOutcome::Lost, "agent went away").await.unwrap());
            assert!(
                !s.finish_attempt(&j1, 1, AttemptOutcome::Pushed, "late").await.unwrap(),
                "a late report is fenced"
            );
            s.requeue(&j1).await.unwrap();
            s.start_attempt(&j1, 2, &agent).await.unwrap();
            assert_eq!(s.agent_failed(&agent).await.unwrap(), 1);
            let image = VerifiedImage {
                digest: Digest::of(b"m"),
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                size: 400,
                agent: agent.clone(),
                duration_ms: 1234,
            };
            s.attempt_verified(&j1, 2, image).await.unwrap();
            // A verified image ends the agent's run of failures.
            assert_eq!(s.agent_failed(&agent).await.unwrap(), 1);
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.unfinished().unwrap(), vec![build.clone()]);
        assert_eq!(s.request(&build).unwrap(), Some(request()));
        let jobs = s.jobs(&build).unwrap();
        assert_eq!(jobs[0].state, JobState::Verified);
        assert_eq!(jobs[0].attempts, 2);
        assert_eq!(jobs[0].verified.as_ref().unwrap().0, Digest::of(b"m"));
        assert_eq!(jobs[1].state, JobState::Queued);
        let detail = s.detail(&build).unwrap().unwrap();
        assert_eq!(
            detail.jobs[0].attempts.iter().map(|a| a.outcome.clone().unwrap()).collect::<Vec<_>>(),
            ["lost", "pushed"]
        );
        assert_eq!(detail.jobs[0].attempts[0].detail.as_deref(), Some("agent went away"));

        s.job_ended(&j2, JobState::Failed, "exit code: 1").await.unwrap();
        s.set_build_state(&build, BuildState::Failed, None, Some("linux/arm64 failed")).await.unwrap();
        assert!(s.unfinished().unwrap().is_empty());
        let listed = s.list(10).unwrap();
        assert_eq!(listed[0].state, BuildState::Failed);
        assert!(listed[0].finished_ms.is_some());
        assert_eq!(listed[0].error.as_deref(), Some("linux/arm64 failed"));
        // A verified job is never turned back into a failure.
        s.job_ended(&j1, JobState::Cancelled, "x").await.unwrap();
        assert_eq!(s.jobs(&build).unwrap()[0].state, JobState::Verified);
    }

    #[tokio::test]
    async fn agent_standing_persists() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        let a: AgentName = "arm64-2".parse().unwrap();
        assert_eq!(s.agent_failed(&a).await.unwrap(), 1);
        assert_eq!(s.agent_failed(&a).await.unwrap(), 2);
        assert_eq!(s.quarantined(&a).unwrap(), None);
        s.quarantine(&a, "pushed linux/amd64 for a linux/arm64 job").await.unwrap();
        assert_eq!(s.quarantined(&a).unwrap().as_deref(), Some("pushed linux/amd64 for a linux/arm64 job"));
    }

    #[tokio::test]
    async fn join_tokens_are_one_time_and_expire_client_tokens_and_agents_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        let a: AgentName = "new-1".parse().unwrap();
        s.add_join_token("h1", now_ms() + 60_000).await.unwrap();
        assert_eq!(s.use_join_token("h1", &a).await.unwrap(), Ok(()));
        assert_eq!(s.use_join_token("h1", &a).await.unwrap(), Err("this join token was already used"));
        s.add_join_token("h2", now_ms() - 1).await.unwrap();
        assert_eq!(s.use_join_token("h2", &a).await.unwrap(), Err("this join token has expired"));
        assert_eq!(s.use_join_token("nope", &a).await.unwrap(), Err("unknown join token"));

        assert_eq!(s.add_client_token("ci", "th").await.unwrap(), Ok(()));
        assert!(s.add_client_token("ci", "other").await.unwrap().is_err());
        assert!(s.client_token_live("th").unwrap());
        assert!(s.revoke_client_token("ci").await.unwrap());
        assert!(!s.revoke_client_token("ci").await.unwrap());
        assert!(!s.client_token_live("th").unwrap());

        assert!(!s.agent_revoked(&a).unwrap());
        s.revoke_agent(&a).await.unwrap();
        s.revoke_agent(&a).await.unwrap();
        assert!(s.agent_revoked(&a).unwrap());
    }
}
