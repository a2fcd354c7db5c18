//! The coordinator as a job sees it: where a build context comes from and where a built image
//! goes when the build names no registry. A job never sees the connection beneath; the session
//! gives it a [`CoordinatorLink`] (over QUIC in the product: `session::link::QuicLink`), and unit
//! tests give it one of their own.

use archfarm_shared::chunking::Chunk;
use archfarm_shared::Digest;
use futures_util::future::BoxFuture;
use tokio::io::AsyncRead;

/// What a running job asks of the coordinator.
pub trait CoordinatorLink: Send + Sync {
    /// Asks for the context `digest`: its chunk list, and the bytes as they arrive of the chunks
    /// `held` says the caller lacks, for the caller to put together and check against the digest.
    fn fetch_context<'a>(
        &'a self,
        digest: &'a Digest,
        held: Held<'a>,
    ) -> BoxFuture<'a, Result<ContextDownload, FetchError>>;

    /// Hands over one blob of `size` bytes read from `bytes`; done once the coordinator says
    /// it stored it. The error says what failed, naming the blob.
    fn hand_over_blob<'a>(
        &'a self,
        digest: &'a Digest,
        size: u64,
        bytes: &'a mut (dyn AsyncRead + Send + Unpin),
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// Whether the caller holds a chunk of this digest (in a context it fetched before).
pub type Held<'a> = &'a (dyn Fn(&Digest) -> bool + Send + Sync);

/// A context on its way from the coordinator.
pub struct ContextDownload {
    /// Its size, as the coordinator announced it.
    pub size: u64,
    /// Its chunks in order, as the coordinator listed them; their sizes add up to `size`.
    pub chunks: Vec<Chunk>,
    /// For each chunk, whether its bytes follow in `bytes` (the caller holds the others).
    pub sent: Vec<bool>,
    /// The bytes of the chunks sent, in order, unchecked.
    pub bytes: Box<dyn AsyncRead + Send + Unpin>,
}

impl std::fmt::Debug for ContextDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextDownload").field("size", &self.size).finish_non_exhaustive()
    }
}

/// Why a context could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The coordinator does not hold it (any more): the coordinator's fault.
    Missing(String),
    /// Asking, receiving or storing it failed.
    Failed(String),
}
