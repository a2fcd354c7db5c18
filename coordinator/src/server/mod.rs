//! `archfarm serve`: the coordinator. One QUIC endpoint for agents, clients and enrolling
//! agents, told apart by ALPN; each connection is served by its own module.
//!
//! # Layout
//! - [`state`]: settings and the state every session shares.
//! - [`wire`]: a protocol error closes that one connection, with its reason.
//! - [`agent_link`]: one agent's connection: identity, registration, heartbeats, and its job
//!   and context streams.
//! - [`enroll`]: agents joining with a one-time join token.
//! - [`client_session`]: one client's connection: the token check, then a stream per request.
//! - [`handlers`]: one handler per client request.
//! - [`context_receive`]: receiving a build context, checked as it is written.
//! - [`chunk_store`]: where the chunks of stored contexts lie, for re-uploads.
//! - [`uploads`]: how many context uploads run at once, per client and in all.
//! - [`admission`]: limits before authentication: unauthenticated peers, their streams and window.
//! - [`access`]: who a client is (role, scopes) and what it may do.
//! - [`auth`]: client tokens in the token file.
//! - [`gc`]: garbage collection with retention, and the free space new work needs.
//! - [`farm`]: connected agents and waiting jobs around the scheduler.
//! - [`scheduler`]: pure job placement: native platforms only, fit, least-loaded or warm first.
//! - [`metrics`]: the Prometheus metrics; [`status`]: the HTTP listener for them and the
//!   status page.
//! - [`live`]: running builds: their event channels and cancellation.
//! - [`ports`]: the seams of orchestration: the agent link and the registry, as traits.
//! - [`build`]: one build from request to published index; one platform's attempts.
//! - [`publish`]: verifying pushed images in the registry and publishing the index.
//! - [`tags`]: tags never move backwards: whether a build may move a tag.
//! - [`store`]: durable state in SQLite (the only user of rusqlite).

pub mod access;
pub mod admission;
pub mod agent_link;
pub mod auth;
pub mod build;
pub mod chunk_store;
pub mod client_session;
pub mod context_receive;
pub mod enroll;
pub mod farm;
pub mod gc;
pub mod handlers;
pub mod live;
pub mod metrics;
pub mod ports;
pub mod publish;
pub mod scheduler;
pub mod state;
pub mod status;
pub mod store;
pub mod stored_images;
pub mod tags;
pub mod uploads;
pub mod wire;

use admission::Admit;
use anyhow::Context as _;
use archfarm_config::CoordinatorConfig;
use archfarm_shared::content::ContentStore;
use archfarm_shared::protocol::{close, ALPN_AGENT, ALPN_CLIENT, ALPN_ENROLL};
use archfarm_shared::registry::RegistryClients;
use archfarm_shared::tls;
use chunk_store::ChunkStore;
use farm::Farm;
use live::LiveBuilds;
use state::{Settings, Shared};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use store::Store;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// Runs the coordinator until `shutdown` is cancelled.
pub async fn run(config: CoordinatorConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()));
    let server_config = tls::server_config(
        &read(&config.tls.ca_cert)?,
        &read(&config.tls.cert)?,
        &read(&config.tls.key)?,
        // Until a peer authenticates: one stream, and a small window (`admission`).
        tls::Transport {
            peer_streams: 1,
            connection_window: Some(admission::UNAUTHENTICATED_WINDOW),
            ..tls::Transport::default()
        },
        config.tls.ca_key.is_some(),
    )
    .context("invalid coordinator TLS material")?;
    let shared = Arc::new(shared_state(&config)?);
    let endpoint = tls::endpoint(config.listen_addr(), Some(server_config))
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    info!(address = %endpoint.local_addr()?, "coordinator listening");
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (metrics_listen) for metrics and the status page"))?;
        let open = if addr.ip().is_loopback() { "open on loopback" } else { "a client token required" };
        info!(url = %format!("http://{}/", listener.local_addr()?), "status page and /metrics listening ({open})");
        tokio::spawn(status::serve(shared.clone(), listener));
    }
    // Builds the last run did not finish continue; agents reconnect on their own.
    for id in shared.store.unfinished().await.context("reading unfinished builds")? {
        if let Err(e) = build::resume(&shared, &id).await {
            error!(build = %id, "cannot resume: {e}");
        }
    }

    let collector = gc::start(shared.clone());
    let tracker = TaskTracker::new();
    let gate = admission::Gate::new(config.max_unauthenticated_connections as usize);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                match gate.admit(incoming.remote_address_validated()) {
                    Admit::Accept(permit) => drop(tracker.spawn(handle(shared.clone(), incoming, permit))),
                    Admit::Retry if incoming.may_retry() => {
                        let _ = incoming.retry();
                    }
                    Admit::Retry | Admit::Refuse => {
                        warn!(remote = %incoming.remote_address(), "refused a connection: too many unauthenticated peers");
                        incoming.refuse();
                    }
                }
            }
        }
    }
    collector.abort();
    info!("shutting down: closing connections");
    endpoint.close(close::NORMAL.into(), b"coordinator shutting down");
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        tracker.wait().await;
        endpoint.wait_idle().await;
    })
    .await;
    Ok(())
}

