//! Agents joining with a one-time join token, and enrolled agents renewing their certificate:
//! the agent sends a certificate signing request for a key it generated, and gets back a
//! certificate signed by the farm CA. Needs the CA key (`tls.ca_key`); without it the
//! coordinator does not offer enrollment at all.
//!
//! A request is checked before anything is spent on it: the name is free (no live certificate
//! holds it), the request parses and asks for that name. The join token is spent in the same
//! transaction that records the certificate.

use super::state::Shared;
use super::store::StoreError;
use super::wire::on_codec_error;
use archfarm_shared::pki::{self, CertifiedKey};
use archfarm_shared::protocol::{close, EnrollRequest, EnrollResponse};
use archfarm_shared::stream::QuicStream;
use archfarm_shared::{tls, AgentName};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{info, warn};

/// How long an enrolling peer has to open its stream and send its one request.
const ENROLL_DEADLINE: Duration = Duration::from_secs(10);
/// An enrollment request is a token, a name and a CSR of a few hundred bytes.
const MAX_ENROLL_FRAME: u32 = 32 * 1024;

/// Serves one enrollment connection: one request, one answer. It holds `_unauthenticated` to
/// the end: an enrolling peer never authenticates on this connection.
pub async fn serve(shared: Arc<Shared>, conn: quinn::Connection, _unauthenticated: OwnedSemaphorePermit) {
    let read = async {
        let mut stream = QuicStream::accept(&conn, MAX_ENROLL_FRAME).await.map_err(|e| e.to_string())?;
        let request = stream.expect::<EnrollRequest>().await;
        Ok::<_, String>((stream, request))
    };
    let (stream, request) = match tokio::time::timeout(ENROLL_DEADLINE, read).await {
        Ok(Ok((stream, Ok(request)))) => (stream, request),
        Ok(Ok((_, Err(e)))) => return drop(on_codec_error(&conn, &e, "enrollment stream")),
        Ok(Err(_)) => return,
        Err(_) => {
            warn!(remote = %conn.remote_address(), "enrollment connection closed: no request within 10 s");
            return conn.close(close::REFUSED.into(), b"no enrollment request within 10 s");
        }
    };
    let remote = conn.remote_address();
    let response = match &request {
        EnrollRequest::Join { token, name, csr_pem } => match join(&shared, token, name, csr_pem).await {
            Ok(cert_pem) => {
                info!(agent = %name, %remote, "agent enrolled with a join token");
                EnrollResponse::Certificate { cert_pem }
            }
            Err(reason) => {
                warn!(agent = %name, %remote, "enrollment refused: {reason}");
                EnrollResponse::Refused { reason }
            }
        },
        EnrollRequest::Renew { csr_pem } => match renew(&shared, &conn, csr_pem).await {
            Ok((name, cert_pem)) => {
                info!(agent = %name, %remote, "agent renewed its certificate");
                EnrollResponse::Certificate { cert_pem }
            }
            Err(reason) => {
                warn!(%remote, "renewal refused: {reason}");
                EnrollResponse::Refused { reason }
            }
        },
    };
    let _ = stream.with_max_frame(shared.settings.max_frame).write_last(&response).await;
    // Let the answer arrive before the connection goes.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
}

fn ca(shared: &Shared) -> Result<&CertifiedKey, String> {
    shared.settings.ca.as_ref().ok_or_else(|| {
        "this coordinator cannot enroll agents: its configuration has no tls.ca_key. Issue a certificate with \
         `archfarm ca issue-agent NAME` instead"
            .to_owned()
    })
}

async fn join(shared: &Shared, token: &str, name: &AgentName, csr_pem: &str) -> Result<String, String> {
    let ca = ca(shared)?;
    let store_error = |e: StoreError| e.to_string();
    // Nothing about the farm (which names are held, by which serial) is said to a peer
    // without a token that could enroll it.
    let hash = pki::token_hash(token);
    if let Err(why) = shared.store.join_token_usable(&hash, name.as_str()).await.map_err(store_error)? {
        return Err(format!("{why}; create a new one with `archfarm agents token create` on a client"));
    }
    if shared.store.agent_revoked(name).await.map_err(store_error)? {
        return Err(format!("agent name {name} was revoked for good; enroll under another name"));
    }
    if let Some(serial) = shared.store.name_taken(name).await.map_err(store_error)? {
        return Err(format!(
            "agent name {name:?} is already held by a live certificate (serial {serial}); enroll under another \
             name, or revoke that one first with `archfarm agents revoke {name}`"
        ));
    }
    pki::check_agent_request(csr_pem, name.as_str())?;
    let cert_pem = pki::sign_agent_request(ca, csr_pem, name.as_str())
        .map_err(|e| format!("the certificate request cannot be signed: {e}"))?;
    let info = pki::certificate_info_pem(&cert_pem)?;
    match shared.store.enroll(&hash, &info).await.map_err(store_error)? {
        Ok(()) => Ok(cert_pem),
        Err(why) if why.contains("join token") => {
            Err(format!("{why}; create a new one with `archfarm agents token create` on a client"))
        }
        Err(why) => Err(why),
    }
}

async fn renew(shared: &Shared, conn: &quinn::Connection, csr_pem: &str) -> Result<(String, String), String> {
    let ca = ca(shared)?;
    // The TLS handshake checked that the CA signed it and that it has not expired.
    let current = tls::peer_certificate(conn)
        .map_err(|e| e.to_string())?
        .ok_or("renewing needs the agent's current certificate on the connection")?;
    let name: AgentName = current.name.parse().map_err(|e| format!("certificate name unusable: {e}"))?;
    if shared.store.agent_revoked(&name).await.map_err(|e| e.to_string())? {
        return Err(format!("agent name {name} was revoked for good"));
    }
    let stored = shared.store.connected(&current).await.map_err(|e| e.to_string())?;
    if let Some(why) = stored.revoked {
        return Err(format!("certificate {} of agent {name} is {why}; enroll again with a join token", current.serial));
    }
    pki::check_agent_request(csr_pem, name.as_str())?;
    let cert_pem = pki::sign_agent_request(ca, csr_pem, name.as_str())
        .map_err(|e| format!("the certificate request cannot be signed: {e}"))?;
    let info = pki::certificate_info_pem(&cert_pem)?;
    shared.store.renew(&current.serial, &info).await.map_err(|e| e.to_string())??;
    Ok((name.to_string(), cert_pem))
}
