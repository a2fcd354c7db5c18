//! An authenticated connection to the coordinator: QUIC to its client port, trusting only the
//! farm CA, then the token in a hello. Every command's requests go over one of these.

use anyhow::{bail, Context as _};
use archfarm_shared::dial::{self, DialError};
use archfarm_shared::protocol::{close, ClientRequest, ClientResponse, ALPN_CLIENT};
use archfarm_shared::retry::{retry_if, Policy};
use archfarm_shared::stream::QuicStream;
use archfarm_shared::{codec, tls};
use std::path::PathBuf;

/// The largest frame the client reads or writes on any stream.
const MAX_FRAME: u32 = codec::DEFAULT_MAX_FRAME;

/// How a hello ended badly.
enum Hello {
    /// The coordinator said no, or the address is unusable: trying again would not help.
    Refused(String),
    /// The connection failed before an answer: worth another try.
    Failed(anyhow::Error),
}

impl std::fmt::Display for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hello::Refused(reason) => f.write_str(reason),
            Hello::Failed(e) => write!(f, "{e:#}"),
        }
    }
}

/// Where the coordinator is and how to prove who we are.
#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// Coordinator address, host:port.
    #[arg(long, env = "ARCHFARM_COORDINATOR")]
    pub coordinator: String,
    /// Client token (from `archfarm ca init`, file client.token).
    #[arg(long, env = "ARCHFARM_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The farm CA certificate (PEM) that signed the coordinator's certificate.
    #[arg(long, env = "ARCHFARM_CA")]
    pub ca: PathBuf,
}

/// An authenticated connection to the coordinator.
#[derive(Debug)]
pub struct Connection {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

impl Connection {
    /// Connects and presents the token.
    pub async fn open(remote: &Remote) -> anyhow::Result<Self> {
        let ca = std::fs::read_to_string(&remote.ca)
            .with_context(|| format!("cannot read the farm CA {} (set ARCHFARM_CA or --ca)", remote.ca.display()))?;
        let config = tls::client_config(&ca, None, ALPN_CLIENT, tls::Transport::default())?;
        // Nothing exists on the coordinator until the hello is answered, so a connection lost
        // before then (a handshake timed out on a loaded coordinator) is safe to try again.
        let hello = || Self::hello(remote, config.clone());
        let transient = |e: &Hello| matches!(e, Hello::Failed(_));
        match retry_if(Policy::COORDINATOR_CONNECT, "connecting to the coordinator", hello, transient).await {
            Ok((endpoint, conn)) => Ok(Connection { endpoint, conn }),
            Err(e) => match e.into_last() {
                Hello::Refused(reason) => bail!("{reason}"),
                Hello::Failed(e) => Err(e.context(format!("cannot reach the coordinator at {}", remote.coordinator))),
            },
        }
    }

    async fn hello(
        remote: &Remote,
        config: quinn::ClientConfig,
    ) -> Result<(quinn::Endpoint, quinn::Connection), Hello> {
        let failed = |e: anyhow::Error| Hello::Failed(e);
        let (endpoint, conn) = match dial::dial(&remote.coordinator, None, config, dial::DEADLINE).await {
            Ok(dialled) => dialled,
            Err(e @ (DialError::Handshake { .. } | DialError::TimedOut { .. })) => return Err(failed(e.into())),
            Err(e) => return Err(Hello::Refused(e.to_string())),
        };
        let mut stream =
            QuicStream::open(&conn, MAX_FRAME).await.map_err(|e| failed(anyhow::anyhow!("{}", tls::explain(&e))))?;
        let hello = ClientRequest::Hello { token: remote.token.trim().to_owned() };
        let answer = async {
            stream.write(&hello).await?;
            stream.finish().await;
            stream.expect::<ClientResponse>().await
        }
        .await;
        match answer {
            Ok(ClientResponse::Welcome { .. }) => Ok((endpoint, conn)),
            Ok(ClientResponse::Refused { reason }) => Err(Hello::Refused(reason)),
            Ok(other) => Err(Hello::Refused(format!("unexpected answer to hello: {other:?}"))),
            Err(e) => Err(failed(match conn.close_reason() {
                // Closed with a reason (a refused token closes right after its answer): say it.
                Some(quinn::ConnectionError::ApplicationClosed(c)) if c.error_code == close::REFUSED.into() => {
                    return Err(Hello::Refused(String::from_utf8_lossy(&c.reason).into_owned()))
                }
                Some(reason) => anyhow::anyhow!("{}", tls::explain(&reason)),
                None => anyhow::anyhow!("hello: {e}"),
            })),
        }
    }