/// The state every session shares, opened from the configuration: stores, database, settings.
fn shared_state(config: &CoordinatorConfig) -> anyhow::Result<Shared> {
    let contexts_dir = config.data_dir.join("contexts");
    let contexts = ContentStore::open(&contexts_dir, config.max_context_bytes)
        .with_context(|| format!("cannot create {}", contexts_dir.display()))?;
    let images_dir = config.data_dir.join("images");
    let images = ContentStore::open(&images_dir, config.max_context_bytes)
        .with_context(|| format!("cannot create {}", images_dir.display()))?
        .of_image_blobs();
    let chunks_dir = config.data_dir.join("chunks");
    let chunks = ChunkStore::open(&chunks_dir).with_context(|| format!("cannot create {}", chunks_dir.display()))?;
    let db = config.data_dir.join("state.db");
    let store = Store::open(&db).with_context(|| format!("cannot open the state database {}", db.display()))?;
    Ok(Shared {
        farm: Farm::new(
            Duration::from_secs(config.agent_wait_secs),
            config.cache_affinity.then_some(config.affinity_margin),
        ),
        contexts,
        images,
        chunks,
        store,
        live: LiveBuilds::default(),
        uploads: uploads::Uploads::default(),
        tag_locks: build::tagging::TagLocks::default(),
        registries: Arc::new(RegistryClients::new(config.insecure_registries.clone())),
        metrics: metrics::Metrics::new(),
        settings: Settings {
            max_frame: config.max_frame_bytes,
            heartbeat_interval: Duration::from_secs(config.heartbeat_interval_secs),
            heartbeat_timeout: Duration::from_secs(config.heartbeat_timeout_secs),
            tokens_file: config.tls.client_tokens.clone(),
            max_attempts: config.max_attempts,
            quarantine_after: config.quarantine_after_failures,
            job_timeout: Duration::from_secs(config.job_timeout_secs),
            job_idle_timeout: Duration::from_secs(config.job_idle_timeout_secs),
            ca: match &config.tls.ca_key {
                Some(key) => Some(enroll::load_ca(&config.tls.ca_cert, key)?),
                None => None,
            },
            retention: gc::Retention {
                days: config.retention_days,
                history_days: config.history_days,
                history_builds: config.history_builds,
                min_free: config.min_free_space.as_u64(),
                data_dir: config.data_dir.clone(),
            },
        },
    })
}

/// Longest a peer may take over the TLS handshake, holding an unauthenticated slot.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

async fn handle(shared: Arc<Shared>, incoming: quinn::Incoming, permit: OwnedSemaphorePermit) {
    let remote = incoming.remote_address();
    let conn = match tokio::time::timeout(HANDSHAKE_DEADLINE, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            warn!(%remote, "refused a connection: {}", handshake_refusal(&e));
            return;
        }
        // Dropping the handshake's future closes its connection.
        Err(_) => return warn!(%remote, "refused a connection: no handshake within 10 s"),
    };
    match tls::alpn(&conn).as_deref() {
        Some(ALPN_AGENT) => agent_link::serve(shared, conn, permit).await,
        Some(ALPN_CLIENT) => client_session::serve(shared, conn, permit).await,
        Some(ALPN_ENROLL) => enroll::serve(shared, conn, permit).await,
        _ => conn.close(close::PROTOCOL.into(), b"unknown application protocol"),
    }
}

fn handshake_refusal(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::TransportError(t) if t.reason.contains("certificate") => {
            format!("TLS handshake failed: {} (agents need a certificate signed by this farm's CA)", t.reason)
        }
        other => format!("handshake failed: {other}"),
    }
}
