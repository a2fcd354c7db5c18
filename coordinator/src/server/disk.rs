//! The coordinator's disk, as the parts that write to it ask about it.

use std::path::Path;

/// Bytes free for unprivileged use on the file system of `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}