    /// Opens a stream and sends one request on it. The stream stays open for what the request
    /// sends next (chunks of a context) until [`QuicStream::finish`].
    pub async fn request(&self, req: &ClientRequest) -> anyhow::Result<QuicStream> {
        let mut stream = QuicStream::open(&self.conn, MAX_FRAME).await.map_err(|e| self.lost(&e))?;
        stream.write(req).await.map_err(|e| self.codec(e))?;
        Ok(stream)
    }

    /// Reads the next response on a request's stream; `None` when the stream ended. Unlike the
    /// stream's own [`QuicStream::read`], an error says why the coordinator went away.
    pub async fn next(&self, stream: &mut QuicStream) -> anyhow::Result<Option<ClientResponse>> {
        stream.read().await.map_err(|e| self.codec(e))
    }

    /// Sends one request and reads its single response.
    pub async fn call(&self, req: &ClientRequest) -> anyhow::Result<ClientResponse> {
        let mut stream = self.request(req).await?;
        stream.finish().await;
        self.next(&mut stream).await?.context("the coordinator closed the stream without answering")
    }

    /// Connects, sends one request, reads its one response and closes, for a command that asks
    /// one thing. A refusal (`ClientResponse::Error`) is an error saying why.
    pub async fn call_once(remote: &Remote, req: &ClientRequest) -> anyhow::Result<ClientResponse> {
        let conn = Self::open(remote).await?;
        let response = conn.call(req).await;
        conn.close().await;
        match response? {
            ClientResponse::Error { message } => bail!("{message}"),
            other => Ok(other),
        }
    }

    /// Sends `req` and gathers its listing, which the coordinator sends in pages, each under
    /// the frame limit: `page` takes the items out of one page, `None` for any other answer. A
    /// refusal is an error saying why.
    pub async fn listing<T>(
        &self,
        req: &ClientRequest,
        page: fn(ClientResponse) -> Option<Vec<T>>,
    ) -> anyhow::Result<Vec<T>> {
        let mut stream = self.request(req).await?;
        stream.finish().await;
        let mut items = Vec::new();
        while let Some(response) = self.next(&mut stream).await? {
            if let ClientResponse::Error { message } = response {
                bail!("{message}");
            }
            items.extend(page(response).context("unexpected answer to a listing")?);
        }
        Ok(items)
    }

    /// Connects, gathers the listing `req` asks for ([`Connection::listing`]) and closes.
    pub async fn list_once<T>(
        remote: &Remote,
        req: &ClientRequest,
        page: fn(ClientResponse) -> Option<Vec<T>>,
    ) -> anyhow::Result<Vec<T>> {
        let conn = Self::open(remote).await?;
        let items = conn.listing(req, page).await;
        conn.close().await;
        items
    }

    /// The QUIC connection's counters (bytes and packets sent and received).
    pub fn stats(&self) -> quinn::ConnectionStats {
        self.conn.stats()
    }

    fn lost(&self, e: &quinn::ConnectionError) -> anyhow::Error {
        anyhow::anyhow!("lost the coordinator: {}", tls::explain(e))
    }

    fn codec(&self, e: codec::CodecError) -> anyhow::Error {
        match self.conn.close_reason() {
            Some(reason) => self.lost(&reason),
            None => anyhow::anyhow!("talking to the coordinator: {e}"),
        }
    }

    /// Closes the connection politely.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        // The close frame leaves as soon as the endpoint's driver runs, which this wait lets it
        // do. Waiting for the whole drain (three probe timeouts, about 80 ms even on loopback)
        // would add that to every command for nothing: the coordinator has the frame.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(10), self.endpoint.wait_idle()).await;
    }
}
