//! The farm's certificate authority: creating it and issuing coordinator and agent certificates
//! (rcgen). An agent's name is the common name of its certificate.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use std::time::Duration;

/// A PEM certificate and its PEM private key.
#[derive(Clone)]
pub struct CertifiedKey {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM. Never log it.
    pub key_pem: String,
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey").field("key_pem", &"<redacted>").finish_non_exhaustive()
    }
}

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters or the CA material.
    #[error("certificate error: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// How long an agent certificate is valid. Agents renew theirs when a third of it is left
/// ([`RENEW_WITHIN`]), without a join token.
pub const AGENT_VALIDITY: Duration = Duration::from_secs(90 * 86_400);
/// An agent renews its certificate when it expires within this.
pub const RENEW_WITHIN: Duration = Duration::from_secs(30 * 86_400);
const COORDINATOR_VALIDITY: Duration = Duration::from_secs(2 * 365 * 86_400);
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Allowance for clocks that run behind the issuer's.
const SKEW: Duration = Duration::from_secs(3600);

/// Rolling validity from now, and a random serial: no two certificates share an expiry instant
/// by construction, and each can be told apart (and revoked) by its serial.
fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - SKEW;
    params.not_after = now + lifetime;
    let mut serial = rand::random::<[u8; 16]>();
    serial[0] &= 0x7f; // positive, as RFC 5280 asks
    serial[0] |= 0x40; // no leading zero byte: the serial prints as 32 hex digits
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
}

/// Creates a new self-signed farm CA.
pub fn generate_ca(common_name: &str) -> Result<CertifiedKey, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.distinguished_name.push(DnType::OrganizationName, "archfarm");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, CA_VALIDITY);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(CertifiedKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// What a leaf certificate is for.
#[derive(Debug, Clone)]
pub enum Leaf<'a> {
    /// The coordinator: DNS names and IP addresses clients dial.
    Coordinator {
        /// Subject alternative names (DNS names or IP addresses).
        names: &'a [String],
    },
    /// An agent: its name becomes the common name.
    Agent {
        /// The agent's name.
        name: &'a str,
    },
}

fn leaf_params(leaf: &Leaf<'_>) -> Result<CertificateParams, PkiError> {
    let mut params = match leaf {
        Leaf::Coordinator { names } => {
            let mut p = CertificateParams::new(names.to_vec())?;
            p.distinguished_name.push(DnType::CommonName, "archfarm coordinator");
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            p
        }
        Leaf::Agent { name } => {
            let mut p = CertificateParams::new(Vec::<String>::new())?;
            p.distinguished_name.push(DnType::CommonName, *name);
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            p
        }
    };
    params.distinguished_name.push(DnType::OrganizationName, "archfarm");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, if matches!(leaf, Leaf::Agent { .. }) { AGENT_VALIDITY } else { COORDINATOR_VALIDITY });
    Ok(params)
}

/// Issues a certificate signed by the farm CA, with a new key.
pub fn issue(ca: &CertifiedKey, leaf: Leaf<'_>) -> Result<CertifiedKey, PkiError> {
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, KeyPair::from_pem(&ca.key_pem)?)?;
    let key = KeyPair::generate()?;
    let cert = leaf_params(&leaf)?.signed_by(&key, &issuer)?;
    Ok(CertifiedKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// An enrolling agent's key and certificate signing request. The key never leaves the agent.
pub fn agent_request(name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

/// Signs an agent's request after checking its signature (the agent holds the key). The
/// certificate is ours: the agent's name as common name, client use only, whatever the request
/// asked for.
pub fn sign_agent_request(ca: &CertifiedKey, csr_pem: &str, name: &str) -> Result<String, PkiError> {
    let request = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, KeyPair::from_pem(&ca.key_pem)?)?;
    let cert = leaf_params(&Leaf::Agent { name })?.signed_by(&request.public_key, &issuer)?;
    Ok(cert.pem())
}

/// What the farm records of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The common name: an agent's name.
    pub name: String,
    /// The serial number, lowercase hex.
    pub serial: String,
    /// sha256 of the subject public key info, lowercase hex: the key's fingerprint.
    pub key_sha256: String,
    /// The end of its validity, milliseconds since the Unix epoch.
    pub not_after_ms: u64,
    /// sha256 of the whole certificate (DER), lowercase hex: its fingerprint.
    pub sha256: String,
}

