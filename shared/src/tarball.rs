//! Checks that a build-context tarball is what a context may be: relative paths inside the
//! context, regular files, directories and links that stay inside it. Anything else (`..`,
//! absolute paths, links leading outside, devices, FIFOs) is refused with the offending path.

use std::io::Read;
use std::path::{Component, Path};

/// What a checked context holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Entries in the tarball.
    pub entries: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

/// Whether `path` (relative to the context root) stays inside it after resolving `..`.
fn inside(path: &Path) -> bool {
    let mut depth: i64 = 0;
    for c in path.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Whether a symlink at `link` (relative to the root) pointing at `target` stays inside.
pub fn link_stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    inside(&link.parent().unwrap_or(Path::new("")).join(target))
}

/// Reads a context tarball to its end and checks every entry.
pub fn check<R: Read>(r: R) -> Result<Summary, String> {
    let mut archive = tar::Archive::new(r);
    let mut summary = Summary { entries: 0, bytes: 0 };
    for entry in archive.entries().map_err(|e| format!("build context is not a tar archive: {e}"))? {
        let entry = entry.map_err(|e| format!("build context is not a valid tar archive: {e}"))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = Path::new(&raw);
        let refuse = |why: &str| Err(format!("build context refused: {raw:?} {why}"));
        if path.is_absolute() {
            return refuse("is an absolute path");
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return refuse("contains '..'");
        }
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Regular
            | tar::EntryType::Continuous
            | tar::EntryType::GNUSparse
            | tar::EntryType::Directory => {}
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target =
                    entry.link_name().map_err(|e| format!("build context: link {raw:?}: {e}"))?.unwrap_or_default();
                let stays = if kind == tar::EntryType::Link {
                    // A hard link names another entry of the archive.
                    !target.is_absolute() && inside(&target)
                } else {
                    link_stays_inside(path, &target)
                };
                if !stays {
                    return refuse(&format!("is a link to {:?}, outside the context", target.display().to_string()));
                }
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            _ => return refuse("is a device, FIFO or other special file, which a build context cannot hold"),
        }
        summary.entries += 1;
        summary.bytes += entry.header().size().unwrap_or(0);
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h
    }

    /// Writes a raw name into the header, bypassing the tar crate's own path checks, as a
    /// hostile client would.
    fn raw_entry(b: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, link: Option<&str>) {
        let mut h = header(kind, 0);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
    }

    #[test]
    fn a_plain_context_passes() {
        let t = tarball(|b| {
            b.append_data(&mut header(tar::EntryType::Regular, 5), "Dockerfile", &b"FROM "[..]).unwrap();
            raw_entry(b, "src/", tar::EntryType::Directory, None);
            raw_entry(b, "src/link", tar::EntryType::Symlink, Some("../Dockerfile"));
            raw_entry(b, "src/hard", tar::EntryType::Link, Some("Dockerfile"));
        });
        assert_eq!(check(t.as_slice()).unwrap(), Summary { entries: 4, bytes: 5 });
    }

    #[test]
    fn hostile_entries_are_refused_naming_them() {
        let cases = [
            ("../escape", tar::EntryType::Regular, None, "contains '..'"),
            ("a/../../b", tar::EntryType::Regular, None, "contains '..'"),
            ("/etc/passwd", tar::EntryType::Regular, None, "is an absolute path"),
            ("link", tar::EntryType::Symlink, Some("/etc/shadow"), "outside the context"),
            ("a/link", tar::EntryType::Symlink, Some("../../x"), "outside the context"),
            ("hard", tar::EntryType::Link, Some("../x"), "outside the context"),
            ("dev", tar::EntryType::Char, None, "device, FIFO"),
            ("blk", tar::EntryType::Block, None, "device, FIFO"),
            ("fifo", tar::EntryType::Fifo, None, "device, FIFO"),
        ];
        for (name, kind, link, want) in cases {
            let t = tarball(|b| raw_entry(b, name, kind, link));
            let err = check(t.as_slice()).unwrap_err();
            assert!(err.contains(&format!("{name:?}")) && err.contains(want), "{name}: {err}");
        }
        assert!(check(&b"not a tarball at all, just text"[..]).is_err());
    }

    #[test]
    fn link_targets_are_resolved_from_the_links_directory() {
        assert!(link_stays_inside(Path::new("a/b/l"), Path::new("../c")));
        assert!(link_stays_inside(Path::new("a/l"), Path::new("./x/../y")));
        assert!(!link_stays_inside(Path::new("l"), Path::new("../x")));
        assert!(!link_stays_inside(Path::new("a/l"), Path::new("/x")));
    }
}
