//! Housekeeping streams: the coordinator opens one per question about an agent's caches
//! (`agents du`, `prune`, `inspect`), sends it, and reads the one answer.

use super::job::QuicLink;
use archfarm_shared::codec;
use archfarm_shared::protocol::{AgentMessage, CoordinatorMessage, Housekeeping, HousekeepingReply};
use archfarm_shared::tls;
use std::time::Duration;

/// How long an agent has to answer: pruning a large build cache takes minutes.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(660);

/// Asks `link`'s agent `request` and returns its answer.
pub async fn ask(link: &QuicLink, request: Housekeeping) -> Result<HousekeepingReply, String> {
    let (conn, max) = (&link.conn, link.max_frame);
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| tls::explain(&e))?;
        codec::write_msg(&mut send, &CoordinatorMessage::Housekeeping(request), max)
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        match codec::expect_msg::<_, AgentMessage>(&mut recv, max).await {
            Ok(AgentMessage::Housekeeping(reply)) => Ok(reply),
            Ok(other) => Err(format!("unexpected answer: {}", super::super::wire::agent_message_name(&other))),
            Err(e) => Err(e.to_string()),
        }
    };
    match tokio::time::timeout(ANSWER_WITHIN, exchange).await {
        Ok(answer) => answer.map_err(|e| format!("agent {}: {e}", link.name)),
        Err(_) => Err(format!("agent {} did not answer within {} s", link.name, ANSWER_WITHIN.as_secs())),
    }
}