/// Reads a DER certificate's name, serial, key fingerprint and expiry.
pub fn certificate_info(der: &[u8]) -> Result<CertificateInfo, String> {
    use sha2::Digest as _;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("unreadable certificate: {e}"))?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or("the certificate has no common name")?
        .to_owned();
    Ok(CertificateInfo {
        name,
        serial: hex::encode(cert.raw_serial()),
        key_sha256: hex::encode(sha2::Sha256::digest(cert.public_key().raw)),
        not_after_ms: (cert.validity().not_after.timestamp().max(0) as u64).saturating_mul(1000),
        sha256: hex::encode(sha2::Sha256::digest(der)),
    })
}

/// [`certificate_info`] of the first certificate in a PEM text.
pub fn certificate_info_pem(pem: &str) -> Result<CertificateInfo, String> {
    use rustls::pki_types::pem::PemObject as _;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| "no PEM certificate found".to_owned())?;
    certificate_info(&der)
}

/// Checks an agent's certificate signing request before anything is spent on it: it must parse,
/// carry a valid signature (rcgen checks it), and ask for `name` or no name at all.
pub fn check_agent_request(csr_pem: &str, name: &str) -> Result<(), String> {
    if csr_pem.len() > 16 * 1024 {
        return Err(format!("the certificate request is {} bytes; at most 16 KiB is accepted", csr_pem.len()));
    }
    let request = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| format!("the certificate request cannot be read: {e}"))?;
    let asked = request.params.distinguished_name.get(&DnType::CommonName).map(|v| match v {
        rcgen::DnValue::Utf8String(s) => s.clone(),
        rcgen::DnValue::PrintableString(s) => s.as_str().to_owned(),
        other => format!("{other:?}"),
    });
    match asked {
        Some(asked) if asked != name => {
            Err(format!("the certificate request names {asked:?}, but the agent enrolls as {name:?}"))
        }
        _ => Ok(()),
    }
}

/// A fresh client token: 32 random bytes, hex.
pub fn generate_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The form in which the coordinator stores a token: its sha256, hex.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(token.trim().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_have_rolling_validity_and_serials_of_their_own() {
        let ca = generate_ca("test CA").unwrap();
        let now = crate::clock::now_ms();
        let a = certificate_info_pem(&issue(&ca, Leaf::Agent { name: "amd64-1" }).unwrap().cert_pem).unwrap();
        let b = certificate_info_pem(&issue(&ca, Leaf::Agent { name: "amd64-1" }).unwrap().cert_pem).unwrap();
        assert_eq!(a.name, "amd64-1");
        assert_ne!(a.serial, b.serial);
        assert_eq!(a.serial.len(), 32, "{}", a.serial);
        assert_ne!(a.key_sha256, b.key_sha256);
        let lifetime = AGENT_VALIDITY.as_millis() as u64;
        assert!(a.not_after_ms.abs_diff(now + lifetime) < 120_000, "expires 90 days from now: {}", a.not_after_ms);
    }

    #[test]
    fn requests_are_checked_before_signing() {
        let (csr, _key) = agent_request("amd64-1").unwrap();
        assert!(check_agent_request(&csr, "amd64-1").is_ok());
        let err = check_agent_request(&csr, "amd64-2").unwrap_err();
        assert!(err.contains("names \"amd64-1\", but the agent enrolls as \"amd64-2\""), "{err}");
        assert!(check_agent_request("not a csr", "amd64-1").unwrap_err().contains("cannot be read"));
        assert!(check_agent_request(&"x".repeat(20_000), "amd64-1").unwrap_err().contains("at most 16 KiB"));
    }
}
