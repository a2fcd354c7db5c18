//! Joining the farm with a one-time join token, and renewing the certificate before it expires:
//! generate a key here, send a certificate signing request, and write the certificate the
//! coordinator signs where the configuration expects it. Keys are written with mode 0600, also
//! over an existing file.

use anyhow::{bail, Context as _};
use archfarm_config::AgentConfig;
use archfarm_shared::codec::DEFAULT_MAX_FRAME;
use archfarm_shared::protocol::{EnrollRequest, EnrollResponse, ALPN_ENROLL};
use archfarm_shared::stream::QuicStream;
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

/// Writes `text` to `path` with `mode`, whatever the mode of a file already there: through a
/// new file beside it, renamed over it once complete.
fn write(path: &std::path::Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut fresh = path.as_os_str().to_owned();
    fresh.push(".new");
    let fresh = std::path::PathBuf::from(fresh);
    let _ = std::fs::remove_file(&fresh);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&fresh)
        .with_context(|| format!("cannot write {}", fresh.display()))?;
    // The umask may have narrowed the mode; never widened it. Set it exactly.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", fresh.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", fresh.display()))?;
    std::fs::rename(&fresh, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// Sends `request` on a new enrollment connection (with `identity` when renewing) and returns
/// the certificate the coordinator signed.
async fn ask(config: &AgentConfig, identity: Option<(&str, &str)>, request: &EnrollRequest) -> anyhow::Result<String> {
    let ca = std::fs::read_to_string(&config.tls.ca_cert)
        .with_context(|| format!("cannot read the farm CA {}", config.tls.ca_cert.display()))?;
    let client = tls::client_config(&ca, identity, ALPN_ENROLL, tls::Transport::default())?;
    let (_endpoint, conn) =
        dial::dial(&config.coordinator, config.server_name.as_deref(), client, dial::DEADLINE).await.context(
            "cannot reach the coordinator's enrollment (a coordinator without tls.ca_key does not offer it: \
             issue this agent's certificate with `archfarm ca issue-agent NAME` instead)",
        )?;
    let exchange = async {
        let mut stream = QuicStream::open(&conn, DEFAULT_MAX_FRAME).await?;
        stream.write_last(request).await?;
        anyhow::Ok(stream.expect::<EnrollResponse>().await?)
    };
    let response = tokio::time::timeout(dial::DEADLINE, exchange).await;
    conn.close(0u32.into(), b"done");
    match response.map_err(|_| anyhow::anyhow!("no answer from the coordinator within {:?}", dial::DEADLINE))?? {
        EnrollResponse::Certificate { cert_pem } => Ok(cert_pem),
        EnrollResponse::Refused { reason } => bail!("{reason}"),
    }
}

/// Replaces the agent's certificate and key with new ones of the same name, presenting the
/// current certificate instead of a join token. The old certificate stays valid until the new
/// one first connects.
pub async fn renew(config: &AgentConfig) -> anyhow::Result<()> {
    let read = |p: &std::path::Path| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()));
    let (cert, key) = (read(&config.tls.cert)?, read(&config.tls.key)?);
    let current =
        pki::certificate_info_pem(&cert).map_err(|e| anyhow::anyhow!("{}: {e}", config.tls.cert.display()))?;
    let (csr_pem, key_pem) = pki::agent_request(&current.name)?;
    let cert_pem = ask(config, Some((&cert, &key)), &EnrollRequest::Renew { csr_pem })
        .await
        .with_context(|| format!("the coordinator did not renew agent {}'s certificate", current.name))?;
    let renewed = pki::certificate_info_pem(&cert_pem).map_err(anyhow::Error::msg)?;
    write(&config.tls.key, &key_pem, 0o600)?;
    write(&config.tls.cert, &cert_pem, 0o644)?;
    info!(agent = %current.name, old = %current.serial, new = %renewed.serial, "certificate renewed");
    Ok(())
}

/// Renews the certificate when it expires within [`pki::RENEW_WITHIN`]; returns whether it did.
pub async fn renew_if_due(config: &AgentConfig) -> anyhow::Result<bool> {
    let cert = std::fs::read_to_string(&config.tls.cert)
        .with_context(|| format!("cannot read {}", config.tls.cert.display()))?;
    let current =
        pki::certificate_info_pem(&cert).map_err(|e| anyhow::anyhow!("{}: {e}", config.tls.cert.display()))?;
    let due = current.not_after_ms.saturating_sub(pki::RENEW_WITHIN.as_millis() as u64);
    if archfarm_shared::clock::now_ms() < due {
        return Ok(false);
    }
    renew(config).await.map(|()| true)
}

/// Enrolls with `token` and writes the agent's key and certificate to `tls.key` and `tls.cert`.
pub async fn enroll(config: &AgentConfig, token: &str) -> anyhow::Result<()> {
    let name = agent_name(config)?;
    let (csr_pem, key_pem) = pki::agent_request(name.as_str())?;
    let request = EnrollRequest::Join { token: token.trim().to_owned(), name: name.clone(), csr_pem };
    let cert_pem =
        ask(config, None, &request).await.with_context(|| format!("the coordinator refused to enroll agent {name}"))?;
    write(&config.tls.key, &key_pem, 0o600)?;
    write(&config.tls.cert, &cert_pem, 0o644)?;
    info!(agent = %name, cert = %config.tls.cert.display(), "enrolled: certificate written");
    Ok(())
}
