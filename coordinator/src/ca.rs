//! `archfarm ca`: create the farm's CA, the coordinator's certificate and a client token, and
//! issue agent certificates.

use anyhow::{bail, Context as _};
use archfarm_shared::pki::{self, CertifiedKey, Leaf};
use archfarm_shared::AgentName;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Files `ca init` writes.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key.
pub const CA_KEY: &str = "ca.key";
/// The coordinator's certificate.
pub const COORDINATOR_CERT: &str = "coordinator.pem";
/// The coordinator's key.
pub const COORDINATOR_KEY: &str = "coordinator.key";
/// The client token, for release engineers.
pub const CLIENT_TOKEN: &str = "client.token";
/// Hashes of accepted client tokens, for the coordinator.
pub const CLIENT_TOKENS: &str = "client-tokens";

/// Writes a file; a secret one is 0600 even when a file with a wider mode was already there.
fn write(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = if secret { 0o600 } else { 0o644 };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // The mode above applies to a new file only. Narrow an existing one before the secret is in it.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

/// `archfarm ca init`: a new CA in `dir`, a coordinator certificate for `names`, a client token.
pub fn init(dir: &Path, names: &[String], force: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if dir.join(CA_KEY).exists() && !force {
        bail!(
            "{} already holds a farm CA; every agent certificate depends on it. Pass --force to replace it",
            dir.display()
        );
    }
    let mut names = names.to_vec();
    for default in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|n| n == default) {
            names.push(default.to_owned());
        }
    }
    // A unique CA name makes a certificate from another farm fail as "unknown issuer".
    let ca = pki::generate_ca(&format!("archfarm farm CA {:08x}", rand::random::<u32>()))?;
    let coordinator = pki::issue(&ca, Leaf::Coordinator { names: &names })?;
    let token = pki::generate_token();
    write(&dir.join(CA_CERT), &ca.cert_pem, false)?;
    write(&dir.join(CA_KEY), &ca.key_pem, true)?;
    write(&dir.join(COORDINATOR_CERT), &coordinator.cert_pem, false)?;
    write(&dir.join(COORDINATOR_KEY), &coordinator.key_pem, true)?;
    write(&dir.join(CLIENT_TOKEN), &format!("{token}\n"), true)?;
    write(
        &dir.join(CLIENT_TOKENS),
        &format!("{} role=admin name=admin  # created by archfarm ca init\n", pki::token_hash(&token)),
        false,
    )?;
    eprintln!("farm CA and coordinator certificate (for {}) written to {}", names.join(", "), dir.display());
    eprintln!("client token in {}; give it to release engineers as ARCHFARM_TOKEN", dir.join(CLIENT_TOKEN).display());
    Ok(())
}

/// `archfarm ca issue-agent NAME`: a certificate whose common name is the agent's name.
pub fn issue_agent(ca_dir: &Path, name: &str, out: Option<&Path>) -> anyhow::Result<(PathBuf, PathBuf)> {
    let name: AgentName = name.parse()?;
    let read = |f: &str| {
        std::fs::read_to_string(ca_dir.join(f)).with_context(|| {
            format!(
                "cannot read {} (run `archfarm ca init --dir {}` first)",
                ca_dir.join(f).display(),
                ca_dir.display()
            )
        })
    };
    let ca = CertifiedKey { cert_pem: read(CA_CERT)?, key_pem: read(CA_KEY)? };
    let agent = pki::issue(&ca, Leaf::Agent { name: name.as_str() })?;
    let out = out.unwrap_or(ca_dir);
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let cert = out.join(format!("{name}.pem"));
    let key = out.join(format!("{name}.key"));
    write(&cert, &agent.cert_pem, false)?;
    write(&key, &agent.key_pem, true)?;
    eprintln!("agent {name}: certificate {} and key {}", cert.display(), key.display());
    Ok((cert, key))
}
