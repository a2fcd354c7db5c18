//! Tags never move backwards. Whether a build may move a tag is decided here, purely, from what
//! the coordinator recorded of the tag's last write and what the registry serves now:
//!
//! - a tag moves only to a build submitted later than the one it points at, unless forced;
//! - a tag that no longer points where this coordinator last wrote it (another writer moved
//!   it, or the database was restored from a backup) is not moved unless forced;
//! - publishing a finished build again (`builds publish`) moves only tags that still point at
//!   it, or that no build wrote, unless forced.
//!
//! Every write is recorded per tag ([`super::store`]), so a partial publish shows which tags
//! moved and `builds publish` completes it.

use archfarm_shared::{BuildId, Digest};

/// What the coordinator recorded of a tag's last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRecord {
    /// The build whose index it was.
    pub build: BuildId,
    /// When that build was submitted, milliseconds since the Unix epoch.
    pub build_created_ms: u64,
    /// The index written.
    pub digest: Digest,
}

/// The write the coordinator knows of last: the recorded one, unless the registry serves the
/// index of a write that was begun (`intent`) and not recorded, because the coordinator died
/// between the push and the record. Then that write happened, and it is the last one.
pub fn settle(record: Option<TagRecord>, intent: Option<TagRecord>, now: Option<&Digest>) -> Option<TagRecord> {
    match intent {
        Some(intent) if Some(&intent.digest) == now => Some(intent),
        _ => record,
    }
}

/// The build asking to move a tag.
#[derive(Debug, Clone, Copy)]
pub struct Mover<'a> {
    /// The build.
    pub build: &'a BuildId,
    /// When it was submitted.
    pub created_ms: u64,
    /// `builds publish` of a build that already ended, rather than the build's own end.
    pub again: bool,
    /// `--force`: move it whatever it points at.
    pub force: bool,
}

/// Whether `mover` may write `tag`, which the registry resolves to `now` and which the
/// coordinator last wrote as `record`. `Err` says why not and what to do.
pub fn may_move(tag: &str, record: Option<&TagRecord>, now: Option<&Digest>, mover: Mover<'_>) -> Result<(), String> {
    if mover.force {
        return Ok(());
    }
    let Some(record) = record else { return Ok(()) };
    let force = format!("`archfarm builds publish {} --force` moves it", mover.build);
    if now.is_some_and(|now| *now != record.digest) {
        return Err(format!(
            "{tag} resolves to {}, not to the index this coordinator wrote there last ({}, build {}): another \
             writer moved it, or this coordinator's state was restored from a backup; kept. {force}",
            now.map(ToString::to_string).unwrap_or_default(),
            record.digest,
            record.build
        ));
    }
    if record.build == *mover.build {
        return Ok(());
    }
    let later = (record.build_created_ms, record.build.as_str()) > (mover.created_ms, mover.build.as_str());
    if later {
        return Err(format!("{tag} points at build {}, submitted later; kept. {force}", record.build));
    }
    if mover.again {
        return Err(format!("{tag} now points at build {}; kept. {force}", record.build));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(build: &BuildId, created_ms: u64, digest: &Digest) -> TagRecord {
        TagRecord { build: build.clone(), build_created_ms: created_ms, digest: digest.clone() }
    }

    #[test]
    fn an_intent_the_registry_serves_is_the_last_write_and_one_it_does_not_is_not() {
        let (old, new) = (BuildId::random(), BuildId::random());
        let (d_old, d_new) = (Digest::of(b"old"), Digest::of(b"new"));
        let (recorded, intent) = (record(&old, 1, &d_old), record(&new, 2, &d_new));
        assert_eq!(settle(Some(recorded.clone()), Some(intent.clone()), Some(&d_new)), Some(intent.clone()));
        assert_eq!(settle(None, Some(intent.clone()), Some(&d_new)), Some(intent.clone()), "a first write");
        // The push never happened (or another writer came after it): the record stands.
        assert_eq!(settle(Some(recorded.clone()), Some(intent.clone()), Some(&d_old)), Some(recorded.clone()));
        assert_eq!(settle(Some(recorded.clone()), Some(intent), Some(&Digest::of(b"x"))), Some(recorded.clone()));
        assert_eq!(settle(Some(recorded.clone()), None, Some(&d_new)), Some(recorded));
    }

    #[test]
    fn a_tag_moves_only_forward_unless_forced() {
        let (old, new) = (BuildId::random(), BuildId::random());
        let (d_old, d_new) = (Digest::of(b"old"), Digest::of(b"new"));
        let by = |build, created_ms, again, force| Mover { build, created_ms, again, force };
        // Never written by a build: any build may write it.
        assert!(may_move("t", None, Some(&d_old), by(&old, 1, false, false)).is_ok());
        // The newer build finished first; the older one finishing later does not move it back.
        let newer = record(&new, 2, &d_new);
        let err = may_move("reg/app:1", Some(&newer), Some(&d_new), by(&old, 1, false, false)).unwrap_err();
        assert!(err.contains(&format!("points at build {new}, submitted later; kept")), "{err}");
        assert!(may_move("reg/app:1", Some(&newer), Some(&d_new), by(&old, 1, false, true)).is_ok(), "forced");
        // The older build published first; the newer one moves it forward.
        let older = record(&old, 1, &d_old);
        assert!(may_move("t", Some(&older), Some(&d_old), by(&new, 2, false, false)).is_ok());
        // Publishing the old build again, once the tag points elsewhere: refused without force.
        let err = may_move("t", Some(&newer), Some(&d_new), by(&old, 1, true, false)).unwrap_err();
        assert!(err.contains("submitted later"), "{err}");
        let err = may_move("t", Some(&older), Some(&d_old), by(&new, 2, true, false)).unwrap_err();
        assert!(err.contains(&format!("now points at build {old}")), "{err}");
        // Publishing again where the tag still points at the build: harmless, allowed.
        assert!(may_move("t", Some(&older), Some(&d_old), by(&old, 1, true, false)).is_ok());
        // A tag moved behind the coordinator's back (or a restored database): kept.
        let err = may_move("t", Some(&older), Some(&Digest::of(b"other")), by(&new, 2, false, false)).unwrap_err();
        assert!(err.contains("another writer moved it, or this coordinator's state was restored"), "{err}");
        // A tag deleted from the registry: written again.
        assert!(may_move("t", Some(&older), None, by(&new, 2, false, false)).is_ok());
    }
}
