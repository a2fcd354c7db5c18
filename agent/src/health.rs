//! Watching the engine: a probe ([`Engine::probe`]) runs every `health_interval_secs` and must
//! pass within `health_timeout_secs`. An engine that fails it makes its agent unhealthy: the
//! agent tells the coordinator, which gives it no jobs, and stops what it runs so the
//! coordinator can run it elsewhere. It is healthy again, and says so, once a probe passes.

use crate::docker::Engine;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// The engine's health as the last probe found it: `None` when healthy, else what is wrong.
#[derive(Debug, Clone)]
pub struct HealthWatch {
    rx: watch::Receiver<Option<String>>,
    /// Wakes the prober before its next tick.
    now: Arc<tokio::sync::Notify>,
    /// Keeps the channel open when nothing probes (an engine taken as healthy).
    _keep: Option<Arc<watch::Sender<Option<String>>>>,
}

impl HealthWatch {
    /// An engine that is never probed: always healthy.
    pub fn always_healthy() -> Self {
        let (tx, rx) = watch::channel(None);
        HealthWatch { rx, now: Arc::default(), _keep: Some(Arc::new(tx)) }
    }

    /// Probes `engine` every `interval`, each probe bounded by `timeout`, for as long as the
    /// returned watch (or a clone) lives.
    pub fn start(engine: Engine, interval: Duration, timeout: Duration) -> Self {
        let (tx, rx) = watch::channel(None);
        let now: Arc<tokio::sync::Notify> = Arc::default();
        let wake = now.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    _ = ticker.tick() => {}
                    () = wake.notified() => info!("probing the engine now: a build went silent"),
                }
                let problem = match tokio::time::timeout(timeout, engine.probe()).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(_) => Some(format!("the engine did not pass its health probe within {} s", timeout.as_secs())),
                };
                tx.send_if_modified(|current| {
                    if *current == problem {
                        return false;
                    }
                    match &problem {
                        Some(p) => warn!("engine unhealthy: {p}; taking no jobs until it recovers"),
                        None => info!("engine healthy again"),
                    }
                    *current = problem;
                    true
                });
            }
        });
        HealthWatch { rx, now, _keep: None }
    }

    /// Probes at once rather than at the next tick: a build went silent, which a wedged engine
    /// would explain.
    pub fn probe_now(&self) {
        self.now.notify_one();
    }

    /// What is wrong with the engine now, if anything.
    pub fn problem(&self) -> Option<String> {
        self.rx.borrow().clone()
    }

    /// Waits for the health to change and returns the new one; never returns when nothing probes.
    pub async fn changed(&mut self) -> Option<String> {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.rx.borrow_and_update().clone()
    }

    /// Waits until the engine is unhealthy; returns what is wrong.
    pub async fn sick(&mut self) -> String {
        let problem = self.rx.wait_for(Option::is_some).await.map(|p| p.clone().unwrap_or_default());
        match problem {
            Ok(problem) => problem,
            Err(_) => std::future::pending().await,
        }
    }
}
