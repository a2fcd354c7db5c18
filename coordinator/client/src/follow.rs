//! Following a build's events to its end, for `archfarm build` and `archfarm builds watch`:
//! live progress, the result, the metadata file, and what Ctrl-C does.

use crate::progress::Progress;
use crate::Connection;
use anyhow::bail;
use archfarm_shared::protocol::{BuildEvent, ClientRequest, ClientResponse, PlatformResult};
use archfarm_shared::stream::QuicStream;
use archfarm_shared::{BuildId, Digest, Platform};
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

/// What Ctrl-C does while following a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnInterrupt {
    /// Ask on a terminal; detach otherwise.
    Ask,
    /// Stop following; the build goes on.
    Detach,
    /// Cancel the build on the farm.
    Cancel,
}

fn decide(choice: OnInterrupt) -> OnInterrupt {
    if choice != OnInterrupt::Ask {
        return choice;
    }
    if !std::io::stdin().is_terminal() {
        return OnInterrupt::Detach;
    }
    eprint!("\ninterrupted: [d]etach (the build goes on) or [c]ancel the build? [d/c] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if answer.trim().eq_ignore_ascii_case("c") {
        OnInterrupt::Cancel
    } else {
        OnInterrupt::Detach
    }
}

/// Shows events from `stream` until the build ends. Returns each platform's verified image when
/// every platform was built (and the index published, if the build pushes); `None` otherwise.
pub async fn follow(
    conn: &Connection,
    mut stream: QuicStream,
    progress: &Progress,
    on_interrupt: OnInterrupt,
    metadata: Option<&Path>,
) -> anyhow::Result<Option<Vec<PlatformResult>>> {
    let mut build: Option<BuildId> = None;
    let mut left_out: Vec<(Platform, String)> = Vec::new();
    let mut cancelling = false;
    // One stream for the whole follow: a SIGINT arriving between two loop turns is kept, not lost.
    let mut interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        let response = tokio::select! {
            r = conn.next(&mut stream) => match (r, &build) {
                (Ok(r), _) => r,
                (Err(e), Some(id)) => bail!(
                    "{e:#}. Build {id} is in the coordinator's database and resumes when it is back: \
                     `archfarm builds watch {id}` follows it again"
                ),
                (Err(e), None) => return Err(e),
            },
            _ = interrupts.recv(), if !cancelling => {
                let Some(id) = build.clone() else { bail!("interrupted before the build was accepted") };
                match tokio::task::spawn_blocking(move || decide(on_interrupt)).await? {
                    OnInterrupt::Cancel => {
                        cancelling = true;
                        match conn.call(&ClientRequest::CancelBuild { build: id.clone() }).await? {
                            ClientResponse::Done { message } => eprintln!("{message}"),
                            ClientResponse::Error { message } => eprintln!("error: {message}"),
                            _ => {}
                        }
                        continue;
                    }
                    _ => {
                        eprintln!("detached from build {id}; it goes on. `archfarm builds watch {id}` follows it again, `archfarm builds cancel {id}` stops it");
                        return Ok(None);
                    }
                }
            }
        };
        let Some(response) = response else {
            bail!("the coordinator ended the build stream without a result");
        };
        let event = match response {
            ClientResponse::Build(e) => e,
            ClientResponse::Error { message } => bail!("{message}"),
            other => bail!("unexpected answer: {other:?}"),
        };
        progress.event(&event);
        match event {
            BuildEvent::Accepted { build: id } => build = Some(id),
            BuildEvent::PlatformLeftOut { platform, reason } => left_out.push((platform, reason)),
            BuildEvent::Published { index, tags, platforms } => {
                eprintln!("published index {index} as {}", tags.join(", "));
                list(&platforms, &left_out);
                if let Some(path) = metadata {
                    write_metadata(path, build.as_ref(), Some(&index), &tags, &platforms, &left_out).await?;
                }
                return Ok(Some(platforms));
            }
            BuildEvent::Built { platforms } => {
                let id = build.as_ref().map_or_else(|| "ID".to_owned(), ToString::to_string);
                eprintln!(
                    "every platform was built and verified; no tag was written (no --push): \
                     `archfarm builds publish {id}` publishes them"
                );
                list(&platforms, &left_out);
                if let Some(path) = metadata {
                    write_metadata(path, build.as_ref(), None, &[], &platforms, &left_out).await?;
                }
                return Ok(Some(platforms));
            }
            BuildEvent::Failed { reason } => {
                eprintln!("error: build failed, {reason}");
                return Ok(None);
            }
            _ => {}
        }
    }
}

fn list(platforms: &[PlatformResult], left_out: &[(Platform, String)]) {
    for p in platforms {
        eprintln!(
            "  {:<14} {}  (agent {}, {:.1} s)",
            p.platform.to_string(),
            p.digest,
            p.agent,
            p.duration_ms as f64 / 1000.0
        );
    }
    for (platform, reason) in left_out {
        eprintln!("  {:<14} left out (optional): {reason}", platform.to_string());
    }
}

async fn write_metadata(
    path: &Path,
    build: Option<&BuildId>,
    index: Option<&Digest>,
    tags: &[String],
    platforms: &[PlatformResult],
    left_out: &[(Platform, String)],
) -> anyhow::Result<()> {
    let mut doc = serde_json::json!({
        "image.name": tags.join(","),
        "archfarm.build": build.map(BuildId::as_str),
        "archfarm.platforms": platforms.iter().map(|p| serde_json::json!({
            "platform": p.platform.to_string(),
            "digest": p.digest.as_str(),
            "agent": p.agent.as_str(),
            "duration_ms": p.duration_ms,
        })).collect::<Vec<_>>(),
        "archfarm.left_out": left_out.iter().map(|(platform, reason)| serde_json::json!({
            "platform": platform.to_string(),
            "reason": reason,
        })).collect::<Vec<_>>(),
    });
    if let Some(index) = index {
        doc["containerimage.digest"] = index.as_str().into();
        doc["containerimage.descriptor"] =
            serde_json::json!({ "mediaType": archfarm_shared::oci::OCI_INDEX, "digest": index.as_str() });
    }
    let text = serde_json::to_string_pretty(&doc)?;
    tokio::fs::write(path, text + "\n")
        .await
        .map_err(|e| anyhow::anyhow!("cannot write --metadata-file {}: {e}", path.display()))
}
