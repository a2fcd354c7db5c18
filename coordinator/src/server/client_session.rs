//! One release engineer's connection: the token check, then one request per stream, each
//! served by its handler ([`super::handlers`]).

use super::access::Principal;
use super::admission;
use super::auth;
use super::handlers;
use super::state::Shared;
use super::wire::on_codec_error;
use archfarm_shared::protocol::{close, ClientRequest, ClientResponse};
use archfarm_shared::stream::QuicStream;
use archfarm_shared::tls;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{info, warn};

/// How long a client has to open its first stream and send its hello on it.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A hello is a token of 64 hex characters; nothing an unauthenticated peer sends is read into
/// a larger buffer.
const MAX_HELLO_FRAME: u32 = 4096;

/// Serves one client connection until it ends. `unauthenticated` is held until its token is
/// accepted.
pub async fn serve(shared: Arc<Shared>, conn: quinn::Connection, unauthenticated: OwnedSemaphorePermit) {
    let remote = conn.remote_address();
    let max = shared.settings.max_frame;
    // One deadline for opening the stream and sending the hello.
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    let Ok(Ok(hello)) = tokio::time::timeout_at(deadline, QuicStream::accept(&conn, MAX_HELLO_FRAME)).await else {
        return conn.close(close::REFUSED.into(), b"no hello within 10 s");
    };
    let mut hello = hello;
    let token = match tokio::time::timeout_at(deadline, hello.expect::<ClientRequest>()).await {
        Ok(Ok(ClientRequest::Hello { token })) => token,
        Ok(Ok(_)) => return conn.close(close::PROTOCOL.into(), b"protocol error: expected Hello as the first request"),
        Ok(Err(e)) => return drop(on_codec_error(&conn, &e, "hello stream")),
        Err(_) => return conn.close(close::REFUSED.into(), b"no hello within 10 s"),
    };
    let mut hello = hello.with_max_frame(max);
    let Some(who) = auth::client_principal(&shared, &token).await.map(Arc::new) else {
        warn!(%remote, "refused client: invalid token");
        let reason = "the coordinator refused the client token: check ARCHFARM_TOKEN (or --token) against the farm's client.token".to_owned();
        let _ = hello.write_last(&ClientResponse::Refused { reason: reason.clone() }).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        return conn.close(close::REFUSED.into(), reason.as_bytes());
    };
    drop(unauthenticated);
    admission::authenticated(&conn, tls::PEER_STREAMS_CLIENT);
    let welcome = ClientResponse::Welcome { version: env!("CARGO_PKG_VERSION").to_owned() };
    if hello.write_last(&welcome).await.is_err() {
        return;
    }
    let session = shared.sessions.begin(&who.name);
    loop {
        let accepted = tokio::select! {
            accepted = QuicStream::accept(&conn, max) => accepted,
            () = session.revoked.cancelled() => {
                info!(%remote, token = %who.name, "client token revoked: closing its session");
                return conn.close(close::REFUSED.into(), b"the client token was revoked");
            }
        };
        match accepted {
            Ok(stream) => {
                tokio::spawn(request(shared.clone(), who.clone(), conn.clone(), stream));
            }
            Err(e) => {
                info!(%remote, "client disconnected: {}", tls::explain(&e));
                return;
            }
        }
    }
}

/// Reads the one request of a stream and has its handler answer it. A malformed request closes
/// the connection, since the client broke the protocol.
async fn request(shared: Arc<Shared>, who: Arc<Principal>, conn: quinn::Connection, mut stream: QuicStream) {
    match stream.expect::<ClientRequest>().await {
        Ok(req) => handlers::handle(shared, who, req, stream).await,
        Err(e) => drop(on_codec_error(&conn, &e, "request stream")),
    }
}
