//! One release engineer's connection: the token check, then one request per stream.

use crate::build;
use crate::server::{on_codec_error, Shared};
use archfarm_shared::codec;
use archfarm_shared::protocol::{close, BuildEvent, BuildState, BuildSummary, ClientRequest, ClientResponse};
use archfarm_shared::tls;
use archfarm_shared::Digest;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tracing::{info, warn};

const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one client connection until it ends.
pub async fn serve(shared: Arc<Shared>, conn: quinn::Connection) {
    let remote = conn.remote_address();
    let max = shared.settings.max_frame;
    let Ok(Ok((mut send, mut recv))) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi()).await else {
        return conn.close(close::REFUSED.into(), b"no hello within 30 s");
    };
    let token = match tokio::time::timeout(HELLO_TIMEOUT, codec::expect_msg::<_, ClientRequest>(&mut recv, max)).await {
        Ok(Ok(ClientRequest::Hello { token })) => token,
        Ok(Ok(_)) => return conn.close(close::PROTOCOL.into(), b"protocol error: expected Hello as the first request"),
        Ok(Err(e)) => return drop(on_codec_error(&conn, &e, "hello stream")),
        Err(_) => return conn.close(close::REFUSED.into(), b"no hello within 30 s"),
    };
    // Tokens from `archfarm ca init` are in the token file; those from `archfarm tokens create`
    // in the database.
    let accepted = crate::auth::token_accepted(&shared.settings.tokens_file, &token).unwrap_or_else(|e| {
        warn!("{e}");
        false
    }) || shared.store.client_token_live(&archfarm_shared::pki::token_hash(&token)).unwrap_or(false);
    if !accepted {
        warn!(%remote, "refused client: invalid token");
        let reason = "the coordinator refused the client token: check ARCHFARM_TOKEN (or --token) against the farm's client.token".to_owned();
        let _ = codec::write_msg(&mut send, &ClientResponse::Refused { reason: reason.clone() }, max).await;
        let _ = send.finish();
        tokio::time::sleep(Duration::from_millis(200)).await;
        return conn.close(close::REFUSED.into(), reason.as_bytes());
    }
    // Every connection starts with an agent's few streams; an authenticated client gets more.
    conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(archfarm_shared::tls::PEER_STREAMS_CLIENT));
    let welcome = ClientResponse::Welcome { version: env!("CARGO_PKG_VERSION").to_owned() };
    if codec::write_msg(&mut send, &welcome, max).await.is_err() {
        return;
    }
    let _ = send.finish();
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let shared = shared.clone();
                let conn = conn.clone();
                tokio::spawn(async move { request(shared, conn, send, recv).await });
            }
            Err(e) => {
                info!(%remote, "client disconnected: {}", tls::explain(&e));
                return;
            }
        }
    }
}

