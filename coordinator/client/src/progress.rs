//! Showing a build as it happens: plain lines prefixed with the platform, or on a terminal one
//! live line per platform.

use archfarm_shared::protocol::{BuildEvent, JobFailure};
use archfarm_shared::Platform;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

/// `--progress` values, as in `docker buildx build`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A live view on a terminal, plain lines otherwise.
    Auto,
    /// Every log line, prefixed with its platform.
    Plain,
    /// Only the result.
    Quiet,
}

/// Renders build events to stderr.
#[derive(Debug)]
pub struct Progress {
    plain: bool,
    quiet: bool,
    multi: MultiProgress,
    bars: HashMap<Platform, ProgressBar>,
}

impl Progress {
    /// A renderer for these platforms.
    pub fn new(mode: Mode, platforms: &[Platform]) -> Self {
        let live = mode == Mode::Auto && std::io::stderr().is_terminal();
        let multi = MultiProgress::new();
        let mut bars = HashMap::new();
        if live {
            let style = ProgressStyle::with_template("{spinner} {prefix:.bold} {elapsed:>4} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            for p in platforms {
                let bar = multi.add(ProgressBar::new_spinner().with_style(style.clone()).with_prefix(format!("[{p}]")));
                bar.set_message("waiting for an agent");
                bar.enable_steady_tick(Duration::from_millis(120));
                bars.insert(p.clone(), bar);
            }
        }
        Progress { plain: !live && mode != Mode::Quiet, quiet: mode == Mode::Quiet, multi, bars }
    }

    fn line(&self, platform: &Platform, text: &str) {
        if self.plain {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "[{platform}] {text}");
        }
    }

    fn status(&self, platform: &Platform, text: String, done: bool) {
        if let Some(bar) = self.bars.get(platform) {
            if done {
                bar.finish_with_message(text);
            } else {
                bar.set_message(text);
            }
        } else {
            self.line(platform, &text);
        }
    }

    /// Shows one event.
    pub fn event(&self, event: &BuildEvent) {
        match event {
            BuildEvent::Accepted { build } => {
                if self.plain {
                    eprintln!("build {build} accepted");
                }
            }
            BuildEvent::Started { platform, agent } => {
                self.status(platform, format!("building natively on agent {agent}"), false)
            }
            BuildEvent::Log { platform, line } => match self.bars.get(platform) {
                Some(bar) => bar.set_message(line.clone()),
                None => self.line(platform, line),
            },
            BuildEvent::PlatformDone(r) => self.status(
                &r.platform,
                format!("pushed and verified {} (agent {}, {:.1} s)", r.digest, r.agent, r.duration_ms as f64 / 1000.0),
                true,
            ),
            BuildEvent::PlatformFailed { platform, agent, failure } => {
                let on = agent.as_ref().map(|a| format!(" on agent {a}")).unwrap_or_default();
                self.status(platform, format!("FAILED{on} ({}): {}", failure.kind, failure.message), true);
                if !self.quiet {
                    self.tail(platform, failure);
                }
            }
            BuildEvent::PlatformLeftOut { platform, reason } => {
                self.status(platform, format!("left out (optional): {reason}"), true)
            }
            BuildEvent::Retrying { platform, agent, reason, next_attempt } => {
                let text = format!("attempt on agent {agent} ended: {reason}; retrying (attempt {next_attempt})");
                match self.bars.get(platform) {
                    Some(bar) => {
                        self.multi.suspend(|| eprintln!("[{platform}] {text}"));
                        bar.set_message(text);
                    }
                    None => self.line(platform, &text),
                }
            }
            BuildEvent::TagKept { reason } => match self.bars.is_empty() {
                true => eprintln!("warning: {reason}"),
                false => self.multi.suspend(|| eprintln!("warning: {reason}")),
            },
            BuildEvent::Published { .. } | BuildEvent::Built { .. } | BuildEvent::Failed { .. } => {
                for bar in self.bars.values() {
                    if !bar.is_finished() {
                        bar.finish();
                    }
                }
                let _ = self.multi.clear();
            }
        }
    }

    fn tail(&self, platform: &Platform, failure: &JobFailure) {
        let print = |s: String| match self.bars.is_empty() {
            true => eprintln!("{s}"),
            false => self.multi.suspend(|| eprintln!("{s}")),
        };
        for line in &failure.log_tail {
            print(format!("[{platform}] | {line}"));
        }
    }
}
