//! Agents joining with a one-time join token: the agent sends a certificate signing request for
//! a key it generated, and gets back a certificate signed by the farm CA. Needs the CA key
//! (`tls.ca_key`); without it the coordinator refuses enrollment and says so.

use super::state::Shared;
use super::store::StoreError;
use super::wire::on_codec_error;
use archfarm_shared::codec;
use archfarm_shared::pki::{self, CertifiedKey};
use archfarm_shared::protocol::{close, EnrollRequest, EnrollResponse};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Serves one enrollment connection: one request, one answer.
pub async fn serve(shared: Arc<Shared>, conn: quinn::Connection) {
    let max = shared.settings.max_frame;
    let Ok(Ok((mut send, mut recv))) = tokio::time::timeout(Duration::from_secs(30), conn.accept_bi()).await else {
        return conn.close(close::REFUSED.into(), b"no enrollment request within 30 s");
    };
    let request = match codec::expect_msg::<_, EnrollRequest>(&mut recv, max).await {
        Ok(r) => r,
        Err(e) => return drop(on_codec_error(&conn, &e, "enrollment stream")),
    };
    let response = match enroll(&shared, &request).await {
        Ok(cert_pem) => {
            info!(agent = %request.name, remote = %conn.remote_address(), "agent enrolled with a join token");
            EnrollResponse::Certificate { cert_pem }
        }
        Err(reason) => {
            warn!(agent = %request.name, remote = %conn.remote_address(), "enrollment refused: {reason}");
            EnrollResponse::Refused { reason }
        }
    };
    let _ = codec::write_msg(&mut send, &response, max).await;
    let _ = send.finish();
    // Let the answer arrive before the connection goes.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
}

async fn enroll(shared: &Shared, request: &EnrollRequest) -> Result<String, String> {
    let Some(ca) = &shared.settings.ca else {
        return Err("this coordinator cannot enroll agents: its configuration has no tls.ca_key. \
                    Issue a certificate with `archfarm ca issue-agent NAME` instead"
            .into());
    };
    let store_error = |e: StoreError| e.to_string();
    if shared.store.agent_revoked(&request.name).await.map_err(store_error)? {
        return Err(format!("agent {} is revoked; enroll under another name", request.name));
    }
    let hash = pki::token_hash(&request.token);
    shared
        .store
        .use_join_token(&hash, &request.name)
        .await
        .map_err(store_error)?
        .map_err(|why| format!("{why}; create a new one with `archfarm agents token create` on a client"))?;
    pki::sign_agent_request(ca, &request.csr_pem, request.name.as_str())
        .map_err(|e| format!("the certificate request cannot be signed: {e}"))
}

/// Loads the CA certificate and key used to sign enrolled agents.
pub fn load_ca(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<CertifiedKey> {
    use anyhow::Context as _;
    Ok(CertifiedKey {
        cert_pem: std::fs::read_to_string(cert).with_context(|| format!("cannot read {}", cert.display()))?,
        key_pem: std::fs::read_to_string(key).with_context(|| format!("cannot read {}", key.display()))?,
    })
}
