//! The registry credentials one job may use. The agent's Docker config may hold logins for
//! several registries, each reaching every repository its account can; a job gets only those
//! of the registries it reads or writes, and only once every image its Dockerfile names was
//! checked against the scopes of the token that started the build ([`scopes::check_reads`]):
//! an image outside them, on a registry this agent holds credentials for, is refused before
//! anything is pulled. The same holds for what the `ONBUILD` triggers of its base images read.

use crate::bases::JobBases;
use crate::engine::JobLogins;
use archfarm_shared::credentials::{self, Credential};
use archfarm_shared::protocol::JobSpec;
use archfarm_shared::registry::{self, RegistryClients};
use archfarm_shared::scopes;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tracing::warn;

/// How long reading the Docker config and its credential helpers may take before a build.
const CREDENTIALS_DEADLINE: Duration = Duration::from_secs(10);

/// The registries this agent's Docker config holds credentials for, as its registration
/// reports them (at most `max`).
pub async fn registries(max: usize) -> Vec<String> {
    all().await.into_keys().take(max).collect()
}

/// Every credential of this agent's Docker config, by host; none when they cannot be read in
/// time. Read for each job: a `docker login` counts from the next job on.
async fn all() -> BTreeMap<String, Credential> {
    match tokio::time::timeout(CREDENTIALS_DEADLINE, tokio::task::spawn_blocking(credentials::all)).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            warn!("reading registry credentials failed: {e}; pulls are anonymous");
            BTreeMap::new()
        }
        Err(_) => {
            warn!("reading registry credentials took over {CREDENTIALS_DEADLINE:?}; pulls are anonymous");
            BTreeMap::new()
        }
    }
}

/// The logins `spec` may hand BuildKit, once its reads are allowed: `Err` says which image of
/// the Dockerfile is outside the token's scopes.
pub async fn for_job(spec: &JobSpec, bases: &JobBases, registries: &RegistryClients) -> Result<JobLogins, String> {
    let credentials = credentials_for(spec, bases, registries).await?;
    let mut token_auth = BTreeSet::new();
    for host in credentials.keys() {
        if wants_tokens(host, registries).await {
            token_auth.insert(host.clone());
        }
    }
    Ok(JobLogins { credentials, token_auth, scopes: spec.read_scopes.clone() })
}

/// Whether the registry at `host` wants bearer tokens. One that cannot be asked is taken to:
/// its login is then never handed over whole, only through tokens for the build's scopes.
async fn wants_tokens(host: &str, registries: &RegistryClients) -> bool {
    let registry = if host == credentials::HUB_HOST { "docker.io" } else { host };
    let Ok(probe) = registry::parse_reference(&format!("{registry}/library/probe")) else { return true };
    match registries.get(&probe).wants_tokens().await {
        Ok(wants) => wants,
        Err(e) => {
            warn!("cannot tell how {host} authenticates ({e}); its login goes to BuildKit only as scoped tokens");
            true
        }
    }
}

/// The credentials `spec` may use, once its reads are allowed.
async fn credentials_for(
    spec: &JobSpec,
    bases: &JobBases,
    registries: &RegistryClients,
) -> Result<BTreeMap<String, Credential>, String> {
    let all = all().await;
    let uses = bases.uses().await;
    let refused = |e: String| format!("refused before anything was pulled: {e}");
    let guarded = |host: &str| all.contains_key(host);
    scopes::check_reads(uses, &spec.read_scopes, &spec.dockerfile, guarded).map_err(refused)?;
    // The bases are inside the scopes now: what their ONBUILD triggers read must be too.
    if !spec.read_scopes.is_empty() {
        let triggers = bases.onbuild_uses(registries, &spec.platform).await.map_err(refused)?;
        scopes::check_reads(&triggers, &spec.read_scopes, &spec.dockerfile, guarded).map_err(refused)?;
    }
    // An unscoped build naming an image only the build can resolve keeps every login.
    if spec.read_scopes.is_empty() && uses.iter().any(|u| u.image.contains('$')) {
        return Ok(all);
    }
    let images = uses.iter().map(|u| u.image.as_str());
    let cache = spec.cache_from.iter().chain(&spec.cache_to_max).map(String::as_str);
    let target = format!("{}:latest", spec.repository);
    let target = (!spec.repository.is_empty()).then_some(target.as_str());
    let hosts: BTreeSet<String> = images
        .chain(cache)
        .chain(target)
        .filter_map(|image| registry::parse_reference(image).ok())
        .map(|r| credentials::host_of(r.registry()))
        .collect();
    Ok(all.into_iter().filter(|(host, _)| hosts.contains(host)).collect())
}
