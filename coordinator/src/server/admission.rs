//! Limits before authentication: how many peers may be connected without having proved who they
//! are, and what they may do meanwhile.
//!
//! - Each connection holds a permit from its first packet until it authenticates (a client's
//!   token accepted, an agent's certificate checked) or ends. With none left, new peers are
//!   refused; past half of them, a peer must first prove its address with a QUIC retry, so a
//!   spoofed flood cannot hold permits at all.
//! - Until it authenticates, a connection may open one stream and have
//!   [`UNAUTHENTICATED_WINDOW`] bytes in flight in all; authenticating raises both
//!   ([`authenticated`]).

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes an unauthenticated peer may have sent and the coordinator not yet read, over the whole
/// connection. A hello or an enrollment request is far smaller.
pub const UNAUTHENTICATED_WINDOW: u32 = 64 * 1024;
/// The same for an authenticated peer: a context upload or an image hand-over is one stream of
/// up to 16 MiB in flight; a few of them at once.
pub const AUTHENTICATED_WINDOW: u32 = 64 << 20;

/// What to do with a new connection.
#[derive(Debug)]
pub enum Admit {
    /// Serve it; the permit is released when it authenticates or ends.
    Accept(OwnedSemaphorePermit),
    /// Ask it to prove its address first.
    Retry,
    /// Too many unauthenticated peers: refuse it.
    Refuse,
}

/// The permits of unauthenticated connections.
#[derive(Debug, Clone)]
pub struct Gate {
    permits: Arc<Semaphore>,
    max: usize,
}

impl Gate {
    /// A gate for at most `max` unauthenticated connections.
    pub fn new(max: usize) -> Self {
        Gate { permits: Arc::new(Semaphore::new(max)), max }
    }

    /// Decides for a peer whose address is `validated` (it answered a retry) or not.
    pub fn admit(&self, validated: bool) -> Admit {
        let in_use = self.max - self.permits.available_permits();
        if !validated && in_use >= self.max / 2 {
            return Admit::Retry;
        }
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Admit::Accept(permit),
            Err(_) => Admit::Refuse,
        }
    }
}

/// Lifts the limits of an unauthenticated connection once it is authenticated: `streams` at
/// once, and [`AUTHENTICATED_WINDOW`] in flight.
pub fn authenticated(conn: &quinn::Connection, streams: u32) {
    conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(streams));
    conn.set_receive_window(quinn::VarInt::from_u32(AUTHENTICATED_WINDOW));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_half_peers_prove_their_address_and_past_all_they_are_refused() {
        let gate = Gate::new(4);
        let a = gate.admit(false);
        let b = gate.admit(false);
        assert!(matches!((&a, &b), (Admit::Accept(_), Admit::Accept(_))));
        assert!(matches!(gate.admit(false), Admit::Retry), "half in use: retry");
        let c = gate.admit(true);
        let d = gate.admit(true);
        assert!(matches!((&c, &d), (Admit::Accept(_), Admit::Accept(_))));
        assert!(matches!(gate.admit(true), Admit::Refuse), "all in use: refused, even validated");
        drop((a, b, c));
        assert!(matches!(gate.admit(false), Admit::Accept(_)), "a permit comes back when its peer authenticates");
    }
}
