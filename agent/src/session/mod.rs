//! The agent's life: connect out to the coordinator, register, send heartbeats, run the jobs it
//! is given; when the connection ends, log why, back off with jitter and connect again. On
//! SIGTERM it drains: it tells the coordinator, takes no new jobs, finishes what it runs (up to
//! a deadline, then stops the rest so the coordinator reruns them elsewhere) and exits.
//!
//! The session is the agent's side of the QUIC connection, and the only one: the control
//! stream here, each stream the coordinator opens in `job`, and what a running job asks of
//! the coordinator in [`link`].

use crate::executor::{Executor, Runner};
use crate::health::{HealthSettings, HealthWatch};
use anyhow::Context as _;
use archfarm_config::AgentConfig;
use archfarm_shared::codec::CodecError;
use archfarm_shared::protocol::{close, AgentMessage, CoordinatorMessage, Registration, ALPN_AGENT};
use archfarm_shared::registry::RegistryClients;
use archfarm_shared::retry::Policy;
use archfarm_shared::stream::{MessageReceiver, MessageSender, QuicStream};
use archfarm_shared::{dial, platform, tls};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod job;
pub mod link;

/// Everything a session needs, built once at start. `R` runs the jobs: the [`Executor`] in
/// the product.
#[derive(Debug)]
pub struct Agent<R: Runner = Executor> {
    /// Runs jobs.
    pub executor: R,
    /// This agent's name (its certificate's common name).
    pub name: archfarm_shared::AgentName,
    /// Largest frame on the wire.
    pub max_frame: u32,
    /// What is registered.
    pub registration: Registration,
    /// Coordinator address as configured.
    pub coordinator: String,
    /// Name on the coordinator's certificate.
    pub server_name: String,
    /// QUIC client endpoint (may be shared by several agents).
    pub endpoint: quinn::Endpoint,
    /// TLS with the agent's certificate; replaced when the certificate is renewed.
    pub client_config: std::sync::Mutex<quinn::ClientConfig>,
    /// Longest backoff.
    pub max_backoff: Duration,
    /// Longest drain.
    pub drain_timeout: Duration,
    /// Jobs running now.
    pub running: Arc<AtomicU32>,
    /// Stops every running job (end of a drain).
    pub abort: CancellationToken,
    /// The engine's health; jobs stop, and none are taken, while it is unhealthy.
    pub health: HealthWatch,
}

/// The TLS configuration with the agent's certificate, and the name in it.
fn identity(config: &AgentConfig) -> anyhow::Result<(quinn::ClientConfig, archfarm_shared::AgentName)> {
    let read = |p: &std::path::Path| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()));
    let (ca, cert, key) = (read(&config.tls.ca_cert)?, read(&config.tls.cert)?, read(&config.tls.key)?);
    let transport = tls::Transport { connection_window: Some(tls::AGENT_RECEIVE_WINDOW), ..tls::Transport::default() };
    let client =
        tls::client_config(&ca, Some((&cert, &key)), ALPN_AGENT, transport).context("invalid agent TLS material")?;
    let own = rustls::pki_types::pem::PemObject::from_pem_slice(cert.as_bytes())
        .map_err(|_| anyhow::anyhow!("{}: no PEM certificate", config.tls.cert.display()))?;
    let name: archfarm_shared::AgentName =
        tls::common_name(&own)?.parse().context("the agent certificate's common name is not a valid agent name")?;
    Ok((client, name))
}

impl Agent<Executor> {
    /// Uses the certificate now in the configured files from the next connection on (after a
    /// renewal). The name must not change.
    pub fn reload_identity(&self, config: &AgentConfig) -> anyhow::Result<()> {
        let (client, name) = identity(config)?;
        anyhow::ensure!(name == self.name, "the renewed certificate names {name}, not {}", self.name);
        *self.client_config.lock().unwrap_or_else(|e| e.into_inner()) = client;
        Ok(())
    }

