//! Joining the farm with a one-time join token: generate a key here, send a certificate signing
//! request, and write the certificate the coordinator signs where the configuration expects it.

use anyhow::{bail, Context as _};
use archfarm_config::AgentConfig;
use archfarm_shared::codec::{self, DEFAULT_MAX_FRAME};
use archfarm_shared::protocol::{EnrollRequest, EnrollResponse, ALPN_ENROLL};
use archfarm_shared::{dial, pki, tls, AgentName};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use tracing::info;

/// The name on the coordinator's certificate: `server_name`, else the host part of `coordinator`.
pub fn server_name(config: &AgentConfig) -> anyhow::Result<String> {
    Ok(dial::server_name(&config.coordinator, config.server_name.as_deref())?)
}

/// The name this agent enrolls under: `name` from the configuration, else the host name.
fn agent_name(config: &AgentConfig) -> anyhow::Result<AgentName> {
    let name = match &config.name {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim().to_ascii_lowercase(),
    };
    name.parse().with_context(|| "set `name` in the agent configuration to enroll under")
}

fn write(path: &std::path::Path, text: &str, mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

/// Enrolls with `token` and writes the agent's key and certificate to `tls.key` and `tls.cert`.
pub async fn enroll(config: &AgentConfig, token: &str) -> anyhow::Result<()> {
    let name = agent_name(config)?;
    let ca = std::fs::read_to_string(&config.tls.ca_cert)
        .with_context(|| format!("cannot read the farm CA {}", config.tls.ca_cert.display()))?;
    let (csr_pem, key_pem) = pki::agent_request(name.as_str())?;
    let client = tls::client_config(&ca, None, ALPN_ENROLL, tls::Transport::default())?;
    let (_endpoint, conn) = dial::dial(&config.coordinator, config.server_name.as_deref(), client, dial::DEADLINE)
        .await
        .context("cannot enroll")?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let request = EnrollRequest { token: token.trim().to_owned(), name: name.clone(), csr_pem };
    codec::write_msg(&mut send, &request, DEFAULT_MAX_FRAME).await?;
    let _ = send.finish();
    let response = codec::expect_msg::<_, EnrollResponse>(&mut recv, DEFAULT_MAX_FRAME).await;
    conn.close(0u32.into(), b"enrolled");
    match response? {
        EnrollResponse::Certificate { cert_pem } => {
            write(&config.tls.key, &key_pem, 0o600)?;
            write(&config.tls.cert, &cert_pem, 0o644)?;
            info!(agent = %name, cert = %config.tls.cert.display(), "enrolled: certificate written");
            Ok(())
        }
        EnrollResponse::Refused { reason } => bail!("the coordinator refused to enroll agent {name}: {reason}"),
    }
}
