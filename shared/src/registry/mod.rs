//! The registry adapter: every OCI distribution call of the farm goes through here (oci-client).
//! Credentials come from the usual Docker config (`~/.docker/config.json`, credential helpers);
//! plain http is used for loopback registries only.

pub mod auth;
mod body;
mod document;
mod download;

use crate::credentials::Credential;
use crate::ids::Digest;
use crate::reference::ImageRef;
use bytes::Bytes;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A registry call that failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference is not a valid image reference.
    #[error("invalid image reference {input:?}: {reason} (expected REGISTRY/REPOSITORY:TAG, for example 127.0.0.1:5000/app:1.4)")]
    Reference {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry answered with an error or could not be reached.
    #[error("registry {registry}: {op} {reference}: {message}")]
    Call {
        /// Registry host.
        registry: String,
        /// What we tried.
        op: &'static str,
        /// On what.
        reference: String,
        /// The client's error.
        message: String,
    },
}

/// Parses and validates an image reference (`registry/repo:tag` or `registry/repo@digest`),
/// by the distribution grammar. A reference with neither tag nor digest means `:latest`.
pub fn parse_reference(input: &str) -> Result<ImageRef, RegistryError> {
    let err = |reason: String| RegistryError::Reference { input: input.to_owned(), reason };
    if input.is_empty() {
        return Err(err("empty reference".into()));
    }
    if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err("it contains whitespace".into()));
    }
    let r = input.parse::<Reference>().map_err(|e| err(e.to_string()))?;
    let digest = r.digest().map(str::parse::<Digest>).transpose().map_err(|e| err(e.to_string()))?;
    let tag = r.tag().map(str::to_owned).or_else(|| digest.is_none().then(|| "latest".to_owned()));
    Ok(ImageRef::from_parts(r.registry().to_owned(), r.repository().to_owned(), tag, digest))
}

/// The oci-client form of a reference.
fn oci(r: &ImageRef) -> Reference {
    match (r.tag(), r.digest()) {
        (Some(tag), Some(d)) => Reference::with_tag_and_digest(
            r.registry().to_owned(),
            r.repository().to_owned(),
            tag.to_owned(),
            d.to_string(),
        ),
        (None, Some(d)) => Reference::with_digest(r.registry().to_owned(), r.repository().to_owned(), d.to_string()),
        (tag, None) => {
            Reference::with_tag(r.registry().to_owned(), r.repository().to_owned(), tag.unwrap_or("latest").to_owned())
        }
    }
}

/// Whether a registry host (`host[:port]`) is on this machine, where plain http is allowed.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Credentials for `registry` from the Docker config and its credential helpers
/// ([`crate::credentials`]); anonymous when none are configured.
pub fn credentials(registry: &str) -> RegistryAuth {
    match crate::credentials::for_registry(registry) {
        Some(Credential::Basic { username, password }) => RegistryAuth::Basic(username, password),
        Some(Credential::IdentityToken(token)) => RegistryAuth::Bearer(token),
        None => RegistryAuth::Anonymous,
    }
}

/// How long a [`RegistryClients`] client is used before a new one is made.
pub const SHARED_CLIENT_TTL: Duration = Duration::from_secs(600);

/// Bytes of a blob read and sent at a time by [`Registry::push_blob_file`] (the registry
/// client's own chunk size).
pub const UPLOAD_CHUNK: usize = 4 << 20;

/// Largest manifest or image config the farm reads: real ones are a few KiB.
pub const MAX_DOCUMENT_BYTES: u64 = 4 << 20;

/// How long registry calls may take. Every call has all three; callers retry under their own
/// policy (`crate::retry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing a connection.
    pub connect: Duration,
    /// Between two reads of an answer.
    pub read: Duration,
    /// A whole call, request to last byte; a blob upload gets a second more per 256 KiB.
    pub call: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { connect: Duration::from_secs(10), read: Duration::from_secs(30), call: Duration::from_secs(60) }
    }
}

