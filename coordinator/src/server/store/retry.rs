//! `archfarm builds retry`: a failed or cancelled build's platforms back in the queue.

use super::builds::{read_jobs, StoredJob};
use super::{Result, Store};
use archfarm_shared::protocol::{BuildState, JobState};
use archfarm_shared::{BuildId, Platform};
use rusqlite::{params, OptionalExtension};

impl Store {
    /// Makes a failed or cancelled build run again: `platforms` (or every job not verified when
    /// empty) go back to the queue with a fresh allowance of attempts, and the build to running.
    /// Refused, changing nothing, for a build in another state or a platform it lacks or has
    /// verified. Returns the platforms that run again.
    pub async fn retry(
        &self,
        build: &BuildId,
        platforms: &[Platform],
    ) -> Result<std::result::Result<Vec<Platform>, String>> {
        let (build, platforms) = (build.clone(), platforms.to_vec());
        self.writer
            .write(move |c| {
                let state: Option<String> = c
                    .query_row("SELECT state FROM builds WHERE id = ?1", params![build.as_str()], |r| r.get(0))
                    .optional()?;
                match state.as_deref().map(str::parse::<BuildState>) {
                    Some(Ok(BuildState::Failed | BuildState::Cancelled)) => {}
                    Some(Ok(other)) => {
                        return Ok(Err(format!(
                            "build {build} is {other}: only a failed or cancelled build is retried (a running one \
                             retries on its own; a verified one is published with `archfarm builds publish`)"
                        )))
                    }
                    _ => return Ok(Err(format!("no build {build} on this coordinator"))),
                }
                let jobs = read_jobs(c, &build)?;
                for p in &platforms {
                    match jobs.iter().find(|j| &j.platform == p) {
                        None => return Ok(Err(format!("build {build} has no platform {p}"))),
                        Some(j) if j.state == JobState::Verified => {
                            return Ok(Err(format!("{p} of build {build} is verified already; it is kept as it is")))
                        }
                        Some(_) => {}
                    }
                }
                // A platform neither verified nor left out, and not named, would fail the build
                // again: name every one, or none.
                let unnamed: Vec<String> = jobs
                    .iter()
                    .filter(|j| !matches!(j.state, JobState::Verified | JobState::LeftOut))
                    .filter(|j| !platforms.is_empty() && !platforms.contains(&j.platform))
                    .map(|j| j.platform.to_string())
                    .collect();
                if !unnamed.is_empty() {
                    return Ok(Err(format!(
                        "build {build} also failed on {}: name those with --platform too, or leave --platform out",
                        unnamed.join(", ")
                    )));
                }
                let again: Vec<&StoredJob> = jobs
                    .iter()
                    .filter(|j| {
                        j.state != JobState::Verified && (platforms.is_empty() || platforms.contains(&j.platform))
                    })
                    .collect();
                if again.is_empty() {
                    return Ok(Err(format!(
                        "every platform of build {build} is verified: `archfarm builds publish {build}`"
                    )));
                }
                for j in &again {
                    c.execute(
                        "UPDATE jobs SET state = 'queued', error = NULL, attempts_base = ?2 WHERE id = ?1",
                        params![j.job.as_str(), j.attempts],
                    )?;
                }
                c.execute(
                    "UPDATE builds SET state = 'running', error = NULL, finished_ms = NULL WHERE id = ?1",
                    params![build.as_str()],
                )?;
                Ok(Ok(again.iter().map(|j| j.platform.clone()).collect()))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::builds::VerifiedImage;
    use archfarm_shared::outcome::AttemptOutcome;
    use archfarm_shared::protocol::BuildRequest;
    use archfarm_shared::{AgentName, Digest, JobId};

    #[tokio::test]
    async fn a_failed_build_runs_its_unverified_platforms_again_with_fresh_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        let (amd, arm): (Platform, Platform) = ("linux/amd64".parse().unwrap(), "linux/arm64".parse().unwrap());
        let i386: Platform = "linux/386".parse().unwrap();
        let platforms = vec![amd.clone(), arm.clone(), i386.clone()];
        let req = BuildRequest::new(platforms, vec!["r/a:1".into()], Digest::of(b"c"), "Dockerfile");
        let (build, j1, j2, j3) = (BuildId::random(), JobId::random(), JobId::random(), JobId::random());
        let jobs = [(j1.clone(), amd.clone()), (j2.clone(), arm.clone()), (j3.clone(), i386.clone())];
        s.create_build(&build, ("ci", &[]), &req, &jobs).await.unwrap();
        s.job_ended(&j3, JobState::LeftOut, "optional: no agent").await.unwrap();
        let agent: AgentName = "a-1".parse().unwrap();
        s.start_attempt(&j1, 1, &agent, "").await.unwrap();
        let image = VerifiedImage {
            digest: Digest::of(b"m"),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: 1,
            agent: agent.clone(),
            duration_ms: 1,
            attestation: None,
        };
        s.attempt_verified(&j1, 1, image).await.unwrap();
        for n in 1..=3 {
            s.start_attempt(&j2, n, &agent, "").await.unwrap();
            s.finish_attempt(&j2, n, AttemptOutcome::Failed, "pull refused").await.unwrap();
        }
        s.job_ended(&j2, JobState::Failed, "gave up").await.unwrap();

        let running = s.retry(&build, &[]).await.unwrap().unwrap_err();
        assert!(running.contains("is running: only a failed or cancelled build is retried"), "{running}");
        s.set_build_state(&build, BuildState::Failed, None, Some("linux/arm64 failed")).await.unwrap();
        let verified = s.retry(&build, std::slice::from_ref(&amd)).await.unwrap().unwrap_err();
        assert!(verified.contains("linux/amd64 of build") && verified.contains("verified already"), "{verified}");
        let absent = s.retry(&build, &["linux/s390x".parse().unwrap()]).await.unwrap().unwrap_err();
        assert!(absent.contains("has no platform linux/s390x"), "{absent}");

        assert_eq!(s.retry(&build, std::slice::from_ref(&arm)).await.unwrap(), Ok(vec![arm.clone()]));
        let jobs = s.jobs(&build).await.unwrap();
        assert_eq!((jobs[0].state, jobs[0].attempts_base), (JobState::Verified, 0));
        assert_eq!((jobs[1].state, jobs[1].attempts, jobs[1].attempts_base), (JobState::Queued, 3, 3));
        assert_eq!(jobs[1].error, None);
        assert_eq!(jobs[2].state, JobState::LeftOut, "a named retry leaves the optional platform out");
        assert_eq!(s.unfinished().await.unwrap(), vec![build.clone()], "running again");
        assert!(s.retry(&BuildId::random(), &[]).await.unwrap().unwrap_err().starts_with("no build"));
    }
}
