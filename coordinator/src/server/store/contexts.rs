//! Who uploaded each build context: a context belongs to the tokens that sent it (or proved they
//! hold it, by naming every chunk of it), and a build naming someone else's is refused as if it
//! did not exist. Its digest, published in provenance, is not enough to build its source.

use super::{Result, Store};
use archfarm_shared::Digest;
use rusqlite::{params, OptionalExtension};

impl Store {
    /// Records that the token named `owner` uploaded context `digest`.
    pub async fn context_uploaded(&self, digest: &Digest, owner: &str) -> Result<()> {
        self.execute(
            "INSERT OR IGNORE INTO context_owners (digest, owner) VALUES (?1, ?2)",
            (digest.to_string(), owner.to_owned()),
        )
        .await?;
        Ok(())
    }

    /// Whether the token named `owner` uploaded context `digest`.
    pub async fn context_owned_by(&self, digest: &Digest, owner: &str) -> Result<bool> {
        let (digest, owner) = (digest.to_string(), owner.to_owned());
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT 1 FROM context_owners WHERE digest = ?1 AND owner = ?2",
                params![digest, owner],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
        })
        .await
    }

    /// Every context with an owner on record.
    pub async fn owned_contexts(&self) -> Result<Vec<Digest>> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT DISTINCT digest FROM context_owners")?;
            let digests = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(digests.into_iter().filter_map(|d| d.parse().ok()).collect())
        })
        .await
    }

    /// Forgets the owners of context `digest` (garbage collection deleted it).
    pub async fn forget_context(&self, digest: &Digest) -> Result<()> {
        self.execute("DELETE FROM context_owners WHERE digest = ?1", (digest.to_string(),)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_context_belongs_to_those_who_uploaded_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        let d = Digest::of(b"ctx");
        assert!(!s.context_owned_by(&d, "a").await.unwrap());
        s.context_uploaded(&d, "a").await.unwrap();
        s.context_uploaded(&d, "a").await.unwrap();
        assert!(s.context_owned_by(&d, "a").await.unwrap());
        assert!(!s.context_owned_by(&d, "b").await.unwrap());
        assert_eq!(s.owned_contexts().await.unwrap(), std::slice::from_ref(&d));
        s.forget_context(&d).await.unwrap();
        assert!(!s.context_owned_by(&d, "a").await.unwrap());
    }
}
