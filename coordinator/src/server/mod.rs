//! `archfarm serve`: one QUIC endpoint for agents and clients, told apart by ALPN.

use crate::farm::Farm;
use crate::live::LiveBuilds;
use crate::store::Store;
use crate::{agent_session, client_session};
use anyhow::Context as _;
use archfarm_config::CoordinatorConfig;
use archfarm_shared::codec::CodecError;
use archfarm_shared::content::ContentStore;
use archfarm_shared::protocol::{close, ALPN_AGENT, ALPN_CLIENT, ALPN_ENROLL};
use archfarm_shared::tls;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Settings every session needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest frame accepted.
    pub max_frame: u32,
    /// How often agents must send heartbeats.
    pub heartbeat_interval: Duration,
    /// Silence after which an agent is dropped.
    pub heartbeat_timeout: Duration,
    /// File of accepted client token hashes.
    pub tokens_file: PathBuf,
    /// Attempts per platform.
    pub max_attempts: u32,
    /// Consecutive failures before quarantine.
    pub quarantine_after: u32,
    /// The farm CA with its key, when this coordinator enrolls agents.
    pub ca: Option<archfarm_shared::pki::CertifiedKey>,
    /// Registries reached over plain http although not on loopback.
    pub insecure_registries: Vec<String>,
}

/// What the sessions share.
#[derive(Debug)]
pub struct Shared {
    /// Live agents and the scheduler.
    pub farm: Arc<Farm>,
    /// Uploaded build contexts.
    pub contexts: ContentStore,
    /// Chunks of uploaded contexts, for uploads of changed contexts.
    pub chunks: crate::context_upload::ChunkStore,
    /// Durable state.
    pub store: Store,
    /// Builds running now.
    pub live: LiveBuilds,
    /// Settings.
    pub settings: Settings,
}

/// Runs the coordinator until `shutdown` is cancelled.
pub async fn run(config: CoordinatorConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()));
    let server_config = tls::server_config(
        &read(&config.tls.ca_cert)?,
        &read(&config.tls.cert)?,
        &read(&config.tls.key)?,
        tls::Transport { peer_streams: tls::PEER_STREAMS_AGENT, ..tls::Transport::default() },
    )
    .context("invalid coordinator TLS material")?;
    let contexts_dir = config.data_dir.join("contexts");
    let contexts = ContentStore::open(&contexts_dir, config.max_context_bytes)
        .with_context(|| format!("cannot create {}", contexts_dir.display()))?;
    let chunks_dir = config.data_dir.join("chunks");
    let chunks = crate::context_upload::ChunkStore::open(&chunks_dir)
        .with_context(|| format!("cannot create {}", chunks_dir.display()))?;
    let db = config.data_dir.join("state.db");
    let store = Store::open(&db).with_context(|| format!("cannot open the state database {}", db.display()))?;
    let shared = Arc::new(Shared {
        farm: Farm::new(Duration::from_secs(config.agent_wait_secs)),
        contexts,
        chunks,
        store,
        live: LiveBuilds::default(),
        settings: Settings {
            max_frame: config.max_frame_bytes,
            heartbeat_interval: Duration::from_secs(config.heartbeat_interval_secs),
            heartbeat_timeout: Duration::from_secs(config.heartbeat_timeout_secs),
            tokens_file: config.tls.client_tokens.clone(),
            max_attempts: config.max_attempts,
            quarantine_after: config.quarantine_after_failures,
            insecure_registries: config.insecure_registries.clone(),
            ca: match &config.tls.ca_key {
                Some(key) => Some(crate::enroll::load_ca(&config.tls.ca_cert, key)?),
                None => None,
            },
        },
    });
    let endpoint = tls::endpoint(config.listen_addr(), Some(server_config))
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    info!(address = %endpoint.local_addr()?, "coordinator listening");
    // Builds the last run did not finish continue; agents reconnect on their own.
    for id in shared.store.unfinished().context("reading unfinished builds")? {
        if let Err(e) = crate::build::resume(&shared, &id) {
            tracing::error!(build = %id, "cannot resume: {e}");
        }
    }

    let tracker = TaskTracker::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                tracker.spawn(handle(shared.clone(), incoming));
            }
        }
    }
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

async fn handle(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            warn!(%remote, "refused a connection: {}", handshake_refusal(&e));
            return;
        }
    };
    match tls::alpn(&conn).as_deref() {
        Some(ALPN_AGENT) => agent_session::serve(shared, conn).await,
        Some(ALPN_CLIENT) => client_session::serve(shared, conn).await,
        Some(ALPN_ENROLL) => crate::enroll::serve(shared, conn).await,
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

/// Turns a codec error on `conn` into a reason, closing the connection if the peer broke the
/// protocol. A disconnect is not a protocol error.
pub fn on_codec_error(conn: &quinn::Connection, err: &CodecError, stream: &str) -> String {
    if let Some(reason) = conn.close_reason() {
        return tls::explain(&reason);
    }
    match err {
        CodecError::Io(e) => format!("{stream} failed: {e}"),
        _ => {
            let reason = format!("protocol error on {stream}: {err}");
            warn!(remote = %conn.remote_address(), "closing connection: {reason}");
            conn.close(close::PROTOCOL.into(), reason.as_bytes());
            reason
        }
    }
}
