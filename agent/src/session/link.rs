//! The coordinator link over the session's QUIC connection: each request is a stream of its
//! own, a framed message each way, and raw bytes after it (a context coming, a blob going).

use crate::link::{ContextDownload, CoordinatorLink, FetchError, Held};
use archfarm_shared::chunking::{self, Chunk};
use archfarm_shared::protocol::{AgentMessage, CoordinatorMessage};
use archfarm_shared::stream::QuicStream;
use archfarm_shared::{tls, Digest, JobId};
use futures_util::future::BoxFuture;
use tokio::io::AsyncRead;

/// [`CoordinatorLink`] over a connection to the coordinator.
#[derive(Debug, Clone)]
pub struct QuicLink {
    conn: quinn::Connection,
    max_frame: u32,
    /// The job it serves: blobs handed over are for its image.
    job: JobId,
}

impl QuicLink {
    /// Requests of `job` on `conn`, in frames of at most `max_frame` bytes.
    pub fn new(conn: quinn::Connection, max_frame: u32, job: JobId) -> Self {
        QuicLink { conn, max_frame, job }
    }
}

/// How long the coordinator has to answer a context fetch, its chunk list included.
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);
/// Most chunks a context's list may name (a client's upload names them in one frame of at most
/// 16 MiB, so no stored context has more).
const MAX_LISTED: u32 = 1 << 20;
/// Largest chunk a list may name (what the coordinator accepts from a client).
const MAX_LISTED_CHUNK: u32 = 16 << 20;

/// Reads the chunk list of a `size`-byte context of `count` chunks, and checks that it is one.
async fn read_list(stream: &mut QuicStream, size: u64, count: u32) -> Result<Vec<Chunk>, FetchError> {
    let bad = |what: String| FetchError::Failed(format!("the coordinator offered a context {what}"));
    if count > MAX_LISTED || u64::from(count) > size {
        return Err(bad(format!("of {size} bytes in {count} chunks")));
    }
    let mut raw = vec![0u8; count as usize * chunking::LISTED_CHUNK];
    stream
        .reader()
        .read_exact(&mut raw)
        .await
        .map_err(|e| FetchError::Failed(format!("reading the chunk list: {e}")))?;
    let chunks = chunking::decode_list(&raw).map_err(bad)?;
    let total: u64 = chunks.iter().map(|c| u64::from(c.size)).sum();
    if total != size || chunks.iter().any(|c| c.size > MAX_LISTED_CHUNK) {
        return Err(bad(format!("whose chunks add up to {total} bytes, not {size}, or pass {MAX_LISTED_CHUNK} bytes")));
    }
    Ok(chunks)
}

impl CoordinatorLink for QuicLink {
    fn fetch_context<'a>(
        &'a self,
        digest: &'a Digest,
        held: Held<'a>,
    ) -> BoxFuture<'a, Result<ContextDownload, FetchError>> {
        use FetchError::Failed;
        Box::pin(async move {
            let ask = async {
                let mut stream = QuicStream::open(&self.conn, self.max_frame)
                    .await
                    .map_err(|e| Failed(format!("cannot ask for the context: {e}")))?;
                stream
                    .write(&AgentMessage::FetchContext { digest: digest.clone() })
                    .await
                    .map_err(|e| Failed(format!("cannot ask for the context: {e}")))?;
                let (size, count) = match stream.expect::<CoordinatorMessage>().await {
                    Ok(CoordinatorMessage::ContextChunks { size, chunks }) => (size, chunks),
                    Ok(CoordinatorMessage::ContextMissing { reason }) => return Err(FetchError::Missing(reason)),
                    Ok(_) => return Err(Failed("unexpected answer to a context fetch".into())),
                    Err(e) => return Err(Failed(format!("fetching the context: {e}"))),
                };
                let chunks = read_list(&mut stream, size, count).await?;
                Ok::<_, FetchError>((stream, size, chunks))
            };
            // The list and the answer to it have this deadline; the bytes after them an idle
            // limit, which the caller's reads keep.
            let (mut stream, size, chunks) = tokio::time::timeout(ANSWER_WITHIN, ask)
                .await
                .map_err(|_| Failed(format!("no answer to a context fetch within {} s", ANSWER_WITHIN.as_secs())))??;
            let sent: Vec<bool> = chunks.iter().map(|c| !held(&c.digest)).collect();
            let answer = async {
                stream.writer().write_all(&chunking::bitmap_of(&sent)).await?;
                stream.finish().await;
                Ok::<_, quinn::WriteError>(())
            };
            tokio::time::timeout(ANSWER_WITHIN, answer)
                .await
                .map_err(|_| {
                    Failed(format!("could not say which chunks to send within {} s", ANSWER_WITHIN.as_secs()))
                })?
                .map_err(|e| Failed(format!("cannot say which chunks of the context to send: {e}")))?;
            let (_, recv) = stream.split();
            Ok(ContextDownload { size, chunks, sent, bytes: Box::new(recv.into_inner()) })
        })
    }

    fn hand_over_blob<'a>(
        &'a self,
        digest: &'a Digest,
        size: u64,
        bytes: &'a mut (dyn AsyncRead + Send + Unpin),
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let mut stream = QuicStream::open(&self.conn, self.max_frame).await.map_err(|e| tls::explain(&e))?;
            let head = AgentMessage::StoreBlob { digest: digest.clone(), size, job: self.job.clone() };
            stream.write(&head).await.map_err(|e| e.to_string())?;
            archfarm_shared::content::copy_from_disk(bytes, stream.writer())
                .await
                .map_err(|e| format!("sending {digest}: {e}"))?;
            stream.finish().await;
            match stream.expect::<CoordinatorMessage>().await {
                Ok(CoordinatorMessage::BlobStored) => Ok(()),
                Ok(CoordinatorMessage::BlobRefused { reason }) => {
                    Err(format!("the coordinator refused {digest}: {reason}"))
                }
                Ok(_) => Err(format!("unexpected answer to handing over {digest}")),
                Err(e) => Err(format!("handing over {digest}: {e}")),
            }
        })
    }
}
