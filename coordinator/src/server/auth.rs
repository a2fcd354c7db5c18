//! Client tokens in the token file: the coordinator keeps only their sha256, one per line, in a
//! file it re-reads on every connection, so a token added or removed there takes effect without
//! a restart. A line is
//!
//! ```text
//! HASH [role=admin|build] [name=NAME] [scope=REGISTRY/PREFIX/]...  # comment
//! ```
//!
//! A line without `role=` (every file written before roles existed) is an admin, and the
//! coordinator warns each time it is used. A line without `name=` is named `file:` and the
//! first 12 characters of its hash, which no database token can be named.

use super::access::Principal;
use archfarm_shared::pki::token_hash;
use archfarm_shared::protocol::Role;
use std::path::Path;
use tracing::warn;

/// The principal of a client token: from the token file (tokens of `archfarm ca init`), else
/// from the database (tokens of `archfarm tokens create`); none for an unknown token.
pub async fn client_principal(shared: &super::state::Shared, token: &str) -> Option<Principal> {
    let (file, owned) = (shared.settings.tokens_file.clone(), token.to_owned());
    let read = tokio::task::spawn_blocking(move || token_file_principal(&file, &owned)).await;
    let from_file = read.unwrap_or_else(|e| Err(e.to_string())).unwrap_or_else(|e| {
        warn!("{e}");
        None
    });
    match from_file {
        Some(who) => Some(who),
        None => shared.store.client_token(&token_hash(token)).await.unwrap_or_else(|e| {
            warn!("reading client tokens: {e}");
            None
        }),
    }
}

/// The principal of `token` if the token-hash file lists it. A missing or unreadable file
/// accepts none; a line that cannot be read is skipped with a warning.
pub fn token_file_principal(tokens_file: &Path, token: &str) -> Result<Option<Principal>, String> {
    let text = std::fs::read_to_string(tokens_file)
        .map_err(|e| format!("cannot read client token list {}: {e}", tokens_file.display()))?;
    let want = token_hash(token);
    for (number, line) in text.lines().enumerate() {
        let mut fields = line.split('#').next().unwrap_or("").split_whitespace();
        let Some(hash) = fields.next() else { continue };
        if !constant_time_eq(hash.as_bytes(), want.as_bytes()) {
            continue;
        }
        let at = format!("{} line {}", tokens_file.display(), number + 1);
        return match principal(fields, &at, &format!("file:{}", &want[..12])) {
            Ok(p) => Ok(Some(p)),
            Err(e) => Err(format!("{at}: {e}; the token on it is refused until the line is fixed")),
        };
    }
    Ok(None)
}

/// The names the token file gives its tokens, which `archfarm tokens create` may not take.
pub fn token_file_names(tokens_file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(tokens_file).unwrap_or_default();
    text.lines()
        .flat_map(|l| l.split('#').next().unwrap_or("").split_whitespace().filter_map(|f| f.strip_prefix("name=")))
        .map(str::to_owned)
        .collect()
}

fn principal<'a>(fields: impl Iterator<Item = &'a str>, at: &str, unnamed: &str) -> Result<Principal, String> {
    let (mut role, mut name, mut scopes) = (None, None, vec![]);
    for field in fields {
        match field.split_once('=') {
            Some(("role", r)) => role = Some(r.parse::<Role>()?),
            Some(("name", n)) => name = Some(n.to_owned()),
            Some(("scope", s)) => {
                super::access::check_scope(s)?;
                scopes.push(s.to_owned());
            }
            _ => return Err(format!("unknown field {field:?} (expected role=, name= or scope=)")),
        }
    }
    let role = role.unwrap_or_else(|| {
        warn!("{at}: a client token without role= is read as an admin; add role=admin or role=build to the line");
        Role::Admin
    });
    if role != Role::Build && !scopes.is_empty() {
        return Err("scope= applies to role=build only".into());
    }
    Ok(Principal { name: name.unwrap_or_else(|| unnamed.to_owned()), role, scopes })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_tokens_pass_with_their_role_and_old_lines_are_admins() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        let lines = [
            "# release team".to_owned(),
            format!("{}  # ci, from before roles", token_hash("old")),
            format!("{} role=build name=ci scope=reg:5000/team/ # ci", token_hash("ci")),
            format!("{} role=admin name=ops", token_hash("ops")),
            format!("{} role=root", token_hash("typo")),
            format!("{} role=admin scope=reg:5000/team/", token_hash("admin-scoped")),
        ];
        std::fs::write(&f, lines.join("\n")).unwrap();
        let old = token_file_principal(&f, "old").unwrap().unwrap();
        assert_eq!((old.name, old.role), (format!("file:{}", &token_hash("old")[..12]), Role::Admin));
        assert_eq!(token_file_names(&f), ["ci", "ops"]);
        let ci = token_file_principal(&f, "ci").unwrap().unwrap();
        assert_eq!(ci, Principal { name: "ci".into(), role: Role::Build, scopes: vec!["reg:5000/team/".into()] });
        assert_eq!(token_file_principal(&f, "ops").unwrap().unwrap().role, Role::Admin);
        let err = token_file_principal(&f, "typo").unwrap_err();
        assert!(err.contains("line 5") && err.contains("unknown role \"root\""), "{err}");
        assert!(token_file_principal(&f, "admin-scoped").unwrap_err().contains("role=build only"));
        assert_eq!(token_file_principal(&f, "bad").unwrap(), None);
        assert_eq!(token_file_principal(&f, "").unwrap(), None);
        assert!(token_file_principal(&dir.path().join("missing"), "old")
            .unwrap_err()
            .contains("cannot read client token list"));
    }
}
