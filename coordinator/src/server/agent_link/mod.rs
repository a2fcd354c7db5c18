//! The whole link to one agent: identify it by its certificate, register it, keep it alive by
//! heartbeats on the control stream, serve the streams it opens (a context fetch,
//! [`crate::server::contexts::agent`]; a blob handed over, [`crate::server::handover`]), and
//! run jobs and housekeeping on streams the coordinator opens ([`job`], [`housekeeping`]).
//!
//! # Layout
//! - this file: identity, registration, the control stream, accepting the agent's streams.
//! - [`job`]: one job attempt on its own stream ([`QuicLink`], the real
//!   [`AgentLink`](crate::server::ports::AgentLink)).
//! - [`housekeeping`]: asking the agent about its caches, or to free them.
//! - [`limits`]: log lines and failures cut to size; the contexts an agent may fetch.

pub mod housekeeping;
pub mod job;
pub mod limits;

use super::admission;
use super::farm::AgentHandle;
use super::scheduler::Standing;
use super::state::Shared;
use super::store::agents::Recorded;
use super::wire::{on_codec_error, unexpected};
use archfarm_shared::platform;
use archfarm_shared::protocol::{close, AgentMessage, CoordinatorMessage};
use archfarm_shared::stream::QuicStream;
use archfarm_shared::{tls, AgentName};
use job::QuicLink;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{info, info_span, warn, Instrument};

const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

fn refuse(conn: &quinn::Connection, reason: &str) {
    warn!(remote = %conn.remote_address(), "refused agent: {reason}");
    conn.close(close::REFUSED.into(), reason.as_bytes());
}

/// Serves one agent connection until it ends. `unauthenticated` is held until its certificate
/// is checked.
pub async fn serve(shared: Arc<Shared>, conn: quinn::Connection, unauthenticated: OwnedSemaphorePermit) {
    let cert = match tls::peer_certificate(&conn) {
        Ok(Some(cert)) => cert,
        Ok(None) => {
            return refuse(
                &conn,
                "agents must present a certificate signed by the farm CA (`archfarm ca issue-agent NAME`)",
            )
        }
        Err(e) => return refuse(&conn, &e.to_string()),
    };
    let name: AgentName = match cert.name.parse() {
        Ok(name) => name,
        Err(e) => return refuse(&conn, &format!("certificate name unusable: {e}")),
    };
    match shared.store.agent_revoked(&name).await {
        Ok(false) => {}
        Ok(true) => {
            return refuse(
                &conn,
                &format!("agent {name} is revoked (`archfarm agents revoke`); it is refused for good"),
            )
        }
        Err(e) => return refuse(&conn, &format!("cannot check revocation: {e}")),
    }
    let stored = match shared.store.connected(&cert).await {
        Ok(stored) => stored,
        Err(e) => return refuse(&conn, &format!("cannot check revocation: {e}")),
    };
    if let Some(why) = stored.revoked {
        let reason = format!(
            "agent {name}'s certificate (serial {}) is {why} (`archfarm agents revoke`); it is refused for good",
            cert.serial
        );
        return refuse(&conn, &reason);
    }
    drop(unauthenticated);
    admission::authenticated(&conn, tls::PEER_STREAMS_AGENT);
    let span = info_span!("agent", agent = %name, remote = %conn.remote_address());
    let identity = Identity { name, cert, allowed: stored.platforms };
    session(shared, conn, identity).instrument(span).await;
}

/// Who is on the other end: the name and certificate it connected with, and the platforms its
/// certificate is bound to (none yet when empty: it is bound at this registration).
struct Identity {
    name: AgentName,
    cert: archfarm_shared::pki::CertificateInfo,
    allowed: Vec<archfarm_shared::Platform>,
}

