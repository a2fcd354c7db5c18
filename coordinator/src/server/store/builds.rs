//! Builds, their jobs (one per platform) and each job's attempts, with the verified digest
//! of every platform that has one.

use super::{parse, Result, Store, StoreError};
use archfarm_shared::clock::now_ms;
use archfarm_shared::oci::Attestation;
use archfarm_shared::outcome::AttemptOutcome;
use archfarm_shared::protocol::{
    AttemptDetail, BuildDetail, BuildRequest, BuildState, BuildSummary, JobDetail, JobState,
};
use archfarm_shared::{AgentName, BuildId, Digest, JobId, Platform};
use rusqlite::{params, Connection, OptionalExtension};

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
    /// Attempts made before the last `builds retry`; the attempt limit counts from here.
    pub attempts_base: u32,
    /// The provenance attestation of its verified image, if it has one.
    pub attestation: Option<Attestation>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// A `builds` row: id, created, finished, state, request, index, error, owner.
type SummaryRow = (String, i64, Option<i64>, String, String, Option<String>, Option<String>, Option<String>);

/// The columns of a [`SummaryRow`].
const SUMMARY: &str = "id, created_ms, finished_ms, state, request, index_digest, error, owner";

impl Store {
    /// Records a new build of `owner` (whose token has `scopes`) and its jobs (one per
    /// platform, in order), all queued.
    pub async fn create_build(
        &self,
        build: &BuildId,
        (owner, scopes): (&str, &[String]),
        req: &BuildRequest,
        jobs: &[(JobId, Platform)],
    ) -> Result<()> {
        let request = serde_json::to_string(req).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (build, owner, scopes) = (build.to_string(), owner.to_owned(), scopes.join(" "));
        let jobs: Vec<(String, String)> = jobs.iter().map(|(j, p)| (j.to_string(), p.to_string())).collect();
        self.writer
            .write(move |c| {
                c.execute(
                    "INSERT INTO builds (id, created_ms, state, request, owner, scopes) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![build, now_ms() as i64, BuildState::Running.as_str(), request, owner, scopes],
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

    /// Starts attempt `number` of `job` on `agent`, chosen for `placement`.
    pub async fn start_attempt(&self, job: &JobId, number: u32, agent: &AgentName, placement: &str) -> Result<()> {
        let (job, agent, placement) = (job.to_string(), agent.to_string(), placement.to_owned());
        self.writer
            .write(move |c| {
                c.execute(
                    "INSERT INTO attempts (job, number, agent, started_ms, placement) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![job, number, agent, now_ms() as i64, placement],
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
                let VerifiedImage { digest, media_type, size, agent, duration_ms, attestation } = image;
                let attestation = attestation.map(|a| serde_json::to_string(&a)).transpose().map_err(|e| {
                    StoreError::Corrupt(format!("attestation of {digest}: {e}"))
                })?;
                finish_attempt(c, &job, number, AttemptOutcome::Pushed, digest.as_str())?;
                c.execute("UPDATE agents SET failures = 0 WHERE name = ?1", params![agent.as_str()])?;
                c.execute(
                    "UPDATE jobs SET state = ?2, digest = ?3, media_type = ?4, size = ?5, agent = ?6, duration_ms = ?7, \
                     error = NULL, attestation = ?8 WHERE id = ?1",
                    params![
                        job,
                        JobState::Verified.as_str(),
                        digest.as_str(),
                        media_type,
                        size as i64,
                        agent.as_str(),
                        duration_ms as i64,
                        attestation
                    ],
                )?;
                Ok(())
            })
            .await
    }

    /// Ends a job without an image (failed or cancelled).
    pub async fn job_ended(&self, job: &JobId, state: JobState, error: &str) -> Result<()> {
        self.execute(
            "UPDATE jobs SET state = ?2, error = ?3 WHERE id = ?1 AND state NOT IN ('verified', 'left-out')",
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
    pub async fn request(&self, build: &BuildId) -> Result<Option<BuildRequest>> {
        let build = build.clone();
        self.read(move |c| {
            let text: Option<String> = c
                .query_row("SELECT request FROM builds WHERE id = ?1", params![build.as_str()], |r| r.get(0))
                .optional()?;
            text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("request of {build}: {e}"))))
                .transpose()
        })
        .await
    }

    /// The scopes of the token that started `build`; none when it had none.
    pub async fn read_scopes(&self, build: &BuildId) -> Result<Vec<String>> {
        let build = build.clone();
        self.read(move |c| {
            let text: Option<String> = c
                .query_row("SELECT scopes FROM builds WHERE id = ?1", params![build.as_str()], |r| r.get(0))
                .optional()?;
            Ok(text.unwrap_or_default().split_whitespace().map(str::to_owned).collect())
        })
        .await
    }

    /// A build's jobs, in platform order.
    pub async fn jobs(&self, build: &BuildId) -> Result<Vec<StoredJob>> {
        let build = build.clone();
        self.read(move |c| read_jobs(c, &build)).await
    }

    /// Builds that have not reached a final state, oldest first (recovered at start).
    pub async fn unfinished(&self) -> Result<Vec<BuildId>> {
        self.read(|c| {
            let mut stmt =
                c.prepare("SELECT id FROM builds WHERE state IN ('running', 'publishing') ORDER BY created_ms")?;
            let ids = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<std::result::Result<Vec<_>, _>>()?;
            ids.iter().map(|s| parse(s, "build id")).collect()
        })
        .await
    }

    /// The newest builds; only `owner`'s when given.
    pub async fn list(&self, limit: u32, owner: Option<&str>) -> Result<Vec<BuildSummary>> {
        let owner = owner.map(str::to_owned);
        self.read(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {SUMMARY} FROM builds WHERE ?2 IS NULL OR owner = ?2 \
                 ORDER BY created_ms DESC, rowid DESC LIMIT ?1"
            ))?;
            let rows =
                stmt.query_map(params![limit, owner], summary_row)?.collect::<std::result::Result<Vec<_>, _>>()?;
            rows.into_iter().map(summary).collect()
        })
        .await
    }

    /// How many builds the database holds in each state.
    pub async fn count_by_state(&self) -> Result<Vec<(BuildState, u64)>> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT state, COUNT(*) FROM builds GROUP BY state ORDER BY state")?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<std::result::Result<Vec<_>, _>>()?;
            rows.into_iter().map(|(state, n)| Ok((parse(&state, "build state")?, n as u64))).collect()
        })
        .await
    }

    /// One build with its jobs and attempts.
    pub async fn detail(&self, build: &BuildId) -> Result<Option<BuildDetail>> {
        let build = build.clone();
        self.read(move |c| read_detail(c, &build)).await
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
    /// Its provenance attestation, if one was attached.
    pub attestation: Option<Attestation>,
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

fn summary_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SummaryRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
}

