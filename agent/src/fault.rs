//! Whose fault a failure is, from what the operating system or the engine said: a full disk
//! or exhausted memory is the host's, not the Dockerfile's, and is reported as such so the
//! coordinator can try another agent.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