async fn session(shared: Arc<Shared>, conn: quinn::Connection, identity: Identity) {
    let Identity { name, cert, allowed } = identity;
    let max = shared.settings.max_frame;
    let mut control = match tokio::time::timeout(REGISTER_TIMEOUT, QuicStream::accept(&conn, max)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return info!("agent left before registering: {}", tls::explain(&e)),
        Err(_) => return refuse(&conn, "no registration within 10 s"),
    };
    let registration = match tokio::time::timeout(REGISTER_TIMEOUT, control.expect::<AgentMessage>()).await {
        Ok(Ok(AgentMessage::Register(r))) => r,
        Ok(Ok(other)) => {
            let name = super::wire::agent_message_name(&other);
            return refuse(&conn, &format!("expected Register as the first message, got {name}"));
        }
        Ok(Err(e)) => return drop(on_codec_error(&conn, &e, "control stream")),
        Err(_) => return refuse(&conn, "no registration within 10 s"),
    };
    if let Err(why) = limits::check_registration(&registration) {
        return refuse(&conn, &format!("agent {name}: {why}"));
    }
    if let Err(e) = archfarm_shared::capabilities::check_capabilities(&registration.capabilities) {
        return refuse(&conn, &format!("agent {name} registered bad capabilities: {e}; fix `labels` in its config"));
    }
    if let Some(p) = registration.platforms.iter().find(|p| !allowed.is_empty() && !allowed.contains(p)) {
        let reason = format!(
            "agent {name} declares {p}, but its certificate (serial {}) is bound to {} (by its join token, or by              what it declared when it first connected); to build other platforms, an admin revokes it (`archfarm              agents revoke {name}`) and enrolls the host again",
            cert.serial,
            platform::list(&allowed)
        );
        return refuse(&conn, &reason);
    }
    // A certificate bound to nothing yet (issued offline, or joined with a token bound to no
    // platform) is bound now to what it declares: it can never claim another platform later.
    if allowed.is_empty() {
        if let Err(e) = shared.store.bind_platforms(&cert.serial, &registration.platforms).await {
            return refuse(&conn, &format!("cannot record the agent's platforms: {e}"));
        }
    }
    let grants = limits::Grants::default();
    let handle = AgentHandle {
        name: name.clone(),
        address: conn.remote_address(),
        registration: registration.clone(),
        cert_serial: cert.serial.clone(),
        cert_expires_ms: cert.not_after_ms,
        cert_sha256: cert.sha256.clone(),
        link: Arc::new(QuicLink { name: name.clone(), conn: conn.clone(), max_frame: max, grants: grants.clone() }),
    };
    let standing = match shared.store.recorded_standing(&name).await {
        Ok(Recorded::Quarantined(reason)) => Standing::Quarantined(reason),
        Ok(Recorded::Drained) => Standing::Drained,
        Ok(Recorded::Active) => Standing::Active,
        Err(e) => {
            warn!("cannot read the agent's recorded standing ({e}); taking it as active");
            Standing::Active
        }
    };
    if let Err(reason) = shared.farm.register(handle, standing) {
        let _ = control.write_last(&CoordinatorMessage::Refused { reason: reason.clone() }).await;
        // Give the refusal a moment to arrive before the close overtakes it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        return refuse(&conn, &reason);
    }
    let welcome =
        CoordinatorMessage::Registered { heartbeat_interval_ms: shared.settings.heartbeat_interval.as_millis() as u64 };
    let reason = if let Err(e) = control.write(&welcome).await {
        on_codec_error(&conn, &e, "control stream")
    } else {
        info!(
            platforms = %platform::list(&registration.platforms),
            capacity = registration.capacity,
            engine = %registration.engine.summary(),
            "agent registered"
        );
        serve_registered(&shared, &conn, &name, &grants, &mut control).await
    };
    shared.farm.unregister(&name, conn.stable_id());
    info!(reason = %reason, "agent disconnected");
}

async fn serve_registered(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    name: &AgentName,
    grants: &limits::Grants,
    control: &mut QuicStream,
) -> String {
    let max = shared.settings.max_frame;
    let timeout = shared.settings.heartbeat_timeout;
    // Streams the agent opens are served by their own task: reading a frame must never race
    // with anything that could cancel it halfway.
    let acceptor = {
        let (shared, conn, grants, name) = (shared.clone(), conn.clone(), grants.clone(), name.clone());
        tokio::spawn(
            async move {
                while let Ok(stream) = QuicStream::accept(&conn, max).await {
                    let (shared, conn, grants, name) = (shared.clone(), conn.clone(), grants.clone(), name.clone());
                    let serving = async move { serve_stream(&shared, (&conn, &name), &grants, stream).await };
                    tokio::spawn(serving.in_current_span());
                }
            }
            .in_current_span(),
        )
    };
    let reason = loop {
        match tokio::time::timeout(timeout, control.read::<AgentMessage>()).await {
            Err(_) => {
                let reason = format!("no heartbeat for {} s", timeout.as_secs());
                conn.close(close::TIMEOUT.into(), reason.as_bytes());
                break reason;
            }
            Ok(Ok(Some(AgentMessage::Heartbeat { .. }))) => {
                if let Err(e) = control.write(&CoordinatorMessage::HeartbeatAck).await {
                    break on_codec_error(conn, &e, "control stream");
                }
            }
            Ok(Ok(Some(AgentMessage::Draining))) => {
                info!("agent is draining: no new jobs");
                shared.farm.set_standing(name, Standing::Draining);
            }
            Ok(Ok(Some(AgentMessage::Health { problem }))) => {
                let problem = problem.map(|p| limits::cut(p, limits::MAX_HEALTH));
                match &problem {
                    Some(why) => warn!("agent's engine is unhealthy: {why}; no jobs until it recovers"),
                    None => info!("agent's engine is healthy again"),
                }
                shared.farm.set_health(name, problem);
            }
            Ok(Ok(Some(other))) => break unexpected(conn, &other, "the control stream"),
            Ok(Ok(None)) => break "agent closed its control stream".to_owned(),
            Ok(Err(e)) => break on_codec_error(conn, &e, "control stream"),
        }
    };
    acceptor.abort();
    reason
}

/// Serves a stream the agent opened: a context fetch, or a blob of an image it hands over.
async fn serve_stream(
    shared: &Shared,
    (conn, name): (&quinn::Connection, &AgentName),
    grants: &limits::Grants,
    mut stream: QuicStream,
) {
    let Ok(first) = tokio::time::timeout(REGISTER_TIMEOUT, stream.expect::<AgentMessage>()).await else {
        return warn!("an agent opened a stream and said nothing on it within 10 s; it is dropped");
    };
    match first {
        Ok(AgentMessage::FetchContext { digest }) => {
            let allowed = grants.allows(&digest);
            let sent = crate::server::contexts::agent::send_context(&shared.contexts, &digest, allowed, stream).await;
            shared.metrics.fetched(sent.bytes, sent.held);
        }
        Ok(AgentMessage::StoreBlob { digest, size, job }) => {
            let from = (name, &job);
            crate::server::handover::streams::receive(&shared.handovers, from, &digest, size, stream).await
        }
        Ok(other) => drop(unexpected(conn, &other, "a new stream")),
        Err(e) => drop(on_codec_error(conn, &e, "context stream")),
    }
}
