//! `archfarm builds ls | show | watch | publish | cancel`: the coordinator's build history, and
//! acting on one build.

use crate::follow::{self, OnInterrupt};
use crate::progress::{Mode, Progress};
use crate::{Connection, Remote};
use anyhow::bail;
use archfarm_shared::outcome::AttemptOutcome;
use archfarm_shared::platform;
use archfarm_shared::protocol::{BuildDetail, BuildState, BuildSummary, ClientRequest, ClientResponse};
use archfarm_shared::{BuildId, Platform};
use std::fmt::Write;

fn ago(ms: u64) -> String {
    archfarm_shared::clock::ago(ms, archfarm_shared::clock::now_ms())
}

/// The table `builds ls` prints.
pub fn table(builds: &[BuildSummary]) -> String {
    let mut rows = vec![[
        "BUILD".to_owned(),
        "STATE".into(),
        "CREATED".into(),
        "OWNER".into(),
        "PLATFORMS".into(),
        "TAGS".into(),
        "INDEX".into(),
    ]];
    for b in builds {
        rows.push([
            b.build.to_string(),
            b.state.to_string(),
            ago(b.created_ms),
            b.owner.clone(),
            platform::list(&b.platforms),
            b.tags.join(","),
            b.index.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string),
        ]);
    }
    crate::table::render(&rows)
}

/// What `builds show` prints.
pub fn detail(d: &BuildDetail) -> String {
    let s = &d.summary;
    let mut out = String::new();
    let _ = writeln!(out, "Build:     {}", s.build);
    let _ = writeln!(out, "State:     {}", s.state);
    let _ = writeln!(out, "Created:   {}", ago(s.created_ms));
    let _ = writeln!(out, "Owner:     {}", s.owner);
    let _ = writeln!(out, "Tags:      {}", s.tags.join(", "));
    if let Some(i) = &s.index {
        let _ = writeln!(out, "Index:     {i}");
    }
    if !s.tests.is_empty() {
        // A build that got past its platforms passed every test on every one.
        let verdict = match s.state {
            BuildState::Published | BuildState::Built | BuildState::Publishing => "passed on every platform",
            BuildState::Running => "run on each platform before its push",
            _ => "see each platform below",
        };
        let _ = writeln!(out, "Tests:     {} ({verdict})", s.tests.join("; "));
    }
    if let Some(e) = &s.error {
        let _ = writeln!(out, "Error:     {}", e.replace('\n', "\n           "));
    }
    for j in &d.jobs {
        let _ = writeln!(out, "\n{}  {}", j.platform, j.state);
        if let Some(digest) = &j.digest {
            let took = j.duration_ms.map(|ms| format!(" in {:.1} s", ms as f64 / 1000.0)).unwrap_or_default();
            let agent = j.agent.as_ref().map(ToString::to_string).unwrap_or_default();
            let _ = writeln!(out, "  digest:  {digest} (agent {agent}{took})");
        }
        if let Some(e) = &j.error {
            let _ = writeln!(out, "  error:   {e}");
        }
        for a in &j.attempts {
            let outcome = a.outcome.map_or("running", AttemptOutcome::as_str);
            let detail = a.detail.as_deref().filter(|d| !d.is_empty()).map(|d| format!(": {d}")).unwrap_or_default();
            let why = if a.placement.is_empty() { String::new() } else { format!(" ({})", a.placement) };
            let _ = writeln!(out, "  attempt {} on {}{why}: {outcome}{detail}", a.number, a.agent);
        }
    }
    out
}

/// `builds ls`.
pub async fn ls(remote: &Remote, limit: u32, json: bool) -> anyhow::Result<()> {
    let builds = Connection::list_once(remote, &ClientRequest::ListBuilds { limit }, |r| match r {
        ClientResponse::Builds(page) => Some(page),
        _ => None,
    })
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&builds.iter().map(summary_json).collect::<Vec<_>>())?);
    } else {
        print!("{}", table(&builds));
    }
    Ok(())
}

