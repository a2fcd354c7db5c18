//! Registry credentials from the Docker config of the user a process runs as
//! (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`): its `auths`, its per-registry
//! `credHelpers` and its `credsStore`. What `docker login` writes is what the farm uses, for
//! pushes, for verifying and publishing, and for the base images a build pulls.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Longest a credential helper may take to answer; one that takes longer is taken as having
/// no credential (and said), so that no registry call waits on a helper without end.
pub const HELPER_DEADLINE: Duration = Duration::from_secs(10);

/// Docker Hub's key in a Docker config.
const HUB_CONFIG_KEY: &str = "https://index.docker.io/v1/";
/// Docker Hub's host as BuildKit asks for it.
pub const HUB_HOST: &str = "registry-1.docker.io";

/// A credential for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A user name and a password (or access token used as one).
    Basic {
        /// The user name.
        username: String,
        /// The password; never logged.
        password: String,
    },
    /// An identity token (`"username": "<token>"` from a helper, `identitytoken` in `auths`).
    IdentityToken(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}, <secret>)"),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(<secret>)"),
        }
    }
}

/// The Docker config file this process reads.
pub fn config_path() -> Option<PathBuf> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))?;
    Some(dir.join("config.json"))
}

/// A registry as BuildKit and the distribution API name it: `host[:port]`, Docker Hub as
/// [`HUB_HOST`]. Config keys may carry a scheme and a path (`https://host/v1/`).
pub fn host_of(key: &str) -> String {
    let rest = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = rest.split('/').next().unwrap_or(rest);
    match host {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => HUB_HOST.to_owned(),
        other => other.to_owned(),
    }
}

/// The credential configured for `registry` (`host[:port]`), if any.
pub fn for_registry(registry: &str) -> Option<Credential> {
    let server = if host_of(registry) == HUB_HOST { HUB_CONFIG_KEY } else { registry };
    let key = server.to_owned();
    convert(within_deadline(server, move || docker_credential::get_credential(&key).ok())??)
}

/// Runs `lookup` (which may start a credential helper) on a thread of its own, and gives up on
/// it after [`HELPER_DEADLINE`]: a helper that hangs then holds one thread, not its caller.
fn within_deadline<T: Send + 'static>(server: &str, lookup: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("credential-helper".into()).spawn(move || {
        let _ = tx.send(lookup());
    });
    if spawned.is_err() {
        return None;
    }
    match rx.recv_timeout(HELPER_DEADLINE) {
        Ok(found) => Some(found),
        Err(_) => {
            tracing::warn!(
                registry = %server,
                "the credential helper gave no answer within {} s: going on without a credential",
                HELPER_DEADLINE.as_secs()
            );
            None
        }
    }
}

/// Every registry the config holds a credential for, keyed by [`host_of`], with its credential.
/// Registries whose credential cannot be read (a helper that fails) are left out.
pub fn all() -> BTreeMap<String, Credential> {
    let mut out = BTreeMap::new();
    for key in configured_keys() {
        let server = key.clone();
        let found = within_deadline(&key, move || docker_credential::get_credential(&server).ok()).flatten();
        if let Some(credential) = found.and_then(convert) {
            out.entry(host_of(&key)).or_insert(credential);
        }
    }
    out
}

/// The config's registry keys: `auths`, `credHelpers`, and what a `credsStore` lists.
fn configured_keys() -> Vec<String> {
    let Some(text) = config_path().and_then(|p| std::fs::read_to_string(p).ok()) else { return vec![] };
    let Ok(config) = serde_json::from_str::<serde_json::Value>(&text) else { return vec![] };
    let keys_of = |field: &str| -> Vec<String> {
        config.get(field).and_then(|v| v.as_object()).map(|m| m.keys().cloned().collect()).unwrap_or_default()
    };
    let mut keys = keys_of("auths");
    keys.extend(keys_of("credHelpers"));
    if let Some(store) = config.get("credsStore").and_then(|v| v.as_str()) {
        let store = store.to_owned();
        keys.extend(
            within_deadline(&format!("credsStore {store}"), move || listed_by_store(&store)).unwrap_or_default(),
        );
    }
    keys.sort();
    keys.dedup();
    keys
}

