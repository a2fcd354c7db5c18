//! Watching the engine: a probe ([`Engine::probe`]) runs every `health_interval_secs` and must
//! pass within `health_timeout_secs`. An engine that fails it makes its agent unhealthy: the
//! agent tells the coordinator, which gives it no jobs, and stops what it runs so the
//! coordinator can run it elsewhere. It is healthy again, and says so, once a probe passes.

use crate::engine::Engine;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// How the engine is watched.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    /// Between two probes.
    pub interval: Duration,
    /// Longest a probe may take.
    pub timeout: Duration,
    /// Run after [`RESTART_AFTER`] failed probes in a row to restart an engine the agent
    /// manages (`engine_restart_command`); empty: never.
    pub restart_command: Vec<String>,
}

/// Failed probes in a row before the engine counts as unhealthy: one slow probe on a loaded
/// engine must not stop every build on it.
pub const UNHEALTHY_AFTER: u32 = 2;

/// Failed probes in a row before the engine is restarted, when a command is configured.
pub const RESTART_AFTER: u32 = 3;
/// Least time between two restarts.
pub const RESTART_EVERY: Duration = Duration::from_secs(600);
/// Longest a restart command may run.
pub const RESTART_TIMEOUT: Duration = Duration::from_secs(120);

/// Failed probes in a row, and when the engine was last restarted.
#[derive(Debug, Default)]
struct Restarts {
    failures: u32,
    last: Option<tokio::time::Instant>,
}

impl Restarts {
    /// Counts a probe; runs `command` when enough failed in a row and none ran lately.
    async fn after_probe(&mut self, failed: bool, command: &[String]) {
        self.failures = if failed { self.failures + 1 } else { 0 };
        let recent = self.last.is_some_and(|t| t.elapsed() < RESTART_EVERY);
        let Some((program, args)) = command.split_first() else { return };
        if self.failures < RESTART_AFTER || recent {
            return;
        }
        self.last = Some(tokio::time::Instant::now());
        warn!(command = %command.join(" "), "engine failed {} probes in a row: restarting it", self.failures);
        let run = tokio::process::Command::new(program).args(args).kill_on_drop(true).status();
        match tokio::time::timeout(RESTART_TIMEOUT, run).await {
            Ok(Ok(status)) if status.success() => info!("engine restart command finished"),
            Ok(Ok(status)) => warn!("engine restart command failed: {status}"),
            Ok(Err(e)) => warn!("cannot run the engine restart command: {e}"),
            Err(_) => warn!("the engine restart command took over {} s; stopped", RESTART_TIMEOUT.as_secs()),
        }
    }
}

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

    /// Probes `engine` as `settings` say, for as long as the returned watch (or a clone) lives.
    pub fn start(engine: Arc<dyn Engine>, settings: HealthSettings) -> Self {
        let (tx, rx) = watch::channel(None);
        let now: Arc<tokio::sync::Notify> = Arc::default();
        let wake = now.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(settings.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut restarts = Restarts::default();
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    _ = ticker.tick() => {}
                    () = wake.notified() => info!("probing the engine now: a build went silent"),
                }
                let timeout = settings.timeout;
                let problem = match tokio::time::timeout(timeout, engine.probe()).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(_) => Some(format!("the engine did not pass its health probe within {} s", timeout.as_secs())),
                };
                restarts.after_probe(problem.is_some(), &settings.restart_command).await;
                // Sick only after enough failures in a row; healthy again at the first pass.
                let problem = problem.filter(|_| restarts.failures >= UNHEALTHY_AFTER);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_engine_is_restarted_after_enough_failed_probes_and_not_again_soon() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("restarts");
        let command: Vec<String> =
            ["sh", "-c", &format!("echo restart >> {}", marker.display())].iter().map(|s| s.to_string()).collect();
        let runs = || std::fs::read_to_string(&marker).map(|t| t.lines().count()).unwrap_or(0);
        let mut restarts = Restarts::default();
        for _ in 0..RESTART_AFTER - 1 {
            restarts.after_probe(true, &command).await;
        }
        restarts.after_probe(false, &command).await;
        restarts.after_probe(true, &command).await;
        assert_eq!(runs(), 0, "a passing probe starts the count again");
        for _ in 0..RESTART_AFTER {
            restarts.after_probe(true, &command).await;
        }
        assert_eq!(runs(), 1);
        for _ in 0..RESTART_AFTER * 2 {
            restarts.after_probe(true, &command).await;
        }
        assert_eq!(runs(), 1, "at most one restart every ten minutes");
        let mut off = Restarts::default();
        for _ in 0..RESTART_AFTER * 2 {
            off.after_probe(true, &[]).await;
        }
    }
}
