//! Builds in progress on this coordinator: where their events go, and how to cancel them.
//! Clients that start or watch a build subscribe here; the build's history is in the store.

use archfarm_shared::protocol::BuildEvent;
use archfarm_shared::{BuildId, Platform};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Events buffered per build for slow watchers; older log lines are dropped past this (never
/// the last event). The buffer is allocated whole when the build starts (about 85 bytes a slot,
/// measured with heaptrack): 4096 slots made a thousand running builds cost 650 MB, and 512
/// made the ten thousand of P5's burst cost 430 MB.
const EVENT_BUFFER: usize = 128;

/// One running build's channels.
#[derive(Debug, Clone)]
pub struct Live {
    /// Every event of the build.
    pub events: broadcast::Sender<BuildEvent>,
    /// Cancelled by `archfarm builds cancel`.
    pub cancel: CancellationToken,
}

impl Live {
    /// Sends an event to whoever watches (nobody is fine).
    pub fn emit(&self, event: BuildEvent) {
        let _ = self.events.send(event);
    }

    /// Sends a line of a platform's build log.
    pub fn log(&self, platform: &Platform, line: String) {
        self.emit(BuildEvent::Log { platform: platform.clone(), line });
    }
}

/// The running builds.
#[derive(Debug, Default)]
pub struct LiveBuilds {
    builds: Mutex<HashMap<BuildId, Live>>,
}

impl LiveBuilds {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BuildId, Live>> {
        self.builds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a build that is starting.
    pub fn start(&self, build: &BuildId) -> Live {
        let live = Live { events: broadcast::channel(EVENT_BUFFER).0, cancel: CancellationToken::new() };
        self.lock().insert(build.clone(), live.clone());
        live
    }

    /// A running build.
    pub fn get(&self, build: &BuildId) -> Option<Live> {
        self.lock().get(build).cloned()
    }

    /// Forgets a build that ended.
    pub fn end(&self, build: &BuildId) {
        self.lock().remove(build);
    }
}
