//! A lock per tag: a build holds its tags' locks while it decides and writes them, so of two
//! builds racing for a tag the later submission wins whichever finishes last, and builds of
//! other tags are not held up.

/// A lock per tag, made when first asked for and forgotten when nobody holds or awaits it.
#[derive(Debug, Default)]
pub struct TagLocks {
    locks: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

impl TagLocks {
    /// Locks every tag of `tags`, in sorted order so that two builds never wait on each other.
    pub async fn lock(&self, tags: impl Iterator<Item = String>) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
        let mut tags: Vec<String> = tags.collect();
        tags.sort();
        tags.dedup();
        let locks: Vec<_> = {
            let mut all = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            all.retain(|_, l| std::sync::Arc::strong_count(l) > 1);
            tags.into_iter().map(|t| all.entry(t).or_default().clone()).collect()
        };
        let mut held = Vec::with_capacity(locks.len());
        for lock in locks {
            held.push(lock.lock_owned().await);
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_tag_is_held_by_one_build_at_a_time_and_others_pass() {
        let locks = TagLocks::default();
        let first = locks.lock(["r/a:1".to_owned(), "r/a:latest".to_owned()].into_iter()).await;
        let other = tokio::time::timeout(Duration::from_millis(50), locks.lock(["r/b:1".to_owned()].into_iter())).await;
        assert!(other.is_ok(), "another tag is not held up");
        drop(other);
        let same =
            tokio::time::timeout(Duration::from_millis(50), locks.lock(["r/a:latest".to_owned()].into_iter())).await;
        assert!(same.is_err(), "the same tag waits");
        drop(first);
        assert!(locks.lock(["r/a:latest".to_owned()].into_iter()).await.len() == 1);
    }
}
