//! rustls + quinn setup for the three roles: coordinator (server), agent (mutual TLS) and client
//! (server-authenticated; it then presents a bearer token). TLS 1.3 only, ring provider only.

use crate::protocol::{ALPN_AGENT, ALPN_CLIENT};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::time::Duration;

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file held no certificate or key.
    #[error("{what}: no PEM {expected} found")]
    Pem {
        /// Which input.
        what: String,
        /// What was expected in it.
        expected: &'static str,
    },
    /// rustls refused the material.
    #[error("{what}: {source}")]
    Rustls {
        /// Which input.
        what: String,
        /// The rustls error.
        source: rustls::Error,
    },
    /// The peer's certificate has no usable agent name.
    #[error("peer certificate: {0}")]
    PeerName(String),
}

/// Installs ring as the process's rustls provider. Call once at start of every binary; a second
/// call is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes()).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsError::Pem { what: what.into(), expected: "certificate" });
    }
    Ok(certs)
}

fn key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| TlsError::Pem { what: what.into(), expected: "private key" })
}

fn roots(ca_pem: &str) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca_pem, "farm CA")? {
        roots.add(c).map_err(|source| TlsError::Rustls { what: "farm CA".into(), source })?;
    }
    Ok(Arc::new(roots))
}

/// QUIC timing and limits shared by all roles.
#[derive(Debug, Clone, Copy)]
pub struct Transport {
    /// Close the connection after this long without any packet.
    pub idle_timeout: Duration,
    /// Send QUIC keep-alives this often; must be shorter than `idle_timeout`.
    pub keep_alive: Duration,
    /// Streams the peer may have open at once. quinn keeps state for every stream a peer may
    /// open, allocated up front (about 100 bytes each): the coordinator allows its many agents
    /// a few ([`PEER_STREAMS_AGENT`]) and raises the limit for a client once it is authenticated.
    pub peer_streams: u32,
    /// Bytes the peer may have in flight over the whole connection; quinn's default (no limit
    /// beyond the per-stream windows) when `None`. The coordinator starts every connection with
    /// a small window and widens it once the peer has authenticated.
    pub connection_window: Option<u32>,
}

/// Streams an agent may open at once on the coordinator (its control stream and context fetches).
pub const PEER_STREAMS_AGENT: u32 = 32;
/// Bytes the coordinator may have in flight to an agent, over all its streams. A context fetch
/// arrives faster than the agent hashes and writes it, and quinn holds what is not yet read:
/// with no window beyond each stream's 16 MiB, an agent's peak during P7c (a) went from 45 to
/// 101 MiB once the coordinator sent at the link's speed. 8 MiB kept the fetch as fast (0.3 s
/// for 100 MiB) and the peak at 50 MiB; it is 60 ms of a 1 Gbit/s link.
pub const AGENT_RECEIVE_WINDOW: u32 = 8 << 20;
/// Requests an authenticated client may have open at once (builds it follows, mostly).
pub const PEER_STREAMS_CLIENT: u32 = 1024;

impl Default for Transport {
    fn default() -> Self {
        // Keep-alives every 2 s keep a quiet connection (a long RUN step) open; 20 s of silence
        // means the peer or the path is gone. Shorter cuts off peers that a loaded host starves
        // for a few seconds (seen with hundreds of clients on two cores).
        Transport {
            idle_timeout: Duration::from_secs(20),
            keep_alive: Duration::from_secs(2),
            peer_streams: PEER_STREAMS_CLIENT,
            connection_window: None,
        }
    }
}

