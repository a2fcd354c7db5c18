//! Join tokens (one-time, expiring, for enrolling agents) and named client tokens. Only their
//! hashes are stored.

use super::{Result, Store};
use archfarm_shared::clock::now_ms;
use archfarm_shared::AgentName;
use rusqlite::{params, OptionalExtension};

impl Store {
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
    pub async fn client_token_live(&self, hash: &str) -> Result<bool> {
        self.exists("SELECT 1 FROM client_tokens WHERE hash = ?1 AND revoked_ms IS NULL", hash.to_owned()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn join_tokens_are_one_time_and_expire_and_client_tokens_revoke() {
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
        assert!(s.client_token_live("th").await.unwrap());
        assert!(s.revoke_client_token("ci").await.unwrap());
        assert!(!s.revoke_client_token("ci").await.unwrap());
        assert!(!s.client_token_live("th").await.unwrap());
    }
}
