//! Build contexts fetched from the coordinator by digest and kept on disk, so a context shared
//! by several platforms or rebuilds crosses the network once per agent.

use archfarm_shared::codec;
use archfarm_shared::content::ContentStore;
use archfarm_shared::protocol::{AgentMessage, CoordinatorMessage};
use archfarm_shared::Digest;
use std::path::PathBuf;

/// Why a context could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The coordinator does not hold it (any more): the coordinator's fault.
    Missing(String),
    /// Asking, receiving or storing it failed.
    Failed(String),
}

/// The local context cache.
#[derive(Debug, Clone)]
pub struct ContextCache {
    store: ContentStore,
}

impl ContextCache {
    /// Opens (and creates) the cache directory.
    pub fn open(dir: PathBuf) -> std::io::Result<Self> {
        // The coordinator enforces the size limit when a context is uploaded.
        Ok(ContextCache { store: ContentStore::open(&dir, u64::MAX)? })
    }

    /// The context's path, fetching it over `conn` first if it is not cached.
    pub async fn get(&self, conn: &quinn::Connection, digest: &Digest, max_frame: u32) -> Result<PathBuf, FetchError> {
        if self.store.contains(digest) {
            return Ok(self.store.path(digest));
        }
        self.fetch(conn, digest, max_frame).await
    }

    async fn fetch(&self, conn: &quinn::Connection, digest: &Digest, max_frame: u32) -> Result<PathBuf, FetchError> {
        use FetchError::Failed;
        let (mut send, mut recv) =
            conn.open_bi().await.map_err(|e| Failed(format!("cannot ask for the context: {e}")))?;
        codec::write_msg(&mut send, &AgentMessage::FetchContext { digest: digest.clone() }, max_frame)
            .await
            .map_err(|e| Failed(format!("cannot ask for the context: {e}")))?;
        let _ = send.finish();
        match codec::expect_msg::<_, CoordinatorMessage>(&mut recv, max_frame).await {
            Ok(CoordinatorMessage::ContextFollows { size }) => {
                self.store.receive(digest, size, &mut recv).await.map_err(Failed)
            }
            Ok(CoordinatorMessage::ContextMissing { reason }) => Err(FetchError::Missing(reason)),
            Ok(_) => Err(Failed("unexpected answer to a context fetch".into())),
            Err(e) => Err(Failed(format!("fetching the context: {e}"))),
        }
    }
}
