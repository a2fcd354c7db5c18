//! Build contexts fetched from the coordinator by digest and kept on disk, so a context shared
//! by several platforms or rebuilds crosses the network once per agent.

use archfarm_shared::codec;
use archfarm_shared::protocol::{AgentMessage, CoordinatorMessage};
use archfarm_shared::Digest;
use sha2::Digest as _;
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The local context cache.
#[derive(Debug, Clone)]
pub struct ContextCache {
    dir: PathBuf,
}

impl ContextCache {
    /// Opens (and creates) the cache directory.
    pub fn open(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(ContextCache { dir })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("sha256-{}.tar", digest.hex()))
    }

    /// The context's path, fetching it over `conn` first if it is not cached.
    pub async fn get(
        &self,
        conn: &quinn::Connection,
        digest: &Digest,
        max_frame: u32,
    ) -> Result<PathBuf, String> {
        let path = self.path(digest);
        if path.is_file() {
            return Ok(path);
        }
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| format!("cannot ask for the context: {e}"))?;
        codec::write_msg(
            &mut send,
            &AgentMessage::FetchContext {
                digest: digest.clone(),
            },
            max_frame,
        )
        .await
        .map_err(|e| format!("cannot ask for the context: {e}"))?;
        let _ = send.finish();
        let size = match codec::expect_msg::<_, CoordinatorMessage>(&mut recv, max_frame).await {
            Ok(CoordinatorMessage::ContextFollows { size }) => size,
            Ok(CoordinatorMessage::ContextMissing { reason }) => return Err(reason),
            Ok(_) => return Err("unexpected answer to a context fetch".into()),
            Err(e) => return Err(format!("fetching the context: {e}")),
        };
        let tmp = self.dir.join(format!(
            ".fetch-{}-{:x}",
            digest.hex(),
            rand::random::<u32>()
        ));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| format!("cannot cache the context: {e}"))?;
            let mut hasher = sha2::Sha256::new();
            let mut buf = vec![0u8; 256 << 10];
            let mut got = 0u64;
            loop {
                let n = AsyncReadExt::read(&mut recv, &mut buf)
                    .await
                    .map_err(|e| format!("fetching the context: {e}"))?;
                if n == 0 {
                    break;
                }
                got += n as u64;
                if got > size {
                    return Err(format!(
                        "the coordinator sent more than the announced {size} bytes"
                    ));
                }
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n])
                    .await
                    .map_err(|e| format!("cannot cache the context: {e}"))?;
            }
            if got != size {
                return Err(format!(
                    "context transfer ended after {got} of {size} bytes"
                ));
            }
            let actual = Digest::from_sha256(hasher.finalize().into());
            if &actual != digest {
                return Err(format!(
                    "context corrupt in transfer: expected {digest}, got {actual}"
                ));
            }
            file.sync_all()
                .await
                .map_err(|e| format!("cannot cache the context: {e}"))?;
            tokio::fs::rename(&tmp, &path)
                .await
                .map_err(|e| format!("cannot cache the context: {e}"))
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result.map(|()| path)
    }
}
