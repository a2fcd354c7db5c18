//! Client tokens: the coordinator keeps only their sha256, one per line in a file it re-reads
//! on every connection, so a token added or removed there takes effect without a restart.

use archfarm_shared::pki::token_hash;
use std::path::Path;

/// Whether `token` is listed in the token-hash file. A missing or unreadable file accepts none.
pub fn token_accepted(tokens_file: &Path, token: &str) -> Result<bool, String> {
    let text = std::fs::read_to_string(tokens_file)
        .map_err(|e| format!("cannot read client token list {}: {e}", tokens_file.display()))?;
    let want = token_hash(token);
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .any(|h| !h.is_empty() && constant_time_eq(h.as_bytes(), want.as_bytes())))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_tokens_pass() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        std::fs::write(&f, format!("# release team\n{}  # ci\n\n", token_hash("good"))).unwrap();
        assert!(token_accepted(&f, "good").unwrap());
        assert!(!token_accepted(&f, "bad").unwrap());
        assert!(!token_accepted(&f, "").unwrap());
        assert!(token_accepted(&dir.path().join("missing"), "good")
            .unwrap_err()
            .contains("cannot read client token list"));
    }
}
