//! Whose fault a failure is, from what the operating system or the engine said: a full disk or
//! exhausted memory is the host's, a refused or unreachable registry is the registry's, and
//! neither is the Dockerfile's. Each is reported as such, so the coordinator can try another
//! agent and blame the right party.

use archfarm_shared::credentials;
use archfarm_shared::protocol::FailureKind;

/// `DiskFull` or `OutOfMemory` when `message` says so, else `otherwise`.
pub fn kind_of(message: &str, otherwise: FailureKind) -> FailureKind {
    let lower = message.to_ascii_lowercase();
    if lower.contains("no space left on device")
        || lower.contains("os error 28")
        || lower.contains("disk quota exceeded")
    {
        FailureKind::DiskFull
    } else if lower.contains("cannot allocate memory")
        || lower.contains("out of memory")
        || lower.contains("os error 12")
    {
        FailureKind::OutOfMemory
    } else {
        otherwise
    }
}

/// The kind of a failed build from the engine's message. A `RUN` that exits is the
/// Dockerfile's (its message quotes the command, so it is not searched further), except exit
/// code 137, the kernel's out-of-memory kill. A registry the build pulls from that cannot be
/// reached is the registry's; an engine that does not answer is the host's.
pub fn of_build(message: &str, engine_unreachable: bool) -> FailureKind {
    let run_exited = message.contains("did not complete successfully") || message.contains("executor failed running");
    if run_exited {
        return if message.contains("exit code: 137") { FailureKind::OutOfMemory } else { FailureKind::Build };
    }
    if registry_unreachable(message) {
        return FailureKind::RegistryUnavailable;
    }
    kind_of(message, if engine_unreachable { FailureKind::Engine } else { FailureKind::Build })
}

/// Whether resolving or pulling an image failed because its registry could not be reached.
fn registry_unreachable(message: &str) -> bool {
    const PULLING: [&str; 3] = ["failed to resolve source metadata", "pulling from host", "failed to do request"];
    const UNREACHABLE: [&str; 9] = [
        "connection refused",
        "no such host",
        "i/o timeout",
        "connection reset",
        "TLS handshake timeout",
        "500 Internal Server Error",
        "502 Bad Gateway",
        "503 Service Unavailable",
        "504 Gateway Timeout",
    ];
    PULLING.iter().any(|p| message.contains(p)) && UNREACHABLE.iter().any(|u| message.contains(u))
}

/// The registry that refused a pull, when a build failed for that reason: BuildKit says
/// `pulling from host HOST failed with status code …: 401 Unauthorized`, or `failed to
/// authorize` / `pull access denied` / `insufficient_scope` naming the image it resolved.
pub fn refused_pull(message: &str) -> Option<String> {
    const REFUSALS: [&str; 6] = [
        "401 Unauthorized",
        "403 Forbidden",
        "failed to authorize",
        "pull access denied",
        "insufficient_scope",
        "denied: requested access",
    ];
    if !REFUSALS.iter().any(|r| message.contains(r)) {
        return None;
    }
    let after = |marker: &str| message.split_once(marker).map(|(_, rest)| rest.split([' ', ',']).next().unwrap_or(""));
    if let Some(host) = after("pulling from host ").filter(|h| !h.is_empty()) {
        return Some(credentials::host_of(host));
    }
    // `failed to resolve source metadata for 127.0.0.1:5001/base:1: …` names the image.
    let image = message.split_once("source metadata for ").map(|(_, rest)| rest.split(' ').next().unwrap_or(""))?;
    let first = image.split('/').next().unwrap_or("");
    let registry = if image.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost") {
        first
    } else {
        "docker.io"
    };
    Some(credentials::host_of(registry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_pull_names_its_registry() {
        let dockerd_20 =
            "failed to solve with frontend dockerfile.v0: failed to create LLB definition: pulling from host \
                          127.0.0.1:45037 failed with status code [manifests 1]: 401 Unauthorized";
        assert_eq!(refused_pull(dockerd_20).as_deref(), Some("127.0.0.1:45037"));
        let token = "failed to resolve source metadata for registry.example.com/team/base:1: failed to authorize: \
                     failed to fetch anonymous token: unexpected status: 401 Unauthorized";
        assert_eq!(refused_pull(token).as_deref(), Some("registry.example.com"));
        let hub = "failed to resolve source metadata for docker.io/library/privateimage:1: pull access denied, \
                   repository does not exist or may require authorization";
        assert_eq!(refused_pull(hub).as_deref(), Some(credentials::HUB_HOST));
        assert_eq!(refused_pull("process \"/bin/sh -c make\" did not complete successfully: exit code: 2"), None);
        assert_eq!(
            refused_pull("pulling from host 127.0.0.1:5000 failed with status code [manifests 1]: 404 Not Found"),
            None
        );
    }

    #[test]
    fn the_host_is_blamed_only_for_what_is_the_hosts() {
        let enospc = "cannot store sha256:ab: No space left on device (os error 28)";
        assert_eq!(kind_of(enospc, FailureKind::Context), FailureKind::DiskFull);
        let layer = "failed to copy files: write /var/lib/docker/tmp/x: no space left on device";
        assert_eq!(kind_of(layer, FailureKind::Build), FailureKind::DiskFull);
        assert_eq!(kind_of("fork/exec /bin/sh: cannot allocate memory", FailureKind::Build), FailureKind::OutOfMemory);
        let run = "process \"/bin/sh -c make\" did not complete successfully: exit code: 2";
        assert_eq!(kind_of(run, FailureKind::Build), FailureKind::Build);
        assert_eq!(kind_of("transfer of sha256:ab interrupted: reset", FailureKind::Context), FailureKind::Context);
    }

    #[test]
    fn a_build_failure_is_the_dockerfiles_unless_the_engine_the_host_or_a_registry_says_otherwise() {
        let run = r#"process "/bin/sh -c ./configure --out-of-memory-ok" did not complete successfully: exit code: 1"#;
        assert_eq!(of_build(run, false), FailureKind::Build, "the command's text is not searched");
        let killed = r#"process "/bin/sh -c make -j64" did not complete successfully: exit code: 137"#;
        assert_eq!(of_build(killed, false), FailureKind::OutOfMemory);
        let down = "failed to solve: failed to resolve source metadata for 127.0.0.1:5999/base:1: failed to do \
                    request: Head \"http://127.0.0.1:5999/v2/base/manifests/1\": dial tcp 127.0.0.1:5999: connect: connection refused";
        assert_eq!(of_build(down, false), FailureKind::RegistryUnavailable);
        let full = "failed to copy files: copy file range failed: no space left on device";
        assert_eq!(of_build(full, false), FailureKind::DiskFull);
        assert_eq!(of_build("error during connect: connection refused", true), FailureKind::Engine);
        assert_eq!(of_build("dockerfile parse error line 3: unknown instruction: RUNN", false), FailureKind::Build);
    }
}
