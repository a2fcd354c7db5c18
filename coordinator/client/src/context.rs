//! Packs a build context into a deterministic tarball (sorted paths, zero owners and times), so
//! the same tree always has the same sha256 and is uploaded once.

use archfarm_shared::dockerignore::DockerIgnore;
use archfarm_shared::Digest;
use sha2::Digest as _;
use std::fs::Metadata;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Name under which a Dockerfile from outside the context travels inside it.
pub const OUTSIDE_DOCKERFILE: &str = ".archfarm-dockerfile";

/// What a context is, taken in one pass over its files: its digest, size and chunks. Its bytes
/// are not kept: [`crate::cut::cut_chunks`] makes them again from the same files for the chunks to send.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The tarball's sha256.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Its content-defined chunks, in order.
    pub chunks: Vec<archfarm_shared::chunking::Chunk>,
    /// Files and directories it holds.
    pub entries: usize,
    /// Path of the Dockerfile inside the tarball.
    pub dockerfile: String,
}

/// A packed context on disk, and what it is.
#[derive(Debug)]
pub struct Packed {
    /// The tarball (deleted when dropped).
    pub file: tempfile::NamedTempFile,
    /// Its digest, size and chunks.
    pub plan: Planned,
}

impl std::ops::Deref for Packed {
    type Target = Planned;
    fn deref(&self) -> &Planned {
        &self.plan
    }
}

