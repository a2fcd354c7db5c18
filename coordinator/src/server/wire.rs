//! What a broken frame does to a connection: a peer that breaks the protocol loses its
//! connection, with the reason, and nothing else does.

use archfarm_shared::codec::CodecError;
use archfarm_shared::protocol::{close, AgentMessage};
use archfarm_shared::tls;
use tracing::warn;

/// Turns a codec error on `conn` into a reason, closing the connection if the peer broke the
/// protocol. A disconnect is not a protocol error.
pub fn on_codec_error(conn: &quinn::Connection, err: &CodecError, stream: &str) -> String {
    if let Some(reason) = conn.close_reason() {
        return tls::explain(&reason);
    }
    match err {
        CodecError::Io(e) => format!("{stream} failed: {e}"),
        _ => {
            let reason = format!("protocol error on {stream}: {err}");
            close_for_protocol_error(conn, &reason);
            reason
        }
    }
}

/// Closes `conn` because its peer sent something the protocol does not allow.
pub fn close_for_protocol_error(conn: &quinn::Connection, reason: &str) {
    warn!(remote = %conn.remote_address(), "closing connection: {reason}");
    conn.close(close::PROTOCOL.into(), reason.as_bytes());
}

/// Closes `conn` because an agent sent `msg` where the protocol does not allow it; returns the
/// reason.
pub fn unexpected(conn: &quinn::Connection, msg: &AgentMessage, stream: &str) -> String {
    let reason = format!("protocol error: unexpected {} on {stream}", agent_message_name(msg));
    close_for_protocol_error(conn, &reason);
    reason
}

/// The name of an agent message's variant, for protocol errors.
pub fn agent_message_name(msg: &AgentMessage) -> &'static str {
    match msg {
        AgentMessage::Register(_) => "Register",
        AgentMessage::Heartbeat { .. } => "Heartbeat",
        AgentMessage::FetchContext { .. } => "FetchContext",
        AgentMessage::JobLog { .. } => "JobLog",
        AgentMessage::JobFinished(_) => "JobFinished",
        AgentMessage::Draining => "Draining",
        AgentMessage::Health { .. } => "Health",
        AgentMessage::Housekeeping(_) => "Housekeeping",
        AgentMessage::StoreBlob { .. } => "StoreBlob",
    }
}
