//! Sending a build context to the coordinator: nothing when it holds the context's digest;
//! otherwise the list of the context's chunks, then only the chunks it asks for, cut from the
//! tarball made again from the same files ([`cut::cut_chunks`]): nothing is written to disk.

use crate::context::{Planned, Survey};
use crate::cut;
use crate::Connection;
use anyhow::bail;
use archfarm_shared::protocol::{ClientRequest, ClientResponse};
use std::sync::Arc;

/// Chunks cut ahead of the one being sent (each at most 4 MiB).
const CUT_AHEAD: usize = 2;

/// What an upload sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Chunks sent.
    pub chunks: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// Whether the coordinator holds context `digest` for this client.
pub async fn present(conn: &Connection, digest: &archfarm_shared::Digest) -> anyhow::Result<bool> {
    match conn.call(&ClientRequest::HasContext { digest: digest.clone() }).await? {
        ClientResponse::ContextPresent(p) => Ok(p),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// Uploads the context `packed` is the plan of (made from `survey`) unless the coordinator has
/// it. Returns what was sent.
pub async fn upload(conn: &Connection, packed: &Planned, survey: Arc<Survey>, chatty: bool) -> anyhow::Result<Sent> {
    if present(conn, &packed.digest).await? {
        if chatty {
            eprintln!("context {} ({} bytes) is already on the coordinator", packed.digest, packed.size);
        }
        return Ok(Sent { chunks: 0, bytes: 0 });
    }
    let started = std::time::Instant::now();
    let request = ClientRequest::UploadChunked {
        digest: packed.digest.clone(),
        size: packed.size,
        chunks: packed.chunks.clone(),
    };
    let mut stream = conn.request(&request).await?;
    let wanted = match conn.next(&mut stream).await? {
        Some(ClientResponse::ChunksWanted(w)) => w,
        Some(ClientResponse::Error { message }) => bail!("{message}"),
        other => bail!("unexpected answer to the upload: {other:?}"),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u32, Vec<u8>)>(CUT_AHEAD);
    let cutting = {
        let chunks = packed.chunks.clone();
        tokio::task::spawn_blocking(move || {
            cut::cut_chunks(&survey, &chunks, &wanted, |i, bytes| tx.blocking_send((i, bytes)).is_ok())
        })
    };
    let mut sent = Sent { chunks: 0, bytes: 0 };
    while let Some((_, bytes)) = rx.recv().await {
        let len = bytes.len() as u64;
        // Handed over whole, not copied into the stream's buffer. A write error means the
        // coordinator stopped reading: its answer says why.
        if stream.writer().write_chunk(bytes.into()).await.is_err() {
            break;
        }
        sent.chunks += 1;
        sent.bytes += len;
    }
    drop(rx);
    let cut = cutting.await?;
    stream.finish().await;
    let answer = match (conn.next(&mut stream).await, &cut) {
        (Ok(answer), _) => answer,
        // No answer: the cut's own failure, if it had one, says more.
        (Err(e), Err(cut)) => bail!("{cut} (and the coordinator did not answer: {e})"),
        (Err(e), Ok(())) => return Err(e),
    };
    // The coordinator's answer says more than a cut that stopped because it stopped reading.
    match answer {
        Some(ClientResponse::ContextStored) => {
            cut.map_err(anyhow::Error::msg)?;
            if chatty {
                eprintln!(
                    "context {} uploaded: {} of {} bytes sent ({} of {} chunks; {} entries) in {:.1} s",
                    packed.digest,
                    sent.bytes,
                    packed.size,
                    sent.chunks,
                    packed.chunks.len(),
                    packed.entries,
                    started.elapsed().as_secs_f64()
                );
            }
            Ok(sent)
        }
        Some(ClientResponse::Error { message }) if message.contains("does not match its digest") => {
            bail!("{message}: {}", cut::CHANGED)
        }
        Some(ClientResponse::Error { message }) => match cut {
            Err(e) => bail!("{e} (the coordinator said: {message})"),
            Ok(()) => bail!("{message}"),
        },
        other => bail!("unexpected answer to the upload: {other:?}"),
    }
}
