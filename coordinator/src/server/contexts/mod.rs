//! Build contexts: the tarballs clients upload and agents fetch, stored by digest. This folder
//! owns all of it: the state ([`Contexts`]), receiving and checking an upload, the chunks that
//! let a re-upload send only what changed, how many uploads run at once, the client requests and
//! the agent's fetch.
//!
//! # Layout
//! - this file: [`Contexts`], what the coordinator holds of contexts.
//! - [`receive`]: receiving a context, whole or as chunks, checked as it is written.
//! - `assembly`: a chunked upload's tarball put together from sent and stored chunks.
//! - [`chunks`]: where the chunks of stored contexts lie, for re-uploads.
//! - [`uploads`]: how many uploads run at once, per client and in all.
//! - [`handlers`]: the client's `HasContext`, `UploadContext` and `UploadChunked`.
//! - [`agent`]: an agent fetching the context of a job it runs.

pub mod agent;
mod assembly;
pub mod chunks;
pub mod handlers;
pub mod receive;
pub mod uploads;

use super::access::Principal;
use super::store::Store;
use anyhow::Context as _;
use archfarm_shared::chunk_lists::ChunkLists;
use archfarm_shared::content::ContentStore;
use archfarm_shared::Digest;
use chunks::ChunkStore;
use std::path::Path;
use uploads::Uploads;

/// What the coordinator holds of build contexts.
#[derive(Debug)]
pub struct Contexts {
    /// The stored tarballs, by digest.
    pub files: ContentStore,
    /// Where each stored chunk lies, for uploads of changed contexts.
    pub chunks: ChunkStore,
    /// Each stored context's chunks, in order, for agents that fetch it.
    pub lists: ChunkLists,
    /// Uploads running now.
    pub uploads: Uploads,
}

impl Contexts {
    /// Opens `data_dir/contexts`, `data_dir/chunks` and `data_dir/chunk-lists`; contexts are at
    /// most `max_bytes`.
    pub fn open(data_dir: &Path, max_bytes: u64) -> anyhow::Result<Contexts> {
        let dir = data_dir.join("contexts");
        // Not flushed to disk: a context is the client's to send again, and one a power loss
        // damaged is found by its hash before use. A flush of 100 MiB took 0.35 s, and even in
        // the background it held the state database's next commit (ext4 commits its journal
        // behind the data it is writing out): 0.2 s of every build that uploaded a context.
        let files =
            ContentStore::open(&dir, max_bytes).with_context(|| format!("cannot create {}", dir.display()))?.volatile();
        let dir = data_dir.join("chunks");
        let chunks = ChunkStore::open(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let dir = data_dir.join("chunk-lists");
        let lists = ChunkLists::open(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Contexts { files, chunks, lists, uploads: Uploads::default() })
    }

    /// Whether `who` may build from context `digest`: it is stored, and `who` uploaded it (an
    /// admin may use any). Another token's context is, to `who`, not there.
    pub async fn usable(&self, store: &Store, who: &Principal, digest: &Digest) -> Result<bool, String> {
        if !self.files.contains(digest) {
            return Ok(false);
        }
        if !who.is_admin() && !store.context_owned_by(digest, &who.name).await.map_err(|e| e.to_string())? {
            return Ok(false);
        }
        // A context stored before a power loss is hashed before it is used again (only for a
        // client that may use it).
        Ok(self.files.verified(digest).await)
    }
}
