//! Applying an image's layers to a directory, every path resolved inside it. An image is
//! hostile: a layer may hold a symlink to `/home/u` and a later one a whiteout `x/.ssh` under
//! it, an entry named `.wh.`, a hard link to `../../etc/passwd`, or an opaque marker for a
//! directory the user already had. Every step (create, write, link, whiteout, opaque, replacing
//! what is there) goes through a capability handle on the destination ([`cap_std::fs::Dir`]),
//! which refuses any path that leaves it, through `..` or a symlink at any component. An entry
//! that would leave is skipped and reported, never followed.
//!
//! Whiteouts and opaque markers delete only what an earlier layer of the same export wrote:
//! files the destination held before the export are the user's, and are never deleted.

use anyhow::Context as _;
use cap_std::ambient_authority;
use cap_std::fs::{Dir, Permissions, PermissionsExt as _};
use std::collections::{BTreeSet, HashSet};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

const OPAQUE: &str = ".wh..wh..opq";
const WHITEOUT: &str = ".wh.";

/// One platform's filesystem being written: the destination, and what this export put there.
#[derive(Debug)]
pub struct Unpacker {
    root: Dir,
    /// Every path an applied layer wrote (relative to the root), directories made on the way
    /// included.
    /// Ordered by components, so what lies below a path follows it: a whiteout or an opaque
    /// marker finds what it hides by a range, not by a walk over every path of the image.
    written: BTreeSet<PathBuf>,
    /// Those of them that were not there before the export: the user had nothing at them.
    created: HashSet<PathBuf>,
    /// Entries skipped, with why: what the user is told.
    pub skipped: Vec<String>,
}

impl Unpacker {
    /// Writes into `root`, which must exist.
    pub fn open(root: &Path) -> anyhow::Result<Unpacker> {
        let dir = Dir::open_ambient_dir(root, ambient_authority())
            .with_context(|| format!("cannot open {}", root.display()))?;
        Ok(Unpacker { root: dir, written: BTreeSet::new(), created: HashSet::new(), skipped: Vec::new() })
    }

    /// Applies one uncompressed layer tar on top of what the earlier layers wrote.
    pub fn apply(&mut self, layer: impl Read) -> anyhow::Result<()> {
        let mut archive = tar::Archive::new(layer);
        // What this layer wrote: an opaque marker empties only what lower layers left.
        let mut this_layer: HashSet<PathBuf> = HashSet::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let raw = entry.path()?.into_owned();
            let Some(rel) = relative(&raw) else {
                self.skip(&raw, "it names a path outside the destination");
                continue;
            };
            let name = rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
            if name == OPAQUE {
                self.empty(&parent, &this_layer);
                continue;
            }
            if let Some(hidden) = name.strip_prefix(WHITEOUT) {
                match hidden {
                    "" | "." | ".." => self.skip(&raw, "a whiteout that names no file"),
                    hidden => self.delete(&parent.join(hidden)),
                }
                continue;
            }
            match self.write(&mut entry, &rel) {
                Ok(made) => {
                    for path in made {
                        this_layer.insert(path.clone());
                        self.written.insert(path);
                    }
                }
                Err(e) => self.skip(&raw, &format!("{e:#}")),
            }
        }
        Ok(())
    }

    fn skip(&mut self, path: &Path, why: &str) {
        self.skipped.push(format!("{}: {why}", path.display()));
    }

    /// Deletes what earlier layers of this export wrote at or below `rel`; what the user had
    /// there before stays (a directory they had keeps their files, and itself).
    fn delete(&mut self, rel: &Path) {
        let mut under: Vec<PathBuf> = below(&self.written, rel).cloned().collect();
        // Deepest first, so a directory the user had is emptied only of the export's files.
        under.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for path in under {
            self.written.remove(&path);
            let ours = self.created.remove(&path);
            if !ours && self.root.symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            if let Err(e) = remove(&self.root, &path) {
                self.skip(&path, &format!("cannot delete it: {e}"));
            }
        }
    }

    /// Empties directory `rel` of what earlier layers of this export put there.
    fn empty(&mut self, rel: &Path, this_layer: &HashSet<PathBuf>) {
        let below: Vec<PathBuf> = below(&self.written, rel)
            .filter(|p| p.parent() == Some(rel) && !this_layer.contains(*p))
            .cloned()
            .collect();
        for child in below {
            self.delete(&child);
        }
    }

    /// Writes one entry; returns the paths it wrote (directories made on the way, then the
    /// entry), none for a kind an exported tree has no use for.
    fn write<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, rel: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        if matches!(kind, tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo) {
            return Ok(vec![]); // device nodes need root and mean nothing in an exported tree
        }
        if rel.as_os_str().is_empty() {
            return Ok(vec![]); // the root itself: it exists
        }
        let mut made: Vec<PathBuf> =
            rel.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty()).map(Path::to_path_buf).collect();
        made.reverse();
        made.retain(|a| self.root.symlink_metadata(a).is_err());
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.root.create_dir_all(parent).context("creating its directory")?;
        }
        if self.root.symlink_metadata(rel).is_err() {
            made.push(rel.to_owned());
        }
        self.created.extend(made.iter().cloned());
        if made.last().is_none_or(|m| m != rel) {
            made.push(rel.to_owned());
        }
        // A path of another kind is replaced, never written through (a symlink).
        if let Ok(meta) = self.root.symlink_metadata(rel) {
            if !(meta.is_dir() && kind == tar::EntryType::Directory) {
                remove(&self.root, rel).context("replacing what is there")?;
            }
        }
        match kind {
            tar::EntryType::Directory => {
                if self.root.symlink_metadata(rel).is_err() {
                    self.root.create_dir(rel)?;
                }
                self.root.set_permissions(rel, Permissions::from_mode(mode | 0o700))?;
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name()?.context("a symlink with no target")?.into_owned();
                // Written as it is, absolute or not: the link itself lies inside, in a directory
                // opened inside; any later step through it is refused.
                let name = rel.file_name().context("a symlink with no name")?;
                let parent = match rel.parent().filter(|p| !p.as_os_str().is_empty()) {
                    Some(parent) => self.root.open_dir(parent)?,
                    None => self.root.try_clone()?,
                };
                rustix::fs::symlinkat(&target, &parent, name).map_err(std::io::Error::from)?;
            }
            tar::EntryType::Link => {
                let target = entry.link_name()?.context("a hard link with no target")?;
                let source = relative(&target).context("a hard link to a path outside the destination")?;
                self.root.hard_link(&source, &self.root, rel)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mut file = self.root.create(rel)?;
                std::io::copy(entry, &mut file)?;
                file.set_permissions(Permissions::from_mode(mode))?;
            }
            _ => return Ok(vec![]),
        }
        Ok(made)
    }
}

/// `rel` and every path below it, in order.
fn below<'a>(paths: &'a BTreeSet<PathBuf>, rel: &'a Path) -> impl Iterator<Item = &'a PathBuf> + 'a {
    paths
        .range::<Path, _>((std::ops::Bound::Included(rel), std::ops::Bound::Unbounded))
        .take_while(move |p| p.starts_with(rel))
}

/// The path of an entry relative to the root; `None` if it leaves it (`..`, absolute).
fn relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Removes `rel` inside `root`, a directory with what it holds; never anything outside.
fn remove(root: &Dir, rel: &Path) -> std::io::Result<()> {
    match root.symlink_metadata(rel) {
        Ok(m) if m.is_dir() => root.remove_dir_all(rel),
        Ok(_) => root.remove_file(rel),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;
