//! BuildKit's progress turned into buildx-style plain lines (`#3 [2/2] COPY ...`), with the
//! last lines of each step kept so a failed build shows the failing step's output; and why a
//! build call stopped early.

use crate::engine::{BuildError, LineSink};
use std::collections::HashMap;

/// Why a build call ended early: what was said, and whether the engine (not the build) failed.
pub(super) struct Stopped {
    pub(super) message: String,
    pub(super) engine: bool,
}

/// Lines kept per step, and for the build as a whole.
const TAIL: usize = 20;

/// One build's progress so far: each step's number, name and last lines, and the first error.
#[derive(Default)]
pub(super) struct Steps {
    numbers: HashMap<String, usize>,
    names: HashMap<String, String>,
    done: std::collections::HashSet<String>,
    tails: HashMap<String, Vec<String>>,
    recent: Vec<String>,
    failed_vertex: Option<String>,
    pub(super) error: Option<String>,
}

impl Steps {
    fn number(&mut self, vertex: &str) -> usize {
        let next = self.numbers.len() + 1;
        *self.numbers.entry(vertex.to_owned()).or_insert(next)
    }

    fn emit(&mut self, vertex: Option<&str>, line: String, log: LineSink<'_>) {
        let push = |v: &mut Vec<String>, l: &str| {
            if v.len() == TAIL {
                v.remove(0);
            }
            v.push(l.to_owned());
        };
        push(&mut self.recent, &line);
        if let Some(v) = vertex {
            push(self.tails.entry(v.to_owned()).or_default(), &line);
        }
        log(line);
    }

    pub(super) fn plain(&mut self, line: String, log: LineSink<'_>) {
        self.emit(None, line, log);
    }

    pub(super) fn status(&mut self, status: &bollard::moby::buildkit::v1::StatusResponse, log: LineSink<'_>) {
        for v in &status.vertexes {
            let n = self.number(&v.digest);
            if !self.names.contains_key(&v.digest) && !v.name.is_empty() {
                self.names.insert(v.digest.clone(), v.name.clone());
                self.emit(Some(&v.digest), format!("#{n} {}", v.name), log);
            }
            if !v.error.is_empty() {
                if self.failed_vertex.is_none() {
                    self.failed_vertex = Some(v.digest.clone());
                    self.error = Some(v.error.clone());
                }
                self.emit(Some(&v.digest), format!("#{n} ERROR: {}", v.error), log);
            } else if v.completed.is_some() && self.done.insert(v.digest.clone()) {
                let word = if v.cached { "CACHED" } else { "DONE" };
                self.emit(Some(&v.digest), format!("#{n} {word}"), log);
            }
        }
        for l in &status.logs {
            let n = self.number(&l.vertex);
            let text = String::from_utf8_lossy(&l.msg).into_owned();
            for line in text.lines().filter(|s| !s.trim().is_empty()) {
                self.emit(Some(&l.vertex), format!("#{n} {}", truncate(line)), log);
            }
        }
    }

    pub(super) fn failure(&mut self, message: String) -> BuildError {
        let tail =
            self.failed_vertex.as_ref().and_then(|v| self.tails.get(v)).cloned().unwrap_or_else(|| self.recent.clone());
        BuildError { message, tail, engine_unreachable: false }
    }
}

fn truncate(line: &str) -> &str {
    const MAX: usize = 4000;
    if line.len() <= MAX {
        return line;
    }
    let mut end = MAX;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}
