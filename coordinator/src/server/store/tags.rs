//! Each tag's last write: which build's index it got, when that build was submitted. The record
//! [`crate::server::tags`] decides from, and what `builds show` reports as the tags pointing at
//! a build. A write is recorded as an intent before the index is pushed, so a coordinator that
//! dies between the push and the record finds, after a restart, that the index the registry
//! serves is one it meant to write, not another writer's.

use super::{parse, Result, Store, StoreError};
use crate::server::tags::rule::TagRecord;
use archfarm_shared::clock::now_ms;
use archfarm_shared::{BuildId, Digest};
use rusqlite::{params, OptionalExtension};

impl Store {
    /// The last write of `tag` (a whole reference), if a build wrote it.
    pub async fn tag(&self, tag: &str) -> Result<Option<TagRecord>> {
        self.tag_row("SELECT build, build_created_ms, digest FROM tags WHERE tag = ?1", tag).await
    }

    /// The write of `tag` that was begun and not recorded as done, if any.
    pub async fn tag_intent(&self, tag: &str) -> Result<Option<TagRecord>> {
        self.tag_row("SELECT build, build_created_ms, digest FROM tag_intents WHERE tag = ?1", tag).await
    }

    async fn tag_row(&self, sql: &'static str, tag: &str) -> Result<Option<TagRecord>> {
        let tag = tag.to_owned();
        let row: Option<(String, i64, String)> = self
            .read(move |c| Ok(c.query_row(sql, params![tag], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()?))
            .await?;
        row.map(|(build, created, digest)| {
            Ok(TagRecord {
                build: parse(&build, "build id")?,
                build_created_ms: created as u64,
                digest: parse(&digest, "digest")?,
            })
        })
        .transpose()
    }

    /// Records that `build` (submitted at `created_ms`) is about to write `digest` under `tag`.
    pub async fn tag_intended(&self, tag: &str, build: &BuildId, created_ms: u64, digest: &Digest) -> Result<()> {
        let sql = "INSERT INTO tag_intents (tag, build, build_created_ms, digest, started_ms) \
                   VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(tag) DO UPDATE SET build = ?2, \
                   build_created_ms = ?3, digest = ?4, started_ms = ?5";
        self.tag_row_written(sql, tag, build, created_ms, digest).await
    }

    /// Records that `build` (submitted at `created_ms`) wrote `digest` under `tag`; the intent
    /// to write it is done.
    pub async fn tag_written(&self, tag: &str, build: &BuildId, created_ms: u64, digest: &Digest) -> Result<()> {
        let sql = "INSERT INTO tags (tag, build, build_created_ms, digest, written_ms) VALUES (?1, ?2, ?3, ?4, ?5) \
                   ON CONFLICT(tag) DO UPDATE SET build = ?2, build_created_ms = ?3, digest = ?4, written_ms = ?5";
        self.tag_row_written(sql, tag, build, created_ms, digest).await?;
        // A leftover intent is harmless (one that names the recorded digest changes nothing),
        // so this needs no transaction with the write above.
        self.execute("DELETE FROM tag_intents WHERE tag = ?1", (tag.to_owned(),)).await?;
        Ok(())
    }

    async fn tag_row_written(
        &self,
        sql: &'static str,
        tag: &str,
        build: &BuildId,
        created_ms: u64,
        digest: &Digest,
    ) -> Result<()> {
        let row = (tag.to_owned(), build.to_string(), created_ms as i64, digest.to_string(), now_ms() as i64);
        self.execute(sql, row).await?;
        Ok(())
    }

    /// When `build` was submitted.
    pub async fn build_created_ms(&self, build: &BuildId) -> Result<u64> {
        let id = build.to_string();
        let created: Option<i64> = self
            .read(move |c| {
                Ok(c.query_row("SELECT created_ms FROM builds WHERE id = ?1", params![id], |r| r.get(0)).optional()?)
            })
            .await?;
        created.map(|c| c as u64).ok_or_else(|| StoreError::Corrupt(format!("no build {build}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_last_write_of_each_tag_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        let (a, b) = (BuildId::random(), BuildId::random());
        assert_eq!(s.tag("reg/app:1").await.unwrap(), None);
        s.tag_written("reg/app:1", &a, 10, &Digest::of(b"a")).await.unwrap();
        s.tag_written("reg/app:1", &b, 20, &Digest::of(b"b")).await.unwrap();
        let want = TagRecord { build: b.clone(), build_created_ms: 20, digest: Digest::of(b"b") };
        assert_eq!(s.tag("reg/app:1").await.unwrap(), Some(want.clone()));
        // An intent stays until its write is recorded.
        let c = BuildId::random();
        s.tag_intended("reg/app:1", &c, 30, &Digest::of(b"c")).await.unwrap();
        let intent = TagRecord { build: c.clone(), build_created_ms: 30, digest: Digest::of(b"c") };
        assert_eq!(s.tag_intent("reg/app:1").await.unwrap(), Some(intent));
        assert_eq!(s.tag("reg/app:1").await.unwrap(), Some(want));
        s.tag_written("reg/app:1", &c, 30, &Digest::of(b"c")).await.unwrap();
        assert_eq!(s.tag_intent("reg/app:1").await.unwrap(), None);
    }
}
