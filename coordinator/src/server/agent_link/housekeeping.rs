//! Housekeeping streams: the coordinator opens one per question about an agent's caches
//! (`agents du`, `prune`, `inspect`), sends it, and reads the one answer.

use archfarm_shared::protocol::{AgentMessage, CoordinatorMessage, Housekeeping, HousekeepingReply};
use archfarm_shared::stream::QuicStream;
use archfarm_shared::{tls, AgentName};
use std::time::Duration;

/// How long an agent has to answer: pruning a large build cache takes minutes.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(660);

/// Asks agent `name` on `conn` `request` and returns its answer.
pub async fn ask(
    conn: &quinn::Connection,
    name: &AgentName,
    max_frame: u32,
    request: Housekeeping,
) -> Result<HousekeepingReply, String> {
    let exchange = async {
        let mut stream = QuicStream::open(conn, max_frame).await.map_err(|e| tls::explain(&e))?;
        stream.write_last(&CoordinatorMessage::Housekeeping(request)).await.map_err(|e| e.to_string())?;
        match stream.expect::<AgentMessage>().await {
            Ok(AgentMessage::Housekeeping(reply)) => Ok(reply),
            Ok(other) => Err(format!("unexpected answer: {}", super::super::wire::agent_message_name(&other))),
            Err(e) => Err(e.to_string()),
        }
    };
    match tokio::time::timeout(ANSWER_WITHIN, exchange).await {
        Ok(answer) => answer.map_err(|e| format!("agent {}: {e}", name)),
        Err(_) => Err(format!("agent {} did not answer within {} s", name, ANSWER_WITHIN.as_secs())),
    }
}