fn summary_json(b: &BuildSummary) -> serde_json::Value {
    serde_json::json!({
        "build": b.build.as_str(),
        "state": b.state.as_str(),
        "created_ms": b.created_ms,
        "owner": b.owner,
        "finished_ms": b.finished_ms,
        "platforms": b.platforms.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "tags": b.tags,
        "index": b.index.as_ref().map(|d| d.as_str()),
        "error": b.error,
    })
}

/// `builds show`.
pub async fn show(remote: &Remote, build: BuildId, json: bool) -> anyhow::Result<()> {
    let ClientResponse::BuildDetail(d) = Connection::call_once(remote, &ClientRequest::ShowBuild { build }).await?
    else {
        bail!("unexpected answer to builds show");
    };
    if json {
        let jobs: Vec<serde_json::Value> = d
            .jobs
            .iter()
            .map(|j| {
                serde_json::json!({
                    "platform": j.platform.to_string(),
                    "state": j.state.as_str(),
                    "digest": j.digest.as_ref().map(|d| d.as_str()),
                    "agent": j.agent.as_ref().map(|a| a.as_str()),
                    "duration_ms": j.duration_ms,
                    "error": j.error,
                    "attempts": j.attempts.iter().map(|a| serde_json::json!({
                        "number": a.number, "agent": a.agent.as_str(), "outcome": a.outcome, "detail": a.detail,
                        "placement": a.placement,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let mut v = summary_json(&d.summary);
        v["jobs"] = serde_json::Value::Array(jobs);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", detail(&d));
    }
    Ok(())
}

/// `builds watch`: the build as it stands, then its events to its end.
pub async fn watch(remote: &Remote, build: BuildId, mode: Mode, on_interrupt: OnInterrupt) -> anyhow::Result<bool> {
    follow_request(remote, ClientRequest::WatchBuild { build }, mode, on_interrupt).await
}

/// `builds retry`: the failed (or named) platforms run again, then it is followed as `watch`
/// follows a build.
pub async fn retry(
    remote: &Remote,
    build: BuildId,
    platforms: Vec<Platform>,
    mode: Mode,
    on_interrupt: OnInterrupt,
) -> anyhow::Result<bool> {
    follow_request(remote, ClientRequest::RetryBuild { build, platforms }, mode, on_interrupt).await
}

/// Sends a request answered with a build's snapshot and then its events, and follows them.
async fn follow_request(
    remote: &Remote,
    request: ClientRequest,
    mode: Mode,
    on_interrupt: OnInterrupt,
) -> anyhow::Result<bool> {
    let conn = Connection::open(remote).await?;
    let mut stream = conn.request(&request).await?;
    stream.finish().await;
    let snapshot = match conn.next(&mut stream).await? {
        Some(ClientResponse::BuildDetail(d)) => d,
        Some(ClientResponse::Error { message }) => bail!("{message}"),
        other => bail!("unexpected answer: {other:?}"),
    };
    eprint!("{}", detail(&snapshot));
    let progress = Progress::new(mode, &snapshot.summary.platforms);
    let built = follow::follow(&conn, stream, &progress, on_interrupt, None).await?;
    conn.close().await;
    Ok(built.is_some())
}

/// `builds publish`.
pub async fn publish(remote: &Remote, build: BuildId, force: bool) -> anyhow::Result<()> {
    if let ClientResponse::Done { message } =
        Connection::call_once(remote, &ClientRequest::PublishBuild { build, force }).await?
    {
        eprintln!("{message}");
    }
    Ok(())
}

/// `builds cancel`.
pub async fn cancel(remote: &Remote, build: BuildId) -> anyhow::Result<()> {
    if let ClientResponse::Done { message } =
        Connection::call_once(remote, &ClientRequest::CancelBuild { build }).await?
    {
        eprintln!("{message}");
    }
    Ok(())
}
