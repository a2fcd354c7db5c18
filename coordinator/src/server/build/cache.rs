//! The registry build cache, as in buildx but one tag per platform: which of the caches
//! `--cache-from` names a platform reads, and each verified image tagged as its platform's cache
//! under `--cache-to`.

use crate::server::live::Live;
use crate::server::ports::ImageStore;
use archfarm_shared::cache;
use archfarm_shared::oci::Child;
use archfarm_shared::protocol::BuildEvent;
use archfarm_shared::reference::ImageRef;
use archfarm_shared::Platform;
use tracing::warn;

/// The cache images a platform reads, of those `--cache-from` names: its own tag of each
/// reference, and the reference itself, each only if the registry has it (the engine's
/// BuildKit fails a build whose cache image is missing, and a first build has none yet).
pub async fn sources(registry: &dyn ImageStore, refs: &[String], platform: &Platform, live: &Live) -> Vec<String> {
    let mut found = Vec::new();
    for reference in refs {
        for candidate in [cache::scoped(reference, platform), reference.clone()] {
            let Ok(parsed) = archfarm_shared::registry::parse_reference(&candidate) else { continue };
            if registry.has_manifest(&parsed).await {
                found.push(candidate);
            }
        }
    }
    let line = match found.as_slice() {
        [] => format!("no build cache found under {}: building without it", refs.join(", ")),
        some => format!("build cache from {}", some.join(", ")),
    };
    if !refs.is_empty() {
        live.emit(BuildEvent::Log { platform: platform.clone(), line });
    }
    found
}

/// Tags each verified image as its platform's cache image under `cache_to` (inline cache: the
/// image is the cache). A cache that cannot be written is said in the platform's log and does
/// not fail the build.
pub async fn write(registry: &dyn ImageStore, repo: &ImageRef, cache_to: &str, children: &[Child], live: &Live) {
    for child in children {
        let target = cache::scoped(cache_to, &child.platform);
        let written = match archfarm_shared::registry::parse_reference(&target) {
            Ok(to) => registry.copy(repo, &child.manifest.digest, &to).await,
            Err(e) => Err(e.to_string()),
        };
        let line = match written {
            Ok(()) => format!("build cache written to {target}"),
            Err(e) => {
                warn!(platform = %child.platform, "cache not written to {target}: {e}");
                format!("build cache NOT written to {target}: {e}")
            }
        };
        live.emit(BuildEvent::Log { platform: child.platform.clone(), line });
    }
}
