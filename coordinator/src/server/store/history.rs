//! What garbage collection asks of the database: the contexts builds still need, and finished
//! builds past the history kept.

use super::{Result, Store};
use archfarm_shared::Digest;
use rusqlite::params;

/// States of builds that have not finished.
const UNFINISHED: &str = "('running', 'publishing')";

impl Store {
    /// Contexts of unfinished builds and of builds submitted since `since_ms`.
    pub async fn contexts_in_use(&self, since_ms: u64) -> Result<Vec<Digest>> {
        self.read(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT DISTINCT json_extract(request, '$.context') FROM builds \
                 WHERE state IN {UNFINISHED} OR created_ms >= ?1"
            ))?;
            let digests = stmt
                .query_map(params![since_ms as i64], |r| r.get::<_, Option<String>>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(digests.into_iter().flatten().filter_map(|d| d.parse().ok()).collect())
        })
        .await
    }

    /// Deletes finished builds (with their jobs and attempts) submitted before `before_ms`, and
    /// those beyond the newest `keep` finished ones. Returns how many builds went.
    pub async fn prune_history(&self, before_ms: u64, keep: u32) -> Result<usize> {
        self.writer
            .write(move |c| {
                c.execute_batch("CREATE TEMP TABLE IF NOT EXISTS doomed (id TEXT PRIMARY KEY); DELETE FROM doomed;")?;
                c.execute(
                    &format!(
                        "INSERT INTO doomed SELECT id FROM builds WHERE state NOT IN {UNFINISHED} AND (created_ms < ?1 \
                         OR id NOT IN (SELECT id FROM builds WHERE state NOT IN {UNFINISHED} \
                         ORDER BY created_ms DESC, rowid DESC LIMIT ?2))"
                    ),
                    params![before_ms as i64, keep],
                )?;
                c.execute("DELETE FROM attempts WHERE job IN (SELECT id FROM jobs WHERE build IN doomed)", [])?;
                c.execute("DELETE FROM jobs WHERE build IN doomed", [])?;
                let n = c.execute("DELETE FROM builds WHERE id IN doomed", [])?;
                c.execute_batch("DELETE FROM doomed;")?;
                Ok(n)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use archfarm_shared::clock::now_ms;
    use archfarm_shared::protocol::{BuildRequest, BuildState};
    use archfarm_shared::{BuildId, JobId};

    #[tokio::test]
    async fn history_goes_by_age_and_count_and_unfinished_builds_stay() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        let platform: archfarm_shared::Platform = "linux/amd64".parse().unwrap();
        let mut builds = Vec::new();
        for i in 0..5u8 {
            let id = BuildId::random();
            let req = BuildRequest::new(vec![platform.clone()], vec![], Digest::of(&[i]), "Dockerfile");
            s.create_build(&id, ("ci", &[]), &req, &[(JobId::random(), platform.clone())]).await.unwrap();
            builds.push(id);
        }
        // The first is old; the last still runs.
        s.execute("UPDATE builds SET created_ms = 1 WHERE id = ?1", (builds[0].to_string(),)).await.unwrap();
        for id in &builds[..4] {
            s.set_build_state(id, BuildState::Failed, None, Some("x")).await.unwrap();
        }
        let in_use = s.contexts_in_use(now_ms() - 60_000).await.unwrap();
        assert_eq!(in_use.len(), 4, "every build of the last minute: {in_use:?}");
        let in_use = s.contexts_in_use(now_ms() + 60_000).await.unwrap();
        assert_eq!(in_use, [Digest::of(&[4])], "only the running build's");

        // The old one goes by age, and of the other finished ones the newest two stay.
        assert_eq!(s.prune_history(now_ms() - 60_000, 2).await.unwrap(), 2);
        let left: Vec<BuildId> = s.list(10, None).await.unwrap().into_iter().map(|b| b.build).collect();
        assert_eq!(left.len(), 3);
        assert!(left.contains(&builds[4]), "the running build stays");
        assert!(!left.contains(&builds[0]) && !left.contains(&builds[1]));
        assert!(s.jobs(&builds[1]).await.unwrap().is_empty(), "its jobs went with it");
    }
}