/// UDP socket buffer asked for, each way.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// The largest UDP payload an endpoint accepts and MTU discovery searches up to. quinn's defaults
/// stop at an Ethernet frame (1472 accepted, 1452 searched), so even a loopback or jumbo-frame
/// path carried a context in datagrams of 1.2 to 1.4 KB, each encrypted, sent and acknowledged
/// on its own: P4 sent 920,000 of them per GiB and reached 155 MiB/s. Discovery probes upward
/// from 1200 bytes and keeps what the path delivers, so a plain Ethernet path still settles at
/// its own size. Not a jumbo frame's 8972: quinn sends up to ten datagrams in one segmented UDP
/// send, which the kernel refuses above 64 KiB in all, and quinn counts those datagrams as lost
/// (measured: a third of them, and black-hole detection then put the path back to 1200).
/// The cost is the endpoint's receive buffer, which grows with this value (one datagram per GRO
/// segment and batch slot, touched only as datagrams arrive).
pub const MAX_UDP_PAYLOAD: u16 = 6500;

/// A QUIC endpoint bound to `bind`, serving `server` when given, with UDP buffers large enough
/// for a fast upload.
pub fn endpoint(bind: std::net::SocketAddr, server: Option<quinn::ServerConfig>) -> std::io::Result<quinn::Endpoint> {
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .map_err(|e| std::io::Error::other(format!("QUIC payload size {MAX_UDP_PAYLOAD}: {e}")))?;
    let socket = std::net::UdpSocket::bind(bind)?;
    // The kernel's default buffers (about 200 KiB) overflow during a fast upload: the losses shrink
    // the congestion window and stall MTU discovery. Ask for more; the kernel caps it at
    // net.core.rmem_max / wmem_max (docs/operations.md).
    let sock = socket2::SockRef::from(&socket);
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    let runtime = quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime for QUIC"))?;
    quinn::Endpoint::new(config, server, socket, runtime)
}

impl Transport {
    fn config(self) -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        t.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(self.idle_timeout).unwrap_or(quinn::VarInt::from_u32(30_000).into()),
        ));
        t.keep_alive_interval(Some(self.keep_alive));
        t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(self.peer_streams));
        // No role uses unidirectional streams.
        t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
        // A context upload is one stream: let it have more in flight than quinn's defaults
        // (1.25 MB per stream) so a briefly busy receiver does not stall the sender.
        t.stream_receive_window(quinn::VarInt::from_u32(16 << 20));
        t.send_window(64 << 20);
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(MAX_UDP_PAYLOAD);
        t.mtu_discovery_config(Some(mtu));
        if let Some(window) = self.connection_window {
            t.receive_window(quinn::VarInt::from_u32(window));
        }
        Arc::new(t)
    }
}

/// The coordinator's QUIC server configuration: agents must present a certificate signed by the
/// farm CA (checked here); clients present none and authenticate with a token afterwards.
/// Enrollment is offered (by its ALPN) only when `enroll` is set: a coordinator without the CA
/// key cannot sign, so it does not listen for requests it would refuse.
pub fn server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    transport: Transport,
    enroll: bool,
) -> Result<quinn::ServerConfig, TlsError> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::PeerName(format!("client verifier: {e}")))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls { what: "TLS versions".into(), source })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert_pem, "coordinator certificate")?, key(key_pem, "coordinator key")?)
        .map_err(|source| TlsError::Rustls { what: "coordinator certificate".into(), source })?;
    tls.alpn_protocols = vec![ALPN_AGENT.to_vec(), ALPN_CLIENT.to_vec()];
    if enroll {
        tls.alpn_protocols.push(crate::protocol::ALPN_ENROLL.to_vec());
    }
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::PeerName(format!("QUIC server config: {e}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport.config());
    Ok(config)
}

/// A QUIC client configuration trusting only the farm CA. Agents pass their certificate and key;
/// release engineers' clients pass none.
pub fn client_config(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
    alpn: &[u8],
    transport: Transport,
) -> Result<quinn::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls { what: "TLS versions".into(), source })?
        .with_root_certificates(roots(ca_pem)?);
    let mut tls = match identity {
        Some((cert_pem, key_pem)) => builder
            .with_client_auth_cert(certs(cert_pem, "agent certificate")?, key(key_pem, "agent key")?)
            .map_err(|source| TlsError::Rustls { what: "agent certificate".into(), source })?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::PeerName(format!("QUIC client config: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport.config());
    Ok(config)
}

/// The ALPN a connection negotiated.
pub fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?.downcast::<quinn::crypto::rustls::HandshakeData>().ok()?.protocol
}

/// The peer's (already verified) certificate: its name, serial, key fingerprint and expiry, if
/// it presented one.
pub fn peer_certificate(conn: &quinn::Connection) -> Result<Option<crate::pki::CertificateInfo>, TlsError> {
    let Some(identity) = conn.peer_identity() else {
        return Ok(None);
    };
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TlsError::PeerName("unexpected identity type".into()))?;
    let Some(leaf) = chain.first() else {
        return Ok(None);
    };
    crate::pki::certificate_info(leaf).map(Some).map_err(TlsError::PeerName)
}

