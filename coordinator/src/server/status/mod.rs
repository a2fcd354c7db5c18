//! The coordinator's HTTP listener (`metrics_listen`): Prometheus metrics at `/metrics` and a
//! read-only status page at `/`. On loopback it is open; on any other address every request
//! needs a **viewer** token (`archfarm tokens create NAME --role viewer`), as a bearer token
//! (Prometheus' `authorization`) or as the password of HTTP basic authentication (a browser
//! asks for it). Plain HTTP carries the token in clear, so no token that can build or
//! administer is taken: one that is sent is refused (and should be revoked).
//!
//! Bounded like the QUIC side: at most 64 connections, 8 from one address, one request each,
//! 5 s to send the request headers, 16 KiB of them, 60 s per connection.

mod page;

use super::state::Shared;
use archfarm_shared::protocol::Role;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// Time to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection stays open.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest request head read.
const MAX_HEAD: usize = 16 * 1024;

/// Serves `listener` until the process ends.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let open = listener.local_addr().map(|a| a.ip().is_loopback()).unwrap_or(false);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_peer: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    loop {
        let permit = match slots.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, most likely: wait rather than spin.
                warn!("status listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(held) = PeerSlot::take(&per_peer, peer.ip()) else {
            debug!(%peer, "status connection refused: {PER_PEER} open from that address");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| respond(shared.clone(), open, req));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Err(e)) => debug!(%peer, "status connection: {e}"),
                Err(_) => debug!(%peer, "status connection closed after {} s", CONNECTION_TIMEOUT.as_secs()),
                Ok(Ok(())) => {}
            }
            drop((held, permit));
        });
    }
}

/// Connections one address may hold open.
const PER_PEER: usize = 8;

/// One of an address's connections, given back when dropped.
struct PeerSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PeerSlot {
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr) -> Option<PeerSlot> {
        let mut map = counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_default();
        if *n >= PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot { counts: counts.clone(), ip })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let headers = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        headers.insert(CONTENT_TYPE, v);
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; img-src data:"),
    );
    r
}

async fn respond(shared: Arc<Shared>, open: bool, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "read only: GET /, GET /metrics\n".into()));
    }
    if !open {
        match token(&req) {
            None => return Ok(unauthorized()),
            Some(token) => match super::auth::client_principal(&shared, &token).await {
                Some(who) if who.role == Role::Viewer => {}
                Some(who) => {
                    warn!(token = %who.name, "a {} token was sent to the status listener over plain HTTP", who.role);
                    return Ok(reply(
                        StatusCode::FORBIDDEN,
                        "text/plain",
                        format!(
                            "token {:?} is a {} token, sent over plain HTTP: this listener takes viewer tokens only \
                             (`archfarm tokens create NAME --role viewer`). Revoke that token if the network is not \
                             yours.\n",
                            who.name, who.role
                        ),
                    ));
                }
                None => return Ok(unauthorized()),
            },
        }
    }
    Ok(match req.uri().path() {
        "/metrics" => match shared.store.count_by_state().await {
            Ok(builds) => {
                let text = shared.metrics.render(&builds, &shared.farm.agents(), &shared.farm.queued_by_platform());
                reply(StatusCode::OK, super::metrics::CONTENT_TYPE, text)
            }
            Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("the state database: {e}\n")),
        },
        "/" => match page::render(&shared).await {
            Ok(html) => reply(StatusCode::OK, "text/html; charset=utf-8", html),
            Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("the state database: {e}\n")),
        },
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: GET / or /metrics\n".into()),
    })
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut r = reply(
        StatusCode::UNAUTHORIZED,
        "text/plain",
        "a client token is needed: as a bearer token, or as the password of basic authentication\n".into(),
    );
    r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"archfarm\", charset=\"UTF-8\""));
    r
}

/// The token a request carries: `Bearer TOKEN`, or `Basic` with the token as the password.
fn token<B>(req: &Request<B>) -> Option<String> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" => Some(rest.trim().to_owned()),
        "basic" => {
            let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
            let text = String::from_utf8(decoded).ok()?;
            text.split_once(':').map(|(_, password)| password.to_owned())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> Request<()> {
        Request::builder().header(AUTHORIZATION, value).body(()).unwrap()
    }

    #[test]
    fn an_address_holds_at_most_eight_connections_and_gets_them_back() {
        let counts = Arc::default();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let held: Vec<PeerSlot> = (0..PER_PEER).map(|_| PeerSlot::take(&counts, ip).unwrap()).collect();
        assert!(PeerSlot::take(&counts, ip).is_none());
        assert!(PeerSlot::take(&counts, [10, 0, 0, 2].into()).is_some(), "another address is not held back");
        drop(held);
        assert!(PeerSlot::take(&counts, ip).is_some());
    }

    #[test]
    fn a_token_comes_as_bearer_or_as_the_basic_password() {
        assert_eq!(token(&with("Bearer abc123")).as_deref(), Some("abc123"));
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:abc123");
        assert_eq!(token(&with(&format!("Basic {basic}"))).as_deref(), Some("abc123"));
        assert_eq!(token(&with("Digest x")), None);
        assert_eq!(token(&with("Basic !!!")), None);
        assert_eq!(token(&Request::new(())), None);
    }
}
