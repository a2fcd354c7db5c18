//! What a build may need of an agent's engine beyond its platform, and which engines have it:
//! the rule by which the coordinator places a job, and refuses at once a build that no agent's
//! engine could run.

use crate::protocol::{BuildRequest, EngineFacts};
use std::fmt;

/// One thing only some engines do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EngineNeed {
    /// `--cache-to type=registry,...,mode=max`: BuildKit's registry cache exporter, which the
    /// engine's BuildKit runs only on the containerd image store (on the classic store it
    /// exports inline cache alone, the layers of the final stage).
    CacheOfEveryStage,
}

impl EngineNeed {
    /// What a build `req` needs, in a fixed order.
    pub fn of_request(req: &BuildRequest) -> Vec<EngineNeed> {
        let mut needs = Vec::new();
        if req.cache_max && req.cache_to.is_some() {
            needs.push(EngineNeed::CacheOfEveryStage);
        }
        needs
    }

    /// Whether `engine` does it.
    pub fn met_by(self, engine: &EngineFacts) -> bool {
        match self {
            EngineNeed::CacheOfEveryStage => engine.image_store == "containerd",
        }
    }

    /// The flag that asks for it.
    pub fn flag(self) -> &'static str {
        match self {
            EngineNeed::CacheOfEveryStage => "--cache-to mode=max",
        }
    }

    /// What an engine needs for it, in words.
    pub fn requirement(self) -> &'static str {
        match self {
            EngineNeed::CacheOfEveryStage => "the containerd image store (BuildKit's registry cache exporter)",
        }
    }

    /// What `engine` has instead, in words: `Docker Engine 20.10.24 on the overlay2 store`.
    pub fn lack(self, engine: &EngineFacts) -> String {
        let store = if engine.image_store.is_empty() { "an unknown" } else { engine.image_store.as_str() };
        format!("Docker Engine {} on the {store} store", engine.version)
    }
}

impl fmt::Display for EngineNeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} needs {}", self.flag(), self.requirement())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(store: &str) -> EngineFacts {
        EngineFacts { image_store: store.into(), ..EngineFacts::of_version("26.1.5") }
    }

    #[test]
    fn a_cache_of_every_stage_needs_the_containerd_store() {
        let need = EngineNeed::CacheOfEveryStage;
        assert!(need.met_by(&engine("containerd")));
        assert!(!need.met_by(&engine("overlay2")));
        assert!(!need.met_by(&EngineFacts::default()), "an engine that says nothing of its store cannot");
        assert_eq!(need.lack(&engine("overlay2")), "Docker Engine 26.1.5 on the overlay2 store");
    }

    #[test]
    fn only_mode_max_of_a_registry_cache_needs_it() {
        let mut req = BuildRequest::new(vec![], vec![], crate::Digest::of(b""), "Dockerfile");
        assert!(EngineNeed::of_request(&req).is_empty());
        req.cache_to = Some("r/c:c".into());
        assert!(EngineNeed::of_request(&req).is_empty(), "mode=min is inline cache, on every engine");
        req.cache_max = true;
        assert_eq!(EngineNeed::of_request(&req), [EngineNeed::CacheOfEveryStage]);
    }
}
