//! Dialling the coordinator: resolve its `host:port`, bind a QUIC endpoint of the address's
//! family, and connect under the name on its certificate, all within a deadline. Every error
//! names the address and the server name it was about.

use std::net::SocketAddr;
use std::time::Duration;

/// How long resolving and connecting may take together. Longer than QUIC's idle timeout
/// (20 s), which ends an unanswered handshake first with its own explanation; this bounds
/// what has no timeout of its own, such as a resolver that never answers.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Why the coordinator could not be dialled.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The address is not `host:port`.
    #[error("coordinator address {address:?} is not host:port")]
    Address {
        /// The address as given.
        address: String,
    },
    /// The resolver failed.
    #[error("cannot resolve coordinator address {address}: {source}")]
    Resolve {
        /// The address as given.
        address: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// The name resolved to no address this endpoint can reach.
    #[error("coordinator address {address} resolves to no {family} address")]
    NoAddress {
        /// The address as given.
        address: String,
        /// `IPv4` when the endpoint is IPv4-only, else `IP`.
        family: &'static str,
    },
    /// No UDP socket could be opened.
    #[error("cannot open a UDP socket on {bind} to reach the coordinator at {address}: {source}")]
    Bind {
        /// Where it was to be bound.
        bind: SocketAddr,
        /// The coordinator's address as given.
        address: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// quinn refused to start the connection (a server name that is not a valid DNS name or
    /// IP address, a closed endpoint).
    #[error("cannot connect to the coordinator at {address} ({addr}) as {server_name:?}: {error}")]
    Connect {
        /// The address as given.
        address: String,
        /// The address it resolved to.
        addr: SocketAddr,
        /// The name the coordinator's certificate was to be checked against.
        server_name: String,
        /// quinn's error.
        error: quinn::ConnectError,
    },
    /// The handshake failed: no answer, a refused certificate, another protocol version.
    #[error("cannot connect to the coordinator at {address} ({addr}) as {server_name:?}: {}", crate::tls::explain(.error))]
    Handshake {
        /// The address as given.
        address: String,
        /// The address it resolved to.
        addr: SocketAddr,
        /// The name the coordinator's certificate was checked against.
        server_name: String,
        /// quinn's error (boxed: it is large); [`crate::tls::explain`] words it for an operator.
        error: Box<quinn::ConnectionError>,
    },
    /// Resolving and connecting took longer than the deadline.
    #[error("no connection to the coordinator at {address} as {server_name:?} within {} s", .deadline.as_secs_f64())]
    TimedOut {
        /// The address as given.
        address: String,
        /// The name the coordinator's certificate was to be checked against.
        server_name: String,
        /// The deadline.
        deadline: Duration,
    },
}

/// The name the coordinator's certificate must carry: `server_name` when given, else the host
/// part of `address` (`coordinator.example:7000` → `coordinator.example`, `[::1]:7000` → `::1`).
pub fn server_name(address: &str, server_name: Option<&str>) -> Result<String, DialError> {
    if let Some(name) = server_name {
        return Ok(name.to_owned());
    }
    match address.rsplit_once(':') {
        Some((host, _)) if !host.is_empty() => Ok(host.trim_start_matches('[').trim_end_matches(']').to_owned()),
        _ => Err(DialError::Address { address: address.to_owned() }),
    }
}

/// Every address `address` (`host:port`) resolves to, in the resolver's order; never empty.
pub async fn resolve(address: &str) -> Result<Vec<SocketAddr>, DialError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(address)
        .await
        .map_err(|source| DialError::Resolve { address: address.to_owned(), source })?
        .collect();
    if addrs.is_empty() {
        return Err(DialError::NoAddress { address: address.to_owned(), family: "IP" });
    }
    Ok(addrs)
}