/// The common name of a DER certificate.
pub fn common_name(der: &CertificateDer<'_>) -> Result<String, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::PeerName(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| TlsError::PeerName("certificate has no common name".into()))?;
    Ok(cn.to_owned())
}

/// Explains a failed connection in terms an operator can act on: TLS alerts become "the
/// coordinator refused our certificate" rather than "crypto error 48".
pub fn explain(err: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError as E;
    match err {
        E::ApplicationClosed(close) => {
            format!("closed by the coordinator: {}", String::from_utf8_lossy(&close.reason))
        }
        E::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            let reason = String::from_utf8_lossy(&close.reason);
            // QUIC carries TLS alerts as CRYPTO_ERROR 0x100 + alert.
            match code.checked_sub(0x100) {
                Some(alert @ (42..=49 | 51 | 116)) if alert != 47 || reason.contains("certificate") => format!(
                    "the coordinator refused this agent's certificate (TLS alert {alert}: {reason}): it must be \
                     signed by the farm's CA (`archfarm ca issue-agent NAME` on the coordinator issues one)"
                ),
                Some(120) => {
                    "the peer speaks another protocol version (no common ALPN); upgrade the older side".to_owned()
                }
                Some(alert) if alert < 256 => format!("TLS handshake failed (alert {alert}): {reason}"),
                _ => format!("connection closed: {close}"),
            }
        }
        E::TransportError(e) => format!("TLS/QUIC handshake failed: {e}"),
        E::TimedOut => {
            "timed out: no answer from the coordinator (is it running, and is the address right?)".to_owned()
        }
        E::Reset => "reset by the peer".to_owned(),
        E::LocallyClosed => "closed locally".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki;

    #[test]
    fn issued_agent_certificates_carry_the_name() {
        let ca = pki::generate_ca("test CA").unwrap();
        let agent = pki::issue(&ca, pki::Leaf::Agent { name: "arm64-1" }).unwrap();
        // An enrolled agent's certificate: its own key, our parameters.
        let (csr, key) = pki::agent_request("new-1").unwrap();
        let enrolled = pki::sign_agent_request(&ca, &csr, "new-1").unwrap();
        let der = certs(&enrolled, "enrolled").unwrap().remove(0);
        assert_eq!(common_name(&der).unwrap(), "new-1");
        client_config(&ca.cert_pem, Some((&enrolled, &key)), ALPN_AGENT, Transport::default()).unwrap();
        assert!(pki::sign_agent_request(&ca, "not a csr", "x").is_err());
        let der = certs(&agent.cert_pem, "agent").unwrap().remove(0);
        assert_eq!(common_name(&der).unwrap(), "arm64-1");
        install_crypto_provider();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let server = pki::issue(&ca, pki::Leaf::Coordinator { names: &names }).unwrap();
        server_config(&ca.cert_pem, &server.cert_pem, &server.key_pem, Transport::default(), true).unwrap();
        client_config(&ca.cert_pem, Some((&agent.cert_pem, &agent.key_pem)), ALPN_AGENT, Transport::default()).unwrap();
    }

    #[test]
    fn empty_pem_is_a_clear_error() {
        let err = certs("not a pem", "farm CA").unwrap_err();
        assert_eq!(err.to_string(), "farm CA: no PEM certificate found");
    }
}