    /// Prepares the agent from its configuration: certificates, engine, declared platforms.
    pub async fn new(config: &AgentConfig) -> anyhow::Result<Self> {
        let (client, name) = identity(config)?;

        let engine = crate::engine::connect(config.docker_host.as_deref()).await.map_err(anyhow::Error::msg)?;
        let info = engine.info().await.map_err(anyhow::Error::msg)?;
        if let Some(w) = crate::host::override_warning(&info.platform, config.native_platform.as_ref()) {
            warn!("{w}");
        }
        let platforms = crate::host::declared(&info.platform, config.native_platform.as_ref(), &config.extra_platforms);
        let capabilities = crate::host::capabilities(&platforms, config)?;
        let cache = crate::context_cache::ContextCache::open(config.cache_dir.clone(), config.cache_max.as_u64())
            .with_context(|| format!("cannot create cache directory {}", config.cache_dir.display()))?;

        // One endpoint for every session, of the family the coordinator's address has now
        // (IPv4 if it does not resolve yet: the sessions retry that).
        let ipv4: std::net::SocketAddr = ([0, 0, 0, 0], 0).into();
        let family = match tokio::time::timeout(dial::DEADLINE, dial::resolve(&config.coordinator)).await {
            Ok(Ok(addrs)) => addrs[0],
            _ => ipv4,
        };
        // A host without IPv6 cannot bind it even when a name resolves to it first.
        let endpoint = dial::bind_for(family)
            .or_else(|e| if family.is_ipv6() { dial::bind_for(ipv4) } else { Err(e) })
            .context("cannot open a UDP socket")?;
        let server_name = crate::enroll::server_name(config)?;
        info!(
            agent = %name,
            platforms = %platform::list(&platforms),
            capabilities = %capabilities.summary(),
            engine = %info.engine.summary(),
            "agent ready"
        );
        Ok(Agent {
            registration: Registration {
                platforms: platforms.clone(),
                capacity: config.capacity,
                engine: info.engine,
                agent_version: env!("CARGO_PKG_VERSION").to_owned(),
                capabilities: capabilities.clone(),
                credentials_for: crate::job_credentials::registries(archfarm_shared::protocol::MAX_CREDENTIALED).await,
            },
            name: name.clone(),
            max_frame: config.max_frame_bytes,
            health: HealthWatch::start(
                engine.clone(),
                HealthSettings {
                    interval: Duration::from_secs(config.health_interval_secs),
                    timeout: Duration::from_secs(config.health_timeout_secs),
                    restart_command: config.engine_restart_command.clone(),
                },
            ),
            executor: Executor {
                name,
                platforms,
                capabilities,
                engine,
                cache,
                registries: Arc::new(RegistryClients::new(config.insecure_registries.clone())),
                layers: crate::push::LayerCache::default(),
                images: crate::reuse::ImageCache::default(),
            },
            coordinator: config.coordinator.clone(),
            server_name,
            endpoint,
            client_config: std::sync::Mutex::new(client),
            max_backoff: Duration::from_secs(config.max_backoff_secs),
            drain_timeout: Duration::from_secs(config.drain_timeout_secs),
            running: Arc::new(AtomicU32::new(0)),
            abort: CancellationToken::new(),
        })
    }
}

