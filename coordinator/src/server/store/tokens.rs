//! Named client tokens, with their role and scopes. Only their hashes are stored.

use super::{parse, Result, Store};
use crate::server::access::Principal;
use archfarm_shared::clock::now_ms;
use archfarm_shared::protocol::Role;
use rusqlite::{params, OptionalExtension};
use tracing::warn;

impl Store {
    /// Records a named client token (by hash) with its role and scopes. Fails if the name is
    /// taken, even by a revoked token: a name is an owner of builds, so it is never reused.
    pub async fn add_client_token(
        &self,
        name: &str,
        hash: &str,
        role: Role,
        scopes: &[String],
    ) -> Result<std::result::Result<(), String>> {
        let n = self
            .execute(
                "INSERT OR IGNORE INTO client_tokens (name, hash, created_ms, role, scopes) VALUES (?1, ?2, ?3, ?4, ?5)",
                (name.to_owned(), hash.to_owned(), now_ms() as i64, role.as_str(), scopes.join(" ")),
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

    /// The principal of the live (not revoked) client token with this hash. Tokens from before
    /// roles are admins, as they were.
    pub async fn client_token(&self, hash: &str) -> Result<Option<Principal>> {
        let hash = hash.to_owned();
        let row: Option<(String, Option<String>, String)> = self
            .read(move |c| {
                Ok(c.query_row(
                    "SELECT name, role, scopes FROM client_tokens WHERE hash = ?1 AND revoked_ms IS NULL",
                    params![hash],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?)
            })
            .await?;
        let Some((name, role, scopes)) = row else { return Ok(None) };
        let role = match role {
            Some(role) => parse(&role, "token role")?,
            None => {
                warn!(token = %name, "client token from before roles is read as an admin; replace it with \
                      `archfarm tokens create NAME --role build` if it only builds");
                Role::Admin
            }
        };
        Ok(Some(Principal { name, role, scopes: scopes.split_whitespace().map(str::to_owned).collect() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn client_tokens_have_roles_and_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();

        let scopes = vec!["reg:5000/team/".to_owned()];
        assert_eq!(s.add_client_token("ci", "th", Role::Build, &scopes).await.unwrap(), Ok(()));
        assert!(s.add_client_token("ci", "other", Role::Admin, &[]).await.unwrap().is_err());
        let ci = s.client_token("th").await.unwrap().unwrap();
        assert_eq!(ci, Principal { name: "ci".into(), role: Role::Build, scopes });
        assert!(s.revoke_client_token("ci").await.unwrap());
        assert!(!s.revoke_client_token("ci").await.unwrap());
        assert_eq!(s.client_token("th").await.unwrap(), None);
        // A revoked name is never given again.
        assert!(s.add_client_token("ci", "new", Role::Build, &[]).await.unwrap().is_err());
        // Tokens from before roles: admins.
        s.execute("INSERT INTO client_tokens (name, hash, created_ms) VALUES ('old', 'oh', 0)", ()).await.unwrap();
        assert_eq!(s.client_token("oh").await.unwrap().unwrap().role, Role::Admin);
    }
}