/// A client for one registry, authenticated with the Docker config's credentials.
pub struct Registry {
    client: Client,
    documents: document::Documents,
    auth: RegistryAuth,
    host: String,
    calls: tokio::sync::Semaphore,
    timeouts: Timeouts,
    /// Whether the registry wants bearer tokens, once it answered.
    token_auth: tokio::sync::OnceCell<bool>,
}

/// Calls one client makes to its registry at the same time, at most. A coordinator verifying
/// thousands of builds at once would otherwise open a connection for each; past a few dozen
/// a registry only answers slower, and spends its CPU on connections instead of answers.
pub const MAX_CONCURRENT_CALLS: usize = 64;

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("host", &self.host).finish_non_exhaustive()
    }
}

/// Plain http for loopback registries and configured insecure ones; https for all others.
fn protocol_of(host: &str, insecure: &[String]) -> ClientProtocol {
    if is_loopback(host) || insecure.iter().any(|h| h == host) {
        ClientProtocol::HttpsExcept(vec![host.to_owned()])
    } else {
        ClientProtocol::Https
    }
}

impl Registry {
    /// A client for the registry of `reference`. Plain http is used for loopback registries and
    /// for those listed in `insecure` (configured `insecure_registries`); https for all others.
    pub fn for_reference(reference: &ImageRef, insecure: &[String]) -> Self {
        Self::with_timeouts(reference, insecure, Timeouts::default())
    }