impl<R: Runner> Agent<R> {
    /// Connects, serves and reconnects until `shutdown`; then drains and returns.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let policy = Policy::agent_reconnect(self.max_backoff);
        let mut delays = policy.delays();
        while !shutdown.is_cancelled() {
            let started = Instant::now();
            match self.clone().session(&shutdown).await {
                Ok(reason) => info!("disconnected: {reason}"),
                Err(e) => warn!("{e:#}"),
            }
            if shutdown.is_cancelled() {
                break;
            }
            // A session that lasted resets the backoff; repeated quick failures grow it.
            if started.elapsed() > Duration::from_secs(60) {
                delays = policy.delays();
            }
            let delay = delays.next().unwrap_or(self.max_backoff);
            info!("reconnecting in {:.1} s", delay.as_secs_f64());
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        // Jobs of a session that ended are stopped with it; nothing may outlive the agent.
        self.abort.cancel();
        self.endpoint.close(close::NORMAL.into(), b"agent shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        info!("agent stopped");
    }

    async fn session(self: Arc<Self>, shutdown: &CancellationToken) -> anyhow::Result<String> {
        let max = self.max_frame;
        let dialling = dial::dial_on(
            &self.endpoint,
            &self.coordinator,
            Some(&self.server_name),
            self.client_config.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            dial::DEADLINE,
        );
        let conn = tokio::select! {
            c = dialling => c?,
            () = shutdown.cancelled() => return Ok("shut down before connecting".into()),
        };
        let lost = |e: &CodecError| control_lost(&conn, e);
        let (mut control, acks, interval) = self.register(&conn).await?;
        // The coordinator answers every heartbeat; a coordinator killed without closing the
        // connection is noticed when the answers stop, long before QUIC's idle timeout.
        let started = Instant::now();
        let last_ack = Arc::new(AtomicU64::new(0));
        let ack_timeout = interval * 3 + Duration::from_secs(2);
        let _stop_reader = AbortOnDrop(tokio::spawn(read_acks(acks, started, last_ack.clone())));
        // Jobs of this session stop when it ends: the coordinator reruns them.
        let session_jobs = self.abort.child_token();
        let _stop_jobs = session_jobs.clone().drop_guard();
        let mut ticker = tokio::time::interval(interval);
        let mut drain_deadline: Option<Instant> = None;
        let mut health = self.health.clone();
        if let Some(problem) = health.problem() {
            control.write(&AgentMessage::Health { problem: Some(problem) }).await.map_err(|e| lost(&e))?;
        }
        loop {
            tokio::select! {
                problem = health.changed() => {
                    control.write(&AgentMessage::Health { problem }).await.map_err(|e| lost(&e))?;
                }
                () = shutdown.cancelled(), if drain_deadline.is_none() => {
                    let n = self.running.load(Ordering::Relaxed);
                    info!(running = n, "draining: no new jobs; finishing what runs (at most {} s)", self.drain_timeout.as_secs());
                    drain_deadline = Some(Instant::now() + self.drain_timeout);
                    control.write(&AgentMessage::Draining).await.map_err(|e| lost(&e))?;
                    if n == 0 {
                        conn.close(close::NORMAL.into(), b"agent drained");
                        return Ok("drained".into());
                    }
                }
                _ = ticker.tick() => {
                    let silent = started.elapsed().saturating_sub(Duration::from_millis(last_ack.load(Ordering::Relaxed)));
                    if silent > ack_timeout {
                        conn.close(close::TIMEOUT.into(), b"no heartbeat answers");
                        anyhow::bail!("the coordinator has not answered heartbeats for {} s", silent.as_secs());
                    }
                    let running = self.running.load(Ordering::Relaxed);
                    if let Some(deadline) = drain_deadline {
                        if running == 0 {
                            conn.close(close::NORMAL.into(), b"agent drained");
                            return Ok("drained".into());
                        }
                        if Instant::now() >= deadline && !session_jobs.is_cancelled() {
                            warn!(running, "drain deadline reached: stopping the jobs left; the coordinator reruns them");
                            session_jobs.cancel();
                        }
                    }
                    let beat = AgentMessage::Heartbeat { running };
                    control.write(&beat).await.map_err(|e| lost(&e))?;
                }
                stream = QuicStream::accept(&conn, max) => match stream {
                    Ok(stream) => {
                        let agent = self.clone();
                        let conn = conn.clone();
                        let stop = session_jobs.child_token();
                        let draining = drain_deadline.is_some();
                        tokio::spawn(async move { agent.job(conn, stream, stop, draining).await });
                    }
                    Err(e) => return Ok(tls::explain(&e)),
                },
            }
        }
    }

    /// Opens the control stream and registers; returns it with the heartbeat interval.
    async fn register(
        &self,
        conn: &quinn::Connection,
    ) -> anyhow::Result<(MessageSender<quinn::SendStream>, MessageReceiver<quinn::RecvStream>, Duration)> {
        let mut control =
            QuicStream::open(conn, self.max_frame).await.map_err(|e| anyhow::anyhow!("{}", tls::explain(&e)))?;
        control.write(&AgentMessage::Register(self.registration.clone())).await.map_err(|e| control_lost(conn, &e))?;
        let interval = match control.expect::<CoordinatorMessage>().await {
            Ok(CoordinatorMessage::Registered { heartbeat_interval_ms }) => {
                Duration::from_millis(heartbeat_interval_ms.max(100))
            }
            Ok(CoordinatorMessage::Refused { reason }) => {
                anyhow::bail!("the coordinator refused this agent: {reason}")
            }
            Ok(other) => anyhow::bail!("unexpected answer to registration: {other:?}"),
            Err(e) => return Err(control_lost(conn, &e)),
        };
        info!(coordinator = %self.coordinator, "registered");
        let (send, recv) = control.split();
        Ok((send, recv, interval))
    }
}

/// Reads the control stream, noting in `last_ack` when (since `started`) the last heartbeat
/// answer came.
async fn read_acks(mut acks: MessageReceiver<quinn::RecvStream>, started: Instant, last_ack: Arc<AtomicU64>) {
    loop {
        match acks.read::<CoordinatorMessage>().await {
            Ok(Some(CoordinatorMessage::HeartbeatAck)) => {
                last_ack.store(started.elapsed().as_millis() as u64, Ordering::Relaxed)
            }
            Ok(Some(other)) => warn!("unexpected message on the control stream: {other:?}"),
            Ok(None) | Err(_) => break,
        }
    }
}

/// Why the control stream failed: the connection's close reason when it has one, which says
/// more than the stream error it caused.
fn control_lost(conn: &quinn::Connection, e: &CodecError) -> anyhow::Error {
    match conn.close_reason() {
        Some(r) => anyhow::anyhow!("lost the coordinator: {}", tls::explain(&r)),
        None => anyhow::anyhow!("control stream: {e}"),
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