/// The unspecified address and an ephemeral port of `remote`'s family.
fn local_for(remote: SocketAddr) -> SocketAddr {
    match remote {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// A client endpoint on an ephemeral port of `remote`'s family, with [`crate::tls::endpoint`]'s
/// socket buffers.
pub fn bind_for(remote: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    crate::tls::endpoint(local_for(remote), None)
}

/// Resolves `address`, binds an endpoint of its family and connects with `config` under
/// [`server_name`]`(address, name)`, all within `deadline`. The endpoint is returned with the
/// connection: it must live as long as the connection does. `config` also becomes the
/// endpoint's default, for later connections on it.
pub async fn dial(
    address: &str,
    name: Option<&str>,
    config: quinn::ClientConfig,
    deadline: Duration,
) -> Result<(quinn::Endpoint, quinn::Connection), DialError> {
    let server_name = server_name(address, name)?;
    let attempt = async {
        let addr = resolve(address).await?[0];
        let mut endpoint = bind_for(addr).map_err(|source| DialError::Bind {
            bind: local_for(addr),
            address: address.to_owned(),
            source,
        })?;
        endpoint.set_default_client_config(config.clone());
        let conn = connect(&endpoint, address, addr, &server_name, config).await?;
        Ok((endpoint, conn))
    };
    within(deadline, address, &server_name, attempt).await
}

/// Like [`dial`], on an endpoint already bound (one UDP socket shared by many connections):
/// an IPv4 endpoint takes the first IPv4 address `address` resolves to, an IPv6 one the first.
pub async fn dial_on(
    endpoint: &quinn::Endpoint,
    address: &str,
    name: Option<&str>,
    config: quinn::ClientConfig,
    deadline: Duration,
) -> Result<quinn::Connection, DialError> {
    let server_name = server_name(address, name)?;
    // An IPv6 socket is dual-stack: quinn maps IPv4 addresses onto it.
    let ipv4_only = endpoint.local_addr().map(|a| a.is_ipv4()).unwrap_or(false);
    let attempt = async {
        let addr = resolve(address)
            .await?
            .into_iter()
            .find(|a| !ipv4_only || a.is_ipv4())
            .ok_or_else(|| DialError::NoAddress { address: address.to_owned(), family: "IPv4" })?;
        connect(endpoint, address, addr, &server_name, config).await
    };
    within(deadline, address, &server_name, attempt).await
}

async fn connect(
    endpoint: &quinn::Endpoint,
    address: &str,
    addr: SocketAddr,
    server_name: &str,
    config: quinn::ClientConfig,
) -> Result<quinn::Connection, DialError> {
    let (address, server_name) = (address.to_owned(), server_name.to_owned());
    match endpoint.connect_with(config, addr, &server_name) {
        Err(error) => Err(DialError::Connect { address, addr, server_name, error }),
        Ok(connecting) => connecting.await.map_err(|error| DialError::Handshake {
            address,
            addr,
            server_name,
            error: Box::new(error),
        }),
    }
}

async fn within<T>(
    deadline: Duration,
    address: &str,
    server_name: &str,
    attempt: impl std::future::Future<Output = Result<T, DialError>>,
) -> Result<T, DialError> {
    tokio::time::timeout(deadline, attempt).await.unwrap_or_else(|_| {
        Err(DialError::TimedOut { address: address.to_owned(), server_name: server_name.to_owned(), deadline })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki;
    use crate::protocol::ALPN_CLIENT;
    use crate::tls::{self, Transport};

    #[test]
    fn the_server_name_is_the_host_part_unless_given() {
        assert_eq!(server_name("coord.example:7000", None).unwrap(), "coord.example");
        assert_eq!(server_name("[::1]:7000", None).unwrap(), "::1");
        assert_eq!(server_name("10.0.0.1:7000", Some("coordinator")).unwrap(), "coordinator");
        let err = server_name("coordinator", None).unwrap_err();
        assert_eq!(err.to_string(), r#"coordinator address "coordinator" is not host:port"#);
    }

    fn farm() -> (String, quinn::Endpoint) {
        tls::install_crypto_provider();
        let ca = pki::generate_ca("test CA").unwrap();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let server = pki::issue(&ca, pki::Leaf::Coordinator { names: &names }).unwrap();
        let config =
            tls::server_config(&ca.cert_pem, &server.cert_pem, &server.key_pem, Transport::default(), false).unwrap();
        (ca.cert_pem, tls::endpoint("127.0.0.1:0".parse().unwrap(), Some(config)).unwrap())
    }

    fn client(ca_pem: &str) -> quinn::ClientConfig {
        tls::client_config(ca_pem, None, ALPN_CLIENT, Transport::default()).unwrap()
    }

    #[tokio::test]
    async fn dials_a_coordinator_on_a_new_or_a_shared_endpoint() {
        let (ca, server) = farm();
        let port = server.local_addr().unwrap().port();
        let accept = tokio::spawn({
            let server = server.clone();
            async move {
                for _ in 0..2 {
                    let conn = server.accept().await.unwrap().await.unwrap();
                    conn.closed().await;
                }
            }
        });
        let (endpoint, conn) = dial(&format!("127.0.0.1:{port}"), None, client(&ca), DEADLINE).await.unwrap();
        assert!(endpoint.local_addr().unwrap().is_ipv4());
        conn.close(0u32.into(), b"done");
        // An IPv4 endpoint shared by sessions picks an IPv4 address even if ::1 comes first.
        let shared = tls::endpoint("0.0.0.0:0".parse().unwrap(), None).unwrap();
        let conn = dial_on(&shared, &format!("localhost:{port}"), None, client(&ca), DEADLINE).await.unwrap();
        assert!(conn.remote_address().is_ipv4());
        conn.close(0u32.into(), b"done");
        accept.await.unwrap();
        drop(endpoint);
    }

    #[tokio::test]
    async fn errors_name_the_address_and_the_server_name() {
        let (ca, server) = farm();
        let address = format!("127.0.0.1:{}", server.local_addr().unwrap().port());
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                let _ = incoming.await;
            }
        });
        // The certificate names localhost and 127.0.0.1, not this.
        let err = dial(&address, Some("elsewhere.example"), client(&ca), DEADLINE).await.unwrap_err();
        assert!(matches!(err, DialError::Handshake { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(&address) && text.contains(r#"as "elsewhere.example""#), "{text}");

        // This coordinator has no CA key: it does not offer enrollment at all.
        let enroll = tls::client_config(&ca, None, crate::protocol::ALPN_ENROLL, Transport::default()).unwrap();
        let err = dial(&address, None, enroll, DEADLINE).await.unwrap_err();
        assert!(err.to_string().contains("no common ALPN"), "{err}");

        let err = dial("localhost:port", None, client(&ca), DEADLINE).await.unwrap_err();
        assert!(err.to_string().starts_with("cannot resolve coordinator address localhost:port: "), "{err}");

        // Nobody answers on this port: the deadline ends it and says so.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let address = silent.local_addr().unwrap().to_string();
        let err = dial(&address, None, client(&ca), Duration::from_millis(300)).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(r#"no connection to the coordinator at {address} as "127.0.0.1" within 0.3 s"#)
        );
    }

    /// On loopback (MTU 64 KiB) a bulk transfer finds the largest datagram allowed and keeps it:
    /// no datagram of a segmented send is refused by the kernel (which counted as loss, and put
    /// the path back to 1200 bytes), and the bytes arrive whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bulk_transfer_on_loopback_uses_the_largest_datagrams() {
        let (ca, server) = farm();
        let port = server.local_addr().unwrap().port();
        const SIZE: usize = 32 << 20;
        let receive = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let got = recv.read_to_end(SIZE + 1).await.unwrap();
            send.write_all(&(got.len() as u64).to_be_bytes()).await.unwrap();
            send.finish().unwrap();
            conn.closed().await;
            got.iter().map(|b| *b as u64).sum::<u64>()
        });
        let (_endpoint, conn) = dial(&format!("127.0.0.1:{port}"), None, client(&ca), DEADLINE).await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let bytes: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
        send.write_all(&bytes).await.unwrap();
        send.finish().unwrap();
        let len = recv.read_to_end(8).await.unwrap();
        assert_eq!(u64::from_be_bytes(len.try_into().unwrap()), SIZE as u64);
        let stats = conn.stats();
        conn.close(0u32.into(), b"done");
        assert_eq!(receive.await.unwrap(), bytes.iter().map(|b| *b as u64).sum::<u64>());
        assert_eq!(stats.path.black_holes_detected, 0, "{stats:?}");
        assert_eq!(stats.path.current_mtu, tls::MAX_UDP_PAYLOAD, "{stats:?}");
        assert!(stats.udp_tx.datagrams < (SIZE / 4000) as u64, "{} datagrams for 32 MiB", stats.udp_tx.datagrams);
    }
}