    /// [`Registry::for_reference`] with other [`Timeouts`].
    pub fn with_timeouts(reference: &ImageRef, insecure: &[String], timeouts: Timeouts) -> Self {
        let host = oci(reference).resolve_registry().to_owned();
        let protocol = protocol_of(&host, insecure);
        let client = Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(timeouts.connect),
            read_timeout: Some(timeouts.read),
            // A registry's operators see archfarm in their logs, not the library beneath it.
            user_agent: concat!("archfarm/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        });
        let calls = tokio::sync::Semaphore::new(MAX_CONCURRENT_CALLS);
        let plain = matches!(protocol_of(&host, insecure), ClientProtocol::HttpsExcept(_));
        let documents = document::Documents::new(&host, plain, crate::credentials::for_registry(&host), timeouts);
        let token_auth = tokio::sync::OnceCell::new();
        Registry { auth: credentials(&host), client, documents, host, calls, timeouts, token_auth }
    }

    async fn permit(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.calls.acquire().await.unwrap_or_else(|_| unreachable!("the semaphore is never closed"))
    }

    fn fail(&self, op: &'static str, reference: &ImageRef, e: impl std::fmt::Display) -> RegistryError {
        RegistryError::Call { registry: self.host.clone(), op, reference: reference.whole(), message: e.to_string() }
    }

    /// Runs one call of `op` within `deadline`.
    async fn within<T, E: std::fmt::Display>(
        &self,
        op: &'static str,
        reference: &ImageRef,
        deadline: Duration,
        call: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, RegistryError> {
        match tokio::time::timeout(deadline, call).await {
            Ok(result) => result.map_err(|e| self.fail(op, reference, e)),
            Err(_) => Err(self.fail(op, reference, format!("no answer within {} s", deadline.as_secs()))),
        }
    }

    /// Whether the registry answers `/v2/` with a `Bearer` challenge: its logins then only ever
    /// buy tokens, each for the scopes it was asked for. Asked once per client.
    pub async fn wants_tokens(&self) -> Result<bool, RegistryError> {
        let probe = ImageRef::from_parts(self.host.clone(), String::new(), None, None);
        let ask = async {
            let challenge = self.within("probe auth", &probe, self.timeouts.call, self.documents.challenge()).await?;
            Ok::<_, RegistryError>(matches!(challenge, Some(auth::Challenge::Bearer { .. })))
        };
        self.token_auth.get_or_try_init(|| ask).await.copied()
    }

    /// Authenticates for pushing into the repository of `reference` (needed before raw pushes).
    pub async fn authorize_push(&self, reference: &ImageRef) -> Result<(), RegistryError> {
        let _permit = self.permit().await;
        let target = oci(reference);
        let call = self.client.auth(&target, &self.auth, RegistryOperation::Push);
        self.within("authenticate for push to", reference, self.timeouts.call, call).await.map(drop)
    }

    /// Whether the repository holds a blob (an error counts as no: the caller uploads it).
    pub async fn has_blob(&self, repo: &ImageRef, digest: &Digest) -> bool {
        let _permit = self.permit().await;
        let target = oci(repo);
        let call = self.documents.has_blob(target.repository(), digest.as_str());
        self.within("check blob in", repo, self.timeouts.call, call).await.unwrap_or(false)
    }

    /// Uploads a blob held in memory unless the repository already holds it. Returns whether
    /// it was uploaded.
    pub async fn push_blob(&self, repo: &ImageRef, data: Bytes, digest: &Digest) -> Result<bool, RegistryError> {
        if self.has_blob(repo, digest).await {
            return Ok(false);
        }
        self.upload_blob(repo, data, digest).await?;
        Ok(true)
    }

    /// Uploads a blob held in memory without asking first whether the repository holds it: for
    /// a blob no other could have written (one that names a build of its own).
    pub async fn upload_blob(&self, repo: &ImageRef, data: Bytes, digest: &Digest) -> Result<(), RegistryError> {
        let _permit = self.permit().await;
        let deadline = self.timeouts.call + Duration::from_secs(data.len() as u64 >> 18);
        let target = oci(repo);
        let call = async {
            self.documents
                .upload_blob(target.repository(), digest.as_str(), data)
                .await
                .map_err(|e| format!("{digest}: {e}"))
        };
        self.within("push blob to", repo, deadline, call).await
    }

    /// Mounts a blob the registry holds in repository `from` into repository `repo` (the
    /// distribution API's cross-repository mount: nothing is uploaded). An error means the
    /// registry did not mount it (it may not support mounts, or the credentials cover only one
    /// repository): upload it instead.
    pub async fn mount_blob(&self, repo: &ImageRef, from: &ImageRef, digest: &Digest) -> Result<(), RegistryError> {
        let _permit = self.permit().await;
        let (target, source) = (oci(repo), oci(from));
        let call = self.client.mount_blob(&target, &source, digest.as_str());
        self.within("mount blob into", repo, self.timeouts.call, call).await
    }

    /// Uploads a blob from a file unless the repository already holds it, streaming it in
    /// chunks of [`UPLOAD_CHUNK`]: however large the blob, a chunk is what is in memory. Returns
    /// whether it was uploaded.
    pub async fn push_blob_file(
        &self,
        repo: &ImageRef,
        path: &std::path::Path,
        digest: &Digest,
        size: u64,
    ) -> Result<bool, RegistryError> {
        use futures_util::TryStreamExt as _;
        if self.has_blob(repo, digest).await {
            return Ok(false);
        }
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| self.fail("push blob to", repo, format!("{digest}: reading {}: {e}", path.display())))?;
        let chunks = tokio_util::io::ReaderStream::with_capacity(file, UPLOAD_CHUNK).map_err(Into::into);
        let _permit = self.permit().await;
        let deadline = self.timeouts.call + Duration::from_secs(size >> 18);
        let target = oci(repo);
        let call = self.client.push_blob_stream(&target, chunks, digest.as_str(), Some(size));
        self.within("push blob to", repo, deadline, call)
            .await
            .map_err(|e| self.fail("push blob to", repo, format!("{digest}: {e}")))?;
        Ok(true)
    }

    /// Pushes manifest bytes as they are, under the tag or digest of `reference`.
    pub async fn push_manifest(
        &self,
        reference: &ImageRef,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<(), RegistryError> {
        let _permit = self.permit().await;
        let target = oci(reference);
        let name = target.digest().or(target.tag()).unwrap_or("latest").to_owned();
        let call = self.documents.put_manifest(target.repository(), &name, bytes, media_type);
        self.within("push manifest", reference, self.timeouts.call, call).await
    }

    /// Fetches a manifest's raw bytes and digest, accepting the given media types. When the
    /// reference names a digest, the client checks the bytes against it.
    /// A manifest over [`MAX_DOCUMENT_BYTES`] is refused before its body is read.
    pub async fn manifest(&self, reference: &ImageRef, accept: &[&str]) -> Result<(Bytes, Digest), RegistryError> {
        let _permit = self.permit().await;
        let target = oci(reference);
        let name = target.digest().or(target.tag()).unwrap_or("latest").to_owned();
        let call = self.documents.manifest(target.repository(), &name, accept, MAX_DOCUMENT_BYTES);
        let (bytes, _header) = self.within("fetch manifest", reference, self.timeouts.call, call).await?;
        let digest = Digest::of(&bytes);
        if let Some(asked) = reference.digest().filter(|d| **d != digest) {
            return Err(self.fail("fetch manifest", reference, format!("content is {digest}, not {asked}")));
        }
        Ok((bytes, digest))
    }

    /// The digest `tag` resolves to now, or `None` when the registry has no such tag.
    pub async fn tag_target(&self, tag: &ImageRef) -> Result<Option<Digest>, RegistryError> {
        let _permit = self.permit().await;
        let target = oci(tag);
        let name = target.tag().unwrap_or("latest").to_owned();
        let call = self.documents.manifest(target.repository(), &name, crate::oci::ANY_MANIFEST, MAX_DOCUMENT_BYTES);
        match tokio::time::timeout(self.timeouts.call, call).await {
            Ok(Ok((bytes, _))) => Ok(Some(Digest::of(&bytes))),
            // The document reader reports a refusal as "STATUS: body".
            Ok(Err(e)) if e.starts_with("404") => Ok(None),
            Ok(Err(e)) => Err(self.fail("resolve tag", tag, e)),
            Err(_) => {
                Err(self.fail("resolve tag", tag, format!("no answer within {} s", self.timeouts.call.as_secs())))
            }
        }
    }

    /// Fetches a small blob (an image config) of at most [`MAX_DOCUMENT_BYTES`] and checks its
    /// digest. A larger one is refused before it is read, or as soon as it turns out larger.
    pub async fn blob(&self, repo: &ImageRef, digest: &Digest) -> Result<Vec<u8>, RegistryError> {
        let target = oci(repo);
        let permit = self.permit().await;
        let call = async {
            self.documents
                .blob(target.repository(), digest.as_str(), MAX_DOCUMENT_BYTES)
                .await
                .map_err(|e| format!("{digest}: {e}"))
        };
        let out = self.within("fetch blob", repo, self.timeouts.call, call).await?;
        drop(permit);
        if Digest::of(&out) != *digest {
            return Err(self.fail("fetch blob", repo, format!("{digest}: content does not match its digest")));
        }
        Ok(out.to_vec())
    }
}

/// One client per registry, made on first use and kept: a client loads the TLS roots and keeps
/// connections and tokens, and one per request (per build, per push) would pay for all of that
/// every time. A client is made again after [`SHARED_CLIENT_TTL`], so rotated credentials are
/// picked up. Owned by whoever talks to registries (the coordinator's state, an agent's
/// executor); nothing is process-wide.
#[derive(Debug)]
pub struct RegistryClients {
    insecure: Vec<String>,
    clients: Mutex<HashMap<String, (Instant, Arc<Registry>)>>,
}

impl RegistryClients {
    /// No clients yet. Registries in `insecure` (configured `insecure_registries`) are reached
    /// over plain http, as loopback registries are.
    pub fn new(insecure: Vec<String>) -> Self {
        RegistryClients { insecure, clients: Mutex::default() }
    }

    /// The client for the registry of `reference`.
    pub fn get(&self, reference: &ImageRef) -> Arc<Registry> {
        let host = oci(reference).resolve_registry().to_owned();
        if let Some((made, client)) = self.clients.lock().unwrap_or_else(|e| e.into_inner()).get(&host) {
            if made.elapsed() < SHARED_CLIENT_TTL {
                return client.clone();
            }
        }
        // Made without the lock held: reading credentials may wait on a helper (for at most
        // `credentials::HELPER_DEADLINE`), and other registries' callers must not wait with it.
        let client = Arc::new(Registry::for_reference(reference, &self.insecure));
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).insert(host, (Instant::now(), client.clone()));
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_allow_plain_http_and_nothing_else_does() {
        for h in ["127.0.0.1:5000", "localhost:5000", "localhost", "[::1]:5000", "127.3.4.5"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["registry.example.com", "10.0.0.1:5000", "192.168.1.2", "localhost.example.com:5000"] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn references_are_validated_with_a_useful_message() {
        let r = parse_reference("127.0.0.1:5000/team/app:1.4").unwrap();
        assert_eq!(r.name(), "127.0.0.1:5000/team/app");
        assert_eq!(r.tag(), Some("1.4"));
        assert_eq!(parse_reference("127.0.0.1:5000/app").unwrap().whole(), "127.0.0.1:5000/app:latest");
        let d = crate::Digest::of(b"x");
        let by_digest = parse_reference(&format!("127.0.0.1:5000/app@{d}")).unwrap();
        assert_eq!((by_digest.tag(), by_digest.digest()), (None, Some(&d)));
        assert_eq!(oci(&by_digest).whole(), by_digest.whole());
        assert_eq!(parse_reference("app:1").unwrap().whole(), "docker.io/library/app:1");
        for bad in ["", "127.0.0.1:5000/App:1", "127.0.0.1:5000/app:bad tag", "127.0.0.1:5000/app:-x", "app::1"] {
            let err = parse_reference(bad).unwrap_err().to_string();
            assert!(err.contains("invalid image reference") && err.contains("REGISTRY/REPOSITORY:TAG"), "{bad}: {err}");
        }
    }

    /// A loopback server that accepts connections and answers each request with `answer` (or
    /// never, when it is empty), until the returned handle is aborted.
    async fn fake_registry(answer: &'static str) -> (String, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        crate::tls::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                if !answer.is_empty() {
                    let mut request = [0u8; 4096];
                    let _ = socket.read(&mut request).await;
                    let _ = socket.write_all(answer.as_bytes()).await;
                }
                held.push(socket);
            }
        });
        (address, task)
    }

