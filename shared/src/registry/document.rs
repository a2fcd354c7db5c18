//! The registry calls of the hot path, on one HTTP client: manifests and small blobs read with
//! a size cap, manifests written, and small blobs uploaded. oci-client reads a manifest's whole
//! body before anyone can look at its length, so a registry (a build names any) could make the
//! coordinator or an agent hold gigabytes; this reader refuses a `Content-Length` over the cap
//! before reading a byte of the body, and stops reading at the cap when the length is not given.
//! And oci-client asks `/v2/` for a challenge before each call to a registry that wants no login
//! (it keeps no answer for "none"), and uploads a blob in three requests: measured, a published
//! build with provenance made 24 requests to such a registry, 11 of them `/v2/`. Here a call is
//! sent with the `Authorization` that last worked for its repository and action, and answers a
//! 401 by the challenge it carries: the distribution spec's two schemes, `Basic`, and `Bearer`
//! through the token endpoint the challenge names. A small blob is uploaded in two requests
//! (`POST`, then `PUT` with its digest and bytes).

use super::auth::{self, parse_challenge, Challenge};
use super::body::read_capped;
use crate::credentials::Credential;
use bytes::Bytes;
use std::sync::Mutex;

/// Largest error body quoted.
const MAX_ERROR_BYTES: usize = 512;
/// Authorizations remembered (per repository and action).
const REMEMBERED: usize = 16;

/// A capped reader of one registry's manifests.
pub(super) struct Documents {
    http: reqwest::Client,
    base: String,
    credential: Option<Credential>,
    /// The `Authorization` value that last worked, per repository and action (`pull`,
    /// `pull,push`); a few are kept.
    authorization: Mutex<Vec<(String, String)>>,
}

