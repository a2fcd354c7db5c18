//! An agent fetching a build context: it names the context by digest on a stream of its own,
//! the coordinator offers the context's chunk list, the agent says which chunks it lacks (it
//! holds the others in contexts it fetched before), and only those travel. An agent gets only
//! the contexts of the jobs it runs ([`crate::server::agent_link::limits::Grants`] decides, and
//! the caller passes the answer).

use super::Contexts;
use archfarm_shared::chunking::{self, Chunk};
use archfarm_shared::content;
use archfarm_shared::protocol::CoordinatorMessage;
use archfarm_shared::stream::QuicStream;
use archfarm_shared::Digest;
use std::io::SeekFrom;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tracing::{info, warn};

/// How long an agent has to say which chunks it wants.
const WANT_WITHIN: Duration = Duration::from_secs(60);

/// What a fetch sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sent {
    /// Bytes of chunks sent.
    pub bytes: u64,
    /// Bytes the agent already held.
    pub held: u64,
}

/// Serves a fetch of context `digest` on `stream`, if `allowed` (a job of this agent uses it)
/// and held. Returns what it sent, or why it stopped.
pub async fn send_context(contexts: &Contexts, digest: &Digest, allowed: bool, mut stream: QuicStream) -> Sent {
    if !allowed {
        warn!(context = %digest, "refused a context fetch: no job of this agent uses it");
        let reason = format!("build context {digest} belongs to no job this agent runs now");
        drop(stream.write_last(&CoordinatorMessage::ContextMissing { reason }).await);
        return Sent::default();
    }
    // A context stored before a power loss is hashed before it is sent.
    if !contexts.files.verified(digest).await {
        let reason = format!(
            "the coordinator does not hold build context {digest} any more (its storage lost it): run the build \
             again, which uploads it"
        );
        drop(stream.write_last(&CoordinatorMessage::ContextMissing { reason }).await);
        return Sent::default();
    }
    let list = {
        let (lists, files, digest) = (contexts.lists.clone(), contexts.files.clone(), digest.clone());
        tokio::task::spawn_blocking(move || lists.of(&files, &digest)).await
    };
    let chunks = match list {
        Ok(Ok(chunks)) => chunks,
        Ok(Err(e)) => {
            warn!(context = %digest, "cannot read the stored context to offer it: {e}");
            let reason = format!("the coordinator cannot read build context {digest}: {e}");
            drop(stream.write_last(&CoordinatorMessage::ContextMissing { reason }).await);
            return Sent::default();
        }
        Err(e) => {
            let reason = format!("the coordinator could not read build context {digest}: {e}");
            drop(stream.write_last(&CoordinatorMessage::ContextMissing { reason }).await);
            return Sent::default();
        }
    };
    match offer(contexts, digest, &chunks, &mut stream).await {
        Ok(sent) => {
            info!(context = %digest, sent = sent.bytes, held = sent.held, "sent build context");
            sent
        }
        Err(e) => {
            warn!(context = %digest, "sending build context failed: {e}");
            stream.reset(1);
            Sent::default()
        }
    }
}

/// Offers `chunks`, reads which the agent wants, and sends those.
async fn offer(
    contexts: &Contexts,
    digest: &Digest,
    chunks: &[Chunk],
    stream: &mut QuicStream,
) -> Result<Sent, String> {
    let size: u64 = chunks.iter().map(|c| u64::from(c.size)).sum();
    let count = u32::try_from(chunks.len()).map_err(|_| "a context of over 4 billion chunks".to_owned())?;
    stream.write(&CoordinatorMessage::ContextChunks { size, chunks: count }).await.map_err(|e| e.to_string())?;
    stream.writer().write_all(&chunking::encode_list(chunks)).await.map_err(|e| e.to_string())?;
    // Exactly one bit per chunk, then the end of the agent's side, within a deadline: the agent
    // cannot make it wait for its answer, send more, nor ask twice.
    let bitmap = match tokio::time::timeout(WANT_WITHIN, stream.reader().read_to_end(chunks.len().div_ceil(8))).await {
        Ok(Ok(bitmap)) => bitmap,
        Ok(Err(e)) => return Err(format!("the agent did not say which chunks it wants: {e}")),
        Err(_) => {
            return Err(format!("the agent did not say which chunks it wants within {} s", WANT_WITHIN.as_secs()))
        }
    };
    let wanted = chunking::wanted_of(&bitmap, chunks.len())?;
    // An agent that stops reading is cut off: a minute, and a second per 256 KiB wanted.
    let bytes: u64 = chunks.iter().zip(&wanted).filter(|(_, w)| **w).map(|(c, _)| u64::from(c.size)).sum();
    let within = Duration::from_secs(60 + bytes / (256 << 10));
    tokio::time::timeout(within, send_wanted(contexts, digest, chunks, &wanted, stream))
        .await
        .map_err(|_| format!("the agent took the context's {bytes} bytes no faster than 256 KiB/s; cut off"))?
}

/// Sends the bytes of the `wanted` chunks of stored context `digest`, in order.
async fn send_wanted(
    contexts: &Contexts,
    digest: &Digest,
    chunks: &[Chunk],
    wanted: &[bool],
    stream: &mut QuicStream,
) -> Result<Sent, String> {
    let io = |e: std::io::Error| e.to_string();
    let mut file = tokio::fs::File::open(contexts.files.path(digest)).await.map_err(io)?;
    let (mut sent, mut offset) = (Sent::default(), 0u64);
    for (chunk, want) in chunks.iter().zip(wanted) {
        let len = u64::from(chunk.size);
        if *want {
            file.seek(SeekFrom::Start(offset)).await.map_err(io)?;
            let copied = content::copy_from_disk((&mut file).take(len), stream.writer()).await.map_err(io)?;
            if copied != len {
                return Err(format!("the stored context ended inside a chunk at {offset}"));
            }
            sent.bytes += len;
        } else {
            sent.held += len;
        }
        offset += len;
    }
    stream.finish().await;
    Ok(sent)
}