/// The servers a credential store holds (`docker-credential-STORE list`).
fn listed_by_store(store: &str) -> Vec<String> {
    let output = std::process::Command::new(format!("docker-credential-{store}"))
        .arg("list")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    match output {
        Ok(o) if o.status.success() => serde_json::from_slice::<BTreeMap<String, String>>(&o.stdout)
            .map(|m| m.into_keys().collect())
            .unwrap_or_default(),
        _ => vec![],
    }
}

fn convert(c: docker_credential::DockerCredential) -> Option<Credential> {
    match c {
        docker_credential::DockerCredential::UsernamePassword(username, password) => {
            Some(Credential::Basic { username, password })
        }
        docker_credential::DockerCredential::IdentityToken(token) => Some(Credential::IdentityToken(token)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_named_as_buildkit_asks_for_them() {
        assert_eq!(host_of("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(host_of("https://registry.example.com/v2/"), "registry.example.com");
        assert_eq!(host_of("http://[::1]:5000"), "[::1]:5000");
        assert_eq!(host_of(HUB_CONFIG_KEY), HUB_HOST);
        assert_eq!(host_of("docker.io"), HUB_HOST);
    }

    #[test]
    fn secrets_are_never_printed() {
        let c = Credential::Basic { username: "ci".into(), password: "hunter2".into() };
        assert_eq!(format!("{c:?}"), "Basic(ci, <secret>)");
        assert!(!format!("{:?}", Credential::IdentityToken("t0k3n".into())).contains("t0k3n"));
    }

    #[test]
    fn every_configured_registry_is_found_with_its_credential() {
        let dir = tempfile::tempdir().unwrap();
        // "ci:s3cret" and Docker Hub's "hub:pw", as `docker login` writes them.
        let config = r#"{
            "auths": {
                "127.0.0.1:5001": {"auth": "Y2k6czNjcmV0"},
                "https://index.docker.io/v1/": {"auth": "aHViOnB3"}
            },
            "credHelpers": {"helped.example.com": "archfarm-no-such-helper"}
        }"#;
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        // Each test runs in its own process under nextest, so this touches no other test.
        std::env::set_var("DOCKER_CONFIG", dir.path());
        let found = all();
        assert_eq!(found.keys().collect::<Vec<_>>(), ["127.0.0.1:5001", HUB_HOST], "a failing helper is left out");
        let ci = Credential::Basic { username: "ci".into(), password: "s3cret".into() };
        assert_eq!(found["127.0.0.1:5001"], ci);
        assert_eq!(for_registry("127.0.0.1:5001"), Some(ci));
        assert_eq!(
            for_registry("docker.io"),
            Some(Credential::Basic { username: "hub".into(), password: "pw".into() })
        );
        assert_eq!(for_registry("127.0.0.1:5002"), None);
    }

    #[test]
    fn a_credential_helper_that_hangs_is_given_up_on_after_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-hang");
        // Longer than the deadline, and ending on its own soon after: no process outlives the test long.
        std::fs::write(&helper, "#!/bin/sh\nexec sleep 13\n").unwrap();
        std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let config = r#"{"credHelpers": {"hung.example.com": "hang"}}"#;
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        // Each test runs in its own process under nextest, so this touches no other test.
        std::env::set_var("DOCKER_CONFIG", dir.path());
        let path = std::env::var("PATH").unwrap_or_default();
        std::env::set_var("PATH", format!("{}:{path}", dir.path().display()));
        let started = std::time::Instant::now();
        assert_eq!(for_registry("hung.example.com"), None);
        let took = started.elapsed();
        assert!(took >= HELPER_DEADLINE && took < HELPER_DEADLINE + Duration::from_secs(5), "{took:?}");
    }
}
