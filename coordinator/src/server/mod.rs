//! `archfarm serve`: the coordinator. One QUIC endpoint for agents, clients and enrolling
//! agents, told apart by ALPN; each connection is served by its own module.
//!
//! # Layout, from the bottom layer up (a module imports only those above it in this list)
//! - pure rules: [`scheduler`] (job placement), [`access`] (roles and scopes), [`tags`]'s
//!   `rule` (tags never move backwards).
//! - [`settings`]: what the configuration decides; [`metrics`]: what Prometheus scrapes;
//!   [`reply`]: what a request's handler answers, written on its stream; [`disk`]: free space.
//! - [`store`]: durable state in SQLite (the only user of rusqlite).
//! - [`ports`]: the seams: the agent link and the registry, as traits;
//!   [`registry_images`]: the registry adapter.
//! - concepts, each owning its state: [`farm`] (connected agents and waiting jobs), [`live`]
//!   (running builds), [`contexts`] (build contexts: upload, chunks, the agent's fetch),
//!   [`handover`] (images agents hand to the coordinator), [`tags`] (writing tags).
//! - [`sessions`]: the client sessions open now, by token, so a revoked token's end at once.
//! - [`state`]: where the concepts' state meets; [`gc`]: garbage collection and free space.
//! - [`build`]: one build's life, from request to published index.
//! - connections: [`wire`] (a protocol error closes one connection), [`admission`] (limits
//!   before authentication), [`auth`] (client tokens), [`agent_link`], [`enroll`],
//!   [`client_session`], [`handlers`] (one per client request), [`status`] (the HTTP page).

pub mod access;
pub mod admission;
pub mod agent_link;
pub mod auth;
pub mod build;
pub mod client_session;
pub mod contexts;
pub mod disk;
pub mod enroll;
pub mod farm;
pub mod gc;
pub mod handlers;
pub mod handover;
pub mod live;
pub mod metrics;
pub mod ports;
pub mod registry_images;
pub mod reply;
pub mod scheduler;
pub mod sessions;
pub mod settings;
pub mod state;
pub mod status;
pub mod store;
pub mod tags;
pub mod wire;

use admission::Admit;
use anyhow::Context as _;
use archfarm_config::CoordinatorConfig;
use archfarm_shared::protocol::{close, ALPN_AGENT, ALPN_CLIENT, ALPN_ENROLL};
use archfarm_shared::tls;
use state::Shared;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// Runs the coordinator until `shutdown` is cancelled.
pub async fn run(config: CoordinatorConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let read =
        |p: &std::path::PathBuf| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()));
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
    let shared = Arc::new(Shared::open(&config)?);
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