struct Hashing<W> {
    inner: W,
    hasher: sha2::Sha256,
    chunker: archfarm_shared::chunking::Chunker,
    written: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.chunker.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What a context is made of, before it is packed: its folder, the Dockerfile, and every path
/// that goes in, sorted.
#[derive(Debug)]
pub struct Survey {
    /// The context folder, canonical.
    pub context: PathBuf,
    /// The Dockerfile, canonical.
    pub dockerfile: PathBuf,
    /// The Dockerfile's path inside the context, when it is inside.
    inside: Option<String>,
    /// Each path that goes in, relative and absolute, sorted.
    pub paths: Vec<(String, PathBuf)>,
}

/// Lists what packing `context` takes, honouring its `.dockerignore`. `dockerfile` is the `-f`
/// path as the user gave it (relative to the working directory), or `None` for
/// `CONTEXT/Dockerfile`.
pub fn survey(context: &Path, dockerfile: Option<&Path>) -> Result<Survey, String> {
    let context = context.canonicalize().map_err(|e| format!("build context {}: {e}", context.display()))?;
    if !context.is_dir() {
        return Err(format!("build context {} is not a directory", context.display()));
    }
    let dockerfile_path = match dockerfile {
        Some(p) => p.to_path_buf(),
        None => context.join("Dockerfile"),
    };
    let dockerfile_abs = dockerfile_path
        .canonicalize()
        .map_err(|_| format!("Dockerfile not found: {} (pass -f to name another file)", dockerfile_path.display()))?;
    if !dockerfile_abs.is_file() {
        return Err(format!("Dockerfile {} is not a file", dockerfile_abs.display()));
    }
    let inside = dockerfile_abs.strip_prefix(&context).ok().map(rel_string);

    let ignore = match std::fs::read_to_string(context.join(".dockerignore")) {
        Ok(text) => DockerIgnore::parse(&text)?,
        Err(_) => DockerIgnore::default(),
    };
    let mut paths = Vec::new();
    walk(&context, &context, &ignore, &mut paths)?;
    // Docker always sends the Dockerfile and .dockerignore, whatever .dockerignore says.
    for always in [inside.clone(), Some(".dockerignore".to_owned())].into_iter().flatten() {
        let abs = context.join(&always);
        if abs.is_file() && !paths.iter().any(|(rel, _)| *rel == always) {
            paths.push((always, abs));
        }
    }
    paths.sort();
    Ok(Survey { context, dockerfile: dockerfile_abs, inside, paths })
}

impl Survey {
    /// The Dockerfile's path inside the packed context.
    pub fn dockerfile_inside(&self) -> String {
        self.inside.clone().unwrap_or_else(|| OUTSIDE_DOCKERFILE.to_owned())
    }
}

/// Packs `context`, honouring its `.dockerignore`. `dockerfile` is the `-f` path as the user
/// gave it (relative to the working directory), or `None` for `CONTEXT/Dockerfile`.
pub fn pack(context: &Path, dockerfile: Option<&Path>, max_bytes: u64) -> Result<Packed, String> {
    pack_surveyed(&survey(context, dockerfile)?, max_bytes)
}

/// Packs what `survey` found.
pub fn pack_surveyed(survey: &Survey, max_bytes: u64) -> Result<Packed, String> {
    let file = tempfile::NamedTempFile::new().map_err(|e| format!("cannot create a temporary file: {e}"))?;
    let out = std::io::BufWriter::new(file.reopen().map_err(|e| e.to_string())?);
    let plan = planned(survey, out, max_bytes)?;
    Ok(Packed { file, plan })
}

/// Takes what `survey` found packs to, without writing the tarball anywhere: a 100 MiB context
/// cost a 100 MiB temporary file, written before its first byte could be sent.
pub fn plan_surveyed(survey: &Survey, max_bytes: u64) -> Result<Planned, String> {
    planned(survey, std::io::sink(), max_bytes)
}

fn planned<W: Write>(survey: &Survey, inner: W, max_bytes: u64) -> Result<Planned, String> {
    let mut out = Hashing { inner, hasher: sha2::Sha256::new(), chunker: Default::default(), written: 0 };
    write_tar(survey, &mut out)?;
    out.flush().map_err(|e| e.to_string())?;
    if out.written > max_bytes {
        return Err(format!(
            "build context is {} bytes, over the limit of {max_bytes}; exclude files with .dockerignore",
            out.written
        ));
    }
    Ok(Planned {
        digest: Digest::from_sha256(out.hasher.finalize().into()),
        chunks: out.chunker.finish(),
        size: out.written,
        entries: survey.paths.len(),
        dockerfile: survey.dockerfile_inside(),
    })
}

/// Writes the tarball of what `survey` found to `out`. After a failure nothing more reaches
/// `out`: the tar writer ends the archive when it is dropped, and those 1,024 zeros would
/// otherwise complete a chunk being cut.
pub(crate) fn write_tar<W: Write>(survey: &Survey, out: W) -> Result<(), String> {
    let Survey { dockerfile: dockerfile_abs, inside, paths, .. } = survey;
    let mut tar = tar::Builder::new(Gate { inner: out, open: true });
    tar.follow_symlinks(false);
    let mut entries = || -> Result<(), String> {
        for (rel, abs) in paths {
            let meta = std::fs::symlink_metadata(abs).map_err(|e| format!("{}: {e}", abs.display()))?;
            append(&mut tar, rel, abs, &meta)?;
        }
        if inside.is_none() {
            let data = std::fs::read(dockerfile_abs).map_err(|e| format!("{}: {e}", dockerfile_abs.display()))?;
            let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
            tar.append_data(&mut h, OUTSIDE_DOCKERFILE, data.as_slice()).map_err(|e| e.to_string())?;
        }
        tar.finish().map_err(|e| format!("packing the context: {e}"))
    };
    let result = entries();
    if result.is_err() {
        tar.get_mut().open = false;
    }
    result
}

/// A writer that passes bytes on until it is closed, then drops them.
struct Gate<W> {
    inner: W,
    open: bool,
}

impl<W: Write> Write for Gate<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.open {
            self.inner.write(buf)
        } else {
            Ok(buf.len())
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn rel_string(p: &Path) -> String {
    p.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

fn walk(root: &Path, dir: &Path, ignore: &DockerIgnore, out: &mut Vec<(String, PathBuf)>) -> Result<(), String> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("reading {}: {e}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let abs = entry.path();
        let rel = rel_string(abs.strip_prefix(root).unwrap_or(&abs));
        let ty = entry.file_type().map_err(|e| format!("{}: {e}", abs.display()))?;
        let excluded = ignore.excluded(&rel);
        if ty.is_dir() {
            if !excluded {
                out.push((rel, abs.clone()));
            }
            if !excluded || ignore.has_exceptions() {
                walk(root, &abs, ignore, out)?;
            }
            continue;
        }
        if excluded {
            continue;
        }
        if ty.is_symlink() {
            let target = std::fs::read_link(&abs).map_err(|e| format!("{}: {e}", abs.display()))?;
            if !archfarm_shared::tarball::link_stays_inside(Path::new(&rel), &target) {
                return Err(format!(
                    "build context holds {rel}, a symlink to {}, outside the context; a build cannot follow it. \
                     Copy the file in, or add the link to .dockerignore",
                    target.display()
                ));
            }
        }
        if ty.is_block_device() || ty.is_char_device() || ty.is_fifo() || ty.is_socket() {
            return Err(format!(
                "build context holds {rel}, a device, pipe or socket, which cannot be sent; remove it or add it to .dockerignore"
            ));
        }
        out.push((rel, abs));
    }
    Ok(())
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn append<W: Write>(tar: &mut tar::Builder<W>, rel: &str, abs: &Path, meta: &Metadata) -> Result<(), String> {
    let mode = meta.permissions().mode() & 0o7777;
    let err = |e: std::io::Error| format!("packing {rel}: {e}");
    if meta.is_dir() {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        tar.append_data(&mut h, format!("{rel}/"), std::io::empty()).map_err(err)
    } else if meta.file_type().is_symlink() {
        let target = std::fs::read_link(abs).map_err(err)?;
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, rel, target).map_err(err)
    } else {
        let file = std::fs::File::open(abs).map_err(err)?;
        let mut h = header(tar::EntryType::Regular, mode, meta.len());
        tar.append_data(&mut h, rel, file).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::create_dir_all(p.join("src")).unwrap();
        std::fs::create_dir_all(p.join("target/debug")).unwrap();
        std::fs::write(p.join("Dockerfile"), "FROM scratch\nCOPY src /src\n").unwrap();
        std::fs::write(p.join("src/main.rs"), "fn main() {}").unwrap();
        std::fs::write(p.join("target/debug/big"), vec![0u8; 4096]).unwrap();
        std::fs::write(p.join(".dockerignore"), "target\nDockerfile\n").unwrap();
        d
    }

    fn names(packed: &Packed) -> Vec<String> {
        let mut ar = tar::Archive::new(std::fs::File::open(packed.file.path()).unwrap());
        ar.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn honours_dockerignore_but_always_sends_the_dockerfile() {
        let d = tree();
        let packed = pack(d.path(), None, 1 << 20).unwrap();
        assert_eq!(names(&packed), [".dockerignore", "Dockerfile", "src/", "src/main.rs"]);
        assert_eq!(packed.dockerfile, "Dockerfile");
        assert_eq!(packed.size, std::fs::metadata(packed.file.path()).unwrap().len());
    }

    #[test]
    fn same_tree_same_digest_and_one_change_moves_it() {
        let d = tree();
        let a = pack(d.path(), None, 1 << 20).unwrap();
        let b = pack(d.path(), None, 1 << 20).unwrap();
        assert_eq!(a.digest, b.digest);
        std::fs::write(d.path().join("src/main.rs"), "fn main() { }").unwrap();
        assert_ne!(pack(d.path(), None, 1 << 20).unwrap().digest, a.digest);
        // An ignored file does not change the digest.
        std::fs::write(d.path().join("target/debug/big"), b"changed").unwrap();
        let c = pack(d.path(), None, 1 << 20).unwrap();
        std::fs::write(d.path().join("target/debug/other"), b"new").unwrap();
        assert_eq!(pack(d.path(), None, 1 << 20).unwrap().digest, c.digest);
    }

    #[test]
    fn dockerfile_outside_the_context_travels_inside_it() {
        let d = tree();
        let other = tempfile::tempdir().unwrap();
        let f = other.path().join("Special.Dockerfile");
        std::fs::write(&f, "FROM scratch\n").unwrap();
        let packed = pack(d.path(), Some(&f), 1 << 20).unwrap();
        assert_eq!(packed.dockerfile, OUTSIDE_DOCKERFILE);
        assert!(names(&packed).contains(&OUTSIDE_DOCKERFILE.to_owned()));
        let inside = pack(d.path(), Some(&d.path().join("src/main.rs")), 1 << 20).unwrap();
        assert_eq!(inside.dockerfile, "src/main.rs");
    }

    #[test]
    fn clear_errors() {
        let d = tree();
        std::fs::remove_file(d.path().join("Dockerfile")).unwrap();
        let err = pack(d.path(), None, 1 << 20).unwrap_err();
        assert!(err.starts_with("Dockerfile not found:") && err.ends_with("(pass -f to name another file)"), "{err}");
        let d = tree();
        let err = pack(d.path(), None, 100).unwrap_err();
        assert!(err.contains("over the limit of 100"), "{err}");
        let err = pack(Path::new("/nonexistent-context"), None, 100).unwrap_err();
        assert!(err.starts_with("build context /nonexistent-context"), "{err}");
    }

    #[test]
    fn symlinks_leading_outside_are_refused() {
        let d = tree();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("src/abs")).unwrap();
        let err = pack(d.path(), None, 1 << 20).unwrap_err();
        assert!(err.contains("src/abs, a symlink to /etc/passwd, outside the context"), "{err}");
        std::fs::remove_file(d.path().join("src/abs")).unwrap();
        std::os::unix::fs::symlink("../../x", d.path().join("src/up")).unwrap();
        assert!(pack(d.path(), None, 1 << 20).unwrap_err().contains("outside the context"));
    }

    #[test]
    fn symlinks_are_kept_as_links() {
        let d = tree();
        std::os::unix::fs::symlink("main.rs", d.path().join("src/link.rs")).unwrap();
        let packed = pack(d.path(), None, 1 << 20).unwrap();
        let mut ar = tar::Archive::new(std::fs::File::open(packed.file.path()).unwrap());
        let link = ar.entries().unwrap().map(Result::unwrap).find(|e| e.path().unwrap().ends_with("link.rs")).unwrap();
        assert_eq!(link.header().entry_type(), tar::EntryType::Symlink);
    }
}
