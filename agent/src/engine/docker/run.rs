//! Running a command in a built image: the native test of `archfarm build --test`. The
//! container has no network, its output streams to the job's log, and it is removed however
//! the test ends, also when the job is stopped mid-test.

use super::DockerEngine;
use crate::engine::{LineSink, TestRun};
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    CreateContainerOptions, LogsOptions, RemoveContainerOptions, StartContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;
use std::collections::VecDeque;

/// Characters kept of each line of the tail.
const TAIL_LINE: usize = 512;
/// Lines of a test's output kept for its failure.
const TAIL: usize = 20;

/// What the engine keeps on disk of a test's output while it streams to the job's log: a test
/// that floods its output must not fill the agent's disk.
fn bounded_log() -> HostConfigLogConfig {
    let config = [("max-size", "8m"), ("max-file", "2")].map(|(k, v)| (k.to_owned(), v.to_owned()));
    HostConfigLogConfig { typ: Some("json-file".into()), config: Some(config.into_iter().collect()) }
}

/// Removes the container when dropped, so a stopped job leaves none behind.
struct Removal {
    docker: bollard::Docker,
    id: String,
}

impl Drop for Removal {
    fn drop(&mut self) {
        let (docker, id) = (self.docker.clone(), std::mem::take(&mut self.id));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let options = RemoveContainerOptions { force: true, ..Default::default() };
                let _ = docker.remove_container(&id, Some(options)).await;
            });
        }
    }
}

impl DockerEngine {
    /// Runs `argv` in `image` (its entrypoint kept, as `docker run IMAGE ARGV…`), sending each
    /// output line to `log`.
    pub(super) async fn run_container(
        &self,
        image: &str,
        argv: &[String],
        log: LineSink<'_>,
    ) -> Result<TestRun, String> {
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            cmd: Some(argv.to_vec()),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                log_config: Some(bounded_log()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(None::<CreateContainerOptions>, body)
            .await
            .map_err(|e| format!("creating the test container: {e}"))?;
        let _removal = Removal { docker: self.docker.clone(), id: created.id.clone() };
        self.docker
            .start_container(&created.id, None::<StartContainerOptions>)
            .await
            .map_err(|e| format!("starting the test container: {e}"))?;
        let options = LogsOptions { follow: true, stdout: true, stderr: true, ..Default::default() };
        let mut logs = self.docker.logs(&created.id, Some(options));
        let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL);
        while let Some(chunk) = logs.next().await {
            let Ok(chunk) = chunk else { break };
            for line in chunk.to_string().lines() {
                if tail.len() == TAIL {
                    tail.pop_front();
                }
                // A line of a chunk is bounded by the engine's frame; the tail keeps less of it.
                tail.push_back(line.chars().take(TAIL_LINE).collect());
                log(line.to_owned());
            }
        }
        let mut waits = self.docker.wait_container(&created.id, None::<WaitContainerOptions>);
        let exit_code = match waits.next().await {
            Some(Ok(w)) => w.status_code,
            // A non-zero exit comes back as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(format!("waiting for the test container: {e}")),
            None => return Err("the engine said nothing of how the test ended".into()),
        };
        Ok(TestRun { exit_code, tail: tail.into() })
    }
}
