//! Build contexts on the coordinator's disk, addressed by sha256: uploaded once by a client,
//! fetched by agents by digest.

use archfarm_shared::Digest;
use sha2::Digest as _;
use std::path::PathBuf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The content-addressed context store.
#[derive(Debug)]
pub struct ContextStore {
    dir: PathBuf,
    max_bytes: u64,
}

impl ContextStore {
    /// Opens (and creates) the store under `data_dir/contexts`.
    pub fn open(data_dir: &std::path::Path, max_bytes: u64) -> std::io::Result<Self> {
        let dir = data_dir.join("contexts");
        std::fs::create_dir_all(&dir)?;
        Ok(ContextStore { dir, max_bytes })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("sha256-{}.tar", digest.hex()))
    }

    /// Whether the store holds this context.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Stores exactly `size` bytes read from `r`, which must hash to `digest`. Nothing is kept
    /// unless they do.
    pub async fn receive<R: AsyncRead + Unpin>(
        &self,
        digest: &Digest,
        size: u64,
        r: &mut R,
    ) -> Result<(), String> {
        if size > self.max_bytes {
            return Err(format!(
                "build context of {size} bytes exceeds the coordinator's limit of {} bytes; \
                 exclude files with .dockerignore or raise max_context_bytes",
                self.max_bytes
            ));
        }
        let tmp = self.dir.join(format!(
            ".upload-{}-{:x}",
            digest.hex(),
            rand::random::<u32>()
        ));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| format!("cannot store context: {e}"))?;
            let mut hasher = sha2::Sha256::new();
            let mut left = size;
            let mut buf = vec![0u8; 256 << 10];
            while left > 0 {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = r
                    .read(&mut buf[..want])
                    .await
                    .map_err(|e| format!("context upload interrupted: {e}"))?;
                if n == 0 {
                    return Err(format!(
                        "context upload ended after {} of {size} bytes",
                        size - left
                    ));
                }
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n])
                    .await
                    .map_err(|e| format!("cannot store context: {e}"))?;
                left -= n as u64;
            }
            file.sync_all()
                .await
                .map_err(|e| format!("cannot store context: {e}"))?;
            let got = Digest::from_sha256(hasher.finalize().into());
            if &got != digest {
                return Err(format!(
                    "context upload corrupt: announced {digest}, received {got}"
                ));
            }
            tokio::fs::rename(&tmp, self.path(digest))
                .await
                .map_err(|e| format!("cannot store context: {e}"))
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    /// The size of a stored context, if present.
    pub async fn size(&self, digest: &Digest) -> Option<u64> {
        tokio::fs::metadata(self.path(digest))
            .await
            .ok()
            .map(|m| m.len())
    }

    /// Copies a stored context to `w`.
    pub async fn send<W: AsyncWrite + Unpin>(
        &self,
        digest: &Digest,
        w: &mut W,
    ) -> std::io::Result<u64> {
        let mut file = tokio::fs::File::open(self.path(digest)).await?;
        tokio::io::copy(&mut file, w).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stores_only_what_matches_its_digest_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContextStore::open(dir.path(), 1000).unwrap();
        let data = b"context bytes".to_vec();
        let d = Digest::of(&data);

        let wrong = Digest::of(b"other");
        let err = store
            .receive(&wrong, data.len() as u64, &mut data.as_slice())
            .await
            .unwrap_err();
        assert!(err.contains("corrupt"), "{err}");
        assert!(!store.contains(&wrong));

        let err = store
            .receive(&d, data.len() as u64 + 5, &mut data.as_slice())
            .await
            .unwrap_err();
        assert!(err.contains("ended after 13 of 18 bytes"), "{err}");

        let err = store
            .receive(&d, 5000, &mut data.as_slice())
            .await
            .unwrap_err();
        assert!(
            err.contains("exceeds the coordinator's limit of 1000 bytes"),
            "{err}"
        );

        store
            .receive(&d, data.len() as u64, &mut data.as_slice())
            .await
            .unwrap();
        assert!(store.contains(&d));
        let mut out = Vec::new();
        assert_eq!(store.send(&d, &mut out).await.unwrap(), data.len() as u64);
        assert_eq!(out, data);
        // No temporary files left behind.
        assert_eq!(
            std::fs::read_dir(dir.path().join("contexts"))
                .unwrap()
                .count(),
            1
        );
    }
}
