//! Sending a packed build context to the coordinator: nothing when it holds the context's
//! digest; otherwise the list of the context's chunks, then only the chunks it asks for.

use crate::context::Packed;
use crate::Connection;
use anyhow::{bail, Context as _};
use archfarm_shared::protocol::{ClientRequest, ClientResponse};
use std::io::SeekFrom;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

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

/// Uploads `packed` unless the coordinator has it. Returns what was sent.
pub async fn upload(conn: &Connection, packed: &Packed, chatty: bool) -> anyhow::Result<Sent> {
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
    let mut offsets = Vec::with_capacity(packed.chunks.len());
    let mut at = 0u64;
    for c in &packed.chunks {
        offsets.push(at);
        at += u64::from(c.size);
    }
    let mut file = tokio::fs::File::open(packed.file.path()).await?;
    let mut sent = Sent { chunks: 0, bytes: 0 };
    for i in wanted {
        let (chunk, offset) = packed
            .chunks
            .get(i as usize)
            .zip(offsets.get(i as usize))
            .with_context(|| format!("the coordinator asked for chunk {i}, which does not exist"))?;
        let mut buf = vec![0u8; chunk.size as usize];
        file.seek(SeekFrom::Start(*offset)).await?;
        file.read_exact(&mut buf).await.context("reading the packed context")?;
        // Handed over whole, not copied into the stream's buffer. A write error means the
        // coordinator stopped reading: its answer says why.
        if stream.writer().write_chunk(buf.into()).await.is_err() {
            break;
        }
        sent.chunks += 1;
        sent.bytes += u64::from(chunk.size);
    }
    stream.finish().await;
    match conn.next(&mut stream).await? {
        Some(ClientResponse::ContextStored) => {
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
        Some(ClientResponse::Error { message }) => bail!("{message}"),
        other => bail!("unexpected answer to the upload: {other:?}"),
    }
}
