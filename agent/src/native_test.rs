//! `archfarm build --test` and `--test-target`: the freshly built image is tested on the agent
//! that built it, natively, before it is pushed. A test that fails is the image's fault: the
//! platform fails for good and nothing is published.

use crate::engine::BuildSpec;
use crate::executor::Executor;
use archfarm_shared::protocol::{FailureKind, JobFailure, JobSpec};
use std::path::Path;

fn failed(message: String, log_tail: Vec<String>) -> JobFailure {
    JobFailure { kind: FailureKind::TestFailed, message, log_tail }
}

impl Executor {
    /// Builds the test stage, then runs each test command in the image tagged `tag`.
    pub async fn native_tests(
        &self,
        spec: &JobSpec,
        context: &Path,
        tag: &str,
        log: &crate::job_log::JobLog,
        logins: &crate::engine::JobLogins,
    ) -> Result<(), JobFailure> {
        let mut sink = |line: String| {
            log.send(line);
        };
        let (platform, agent) = (&spec.platform, &self.name);
        if let Some(stage) = &spec.test_target {
            log.send(format!("testing {platform}: building stage {stage}"));
            let test_tag = format!("archfarm/{}:test", spec.job);
            let build = BuildSpec {
                context,
                dockerfile: &spec.dockerfile,
                platform,
                tag: &test_tag,
                build_args: &spec.build_args,
                labels: &spec.labels,
                target: Some(stage),
                no_cache: spec.no_cache,
                pull: false,
                cache_from: &spec.cache_from,
                inline_cache: false,
                cache_to_max: None,
                session: format!("archfarm-{}-test-{:x}", spec.job, rand::random::<u32>()),
                logins,
                push_to: None,
            };
            let result = self.engine.build(build, &mut sink).await;
            self.engine.untag(&test_tag).await;
            if let Err(e) = result {
                let message = format!("the test stage {stage} failed on {platform} (agent {agent}): {}", e.message);
                return Err(failed(message, e.tail));
            }
            log.send(format!("test stage {stage} passed on {platform}"));
        }
        for argv in &spec.tests {
            let shown = archfarm_shared::request::test_line(argv);
            log.send(format!("testing {platform}: {shown}"));
            let run = self.engine.run_test(tag, argv, &mut sink).await.map_err(|e| JobFailure {
                kind: FailureKind::Engine,
                message: format!("agent {agent} could not run the test `{shown}`: {e}"),
                log_tail: vec![],
            })?;
            if run.exit_code != 0 {
                let message = format!("test `{shown}` exited with {} on {platform} (agent {agent})", run.exit_code);
                return Err(failed(message, run.tail));
            }
            log.send(format!("test `{shown}` passed on {platform}"));
        }
        Ok(())
    }
}
