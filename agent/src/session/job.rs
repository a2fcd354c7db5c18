//! One stream the coordinator opened: a job to run (its log lines and then its outcome sent
//! back on the same stream), or a housekeeping request to answer. A job stops when the
//! coordinator cancels it (resets the stream), the agent stops, or the engine turns unhealthy.

use super::link::QuicLink;
use super::Agent;
use crate::executor::Runner;
use archfarm_shared::protocol::{reset, AgentMessage, CoordinatorMessage, FailureKind, JobFailure, JobOutcome};
use archfarm_shared::stream::{MessageSender, QuicStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

impl<R: Runner> Agent<R> {
    /// Why a job is refused before it starts: the agent drains, or its engine is unhealthy.
    fn refusal(&self, draining: bool) -> Option<JobOutcome> {
        if draining {
            return Some(failed(
                FailureKind::Cancelled,
                format!("agent {} is draining and takes no new jobs", self.name),
            ));
        }
        let problem = self.health.problem()?;
        let why =
            format!("the engine of agent {} is unhealthy ({problem}); it takes no jobs until it recovers", self.name);
        Some(failed(FailureKind::EngineUnhealthy, why))
    }

    /// Serves one stream the coordinator opened on `conn`: runs the job it assigns, or
    /// answers the housekeeping request it makes.
    pub(super) async fn job(
        self: Arc<Self>,
        conn: quinn::Connection,
        mut stream: QuicStream,
        stop: CancellationToken,
        draining: bool,
    ) {
        let spec = match stream.expect::<CoordinatorMessage>().await {
            Ok(CoordinatorMessage::AssignJob(spec)) => *spec,
            Ok(CoordinatorMessage::Housekeeping(request)) => {
                info!(?request, "housekeeping asked by the coordinator");
                let reply = self.executor.housekeeping(request).await;
                let _ = stream.write_last(&AgentMessage::Housekeeping(reply)).await;
                return;
            }
            Ok(other) => return warn!("unexpected message on a job stream: {other:?}"),
            Err(e) => return warn!("reading a job: {e}"),
        };
        let span =
            info_span!("job", job = %spec.job, attempt = spec.attempt, build = %spec.build, platform = %spec.platform);
        async move {
            if let Some(refusal) = self.refusal(draining) {
                let _ = stream.write_last(&AgentMessage::JobFinished(refusal)).await;
                return;
            }
            info!("job started");
            self.running.fetch_add(1, Ordering::Relaxed);
            let (tx, mut rx) = crate::job_log::channel();
            let (mut send, mut recv) = stream.split();
            let link = QuicLink::new(conn, self.max_frame, spec.job.clone());
            // Boxed so that dropping it (below) really stops the build in the engine.
            let mut run = Box::pin(self.executor.run(&link, spec, tx));
            let mut stream_ok = true;
            let mut probe = [0u8; 1];
            let mut sick = self.health.clone();
            let outcome = loop {
                tokio::select! {
                    outcome = &mut run => break Some(outcome),
                    Some(line) = rx.recv() => {
                        if stream_ok {
                            stream_ok = send.write(&AgentMessage::JobLog { line }).await.is_ok();
                        }
                    }
                    // The coordinator sends nothing more on a job stream: any read result means
                    // it cancelled the job (reset) or went away.
                    r = recv.reader().read(&mut probe) => {
                        if matches!(r, Err(quinn::ReadError::Reset(code)) if code == reset::SILENT.into()) {
                            // Silent for the idle limit: a wedged engine would explain it.
                            self.health.probe_now();
                        }
                        info!("stopping the job: the coordinator {}", match r {
                            Err(quinn::ReadError::Reset(_)) => "cancelled it".to_owned(),
                            Err(e) => format!("is gone ({e})"),
                            Ok(_) => "closed its stream".to_owned(),
                        });
                        break None;
                    }
                    () = stop.cancelled() => {
                        info!("stopping the job: the agent is stopping");
                        break Some(failed(FailureKind::Cancelled, format!("agent {} stopped the job while shutting down", self.name)));
                    }
                    problem = sick.sick() => {
                        info!("stopping the job: the engine is unhealthy");
                        let why = format!("the engine of agent {} failed its health probe ({problem}); the job was stopped so it can run elsewhere", self.name);
                        break Some(failed(FailureKind::EngineUnhealthy, why));
                    }
                }
            };
            drop(run);
            self.running.fetch_sub(1, Ordering::Relaxed);
            if let Some(outcome) = outcome {
                report(&mut send, &mut rx, stream_ok, outcome).await;
            }
        }
        .instrument(span)
        .await;
    }
}

/// A job that ends without an image, for `kind`'s reason.
fn failed(kind: FailureKind, message: String) -> JobOutcome {
    JobOutcome::Failed(JobFailure { kind, message, log_tail: vec![] })
}

/// Sends the job's log lines still queued, then its result, and finishes the stream.
async fn report(
    send: &mut MessageSender<quinn::SendStream>,
    rx: &mut crate::job_log::JobLogReceiver,
    mut stream_ok: bool,
    outcome: JobOutcome,
) {
    for line in rx.rest() {
        if stream_ok {
            stream_ok = send.write(&AgentMessage::JobLog { line }).await.is_ok();
        }
    }
    match &outcome {
        JobOutcome::Pushed(img) => info!(digest = %img.digest, "job succeeded"),
        JobOutcome::Failed(f) => warn!(kind = %f.kind, "job failed: {}", f.message),
    }
    if send.write(&AgentMessage::JobFinished(outcome)).await.is_err() {
        warn!("could not report the job's result: the coordinator is gone");
    }
    send.finish().await;
}