impl Documents {
    pub(super) fn new(host: &str, plain_http: bool, credential: Option<Credential>, timeouts: super::Timeouts) -> Self {
        // The caller bounds each whole call (`Registry::within`); these bound its parts.
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(concat!("archfarm/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeouts.connect)
            .read_timeout(timeouts.read)
            .build()
            .unwrap_or_default();
        let scheme = if plain_http { "http" } else { "https" };
        Documents { http, base: format!("{scheme}://{host}"), credential, authorization: Mutex::new(Vec::new()) }
    }

    fn remembered(&self, key: &str) -> Option<String> {
        let held = self.authorization.lock().unwrap_or_else(|e| e.into_inner());
        held.iter().find(|(k, _)| k == key).map(|(_, a)| a.clone())
    }

    fn remember(&self, key: String, authorization: String) {
        let mut held = self.authorization.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|(k, _)| *k != key);
        if held.len() == REMEMBERED {
            held.remove(0);
        }
        held.push((key, authorization));
    }

    /// Sends the request `make` builds, for `action` (`pull`, `pull,push`) on `repository`: with
    /// the authorization that last worked for them, and once more answering a 401's challenge.
    async fn send(
        &self,
        repository: &str,
        action: &str,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, String> {
        let key = format!("{repository} {action}");
        let send = |authorization: Option<String>| {
            let mut request = make();
            if let Some(a) = authorization {
                request = request.header(reqwest::header::AUTHORIZATION, a);
            }
            request.send()
        };
        let response = send(self.remembered(&key)).await.map_err(|e| e.to_string())?;
        if response.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let challenge = response
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge)
            .ok_or("401 Unauthorized without a challenge this client understands")?;
        let authorization = self.authorize(&challenge, repository, action).await?;
        let response = send(Some(authorization.clone())).await.map_err(|e| e.to_string())?;
        if response.status().is_success() {
            self.remember(key, authorization);
        }
        Ok(response)
    }

    /// `Err("STATUS: body")` for an answer that is not a success.
    async fn refused(response: reqwest::Response) -> String {
        let status = response.status();
        let body = read_capped(response, MAX_ERROR_BYTES as u64).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_BYTES)]).into_owned();
        format!("{status}: {}", text.trim())
    }

    /// GETs `/v2/<repository>/manifests/<reference>`: the body (at most `max` bytes) and the
    /// `Docker-Content-Digest` header.
    pub(super) async fn manifest(
        &self,
        repository: &str,
        reference: &str,
        accept: &[&str],
        max: u64,
    ) -> Result<(Bytes, Option<String>), String> {
        let url = format!("{}/v2/{repository}/manifests/{reference}", self.base);
        let accept = accept.join(", ");
        let get = || self.http.get(&url).header(reqwest::header::ACCEPT, &accept);
        let response = self.send(repository, "pull", get).await?;
        if !response.status().is_success() {
            return Err(Self::refused(response).await);
        }
        let digest = response.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_owned);
        if let Some(n) = response.content_length().filter(|n| *n > max) {
            return Err(format!("{n} bytes; at most {max}"));
        }
        let body = read_capped(response, max).await?;
        Ok((body, digest))
    }

    /// GETs the blob `digest` of `repository`, at most `max` bytes (the caller checks its digest).
    pub(super) async fn blob(&self, repository: &str, digest: &str, max: u64) -> Result<Bytes, String> {
        let url = format!("{}/v2/{repository}/blobs/{digest}", self.base);
        let response = self.send(repository, "pull", || self.http.get(&url)).await?;
        if !response.status().is_success() {
            return Err(Self::refused(response).await);
        }
        if let Some(n) = response.content_length().filter(|n| *n > max) {
            return Err(format!("{n} bytes; at most {max}"));
        }
        read_capped(response, max).await
    }

    /// Whether `repository` holds the blob `digest` (`HEAD`).
    pub(super) async fn has_blob(&self, repository: &str, digest: &str) -> Result<bool, String> {
        let url = format!("{}/v2/{repository}/blobs/{digest}", self.base);
        let response = self.send(repository, "pull", || self.http.head(&url)).await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            reqwest::StatusCode::NOT_FOUND => Ok(false),
            _ => Err(Self::refused(response).await),
        }
    }

    /// PUTs `bytes` as the manifest `reference` (a tag or digest) of `repository`.
    pub(super) async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<(), String> {
        let content_type = reqwest::header::HeaderValue::from_str(media_type)
            .map_err(|_| format!("{media_type:?} is not a media type a request can carry"))?;
        let url = format!("{}/v2/{repository}/manifests/{reference}", self.base);
        let put = || {
            self.http
                .put(&url)
                .header(reqwest::header::CONTENT_TYPE, content_type.clone())
                .header(reqwest::header::CONTENT_LENGTH, bytes.len())
                .body(bytes.clone())
        };
        let response = self.send(repository, "pull,push", put).await?;
        if !response.status().is_success() {
            return Err(Self::refused(response).await);
        }
        Ok(())
    }

    /// Uploads a blob held in memory in one piece: `POST` opens the upload, `PUT` to the
    /// location it answers with the digest and the bytes completes it. A location on another
    /// origin (a storage front end) gets the bytes but never this registry's authorization.
    pub(super) async fn upload_blob(&self, repository: &str, digest: &str, bytes: Bytes) -> Result<(), String> {
        let url = format!("{}/v2/{repository}/blobs/uploads/", self.base);
        // Some registries want a length on every push request, an empty one included.
        let post = || self.http.post(&url).header(reqwest::header::CONTENT_LENGTH, 0);
        let response = self.send(repository, "pull,push", post).await?;
        if response.status() != reqwest::StatusCode::ACCEPTED {
            return Err(Self::refused(response).await);
        }
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or("the registry opened an upload without saying where (no Location)")?;
        let mut put = upload_url(&url, location)?;
        put.query_pairs_mut().append_pair("digest", digest);
        let same_origin = reqwest::Url::parse(&url).is_ok_and(|u| u.origin() == put.origin());
        let request = || {
            self.http
                .put(put.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .header(reqwest::header::CONTENT_LENGTH, bytes.len())
                .body(bytes.clone())
        };
        let response = if same_origin {
            self.send(repository, "pull,push", request).await?
        } else {
            request().send().await.map_err(|e| e.to_string())?
        };
        if !response.status().is_success() {
            return Err(Self::refused(response).await);
        }
        Ok(())
    }

    /// The `Authorization` value that answers `challenge` for `action` on `repository`.
    async fn authorize(&self, challenge: &Challenge, repository: &str, action: &str) -> Result<String, String> {
        match (challenge, &self.credential) {
            (Challenge::Basic, Some(Credential::Basic { username, password })) => {
                // reqwest encodes it; the header is kept for the next calls.
                let request = self.http.get(&self.base).basic_auth(username, Some(password)).build();
                let header = request.ok().and_then(|r| r.headers().get(reqwest::header::AUTHORIZATION).cloned());
                header.and_then(|h| h.to_str().ok().map(str::to_owned)).ok_or_else(|| "cannot encode the login".into())
            }
            (Challenge::Basic, _) => Err("the registry wants a login, and there are no credentials for it".into()),
            (Challenge::Bearer { realm, service }, credential) => {
                let scope = [format!("repository:{repository}:{action}")];
                let token =
                    auth::fetch_with(&self.http, realm, service.as_deref(), &scope, credential.as_ref()).await?;
                Ok(format!("Bearer {}", token.token))
            }
        }
    }

    /// The challenge the registry answers `/v2/` with, when it wants credentials.
    pub(super) async fn challenge(&self) -> Result<Option<Challenge>, String> {
        let response = self.http.get(format!("{}/v2/", self.base)).send().await.map_err(|e| e.to_string())?;
        if response.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(None);
        }
        let header = response.headers().get(reqwest::header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok());
        Ok(header.and_then(parse_challenge))
    }
}

