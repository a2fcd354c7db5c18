//! Who a client is and what it may do: the principal behind a client token, its role, and the
//! repositories its builds may push to. Pure: the handlers ask, this answers.
//!
//! - An **admin** may do everything.
//! - A **build** token starts builds to repositories inside its scopes (any, when it has none),
//!   and sees, publishes and cancels only builds it started. It may list and inspect agents,
//!   but not revoke, drain or prune them, nor create or revoke any token.
//! - A **viewer** token reads: agents, and (on the status listener) every build. It starts no
//!   build and uploads no context.

use archfarm_shared::protocol::{BuildRequest, Role};
use archfarm_shared::registry;
use archfarm_shared::scopes::in_scope;

/// The client behind a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name; builds record it as their owner.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Repository prefixes (`registry/team/`) a build token may push to; empty: any.
    pub scopes: Vec<String>,
}

impl Principal {
    /// Whether this is an admin.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// `Ok` for an admin; for anyone else, why `what` is refused.
    pub fn require_admin(&self, what: &str) -> Result<(), String> {
        if self.is_admin() {
            return Ok(());
        }
        Err(format!(
            "{what} needs an admin token; token {:?} has the role {} (an admin creates tokens with \
             `archfarm tokens create NAME --role admin`)",
            self.name, self.role
        ))
    }

    /// Whether this client may see and act on a build `owner` started. Builds from before
    /// owners (`-`) are the admins'.
    pub fn owns(&self, owner: &str) -> bool {
        self.is_admin() || (owner == self.name && owner != "-")
    }

    /// `Ok` unless this is a viewer, which starts no build and uploads no context.
    pub fn may_write(&self) -> Result<(), String> {
        match self.role {
            Role::Viewer => {
                Err(format!("token {:?} is a viewer: it reads only; builds need a build or admin token", self.name))
            }
            _ => Ok(()),
        }
    }

    /// `Ok` when every repository `req` writes to or reads cache from is inside the scopes:
    /// its tags, its `--cache-to` and its `--cache-from`.
    pub fn may_build(&self, req: &BuildRequest) -> Result<(), String> {
        self.may_write()?;
        if self.scopes.is_empty() {
            return Ok(());
        }
        let caches = req.cache_from.iter().chain(&req.cache_to);
        for reference in req.tags.iter().chain(caches) {
            // An unparseable reference is refused later, with the parser's reason.
            let Ok(parsed) = registry::parse_reference(reference) else { continue };
            if !self.scopes.iter().any(|scope| in_scope(&parsed, scope)) {
                return Err(format!(
                    "{reference}: token {:?} may only build to repositories under {}; ask an admin for a \
                     token with that scope",
                    self.name,
                    self.scopes.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// Checks a scope as given to `archfarm tokens create --scope`: `REGISTRY/PATH[/]`.
pub fn check_scope(scope: &str) -> Result<(), String> {
    let trimmed = scope.trim_end_matches('/');
    let shape = registry::parse_reference(&format!("{trimmed}:x"));
    match shape {
        Ok(r) if r.name() == trimmed => Ok(()),
        _ => Err(format!(
            "scope {scope:?}: give a registry and a repository prefix, for example registry.example.com/team/"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use archfarm_shared::Digest;

    fn build(scopes: &[&str]) -> Principal {
        Principal { name: "ci".into(), role: Role::Build, scopes: scopes.iter().map(|s| s.to_string()).collect() }
    }

    fn request(tags: &[&str]) -> BuildRequest {
        let digest: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        BuildRequest::new(vec![], tags.iter().map(|t| t.to_string()).collect(), digest, "Dockerfile")
    }

    #[test]
    fn only_admins_administer_and_build_tokens_see_their_own_builds() {
        let admin = Principal { name: "root".into(), role: Role::Admin, scopes: vec![] };
        assert!(admin.require_admin("revoking an agent").is_ok());
        assert!(admin.owns("anyone"));
        let ci = build(&[]);
        let err = ci.require_admin("revoking an agent").unwrap_err();
        assert!(err.contains("revoking an agent needs an admin token") && err.contains("\"ci\""), "{err}");
        assert!(ci.owns("ci") && !ci.owns("other") && !ci.owns("-"));
    }

    #[test]
    fn scopes_cover_repositories_under_them_and_nothing_beside() {
        let ci = build(&["reg.example:5000/team/"]);
        assert!(ci.may_build(&request(&["reg.example:5000/team/app:1", "reg.example:5000/team/a/b:2"])).is_ok());
        for outside in
            ["reg.example:5000/teamx/app:1", "reg.example:5000/other:1", "other:5000/team/app:1", "team/app:1"]
        {
            let err = ci.may_build(&request(&["reg.example:5000/team/app:1", outside])).unwrap_err();
            assert!(err.starts_with(outside) && err.contains("reg.example:5000/team/"), "{err}");
        }
        // Cache references count too (the per-platform cache tags are in the same repository).
        let mut req = request(&["reg.example:5000/team/app:1"]);
        req.cache_to = Some("reg.example:5000/elsewhere/cache:c".into());
        assert!(ci.may_build(&req).is_err());
        req.cache_to = Some("reg.example:5000/team/cache:c".into());
        req.cache_from = vec!["reg.example:5000/other/cache:c".into()];
        assert!(ci.may_build(&req).is_err());
        // No scopes: any repository.
        assert!(build(&[]).may_build(&request(&["anywhere:1/x:1"])).is_ok());
        // A scope that is a whole repository covers only it.
        assert!(build(&["reg.example:5000/team/app"]).may_build(&request(&["reg.example:5000/team/app:1"])).is_ok());
    }

    #[test]
    fn scopes_must_name_a_registry_and_a_path() {
        assert!(check_scope("reg.example:5000/team/").is_ok());
        assert!(check_scope("127.0.0.1:5000/team").is_ok());
        for bad in ["", "/", "team/", "Reg/UPPER", "reg.example:5000/team:tag", "reg/team@x"] {
            assert!(check_scope(bad).is_err(), "{bad}");
        }
    }
}