    #[tokio::test]
    async fn a_registry_that_never_answers_fails_within_the_deadline() {
        let (address, server) = fake_registry("").await;
        // The deadline of the call, shorter here than its read timeout, is what must end it.
        let short =
            Timeouts { connect: Duration::from_secs(1), read: Duration::from_secs(10), call: Duration::from_secs(2) };
        let reference = parse_reference(&format!("{address}/app:1")).unwrap();
        let registry = Registry::with_timeouts(&reference, &[], short);
        let started = Instant::now();
        let err = registry.manifest(&reference, crate::oci::ANY_MANIFEST).await.unwrap_err().to_string();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(4), "{took:?}");
        assert!(err.contains(&format!("registry {address}: fetch manifest {address}/app:1")), "{err}");
        assert!(err.contains("no answer within 2 s"), "{err}");
        server.abort();
    }

    #[tokio::test]
    async fn a_blob_larger_than_a_document_may_be_is_refused_before_it_is_read() {
        // Announces 5 MiB and sends none of it: only the announcement may be read.
        let (address, server) = fake_registry(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 5242880\r\n\r\n",
        )
        .await;
        let repo = parse_reference(&format!("{address}/app:1")).unwrap();
        let registry = Registry::for_reference(&repo, &[]);
        let digest = crate::Digest::of(b"config");
        let started = Instant::now();
        let err = registry.blob(&repo, &digest).await.unwrap_err().to_string();
        assert!(err.contains("5242880 bytes; at most 4194304"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "refused without waiting for the body");
        server.abort();
    }
}
