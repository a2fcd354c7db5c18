//! The farm's certificate authority: creating it and issuing coordinator and agent certificates
//! (rcgen). An agent's name is the common name of its certificate.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

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

fn year_now() -> i32 {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    1970 + (secs / 31_556_952) as i32
}

fn validity(params: &mut CertificateParams, years: i32) {
    let now = year_now();
    params.not_before = rcgen::date_time_ymd(now - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(now + years, 1, 1);
}

/// Creates a new self-signed farm CA.
pub fn generate_ca(common_name: &str) -> Result<CertifiedKey, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.distinguished_name.push(DnType::OrganizationName, "archfarm");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, 10);
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
    validity(&mut params, 2);
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

/// A fresh client token: 32 random bytes, hex.
pub fn generate_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The form in which the coordinator stores a token: its sha256, hex.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(token.trim().as_bytes()))
}
