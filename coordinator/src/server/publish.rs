//! Trust nothing an agent says: check each pushed image in the registry, then publish one
//! index over the verified children under every requested tag. Registry calls that fail are
//! retried with backoff a bounded number of times.

use super::ports::{ImageCheck, VerifyError};
use archfarm_shared::oci::{self, Blob, Child};
use archfarm_shared::protocol::PushedImage;
use archfarm_shared::reference::ImageRef;
use archfarm_shared::registry::Registry;
use archfarm_shared::{AgentName, Digest, Platform};
use futures_util::future::BoxFuture;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// Registry calls per step, and the first pause between them (doubling each time).
pub const REGISTRY_TRIES: u32 = 5;
const FIRST_PAUSE: Duration = Duration::from_millis(500);

/// Runs `op` up to [`REGISTRY_TRIES`] times with exponential backoff while it fails.
pub async fn with_retries<T, F, Fut>(what: &str, mut op: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let mut pause = FIRST_PAUSE;
    let mut last = String::new();
    for attempt in 1..=REGISTRY_TRIES {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                if attempt < REGISTRY_TRIES {
                    warn!(
                        "{what} failed (try {attempt} of {REGISTRY_TRIES}), retrying in {:.1} s: {e}",
                        pause.as_secs_f64()
                    );
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                last = e;
            }
        }
    }
    Err(format!("{what} failed {REGISTRY_TRIES} times; last error: {last}"))
}

/// The registry as the orchestration sees it: checks images pushed into one repository.
#[derive(Debug)]
pub struct RegistryImages {
    /// The registry's client.
    pub registry: Arc<Registry>,
    /// The build's repository.
    pub repo: ImageRef,
}

impl ImageCheck for RegistryImages {
    fn verify<'a>(
        &'a self,
        platform: &'a Platform,
        agent: &'a AgentName,
        pushed: &'a PushedImage,
    ) -> BoxFuture<'a, Result<Child, VerifyError>> {
        Box::pin(verify(&self.registry, &self.repo, platform, agent, pushed))
    }
}

/// Fetches the manifest an agent reported and its config from the registry, and checks the
/// digest, size and os/architecture/variant against the job. Returns the verified child.
pub async fn verify(
    registry: &Registry,
    repo: &ImageRef,
    platform: &Platform,
    agent: &AgentName,
    pushed: &PushedImage,
) -> Result<Child, VerifyError> {
    let by_digest = repo.with_digest(&pushed.digest);
    let (bytes, digest) = with_retries(&format!("fetching {} from the registry", pushed.digest), || async {
        registry.manifest(&by_digest, oci::IMAGE_MANIFESTS).await.map_err(|e| e.to_string())
    })
    .await
    .map_err(VerifyError::Unavailable)?;
    let wrong = |msg: String| VerifyError::Wrong(format!("agent {agent}: {msg}"));
    if digest != pushed.digest || Digest::of(&bytes) != pushed.digest {
        return Err(wrong(format!("reported {} but the registry serves {digest}", pushed.digest)));
    }
    if bytes.len() as u64 != pushed.size {
        return Err(wrong(format!(
            "reported a {}-byte manifest but the registry serves {} bytes",
            pushed.size,
            bytes.len()
        )));
    }
    let media_type = oci::media_type_of(&bytes).unwrap_or_else(|| pushed.media_type.clone());
    if !oci::IMAGE_MANIFESTS.contains(&media_type.as_str()) {
        return Err(wrong(format!("pushed a {media_type}, not a single-platform image manifest")));
    }
    let (_, config_digest) = oci::manifest_config(&bytes).map_err(|e| wrong(format!("manifest {digest}: {e}")))?;
    let config_digest: Digest = config_digest.parse().map_err(|e| wrong(format!("manifest {digest}: {e}")))?;
    let config = with_retries(&format!("fetching the config of {digest}"), || async {
        registry.blob(repo, &config_digest).await.map_err(|e| e.to_string())
    })
    .await
    .map_err(VerifyError::Unavailable)?;
    let actual = oci::config_platform(&config).map_err(|e| wrong(format!("config of {digest}: {e}")))?;
    if &actual != platform {
        return Err(wrong(format!("pushed an image whose config says {actual}, but the job was for {platform}")));
    }
    Ok(Child { platform: platform.clone(), manifest: Blob { media_type, digest, size: pushed.size } })
}

/// Publishes the index over `children` (in order) under every tag, then reads it back through
/// the first tag to confirm the registry serves exactly the bytes that were hashed. The same
/// children always give the same bytes, so publishing again is harmless.
pub async fn publish(registry: &Registry, tags: &[ImageRef], children: &[Child]) -> Result<Digest, String> {
    let bytes = oci::index_json(children).map_err(|e| e.to_string())?;
    let digest = Digest::of(&bytes);
    let first = tags.first().ok_or("no tag to publish under")?;
    for tag in tags {
        with_retries(&format!("publishing the index under {}", tag.whole()), || async {
            registry.push_manifest(tag, bytes.clone().into(), oci::OCI_INDEX).await.map_err(|e| e.to_string())
        })
        .await?;
    }
    let (_, served) = with_retries(&format!("reading back {}", first.whole()), || async {
        registry.manifest(first, oci::ANY_MANIFEST).await.map_err(|e| e.to_string())
    })
    .await?;
    if served != digest {
        return Err(format!("{} resolves to {served} after publishing {digest}", first.whole()));
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn retries_with_backoff_then_gives_a_clear_error() {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let err = with_retries("publishing", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>("503 Service Unavailable".to_owned())
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), REGISTRY_TRIES);
        assert_eq!(err, "publishing failed 5 times; last error: 503 Service Unavailable");
        // 0.5 + 1 + 2 + 4 seconds of backoff.
        assert_eq!(started.elapsed(), Duration::from_millis(7500));

        let calls = AtomicU32::new(0);
        let ok = with_retries("publishing", || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err("down".to_owned())
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(ok, Ok(7));
    }
}
