//! The client sessions open now, by the name of the token each authenticated with, so that
//! revoking a token ends its sessions at once rather than at their next connection.

use std::collections::HashMap;
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Open sessions, by token name.
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, CancellationToken>>,
}

/// One session's place among the open ones: cancelled when its token is revoked.
#[derive(Debug)]
pub struct Session {
    /// Cancelled when the session's token is revoked.
    pub revoked: CancellationToken,
}

impl Sessions {
    /// A session of the token named `name` begins.
    pub fn begin(&self, name: &str) -> Session {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, token| !token.is_cancelled());
        // A child of its token's entry: revoking cancels every session of the token.
        Session { revoked: open.entry(name.to_owned()).or_default().child_token() }
    }

    /// Ends every open session of the token named `name`.
    pub fn revoke(&self, name: &str) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(token) = open.remove(name) {
            token.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoking_a_token_ends_its_sessions_and_no_other() {
        let sessions = Sessions::default();
        let (a1, a2, b) = (sessions.begin("a"), sessions.begin("a"), sessions.begin("b"));
        sessions.revoke("a");
        assert!(a1.revoked.is_cancelled() && a2.revoked.is_cancelled());
        assert!(!b.revoked.is_cancelled());
        // A later session of a token name (a new token of that name cannot exist) starts afresh.
        assert!(!sessions.begin("a").revoked.is_cancelled());
    }
}