async fn request(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let max = shared.settings.max_frame;
    let req = match codec::expect_msg::<_, ClientRequest>(&mut recv, max).await {
        Ok(req) => req,
        Err(e) => return drop(on_codec_error(&conn, &e, "request stream")),
    };
    let response = match req {
        ClientRequest::Hello { .. } => ClientResponse::Error { message: "already authenticated".into() },
        ClientRequest::ListAgents => ClientResponse::Agents(shared.farm.agents()),
        ClientRequest::HasContext { digest } => ClientResponse::ContextPresent(shared.contexts.contains(&digest)),
        ClientRequest::UploadContext { digest, size } => {
            match receive_context(&shared, &digest, size, &mut recv).await {
                Ok(()) => {
                    info!(context = %digest, bytes = size, "stored build context");
                    ClientResponse::ContextStored
                }
                Err(message) => ClientResponse::Error { message },
            }
        }
        ClientRequest::UploadChunked { digest, size, chunks } => {
            let count = chunks.len();
            match crate::context_upload::receive(&shared, &digest, size, chunks, &mut send, &mut recv).await {
                Ok(sent) => {
                    info!(context = %digest, bytes = size, chunks = count, received = sent, "stored build context");
                    ClientResponse::ContextStored
                }
                Err(message) => {
                    warn!(context = %digest, "refused build context: {message}");
                    ClientResponse::Error { message }
                }
            }
        }
        ClientRequest::Build(req) => match build::submit(&shared, req).await {
            Ok((_, events)) => return follow(events, send, max).await,
            Err(reason) => ClientResponse::Build(BuildEvent::Failed { reason }),
        },
        ClientRequest::ListBuilds { limit } => match shared.store.list(limit.min(1000)) {
            Ok(builds) => ClientResponse::Builds(builds),
            Err(e) => ClientResponse::Error { message: e.to_string() },
        },
        ClientRequest::ShowBuild { build } => match shared.store.detail(&build) {
            Ok(Some(detail)) => ClientResponse::BuildDetail(detail),
            Ok(None) => unknown(&build),
            Err(e) => ClientResponse::Error { message: e.to_string() },
        },
        ClientRequest::WatchBuild { build } => {
            // Subscribe before reading the snapshot, so no event falls between the two.
            let events = shared.live.get(&build).map(|live| live.events.subscribe());
            let detail = match shared.store.detail(&build) {
                Ok(Some(detail)) => detail,
                Ok(None) => return respond(send, unknown(&build), max).await,
                Err(e) => return respond(send, ClientResponse::Error { message: e.to_string() }, max).await,
            };
            let summary = detail.summary.clone();
            if codec::write_msg(&mut send, &ClientResponse::BuildDetail(detail), max).await.is_err() {
                return;
            }
            match events {
                Some(events) if !summary.state.is_final() => return follow(events, send, max).await,
                _ => ClientResponse::Build(final_event(&summary)),
            }
        }
        ClientRequest::PublishBuild { build } => match build::republish(&shared, &build).await {
            Ok(index) => ClientResponse::Done { message: format!("published index {index} for build {build}") },
            Err(message) => ClientResponse::Error { message },
        },
        ClientRequest::CreateJoinToken { ttl_secs } => {
            let token = archfarm_shared::pki::generate_token();
            let expires_ms = crate::store::now_ms() + ttl_secs.clamp(1, 7 * 86_400) * 1000;
            match shared.store.add_join_token(&archfarm_shared::pki::token_hash(&token), expires_ms).await {
                Ok(()) => {
                    info!(expires_ms, "join token created");
                    ClientResponse::Token { token, expires_ms: Some(expires_ms) }
                }
                Err(e) => ClientResponse::Error { message: e.to_string() },
            }
        }
        ClientRequest::RevokeAgent { name } => match shared.store.revoke_agent(&name).await {
            Ok(()) => {
                info!(agent = %name, "agent revoked");
                if let Some(conn) = shared.farm.connection(&name) {
                    conn.close(close::REFUSED.into(), b"this agent was revoked");
                }
                ClientResponse::Done { message: format!("agent {name} revoked: disconnected and refused from now on") }
            }
            Err(e) => ClientResponse::Error { message: e.to_string() },
        },
        ClientRequest::CreateClientToken { name } => {
            if name.is_empty()
                || name.len() > 64
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
            {
                ClientResponse::Error {
                    message: format!("token name {name:?}: use 1-64 letters, digits, '-', '_', '.', '@'"),
                }
            } else {
                let token = archfarm_shared::pki::generate_token();
                match shared.store.add_client_token(&name, &archfarm_shared::pki::token_hash(&token)).await {
                    Ok(Ok(())) => {
                        info!(name = %name, "client token created");
                        ClientResponse::Token { token, expires_ms: None }
                    }
                    Ok(Err(message)) => ClientResponse::Error { message },
                    Err(e) => ClientResponse::Error { message: e.to_string() },
                }
            }
        }
        ClientRequest::RevokeClientToken { name } => match shared.store.revoke_client_token(&name).await {
            Ok(true) => {
                info!(name = %name, "client token revoked");
                ClientResponse::Done { message: format!("client token {name} revoked") }
            }
            Ok(false) => ClientResponse::Error { message: format!("no live client token named {name:?}") },
            Err(e) => ClientResponse::Error { message: e.to_string() },
        },
        ClientRequest::CancelBuild { build } => match shared.live.get(&build) {
            Some(live) => {
                info!(build = %build, "cancelling build on request");
                live.cancel.cancel();
                ClientResponse::Done { message: format!("build {build} cancelled; its jobs are being stopped") }
            }
            None => match shared.store.detail(&build) {
                Ok(Some(d)) => {
                    ClientResponse::Error { message: format!("build {build} already ended: {}", d.summary.state) }
                }
                Ok(None) => unknown(&build),
                Err(e) => ClientResponse::Error { message: e.to_string() },
            },
        },
    };
    respond(send, response, max).await;
}

/// Stores an uploaded context, then checks what it holds; a context that fails the check is
/// deleted again.
async fn receive_context(
    shared: &Shared,
    digest: &Digest,
    size: u64,
    recv: &mut quinn::RecvStream,
) -> Result<(), String> {
    let path = shared.contexts.receive(digest, size, recv).await?;
    let checked = path.clone();
    let verdict = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&checked).map_err(|e| format!("cannot read the stored context: {e}"))?;
        archfarm_shared::tarball::check(std::io::BufReader::new(file))
    })
    .await
    .map_err(|e| e.to_string())?;
    match verdict {
        Ok(_) => Ok(()),
        Err(reason) => {
            warn!(context = %digest, "refused build context: {reason}");
            let _ = tokio::fs::remove_file(&path).await;
            Err(reason)
        }
    }
}

async fn respond(mut send: quinn::SendStream, response: ClientResponse, max: u32) {
    let _ = codec::write_msg(&mut send, &response, max).await;
    let _ = send.finish();
}

fn unknown(build: &archfarm_shared::BuildId) -> ClientResponse {
    ClientResponse::Error { message: format!("no build {build} on this coordinator (`archfarm builds ls` lists them)") }
}

/// The last event of a build that already ended, rebuilt from the store.
fn final_event(summary: &BuildSummary) -> BuildEvent {
    match (&summary.state, &summary.index) {
        (BuildState::Published, Some(index)) => {
            BuildEvent::Published { index: index.clone(), tags: summary.tags.clone(), platforms: vec![] }
        }
        _ => BuildEvent::Failed {
            reason: summary.error.clone().unwrap_or_else(|| format!("the build is {}", summary.state)),
        },
    }
}

/// Forwards a build's events until its last one. A client that goes away detaches; the build
/// runs on to its end.
async fn follow(mut events: broadcast::Receiver<BuildEvent>, mut send: quinn::SendStream, max: u32) {
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            // A slow client misses old log lines, never the end.
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => break,
        };
        let last = matches!(event, BuildEvent::Published { .. } | BuildEvent::Failed { .. });
        if codec::write_msg(&mut send, &ClientResponse::Build(event), max).await.is_err() || last {
            break;
        }
    }
    let _ = send.finish();
}
