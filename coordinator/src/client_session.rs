//! One release engineer's connection: the token check, then one request per stream.

use crate::build;
use crate::server::{on_codec_error, Shared};
use archfarm_shared::codec;
use archfarm_shared::protocol::{close, BuildEvent, ClientRequest, ClientResponse};
use archfarm_shared::tls;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one client connection until it ends.
pub async fn serve(shared: Arc<Shared>, conn: quinn::Connection) {
    let remote = conn.remote_address();
    let max = shared.settings.max_frame;
    let Ok(Ok((mut send, mut recv))) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi()).await
    else {
        return conn.close(close::REFUSED.into(), b"no hello within 10 s");
    };
    let token = match tokio::time::timeout(
        HELLO_TIMEOUT,
        codec::expect_msg::<_, ClientRequest>(&mut recv, max),
    )
    .await
    {
        Ok(Ok(ClientRequest::Hello { token })) => token,
        Ok(Ok(_)) => {
            return conn.close(
                close::PROTOCOL.into(),
                b"protocol error: expected Hello as the first request",
            )
        }
        Ok(Err(e)) => return drop(on_codec_error(&conn, &e, "hello stream")),
        Err(_) => return conn.close(close::REFUSED.into(), b"no hello within 10 s"),
    };
    let accepted = crate::auth::token_accepted(&shared.settings.tokens_file, &token)
        .unwrap_or_else(|e| {
            warn!("{e}");
            false
        });
    if !accepted {
        warn!(%remote, "refused client: invalid token");
        let reason = "the coordinator refused the client token: check ARCHFARM_TOKEN (or --token) against the farm's client.token".to_owned();
        let _ = codec::write_msg(
            &mut send,
            &ClientResponse::Refused {
                reason: reason.clone(),
            },
            max,
        )
        .await;
        let _ = send.finish();
        tokio::time::sleep(Duration::from_millis(200)).await;
        return conn.close(close::REFUSED.into(), reason.as_bytes());
    }
    let welcome = ClientResponse::Welcome {
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
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
        ClientRequest::Hello { .. } => ClientResponse::Error {
            message: "already authenticated".into(),
        },
        ClientRequest::ListAgents => ClientResponse::Agents(shared.farm.agents()),
        ClientRequest::HasContext { digest } => {
            ClientResponse::ContextPresent(shared.contexts.contains(&digest))
        }
        ClientRequest::UploadContext { digest, size } => {
            match shared.contexts.receive(&digest, size, &mut recv).await {
                Ok(_) => {
                    info!(context = %digest, bytes = size, "stored build context");
                    ClientResponse::ContextStored
                }
                Err(message) => ClientResponse::Error { message },
            }
        }
        ClientRequest::Build(req) => {
            let mut events = build::start(shared.clone(), req);
            let mut attached = true;
            while let Some(event) = events.recv().await {
                let last = matches!(
                    event,
                    BuildEvent::Published { .. } | BuildEvent::Failed { .. }
                );
                // A client that goes away detaches; the build runs on to its end.
                if attached
                    && codec::write_msg(&mut send, &ClientResponse::Build(event), max)
                        .await
                        .is_err()
                {
                    attached = false;
                }
                if last {
                    break;
                }
            }
            let _ = send.finish();
            return;
        }
    };
    let _ = codec::write_msg(&mut send, &response, max).await;
    let _ = send.finish();
}