/// The URL an upload continues at: its `Location`, absolute or relative to the request `from`.
fn upload_url(from: &str, location: &str) -> Result<reqwest::Url, String> {
    let base = reqwest::Url::parse(from).map_err(|e| format!("{from}: {e}"))?;
    base.join(location).map_err(|e| format!("the registry's upload location {location:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-connection server that answers every request on it with `answer`; returns its
    /// address.
    async fn serve(answer: Vec<u8>, then_body: u64) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let _ = socket.write_all(&answer).await;
            let chunk = vec![b'x'; 64 << 10];
            let mut sent = 0;
            while sent < then_body {
                if socket.write_all(&chunk).await.is_err() {
                    return;
                }
                sent += chunk.len() as u64;
            }
        });
        addr
    }

    /// A server that answers each of `n` requests (one per connection, read whole and lower-cased)
    /// with what `answer` makes of it and of the server's own address; returns that address.
    async fn per_request(n: usize, mut answer: impl FnMut(&str, &str) -> String + Send + 'static) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let own = addr.clone();
        tokio::spawn(async move {
            for _ in 0..n {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let mut request = Vec::new();
                let mut buf = vec![0u8; 8192];
                // The headers, then as many bytes of body as they announce.
                while let Ok(read) = socket.read(&mut buf).await {
                    request.extend_from_slice(&buf[..read]);
                    let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                    let whole = text.find("\r\n\r\n").is_some_and(|end| {
                        let length = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        request.len() >= end + 4 + length
                    });
                    if read == 0 || whole {
                        break;
                    }
                }
                let request = String::from_utf8_lossy(&request).to_ascii_lowercase();
                let _ = socket.write_all(answer(&request, &own).as_bytes()).await;
            }
        });
        addr
    }

    /// A registry that wants a bearer token from its own `/token` endpoint: answers each
    /// request by its path and `Authorization` header.
    async fn token_registry() -> String {
        per_request(8, |request, addr| {
            if request.starts_with("get /token") {
                assert!(request.contains("scope=repository%3aa%2fb%3apull"), "{request}");
                let body = r#"{"token":"t0k3n"}"#;
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
            } else if request.contains("authorization: bearer t0k3n") {
                let body = r#"{"schemaVersion":2}"#;
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
            } else {
                format!(
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://{addr}/token\",service=\"test\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
            }
        })
        .await
    }

    #[tokio::test]
    async fn a_bearer_challenge_is_answered_with_a_token_from_its_realm() {
        let addr = token_registry().await;
        let docs = documents(&addr);
        let (body, _) = docs.manifest("a/b", "1", &["x"], 4 << 20).await.unwrap();
        assert_eq!(&body[..], br#"{"schemaVersion":2}"#);
        // The token is kept for the repository: the next read needs no new one.
        assert_eq!(docs.remembered("a/b pull").as_deref(), Some("Bearer t0k3n"));
    }

    fn documents(addr: &str) -> Documents {
        Documents::new(addr, true, None, super::super::Timeouts::default())
    }

    #[tokio::test]
    async fn a_manifest_longer_than_the_cap_is_refused_before_its_body_is_read() {
        let addr = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n".to_vec(), 0).await;
        let err = documents(&addr).manifest("a/b", "1", &["x"], 4 << 20).await.unwrap_err();
        assert_eq!(err, "1073741824 bytes; at most 4194304");
    }

    #[tokio::test]
    async fn a_manifest_without_a_length_is_cut_off_at_the_cap() {
        let addr = serve(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec(), 64 << 20).await;
        let err = documents(&addr).manifest("a/b", "1", &["x"], 4 << 20).await.unwrap_err();
        assert!(err.starts_with("more than 4194304 bytes"), "{err}");
    }

    #[test]
    fn an_upload_location_is_taken_absolute_or_relative_with_its_query() {
        let from = "http://reg:5000/v2/a/b/blobs/uploads/";
        let at = |l: &str| upload_url(from, l).unwrap().to_string();
        assert_eq!(at("/v2/a/b/blobs/uploads/u1?_state=x"), "http://reg:5000/v2/a/b/blobs/uploads/u1?_state=x");
        assert_eq!(at("u2"), "http://reg:5000/v2/a/b/blobs/uploads/u2");
        assert_eq!(at("https://store.example/up?sig=1"), "https://store.example/up?sig=1");
        let other = upload_url(from, "https://reg:5000@evil.example/x").unwrap();
        assert_ne!(other.origin(), reqwest::Url::parse(from).unwrap().origin(), "another origin is told apart");
    }

    /// A registry that answers a `POST` with `location` and records what the `PUT` carried.
    async fn upload_registry(location: &'static str) -> (String, std::sync::mpsc::Receiver<String>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let addr = per_request(4, move |request, _| {
            if request.starts_with("post ") {
                assert!(request.contains("content-length: 0"), "{request}");
                format!(
                    "HTTP/1.1 202 Accepted\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
            } else {
                let _ = tx.send(request.to_owned());
                "HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
            }
        })
        .await;
        (addr, rx)
    }

    #[tokio::test]
    async fn a_blob_is_uploaded_in_two_requests_keeping_the_locations_query() {
        let (addr, puts) = upload_registry("/v2/a/b/blobs/uploads/u1?_state=s1").await;
        let docs = documents(&addr);
        docs.upload_blob("a/b", "sha256:abc", Bytes::from_static(b"hello")).await.unwrap();
        let put = puts.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        assert!(put.starts_with("put /v2/a/b/blobs/uploads/u1?_state=s1&digest=sha256%3aabc "), "{put}");
        assert!(put.contains("content-length: 5") && put.ends_with("hello"), "{put}");
    }
}