fn summary(row: SummaryRow) -> Result<BuildSummary> {
    let (id, created, finished, state, request, index, error, owner) = row;
    let req: BuildRequest =
        serde_json::from_str(&request).map_err(|e| StoreError::Corrupt(format!("request of {id}: {e}")))?;
    Ok(BuildSummary {
        build: parse(&id, "build id")?,
        state: parse(&state, "build state")?,
        created_ms: created as u64,
        finished_ms: finished.map(|f| f as u64),
        tests: archfarm_shared::request::tests_of(&req),
        platforms: req.platforms,
        tags: req.tags,
        index: index.map(|d| parse(&d, "digest")).transpose()?,
        error,
        owner: owner.unwrap_or_else(|| "-".to_owned()),
    })
}

/// A build with its jobs and their attempts, for `builds show` and `builds watch`.
fn read_detail(conn: &Connection, build: &BuildId) -> Result<Option<BuildDetail>> {
    let row = conn
        .query_row(&format!("SELECT {SUMMARY} FROM builds WHERE id = ?1"), params![build.as_str()], summary_row)
        .optional()?;
    let Some(row) = row else { return Ok(None) };
    let summary = summary(row)?;
    let jobs = read_jobs(conn, build)?;
    let mut attempts_stmt = conn.prepare(
        "SELECT number, agent, started_ms, finished_ms, outcome, detail, placement FROM attempts \
         WHERE job = ?1 ORDER BY number",
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
                    r.get::<_, Option<String>>(6)?,
                ))
            })?
            .collect::<std::result::Result<Vec<_>, _>>()?
            .into_iter()
            .map(|(number, agent, started, finished, outcome, detail, placement)| {
                Ok(AttemptDetail {
                    number: number as u32,
                    agent: parse(&agent, "agent name")?,
                    started_ms: started as u64,
                    finished_ms: finished.map(|f| f as u64),
                    outcome: outcome.map(|o| parse(&o, "attempt outcome")).transpose()?,
                    detail,
                    placement: placement.unwrap_or_default(),
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

/// A build's job rows, in platform order: what recovery and `builds show` both read.
pub(super) fn read_jobs(conn: &Connection, build: &BuildId) -> Result<Vec<StoredJob>> {
    let mut stmt = conn.prepare(
        "SELECT j.id, j.platform, j.state, j.digest, j.media_type, j.size, j.agent, j.duration_ms, \
         (SELECT COUNT(*) FROM attempts a WHERE a.job = j.id), j.error, j.attempts_base, j.attestation \
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
            (r.get::<_, i64>(10)?, r.get::<_, Option<String>>(11)?),
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (
            (id, platform, state),
            (digest, media_type, size),
            (agent, duration, attempts, error),
            (base, attestation),
        ) = row?;
        let attestation = attestation
            .map(|a| serde_json::from_str(&a).map_err(|e| StoreError::Corrupt(format!("attestation of job {id}: {e}"))))
            .transpose()?;
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
            attempts_base: base as u32,
            attestation,
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
            build_args: vec![("A".into(), "1".into())],
            ..BuildRequest::new(
                vec!["linux/amd64".parse().unwrap(), "linux/arm64".parse().unwrap()],
                vec!["127.0.0.1:5000/a:1".into()],
                Digest::of(b"ctx"),
                "Dockerfile",
            )
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
                ("ci", &["reg:5000/team/".to_owned()]),
                &req,
                &[(j1.clone(), req.platforms[0].clone()), (j2.clone(), req.platforms[1].clone())],
            )
            .await
            .unwrap();
            assert_eq!(s.read_scopes(&build).await.unwrap(), ["reg:5000/team/"], "the token's scopes are recorded");
            s.start_attempt(&j1, 1, &agent, "least loaded (0/1 running)").await.unwrap();
            assert!(s.finish_attempt(&j1, 1, AttemptOutcome::Lost, "agent went away").await.unwrap());
            assert!(
                !s.finish_attempt(&j1, 1, AttemptOutcome::Pushed, "late").await.unwrap(),
                "a late report is fenced"
            );
            s.requeue(&j1).await.unwrap();
            s.start_attempt(&j1, 2, &agent, "").await.unwrap();
            assert_eq!(s.agent_failed(&agent).await.unwrap(), 1);
            let image = VerifiedImage {
                digest: Digest::of(b"m"),
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                size: 400,
                agent: agent.clone(),
                duration_ms: 1234,
                attestation: None,
            };
            s.attempt_verified(&j1, 2, image).await.unwrap();
            // A verified image ends the agent's run of failures.
            assert_eq!(s.agent_failed(&agent).await.unwrap(), 1);
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.unfinished().await.unwrap(), vec![build.clone()]);
        assert_eq!(s.request(&build).await.unwrap(), Some(request()));
        let jobs = s.jobs(&build).await.unwrap();
        assert_eq!(jobs[0].state, JobState::Verified);
        assert_eq!(jobs[0].attempts, 2);
        assert_eq!(jobs[0].verified.as_ref().unwrap().0, Digest::of(b"m"));
        assert_eq!(jobs[1].state, JobState::Queued);
        let detail = s.detail(&build).await.unwrap().unwrap();
        assert_eq!(
            detail.jobs[0].attempts.iter().map(|a| a.outcome.unwrap()).collect::<Vec<_>>(),
            [AttemptOutcome::Lost, AttemptOutcome::Pushed]
        );
        assert_eq!(detail.jobs[0].attempts[0].detail.as_deref(), Some("agent went away"));

        s.job_ended(&j2, JobState::Failed, "exit code: 1").await.unwrap();
        s.set_build_state(&build, BuildState::Failed, None, Some("linux/arm64 failed")).await.unwrap();
        assert!(s.unfinished().await.unwrap().is_empty());
        let listed = s.list(10, None).await.unwrap();
        assert_eq!(listed[0].state, BuildState::Failed);
        assert_eq!(listed[0].owner, "ci");
        assert_eq!(s.list(10, Some("ci")).await.unwrap().len(), 1);
        assert!(s.list(10, Some("other")).await.unwrap().is_empty());
        assert!(listed[0].finished_ms.is_some());
        assert_eq!(listed[0].error.as_deref(), Some("linux/arm64 failed"));
        // A verified job is never turned back into a failure.
        s.job_ended(&j1, JobState::Cancelled, "x").await.unwrap();
        assert_eq!(s.jobs(&build).await.unwrap()[0].state, JobState::Verified);
    }
}
