//! Contexts this user packed before, found again by what their files' metadata say, so that an
//! unchanged context is not read, hashed and packed again (0.4 s for 100 MiB here) when the
//! coordinator holds it already. As git's index does: a record names the context's digest under
//! a signature of every path's size, mode, inode, modification and change time (and a link's
//! target), taken before packing; a file changed since has another signature. A file changed
//! within a clock tick of that survey could keep its times, so no record is made for a context
//! whose newest file is that recent (20 ms), nor on a filesystem without sub-second times.
//!
//! Records live in `$XDG_CACHE_HOME/archfarm/contexts` (or `~/.cache/...`), one small file each;
//! a record that cannot be read is a miss. The coordinator still checks every upload, and a
//! token builds only contexts it uploaded: a wrong record can only name this user's own context.

use crate::context::Survey;
use archfarm_shared::chunking::Chunk;
use archfarm_shared::Digest;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A file changed this close to the survey may keep its times after a change (kernel timestamps
/// advance by a clock tick, at most 10 ms).
const RACY: Duration = Duration::from_millis(20);
/// Records kept at most; past that the oldest go.
const RECORDS: usize = 256;

/// What a record says of a packed context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Known {
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Its chunks.
    pub chunks: Vec<Chunk>,
    /// Paths it holds.
    pub entries: usize,
    /// The Dockerfile's path inside it.
    pub dockerfile: String,
}

/// What the files of a context say of themselves at one moment, before it is packed.
#[derive(Debug, Clone)]
pub struct Signature {
    digest: Digest,
    /// Whether no file changed too recently to be told apart from a later change.
    settled: bool,
}

/// The signature of what `survey` lists; `None` when a file cannot be read (packing it will
/// say why).
pub fn signature(survey: &Survey) -> Option<Signature> {
    let taken = now_ns();
    let mut text =
        format!("archfarm context signature 1\n{}\n{}\n", survey.context.display(), survey.dockerfile.display());
    let (mut newest, mut coarse) = (0u128, true);
    let extra = std::iter::once((String::new(), survey.dockerfile.clone()));
    for (rel, abs) in survey.paths.iter().cloned().chain(extra) {
        let meta = std::fs::symlink_metadata(&abs).ok()?;
        let ns = |secs: i64, nsecs: i64| (secs.max(0) as u128) * 1_000_000_000 + nsecs.max(0) as u128;
        let (mtime, ctime) = (ns(meta.mtime(), meta.mtime_nsec()), ns(meta.ctime(), meta.ctime_nsec()));
        newest = newest.max(mtime).max(ctime);
        coarse &= meta.mtime_nsec() == 0 && meta.ctime_nsec() == 0;
        let link = if meta.file_type().is_symlink() { std::fs::read_link(&abs).ok()? } else { PathBuf::new() };
        text.push_str(&format!(
            "{rel:?} {} {} {} {} {mtime} {ctime} {:?}\n",
            meta.mode(),
            meta.len(),
            meta.dev(),
            meta.ino(),
            link
        ));
    }
    // Whole-second times come from filesystems (network ones among them) whose clock may not be
    // this machine's: a file there is never taken as settled.
    let settled = !coarse && newest + RACY.as_nanos() < taken;
    Some(Signature { digest: Digest::of(text.as_bytes()), settled })
}

fn dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("archfarm/contexts"))
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
}

/// The context whose files had `signature` when it was last packed, if recorded.
pub fn recall(signature: &Signature) -> Option<Known> {
    let text = std::fs::read(dir()?.join(signature.digest.hex())).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Records that the files of `signature` packed to `packed` (best effort: a cache), unless they
/// changed too recently before the signature was taken.
pub fn remember(signature: &Signature, packed: &crate::context::Planned) {
    let Some(dir) = dir().filter(|_| signature.settled) else { return };
    let known = Known {
        digest: packed.digest.clone(),
        size: packed.size,
        chunks: packed.chunks.clone(),
        entries: packed.entries,
        dockerfile: packed.dockerfile.clone(),
    };
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".partial-{}-{}", std::process::id(), now_ns()));
        std::fs::write(&tmp, serde_json::to_vec(&known).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, dir.join(signature.digest.hex()))?;
        prune(&dir)
    };
    // A record that cannot be written costs the next build a pack, nothing else.
    let _ = write();
}

/// Keeps the newest [`RECORDS`] records.
fn prune(dir: &std::path::Path) -> std::io::Result<()> {
    let mut records: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if records.len() > RECORDS {
        records.sort();
        for (_, path) in &records[..records.len() - RECORDS] {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{pack_surveyed, survey};

    /// Records go to a folder of the test's own (the variable is read at each call).
    fn with_cache<T>(f: impl FnOnce() -> T) -> T {
        static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
        let cache = tempfile::tempdir().unwrap();
        std::env::set_var("XDG_CACHE_HOME", cache.path());
        f()
    }

    #[test]
    fn an_unchanged_context_is_recalled_and_any_change_or_a_fresh_file_is_not() {
        with_cache(|| {
            let ctx = tempfile::tempdir().unwrap();
            std::fs::write(ctx.path().join("Dockerfile"), "FROM scratch\nCOPY a /a\n").unwrap();
            std::fs::write(ctx.path().join("a"), "one").unwrap();
            let pack = |ctx: &std::path::Path| {
                let s = survey(ctx, None).unwrap();
                let sig = signature(&s).unwrap();
                let packed = pack_surveyed(&s, 1 << 20).unwrap();
                remember(&sig, &packed);
                packed
            };
            // Files just written could still change within their clock tick: nothing is recorded.
            pack(ctx.path());
            assert_eq!(recall(&signature(&survey(ctx.path(), None).unwrap()).unwrap()), None);

            // Settled: recalled, with what packing gave.
            std::thread::sleep(RACY * 2);
            let packed = pack(ctx.path());
            let known = recall(&signature(&survey(ctx.path(), None).unwrap()).unwrap()).expect("recalled");
            assert_eq!(
                (known.digest, known.size, known.chunks),
                (packed.plan.digest, packed.plan.size, packed.plan.chunks)
            );

            // One byte changed, the same size, the old modification time put back: the change
            // time gives it away.
            let before = std::fs::metadata(ctx.path().join("a")).unwrap().modified().unwrap();
            std::fs::write(ctx.path().join("a"), "two").unwrap();
            std::fs::File::options().write(true).open(ctx.path().join("a")).unwrap().set_modified(before).unwrap();
            assert_eq!(recall(&signature(&survey(ctx.path(), None).unwrap()).unwrap()), None);
            // A file added is a change too.
            std::thread::sleep(RACY * 2);
            pack(ctx.path());
            std::fs::write(ctx.path().join("b"), "new").unwrap();
            assert_eq!(recall(&signature(&survey(ctx.path(), None).unwrap()).unwrap()), None);
        })
    }
}
