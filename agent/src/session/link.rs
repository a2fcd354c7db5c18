//! The coordinator link over the session's QUIC connection: each request is a stream of its
//! own, a framed message each way, and raw bytes after it (a context coming, a blob going).

use crate::link::{ContextDownload, CoordinatorLink, FetchError};
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

/// How long the coordinator has to answer a context fetch before the bytes.
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

impl CoordinatorLink for QuicLink {
    fn fetch_context<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<ContextDownload, FetchError>> {
        use FetchError::Failed;
        Box::pin(async move {
            let ask = async {
                let mut stream = QuicStream::open(&self.conn, self.max_frame)
                    .await
                    .map_err(|e| Failed(format!("cannot ask for the context: {e}")))?;
                stream
                    .write_last(&AgentMessage::FetchContext { digest: digest.clone() })
                    .await
                    .map_err(|e| Failed(format!("cannot ask for the context: {e}")))?;
                let answer = stream.expect::<CoordinatorMessage>().await;
                Ok::<_, FetchError>((stream, answer))
            };
            // The bytes have a deadline of their own (an idle limit); the answer before them too.
            let (stream, answer) = tokio::time::timeout(ANSWER_WITHIN, ask)
                .await
                .map_err(|_| Failed(format!("no answer to a context fetch within {} s", ANSWER_WITHIN.as_secs())))??;
            match answer {
                Ok(CoordinatorMessage::ContextFollows { size }) => {
                    let (_, recv) = stream.split();
                    Ok(ContextDownload { size, bytes: Box::new(recv.into_inner()) })
                }
                Ok(CoordinatorMessage::ContextMissing { reason }) => Err(FetchError::Missing(reason)),
                Ok(_) => Err(Failed("unexpected answer to a context fetch".into())),
                Err(e) => Err(Failed(format!("fetching the context: {e}"))),
            }
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
            tokio::io::copy(bytes, stream.writer()).await.map_err(|e| format!("sending {digest}: {e}"))?;
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
