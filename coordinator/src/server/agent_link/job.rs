//! Job streams: the coordinator opens one stream per attempt, sends the job, and follows the
//! agent's log to the result. Cancelling the build resets the stream, which stops the job on
//! the agent.

use super::super::live::Live;
use super::super::ports::AgentLink;
use super::super::wire::{on_codec_error, unexpected};
use super::limits::{self, Grants, LineRate};
use archfarm_shared::protocol::{
    reset, AgentMessage, CoordinatorMessage, FailureKind, JobFailure, JobOutcome, JobSpec, PushedImage,
};
use archfarm_shared::stream::QuicStream;
use archfarm_shared::{tls, AgentName};
use futures_util::future::BoxFuture;
use std::collections::VecDeque;
use std::time::Duration;

/// Lines of a failing step's output kept for the error message.
pub const LOG_TAIL: usize = 20;

/// A registered agent's QUIC connection, as the orchestration uses it.
#[derive(Debug)]
pub struct QuicLink {
    /// The agent's name.
    pub name: AgentName,
    /// Its connection.
    pub conn: quinn::Connection,
    /// Largest frame sent or accepted.
    pub max_frame: u32,
    /// The contexts of the jobs it runs, which it may fetch.
    pub grants: Grants,
}

impl AgentLink for QuicLink {
    fn run_job<'a>(
        &'a self,
        spec: JobSpec,
        live: &'a Live,
        idle: Duration,
    ) -> BoxFuture<'a, Result<PushedImage, JobFailure>> {
        Box::pin(self.run(spec, live, idle))
    }

    fn is_open(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    fn id(&self) -> usize {
        self.conn.stable_id()
    }

    fn close(&self, code: u32, reason: &str) {
        self.conn.close(code.into(), reason.as_bytes());
    }

    fn housekeeping(
        &self,
        request: archfarm_shared::protocol::Housekeeping,
    ) -> BoxFuture<'_, Result<archfarm_shared::protocol::HousekeepingReply, String>> {
        Box::pin(super::housekeeping::ask(&self.conn, &self.name, self.max_frame, request))
    }
}

impl QuicLink {
    async fn run(&self, spec: JobSpec, live: &Live, idle: Duration) -> Result<PushedImage, JobFailure> {
        let (conn, max) = (&self.conn, self.max_frame);
        let platform = spec.platform.clone();
        let _may_fetch = self.grants.grant(&spec.context);
        let mut rate = LineRate::default();
        let mut tail: VecDeque<String> = VecDeque::with_capacity(LOG_TAIL);
        let lost = |why: String, tail: &VecDeque<String>| JobFailure {
            kind: FailureKind::AgentLost,
            message: format!("agent {} went away while building {platform}: {why}", self.name),
            log_tail: tail.iter().cloned().collect(),
        };
        let mut stream = QuicStream::open(conn, max).await.map_err(|e| lost(tls::explain(&e), &tail))?;
        if let Err(e) = stream.write(&CoordinatorMessage::AssignJob(Box::new(spec))).await {
            return Err(lost(on_codec_error(conn, &e, "job stream"), &tail));
        }
        loop {
            let msg = tokio::select! {
                msg = tokio::time::timeout(idle, stream.read::<AgentMessage>()) => match msg {
                    Ok(msg) => msg,
                    Err(_) => {
                        stream.reset(reset::SILENT);
                        let message = format!(
                            "no build output for {} s: the job was stopped on agent {} (a build that is quiet for \
                             longer needs --idle-timeout)",
                            idle.as_secs(),
                            self.name
                        );
                        return Err(JobFailure { kind: FailureKind::TimedOut, message, log_tail: tail.into() });
                    }
                },
                () = live.cancel.cancelled() => {
                    stream.reset(reset::CANCELLED);
                    return Err(JobFailure { kind: FailureKind::Cancelled, message: "cancelled".into(), log_tail: vec![] });
                }
            };
            match msg {
                Ok(Some(AgentMessage::JobLog { line })) => {
                    let dropped = rate.dropped;
                    if !rate.admit(std::time::Instant::now()) {
                        continue;
                    }
                    if dropped > 0 {
                        rate.dropped = 0;
                        live.log(
                            &platform,
                            format!(
                                "({dropped} lines of output dropped: over {} lines a second)",
                                limits::LINES_PER_SEC
                            ),
                        );
                    }
                    let line = limits::cut(line, limits::MAX_LINE);
                    if tail.len() == LOG_TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(limits::cut(line.clone(), limits::MAX_TAIL_LINE));
                    live.log(&platform, line);
                }
                Ok(Some(AgentMessage::JobFinished(JobOutcome::Pushed(image)))) => return Ok(image),
                Ok(Some(AgentMessage::JobFinished(JobOutcome::Failed(failure)))) => {
                    return Err(limits::bounded(failure))
                }
                Ok(Some(other)) => return Err(lost(unexpected(conn, &other, "a job stream"), &tail)),
                Ok(None) => return Err(lost("the job stream ended without a result".into(), &tail)),
                Err(e) => return Err(lost(on_codec_error(conn, &e, "job stream"), &tail)),
            }
        }
    }
}
