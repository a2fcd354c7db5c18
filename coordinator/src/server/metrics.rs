//! The coordinator's Prometheus metrics. Counters and histograms are updated where things
//! happen; gauges (builds by state, agents, queues) are read from the farm and the store when
//! scraped. Served by [`super::status`] at `/metrics` in the classic text format, which
//! Prometheus and `promtool check metrics` read.

use archfarm_shared::protocol::{AgentInfo, BuildState};
use archfarm_shared::Platform;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::time::{Duration, Instant};

/// Upper bounds of attempt durations, in seconds: a minute to an hour is where builds live.
const ATTEMPT_BUCKETS: [f64; 12] = [1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0];
/// Upper bounds of waits for an agent, in seconds.
const WAIT_BUCKETS: [f64; 10] = [0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0];
/// Upper bounds of registry calls, in seconds.
const REGISTRY_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlatformLabel {
    platform: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    platform: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabel {
    agent: String,
}

/// What an agent's engine is, as labels of a gauge that is always 1.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EngineLabels {
    agent: String,
    engine_version: String,
    api_version: String,
    image_store: String,
    buildkit_version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the coordinator exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    builds: Family<StateLabel, Gauge>,
    builds_finished: Family<StateLabel, Counter>,
    attempt_seconds: Histograms<AttemptLabels>,
    queue_depth: Family<PlatformLabel, Gauge>,
    queue_wait: Histograms<PlatformLabel>,
    agents: Family<StateLabel, Gauge>,
    agent_running: Family<AgentLabel, Gauge>,
    agent_capacity: Family<AgentLabel, Gauge>,
    agent_engine: Family<EngineLabels, Gauge>,
    registry_seconds: Histograms<OperationLabel>,
    registry_errors: Family<OperationLabel, Counter>,
    upload_bytes: Counter,
    fetch_sent: Counter,
    fetch_held: Counter,
    retries: Family<PlatformLabel, Counter>,
    quarantines: Counter,
    /// One scrape at a time sets the gauges and encodes them.
    rendering: std::sync::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered under the `archfarm_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("archfarm");
        let m = Metrics {
            builds: Family::default(),
            builds_finished: Family::default(),
            attempt_seconds: Family::new_with_constructor(|| Histogram::new(ATTEMPT_BUCKETS)),
            queue_depth: Family::default(),
            queue_wait: Family::new_with_constructor(|| Histogram::new(WAIT_BUCKETS)),
            agents: Family::default(),
            agent_running: Family::default(),
            agent_capacity: Family::default(),
            agent_engine: Family::default(),
            registry_seconds: Family::new_with_constructor(|| Histogram::new(REGISTRY_BUCKETS)),
            registry_errors: Family::default(),
            upload_bytes: Counter::default(),
            fetch_sent: Counter::default(),
            fetch_held: Counter::default(),
            retries: Family::default(),
            quarantines: Counter::default(),
            rendering: std::sync::Mutex::new(()),
            registry: Registry::default(),
        };
        registry.register("builds", "Builds in the state database, by state", m.builds.clone());
        registry.register(
            "builds_finished",
            "Builds that ended, by how (a build retried with builds retry ends again)",
            m.builds_finished.clone(),
        );
        registry.register(
            "attempt_duration_seconds",
            "Attempts at a platform on an agent, by platform and outcome",
            m.attempt_seconds.clone(),
        );
        registry.register("queue_depth", "Jobs waiting for an agent, by platform", m.queue_depth.clone());
        registry.register("queue_wait_seconds", "Time a job waited for an agent, by platform", m.queue_wait.clone());
        registry.register("agents", "Connected agents, by state", m.agents.clone());
        registry.register("agent_running_jobs", "Jobs running on each connected agent", m.agent_running.clone());
        registry.register("agent_capacity_jobs", "Jobs each connected agent runs at once", m.agent_capacity.clone());
        registry.register(
            "agent_engine_info",
            "Each connected agent's engine: version, API version, image store and BuildKit version (always 1)",
            m.agent_engine.clone(),
        );
        registry.register(
            "registry_request_duration_seconds",
            "The coordinator's registry calls, by operation",
            m.registry_seconds.clone(),
        );
        registry.register("registry_errors", "Registry calls that failed, by operation", m.registry_errors.clone());
        registry.register("context_upload_bytes", "Bytes of build contexts received", m.upload_bytes.clone());
        registry.register("context_fetch_sent_bytes", "Bytes of build contexts sent to agents", m.fetch_sent.clone());
        registry.register(
            "context_fetch_held_bytes",
            "Bytes of build contexts agents fetched that they already held in other contexts, and were not sent",
            m.fetch_held.clone(),
        );
        registry.register("attempts_retried", "Attempts that ended without an image and ran again", m.retries.clone());
        registry.register("quarantines", "Agents quarantined", m.quarantines.clone());
        Metrics { registry, ..m }
    }

    /// A build ended in `state`.
    pub fn build_ended(&self, state: BuildState) {
        self.builds_finished.get_or_create(&StateLabel { state: state.as_str().to_owned() }).inc();
    }

    /// An attempt at `platform` ended with `outcome` after `took`.
    pub fn attempt_ended(&self, platform: &Platform, outcome: &str, took: Duration) {
        let labels = AttemptLabels { platform: platform.to_string(), outcome: outcome.to_owned() };
        self.attempt_seconds.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// A job of `platform` waited `took` for its agent.
    pub fn waited(&self, platform: &Platform, took: Duration) {
        self.queue_wait.get_or_create(&PlatformLabel { platform: platform.to_string() }).observe(took.as_secs_f64());
    }

    /// An attempt at `platform` runs again.
    pub fn retried(&self, platform: &Platform) {
        self.retries.get_or_create(&PlatformLabel { platform: platform.to_string() }).inc();
    }

    /// An agent was quarantined.
    pub fn quarantined(&self) {
        self.quarantines.inc();
    }

    /// `bytes` of a build context arrived.
    pub fn uploaded(&self, bytes: u64) {
        self.upload_bytes.inc_by(bytes);
    }

    /// An agent fetched a context: `sent` bytes of it travelled, `held` it had already.
    pub fn fetched(&self, sent: u64, held: u64) {
        self.fetch_sent.inc_by(sent);
        self.fetch_held.inc_by(held);
    }

    /// Runs a registry call, timing it and counting its failure under `operation`.
    pub async fn registry_call<T, E, F>(&self, operation: &str, call: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
    {
        let started = Instant::now();
        let result = call.await;
        self.registry_observed(operation, started.elapsed(), result.is_err());
        result
    }

    /// A registry call under `operation` took `took`, and failed or not.
    pub fn registry_observed(&self, operation: &str, took: Duration, failed: bool) {
        let label = OperationLabel { operation: operation.to_owned() };
        self.registry_seconds.get_or_create(&label).observe(took.as_secs_f64());
        if failed {
            self.registry_errors.get_or_create(&label).inc();
        }
    }

    /// The text Prometheus scrapes, after setting the gauges from what the farm and the store
    /// say now. `queued` lists every platform the farm builds, with none waiting too.
    pub fn render(&self, builds: &[(BuildState, u64)], agents: &[AgentInfo], queued: &[(Platform, usize)]) -> String {
        let _one_at_a_time = self.rendering.lock().unwrap_or_else(|e| e.into_inner());
        self.builds.clear();
        for (state, n) in builds {
            self.builds.get_or_create(&StateLabel { state: state.as_str().to_owned() }).set(*n as i64);
        }
        self.agents.clear();
        self.agent_running.clear();
        self.agent_capacity.clear();
        self.agent_engine.clear();
        for a in agents {
            let state = a.state.split(':').next().unwrap_or_default().to_owned();
            self.agents.get_or_create(&StateLabel { state }).inc();
            let agent = AgentLabel { agent: a.name.to_string() };
            self.agent_running.get_or_create(&agent).set(i64::from(a.running));
            self.agent_capacity.get_or_create(&agent).set(i64::from(a.capacity));
            let e = &a.engine;
            let engine = EngineLabels {
                agent: a.name.to_string(),
                engine_version: e.version.clone(),
                api_version: e.api_version.clone(),
                image_store: e.image_store.clone(),
                buildkit_version: e.buildkit_version.clone(),
            };
            self.agent_engine.get_or_create(&engine).set(1);
        }
        self.queue_depth.clear();
        for (platform, n) in queued {
            self.queue_depth.get_or_create(&PlatformLabel { platform: platform.to_string() }).set(*n as i64);
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_has_every_metric_with_help_type_and_labels() {
        let m = Metrics::new();
        let amd: Platform = "linux/amd64".parse().unwrap();
        m.build_ended(BuildState::Published);
        m.attempt_ended(&amd, "pushed", Duration::from_secs(42));
        m.waited(&amd, Duration::from_millis(300));
        m.retried(&amd);
        m.quarantined();
        m.uploaded(1234);
        let text = m.render(&[(BuildState::Running, 2)], &[], &[(amd.clone(), 3)]);
        for needle in [
            "# TYPE archfarm_builds gauge",
            "archfarm_builds{state=\"running\"} 2",
            "archfarm_builds_finished_total{state=\"published\"} 1",
            "archfarm_attempt_duration_seconds_bucket{platform=\"linux/amd64\",outcome=\"pushed\",le=\"60\"} 1",
            "archfarm_queue_depth{platform=\"linux/amd64\"} 3",
            "archfarm_queue_wait_seconds_count{platform=\"linux/amd64\"} 1",
            "archfarm_attempts_retried_total{platform=\"linux/amd64\"} 1",
            "archfarm_quarantines_total 1",
            "archfarm_context_upload_bytes_total 1234",
        ] {
            assert!(text.contains(needle), "{needle} in\n{text}");
        }
        // Gauges are read anew: a platform no longer queued disappears.
        let text = m.render(&[], &[], &[]);
        assert!(!text.contains("archfarm_queue_depth{"), "{text}");
    }

    #[tokio::test]
    async fn registry_calls_are_timed_and_failures_counted() {
        let m = Metrics::new();
        let ok: Result<u8, String> = m.registry_call("verify", async { Ok(1) }).await;
        assert_eq!(ok, Ok(1));
        let _: Result<u8, String> = m.registry_call("verify", async { Err("500".into()) }).await;
        let text = m.render(&[], &[], &[]);
        assert!(text.contains("archfarm_registry_request_duration_seconds_count{operation=\"verify\"} 2"), "{text}");
        assert!(text.contains("archfarm_registry_errors_total{operation=\"verify\"} 1"), "{text}");
    }
}
